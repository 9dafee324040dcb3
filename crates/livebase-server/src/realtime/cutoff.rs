//! Connections the server cut off recently, remembered so that the reason reaches the client
//! on its next connection even when the close frame could not (a slow consumer's socket
//! buffer is full by definition, so its 4001 close often never arrives).
//!
//! A client reconnects with `?resume_of=<old conn_id>`; its `welcome` then carries
//! `"cut_off": {"reason": ..., "at_seq": N}`. Entries are bounded in number and age, are
//! reported once, and only to the same caller (admin, the same user subject, or anonymous).

use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a cut-off is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(300);
/// Most cut-offs remembered at once (the oldest are forgotten first).
pub const REMEMBER_MAX: usize = 10_000;

struct Entry {
    reason: &'static str,
    at_seq: u64,
    /// `Principal::scope()` of the cut-off connection: only the same caller may learn of it.
    scope: String,
    at: Instant,
}

/// A bounded, time-limited map from connection name (`c17`) to why it was cut off.
pub struct CutOffs {
    inner: Mutex<Inner>,
    ttl: Duration,
    max: usize,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Entry>,
    /// Insertion order, for eviction by age and count.
    order: VecDeque<(Instant, String)>,
}

impl Default for CutOffs {
    fn default() -> Self {
        CutOffs::new(REMEMBER_FOR, REMEMBER_MAX)
    }
}

impl CutOffs {
    pub fn new(ttl: Duration, max: usize) -> CutOffs {
        CutOffs { inner: Mutex::new(Inner::default()), ttl, max: max.max(1) }
    }

    /// Remembers that connection `name` (owned by `scope`) was cut off at event `at_seq`.
    pub fn record(&self, name: &str, scope: String, reason: &'static str, at_seq: u64) {
        let now = Instant::now();
        let mut g = self.inner.lock();
        Self::expire(&mut g, now, self.ttl);
        while g.by_name.len() >= self.max {
            let Some((_, old)) = g.order.pop_front() else { break };
            g.by_name.remove(&old);
        }
        g.by_name.insert(name.to_string(), Entry { reason, at_seq, scope, at: now });
        g.order.push_back((now, name.to_string()));
    }

    /// The `cut_off` member for a `welcome`, when `name` was cut off recently and `scope` is
    /// the same caller. Reported once: the entry is removed.
    pub fn take(&self, name: &str, scope: &str) -> Option<Value> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        Self::expire(&mut g, now, self.ttl);
        if g.by_name.get(name).is_some_and(|e| e.scope == scope) {
            let e = g.by_name.remove(name)?;
            return Some(json!({"reason": e.reason, "at_seq": e.at_seq}));
        }
        None
    }

    pub fn len(&self) -> usize {
        self.inner.lock().by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(g: &mut Inner, now: Instant, ttl: Duration) {
        while let Some((at, _)) = g.order.front() {
            if now.duration_since(*at) < ttl {
                break;
            }
            let Some((at, name)) = g.order.pop_front() else { break };
            // A name is never reused (ids only grow), but an entry taken and not re-added
            // leaves its order slot behind: remove only the entry this slot stands for.
            if g.by_name.get(&name).is_some_and(|e| e.at == at) {
                g.by_name.remove(&name);
            }
        }
        // Slots of entries already taken would otherwise accumulate.
        if g.order.len() > 2 * g.by_name.len() + 64 {
            let live = &g.by_name;
            g.order.retain(|(at, n)| live.get(n).is_some_and(|e| e.at == *at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_once_and_only_to_the_same_caller() {
        let c = CutOffs::default();
        c.record("c1", "user:u1".into(), "slow_consumer", 42);
        assert_eq!(c.take("c1", "user:u2"), None, "another caller learns nothing");
        assert_eq!(c.take("c1", "user:u1"), Some(json!({"reason": "slow_consumer", "at_seq": 42})));
        assert_eq!(c.take("c1", "user:u1"), None, "reported once");
        assert_eq!(c.take("c9", "user:u1"), None);
    }

    #[test]
    fn bounded_in_count_and_age() {
        let c = CutOffs::new(Duration::from_secs(300), 3);
        for i in 0..10 {
            c.record(&format!("c{i}"), "anon".into(), "slow_consumer", i);
        }
        assert_eq!(c.len(), 3);
        assert!(c.take("c0", "anon").is_none(), "the oldest were forgotten");
        assert!(c.take("c9", "anon").is_some());
        let c = CutOffs::new(Duration::ZERO, 3);
        c.record("c1", "anon".into(), "slow_consumer", 1);
        assert!(c.take("c1", "anon").is_none(), "expired");
    }
}
