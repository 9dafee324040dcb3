//! Latency histograms (HdrHistogram, microseconds) and their JSON summary.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Latencies above this (60 s) are recorded as 60 s.
const MAX_US: u64 = 60_000_000;

/// A histogram of microseconds, 1 µs to 60 s, at `sigfig` significant digits.
pub(crate) fn histogram(sigfig: u8) -> Histogram<u64> {
    // The bounds are constants that HdrHistogram accepts.
    Histogram::new_with_bounds(1, MAX_US, sigfig)
        .unwrap_or_else(|_| Histogram::new(sigfig).expect("sigfig 1..=5"))
}

/// Records a latency given in nanoseconds.
pub(crate) fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1000).clamp(1, MAX_US));
}

/// Adds `from` into `into` (same bounds, possibly different precision).
pub(crate) fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    if into.add(from).is_err() {
        for v in from.iter_recorded() {
            let _ = into.record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

/// `{"p50", "p99", "p999", "max", "mean", "count"}` in milliseconds.
pub(crate) fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    if h.is_empty() {
        return json!({"p50": null, "p99": null, "p999": null, "max": null, "mean": null, "count": 0});
    }
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": h.mean().round() / 1000.0,
        "count": h.len(),
    })
}

/// One histogram per worker thread instead of one per task: with thousands of receiving
/// tasks, per-task histograms (~20 KiB each) would not stay in cache and would cost memory
/// per connection. A task records into the histogram of the thread it runs on; the lock is
/// uncontended except while [`PerThread::merged`] runs.
pub(crate) struct PerThread {
    id: u64,
    sigfig: u8,
    parts: parking_lot::Mutex<Vec<Arc<parking_lot::Mutex<Histogram<u64>>>>>,
}

type Local = Vec<(u64, Arc<parking_lot::Mutex<Histogram<u64>>>)>;

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Vec::new()) };
}

impl PerThread {
    pub fn new(sigfig: u8) -> PerThread {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        PerThread { id: NEXT.fetch_add(1, Ordering::Relaxed), sigfig, parts: Default::default() }
    }

    /// Records a latency given in nanoseconds.
    pub fn record_ns(&self, ns: u64) {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if let Some((_, h)) = local.iter().find(|(id, _)| *id == self.id) {
                record_ns(&mut h.lock(), ns);
                return;
            }
            // First record on this thread: drop the parts of finished runs, add ours.
            local.retain(|(_, h)| Arc::strong_count(h) > 1);
            let h = Arc::new(parking_lot::Mutex::new(histogram(self.sigfig)));
            record_ns(&mut h.lock(), ns);
            self.parts.lock().push(h.clone());
            local.push((self.id, h));
        });
    }

    /// All threads' records in one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut out = histogram(self.sigfig);
        for part in self.parts.lock().iter() {
            merge(&mut out, &part.lock());
        }
        out
    }
}
