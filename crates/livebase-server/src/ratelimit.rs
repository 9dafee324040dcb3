//! Token buckets: `rate` tokens per second, at most `burst` saved up, one bucket per key.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(burst: f64) -> Bucket {
        Bucket { tokens: burst, at: Instant::now() }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.max(1e-9)))
        }
    }
}

/// Buckets by key (a token's subject or a client address). Idle buckets are forgotten.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `rate` of 0 disables limiting.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter { rate, burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let now = Instant::now();
        let mut b = self.buckets.lock();
        if b.len() > 100_000 {
            // Full buckets carry no state worth keeping.
            let (rate, burst) = (self.rate, self.burst);
            b.retain(|_, v| v.tokens + now.saturating_duration_since(v.at).as_secs_f64() * rate < burst);
        }
        b.entry(key.to_string()).or_insert_with(|| Bucket::new(self.burst)).take(self.rate, self.burst, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_past_burst_and_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0);
        assert!(b.take(10.0, 2.0, t0).is_ok());
        assert!(b.take(10.0, 2.0, t0).is_ok());
        let wait = b.take(10.0, 2.0, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(b.take(10.0, 2.0, t0 + Duration::from_millis(100)).is_ok());
    }
}
