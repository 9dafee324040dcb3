//! Latency histograms (HdrHistogram, microseconds) and their JSON summary.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies above this (60 s) are recorded as 60 s.
const MAX_US: u64 = 60_000_000;

/// A histogram of microseconds, 1 µs to 60 s, at `sigfig` significant digits (2 for the many
/// per-subscriber histograms of `fanout`: ~20 KiB each; 3 elsewhere).
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
