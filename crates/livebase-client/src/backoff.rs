//! Reconnect delays: exponential backoff with full jitter.

use rand::Rng;
use std::time::Duration;

/// Exponential backoff with full jitter: before retry number `attempt` (0-based) the client
/// waits a uniformly random delay in `[0, min(cap, base * 2^attempt)]`.
///
/// Full jitter spreads the reconnects of many clients that lost the server at the same moment
/// instead of bringing them all back in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(10) }
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap }
    }

    /// The upper bound of the delay before retry `attempt`: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).map_or(self.cap, |d| d.min(self.cap))
    }

    /// A random delay in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`Backoff::delay`] with the given random source.
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos().min(u64::MAX as u128) as u64;
        if ceiling == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(6), Duration::from_millis(6400));
        assert_eq!(b.ceiling(7), Duration::from_secs(10));
        assert_eq!(b.ceiling(40), Duration::from_secs(10));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn huge_bases_do_not_overflow() {
        let b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::from_secs(5));
        assert_eq!(b.ceiling(3), Duration::from_secs(5));
        assert!(b.delay(3) <= Duration::from_secs(5));
    }

    #[test]
    fn full_jitter_stays_within_bounds_and_spreads() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..12 {
            let ceiling = b.ceiling(attempt);
            let delays: Vec<Duration> = (0..2000).map(|_| b.delay_with(attempt, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: the whole range [0, ceiling] is used, not just a band near it.
            let low = delays.iter().filter(|d| **d < ceiling / 10).count();
            let high = delays.iter().filter(|d| **d > ceiling * 9 / 10).count();
            assert!(low > 100 && high > 100, "attempt {attempt}: {low} low, {high} high");
            let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
            assert!(
                mean > ceiling * 4 / 10 && mean < ceiling * 6 / 10,
                "attempt {attempt}: mean {mean:?} of ceiling {ceiling:?}"
            );
        }
    }

    #[test]
    fn zero_base_means_no_wait() {
        let b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(b.delay(5), Duration::ZERO);
    }
}
