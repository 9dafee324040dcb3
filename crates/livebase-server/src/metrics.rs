//! Per-server metrics, rendered in the Prometheus / OpenMetrics text format.
//!
//! Each [`Metrics`] is its own registry, not a process-global recorder: tests start several
//! servers in one process and each must count only its own traffic.
//!
//! Recording is cheap and lock-free on the hot paths: counters and gauges are single atomics
//! (from `prometheus-client`), and histograms are [`AtomicHistogram`]s — one atomic per
//! bucket plus a CAS loop for the sum — rather than `prometheus-client`'s mutex-guarded
//! histogram. Labelled series (`route`/`method`/`status`, close `reason`) are found under a
//! read lock that writers take only the first time a label combination is seen.
//!
//! [`Metrics::render`] produces OpenMetrics text (it ends with `# EOF`, counters carry the
//! `_total` suffix on their samples); serve it with [`CONTENT_TYPE`]. Prometheus scrapes
//! that content type natively.

use parking_lot::RwLock;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency histograms: 50 µs to 5 s in 1-2.5-5 steps. The
/// targets sit at a few milliseconds, so the resolution is finest there.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

/// Upper bounds of the commit batch size histogram (requests per group commit).
const BATCH_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// The metrics of one server. Share it behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: Labeled<AtomicHistogram>,
    commit_batch_size: AtomicHistogram,
    commit_duration: AtomicHistogram,
    events_committed: Counter,
    events_delivered: Counter,
    fanout_latency: AtomicHistogram,
    connections: Gauge,
    connections_opened: Counter,
    connections_closed: Labeled<Counter>,
    slow_consumers_dropped: Counter,
    frames_refused: Labeled<Counter>,
    write_admission_waits: Labeled<Counter>,
    subscriptions: Gauge,
    presence_members: Gauge,
    queue_depth: Gauge,
    writer_backlog: Gauge,
    log_head: Gauge,
    pg_capture_connected: Gauge,
    cluster_leader: Gauge,
    cluster_feed_lag: Gauge,
    cluster_publish: AtomicHistogram,
    pg_replication_lag_bytes: Gauge,
    pg_slot_retained_bytes: Gauge,
    pg_captured_changes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            http_requests: Labeled::new(&["route", "method", "status"], || {
                AtomicHistogram::new(SECONDS_BUCKETS)
            }),
            commit_batch_size: AtomicHistogram::new(BATCH_BUCKETS),
            commit_duration: AtomicHistogram::new(SECONDS_BUCKETS),
            events_committed: Counter::default(),
            events_delivered: Counter::default(),
            fanout_latency: AtomicHistogram::new(SECONDS_BUCKETS),
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            connections_closed: Labeled::new(&["reason"], Counter::default),
            slow_consumers_dropped: Counter::default(),
            frames_refused: Labeled::new(&["reason"], Counter::default),
            write_admission_waits: Labeled::new(&["outcome"], Counter::default),
            subscriptions: Gauge::default(),
            presence_members: Gauge::default(),
            queue_depth: Gauge::default(),
            writer_backlog: Gauge::default(),
            log_head: Gauge::default(),
            pg_capture_connected: Gauge::default(),
            cluster_leader: Gauge::default(),
            cluster_feed_lag: Gauge::default(),
            cluster_publish: AtomicHistogram::new(SECONDS_BUCKETS),
            pg_replication_lag_bytes: Gauge::default(),
            pg_slot_retained_bytes: Gauge::default(),
            pg_captured_changes: Gauge::default(),
        };
        // The registry holds handles to the same atomics as the fields. Counter names get
        // their `_total` suffix from the encoder.
        let mut r = Registry::default();
        r.register(
            "livebase_http_request_duration_seconds",
            "HTTP request duration by route template, method and status",
            m.http_requests.clone(),
        );
        r.register(
            "livebase_write_admission_waits",
            "Writes held back because dispatch was behind the commits, by outcome (caught_up, gave_up)",
            m.write_admission_waits.clone(),
        );
        r.register(
            "livebase_commit_batch_size",
            "Write requests per group commit",
            m.commit_batch_size.clone(),
        );
        r.register(
            "livebase_commit_duration_seconds",
            "Duration of one group commit (transaction and fsync)",
            m.commit_duration.clone(),
        );
        r.register(
            "livebase_events_committed",
            "Change events appended to the log",
            m.events_committed.clone(),
        );
        r.register(
            "livebase_events_delivered",
            "Change frames queued to subscribers (one per subscriber per event)",
            m.events_delivered.clone(),
        );
        r.register(
            "livebase_fanout_latency_seconds",
            "Time from commit until an event's frames are queued to every matching subscriber",
            m.fanout_latency.clone(),
        );
        r.register("livebase_connections", "Open WebSocket connections", m.connections.clone());
        r.register(
            "livebase_connections_opened",
            "WebSocket connections accepted",
            m.connections_opened.clone(),
        );
        r.register(
            "livebase_connections_closed",
            "WebSocket connections closed, by reason",
            m.connections_closed.clone(),
        );
        r.register(
            "livebase_slow_consumers_dropped",
            "Connections closed because their outbound queue overflowed",
            m.slow_consumers_dropped.clone(),
        );
        r.register(
            "livebase_ws_frames_refused",
            "Client WebSocket frames refused, by reason (frame_too_large: answered with an error; message_too_big, invalid_utf8, protocol_error: the connection was closed)",
            m.frames_refused.clone(),
        );
        r.register("livebase_subscriptions", "Active subscriptions", m.subscriptions.clone());
        r.register(
            "livebase_presence_members",
            "Presence entries over all channels",
            m.presence_members.clone(),
        );
        r.register(
            "livebase_outbound_queue_depth",
            "Frames waiting in outbound queues, summed over connections (sampled)",
            m.queue_depth.clone(),
        );
        r.register(
            "livebase_writer_backlog_frames",
            "Frames the socket writers count as not yet written, the figure dispatch pauses on (sampled)",
            m.writer_backlog.clone(),
        );
        r.register(
            "livebase_log_head_seq",
            "Sequence number of the newest committed change event",
            m.log_head.clone(),
        );
        r.register(
            "livebase_pg_capture_connected",
            "PostgreSQL backend: 1 while the WAL capture is streaming from the slot (sampled)",
            m.pg_capture_connected.clone(),
        );
        r.register(
            "livebase_pg_replication_lag_bytes",
            "PostgreSQL backend: bytes of WAL the server has written past the newest logged change (sampled)",
            m.pg_replication_lag_bytes.clone(),
        );
        r.register(
            "livebase_pg_slot_retained_bytes",
            "PostgreSQL backend: bytes of WAL the server keeps for Livebase's replication slot (sampled)",
            m.pg_slot_retained_bytes.clone(),
        );
        r.register(
            "livebase_pg_captured_changes",
            "PostgreSQL backend: change events captured from the WAL since start (sampled)",
            m.pg_captured_changes.clone(),
        );
        r.register(
            "livebase_cluster_leader",
            "Cluster: 1 while this node holds the capture lease and captures for the cluster",
            m.cluster_leader.clone(),
        );
        r.register(
            "livebase_cluster_feed_lag_events",
            "Cluster: events logged in the database that this node's feed has not applied yet (sampled)",
            m.cluster_feed_lag.clone(),
        );
        r.register(
            "livebase_cluster_publish_seconds",
            "Cluster: time to append one message to the shared log's JetStream stream (leader only)",
            m.cluster_publish.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The whole registry as OpenMetrics text (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// One HTTP request: `route` is the route template (`/api/collections/{name}/records`),
    /// never the raw path, so the number of series stays bounded.
    pub fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = StatusText::new(status);
        self.http_requests.with(&[route, method, status.as_str()], |h| h.observe(seconds));
    }

    /// One group commit of `requests` write requests that took `seconds`.
    pub fn commit_batch(&self, requests: usize, seconds: f64) {
        self.commit_batch_size.observe(requests as f64);
        self.commit_duration.observe(seconds);
    }

    pub fn events_committed(&self, n: u64) {
        self.events_committed.inc_by(n);
    }

    pub fn events_delivered(&self, n: u64) {
        self.events_delivered.inc_by(n);
    }

    /// Commit until the event's frames are queued to every matching subscriber.
    pub fn fanout_latency(&self, seconds: f64) {
        self.fanout_latency.observe(seconds);
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
        self.connections_opened.inc();
    }

    /// `reason`: a short fixed word (`client`, `slow_consumer`, `heartbeat_timeout`,
    /// `shutdown`, ...), never free text.
    pub fn connection_closed(&self, reason: &str) {
        self.connections.dec();
        self.connections_closed.with(&[reason], |c| {
            c.inc();
        });
    }

    pub fn slow_consumer_dropped(&self) {
        self.slow_consumers_dropped.inc();
    }

    /// A write waited for dispatch to catch up (`caught_up`), or waited its longest and went on.
    pub fn write_admission(&self, caught_up: bool) {
        let outcome = if caught_up { "caught_up" } else { "gave_up" };
        self.write_admission_waits.with(&[outcome], |c| {
            c.inc();
        });
    }

    /// A client frame refused: `reason` is a short fixed word (`frame_too_large`,
    /// `message_too_big`, `invalid_utf8`, `protocol_error`), never free text.
    pub fn frame_refused(&self, reason: &str) {
        self.frames_refused.with(&[reason], |c| {
            c.inc();
        });
    }

    pub fn set_subscriptions(&self, n: i64) {
        self.subscriptions.set(n);
    }

    pub fn set_presence_members(&self, n: i64) {
        self.presence_members.set(n);
    }

    pub fn set_queue_depth(&self, n: i64) {
        self.queue_depth.set(n);
    }

    pub fn set_writer_backlog(&self, n: usize) {
        self.writer_backlog.set(n as i64);
    }

    /// The PostgreSQL capture's gauges (see `PgStore::capture_status`).
    pub fn set_pg_capture(&self, connected: bool, lag_bytes: u64, captured: u64, retained: Option<i64>) {
        self.pg_capture_connected.set(i64::from(connected));
        self.pg_replication_lag_bytes.set(lag_bytes as i64);
        self.pg_captured_changes.set(captured as i64);
        if let Some(r) = retained {
            self.pg_slot_retained_bytes.set(r);
        }
    }

    pub fn set_cluster_leader(&self, leader: bool) {
        self.cluster_leader.set(i64::from(leader));
    }

    pub fn set_cluster_feed_lag(&self, events: u64) {
        self.cluster_feed_lag.set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    pub fn cluster_publish(&self, seconds: f64) {
        self.cluster_publish.observe(seconds);
    }

    pub fn set_log_head(&self, seq: u64) {
        self.log_head.set(i64::try_from(seq).unwrap_or(i64::MAX));
    }
}

/// The figures behind the admin status endpoint (`GET /api/_status`), read from the same
/// atomics the registry renders. Counters are totals since start; a reader derives rates from
/// two readings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub events_committed: u64,
    pub events_delivered: u64,
    pub connections: i64,
    pub connections_opened: u64,
    pub subscriptions: i64,
    pub presence_members: i64,
    pub queue_depth: i64,
    pub slow_consumers_dropped: u64,
    pub log_head: i64,
    pub commit_seconds: HistogramFigures,
    pub fanout_seconds: HistogramFigures,
}

/// A histogram's bucket upper bounds and (non-cumulative) counts, the last bound being
/// `+Inf` (serialized as `null`), plus its sum.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistogramFigures {
    pub bounds: Vec<Option<f64>>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Metrics {
    /// A reading of every figure the status endpoint shows.
    pub fn figures(&self) -> Figures {
        Figures {
            events_committed: self.events_committed.get(),
            events_delivered: self.events_delivered.get(),
            connections: self.connections.get(),
            connections_opened: self.connections_opened.get(),
            subscriptions: self.subscriptions.get(),
            presence_members: self.presence_members.get(),
            queue_depth: self.queue_depth.get(),
            slow_consumers_dropped: self.slow_consumers_dropped.get(),
            log_head: self.log_head.get(),
            commit_seconds: self.commit_duration.figures(),
            fanout_seconds: self.fanout_latency.figures(),
        }
    }
}

/// A status code as text without allocating.
struct StatusText {
    digits: [u8; 5],
    start: usize,
}

impl StatusText {
    fn new(mut v: u16) -> StatusText {
        let mut digits = [b'0'; 5];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                return StatusText { digits, start };
            }
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.digits[self.start..]).unwrap_or("0")
    }
}

// ---------- a lock-free histogram ----------

/// A classic Prometheus histogram on atomics: `observe` is a bucket search over a short
/// slice, one `fetch_add` and a CAS loop on the sum. The count is derived from the buckets
/// at render time, so `_count` always equals the `+Inf` bucket.
#[derive(Clone, Debug)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One more than `bounds`: the last is `+Inf`. Not cumulative.
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            inner: Arc::new(HistogramInner {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_bits: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.inner.bounds.iter().position(|b| v <= *b).unwrap_or(self.inner.bounds.len());
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.sum_bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observed values.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.inner.sum_bits.load(Ordering::Relaxed))
    }

    /// Bounds, counts per bucket and sum, for readers other than the registry.
    pub fn figures(&self) -> HistogramFigures {
        let counts: Vec<u64> = self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        HistogramFigures {
            bounds: self.inner.bounds.iter().map(|b| Some(*b)).chain(std::iter::once(None)).collect(),
            count: counts.iter().sum(),
            counts,
            sum: self.sum(),
        }
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

// ---------- labelled series ----------

/// A family of metrics keyed by label values. Lookup hashes the borrowed values and takes a
/// read lock (no allocation); the write lock is taken only to add a new combination.
#[derive(Clone)]
struct Labeled<M> {
    inner: Arc<LabeledInner<M>>,
}

/// Series that share a label hash: their label values and metric.
type Series<M> = Vec<(Vec<String>, M)>;

struct LabeledInner<M> {
    names: &'static [&'static str],
    make: fn() -> M,
    /// Label values hash → the series with that hash (their values, the metric).
    series: RwLock<HashMap<u64, Series<M>>>,
}

impl<M> std::fmt::Debug for Labeled<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Labeled").field("names", &self.inner.names).finish_non_exhaustive()
    }
}

fn label_hash(values: &[&str]) -> u64 {
    // SipHash with fixed keys: the inputs are our own route templates and reasons.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    for v in values {
        v.hash(&mut h);
    }
    h.finish()
}

impl<M> Labeled<M> {
    fn new(names: &'static [&'static str], make: fn() -> M) -> Labeled<M> {
        Labeled { inner: Arc::new(LabeledInner { names, make, series: RwLock::new(HashMap::new()) }) }
    }

    /// Runs `f` on the series for `values` (one per label name), creating it if needed.
    fn with<R>(&self, values: &[&str], f: impl FnOnce(&M) -> R) -> R {
        debug_assert_eq!(values.len(), self.inner.names.len());
        let key = label_hash(values);
        let same = |stored: &Vec<String>| stored.iter().map(String::as_str).eq(values.iter().copied());
        {
            let map = self.inner.series.read();
            if let Some((_, m)) = map.get(&key).and_then(|v| v.iter().find(|(l, _)| same(l))) {
                return f(m);
            }
        }
        let mut map = self.inner.series.write();
        let bucket = map.entry(key).or_default();
        let i = match bucket.iter().position(|(l, _)| same(l)) {
            Some(i) => i,
            None => {
                let labels = values.iter().map(|v| v.to_string()).collect();
                bucket.push((labels, (self.inner.make)()));
                bucket.len() - 1
            }
        };
        f(&bucket[i].1)
    }
}

impl<M: EncodeMetric + TypedMetric> TypedMetric for Labeled<M> {
    const TYPE: MetricType = M::TYPE;
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Labeled<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let map = self.inner.series.read();
        let mut all: Vec<&(Vec<String>, M)> = map.values().flatten().collect();
        // Stable output: series sorted by label values.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        for (values, m) in all {
            let labels: Vec<(&str, &str)> =
                self.inner.names.iter().copied().zip(values.iter().map(String::as_str)).collect();
            let family = encoder.encode_family(&labels)?;
            m.encode(family)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}
