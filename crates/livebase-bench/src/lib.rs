//! `livebase bench`: the project's own load generator (the `livebase-bench` binary, which
//! `livebase bench …` runs; see `main.rs`).
//!
//! It drives either a server it starts itself — by default a **child process** (the `livebase`
//! binary's `serve` on `127.0.0.1:0` with a temporary data dir), so the server's memory and
//! CPU are measured alone; `--in-process` runs it inside the generator instead — or the
//! server given by `--url` (with `--admin-key`). It only ever talks to loopback addresses,
//! and every phase is bounded in time (`--duration` plus fixed grace periods and a hard cap).
//! Realtime frames are built and read with `livebase-protocol`, the definitions the server
//! and the clients share.
//!
//! The generator shares the machine's cores with the server, so it is kept cheap: raw
//! `hyper` HTTP/1.1 connections with pre-serialized bodies, WebSocket clients with 4 KiB read
//! buffers and no write buffer, change frames scanned for two integers instead of parsed.
//! WebSocket connections are spread over the source addresses `127.0.0.1`–`127.0.0.16` so more
//! than one ephemeral port range (~28k) of connections is possible.
//!
//! # Scenarios
//! - `writes`: `--clients` keep-alive HTTP connections create records as fast as the server
//!   answers, for `--duration` seconds.
//! - `fanout`: `--subscribers` WebSocket connections (one subscription each) on one
//!   collection, while records are created at `--rate` writes/s for `--duration` seconds.
//!   Each record carries its send time (`t`, nanoseconds since the generator's start), so
//!   latency is **from the writer's send to the subscriber's receipt** (it includes the
//!   HTTP request and the commit). With `--sql-writer` (PostgreSQL, `--database`) the writes
//!   are single-row INSERT transactions of an outside client, and latency is **from its
//!   COMMIT returning to the receipt** of the change the server captured from the WAL
//!   (`latency_from`: `"external_commit"`).
//! - `connections`: `--connections` idle WebSocket connections (default 15,000), held for
//!   `--duration` seconds, then each is checked with a `ping` → `pong`.
//! - `catchup`: a subscriber notes its `seq`, disconnects, `--missed` changes are written
//!   (batch endpoint), it resubscribes with `since` and times the catch-up.
//! - `aggregates`: `--aggregates` distinct live aggregates (count, sum, max over filters that
//!   all match) with `--subscribers` spread over them, records created at `--rate`; each
//!   write moves every aggregate. Keys: `aggregates`, `subscribers`, `writes`, `writes_per_s`,
//!   `expected_updates` (`writes × subscribers`), `updates` (aggregate frames received after
//!   the first), `lost`, `latency_ms` (send of the newest counted record → receipt),
//!   `server_cpu_us_per_change` (server CPU per write, all aggregates and frames included),
//!   `server_cpu_us_per_update`.
//! - `ceiling`: `fanout` (same flags, same keys) against a minimal broadcaster this binary
//!   runs as its child server (`ceiling.rs`): no store, hub or rules, one pre-encoded frame
//!   per event written to every socket. The reference fan-out figures are compared with.
//! - `curve`: `fanout` and `ceiling` back to back at each of `--points` subscriber counts,
//!   the rate chosen so every point offers `--deliveries` per second, `--repeat` runs per
//!   point (medians), and the disk's fdatasync measured in the same run (see `curve.rs`).
//! - `presence`: `--connections` members (default 200) join one channel; one after the
//!   other each tracks (meta holds its send time) and later leaves; every other member's
//!   `presence_diff` receipt is timed.
//!
//! # JSON output (`--json`: one object on stdout; stable keys)
//! Latency objects (`*_ms`) are `{"p50", "p99", "p999", "max", "mean", "count"}` in
//! milliseconds (`count`: samples). Keys present in every scenario:
//! - `scenario`: `writes` | `fanout` | `connections` | `catchup` | `presence`.
//! - `server`: `child` (started by the bench as a process), `in_process`, or `external`
//!   (`--url`).
//! - `duration_s`: length of the measured phase, seconds.
//! - `server_cpu_s`, `server_cpu_percent`: user+system CPU of the server process during the
//!   measured phase, and that as a percentage of one core (200 = both cores busy). Only when
//!   `server` is `child`.
//! - `bench_cpu_s`, `bench_cpu_percent`: the same for the bench process (with `in_process`
//!   it includes the server). Shows whether the generator, not the server, was the limit.
//! - `server_rss_bytes`: the server's resident memory at the end (`child`; `in_process`: the
//!   whole process, generator included).
//! - `first_error` (only when something failed): the first error, for the reader.
//!
//! Per scenario:
//! - `writes`: `clients`, `creates` (201 responses), `creates_per_s`, `errors` (other
//!   statuses and transport errors), `latency_ms` (request send → full response),
//!   `records` (records in the collection afterwards, counted by the server; equals `creates`).
//! - `fanout`: `subscribers` (subscribed connections), `subscribe_errors`, `rate` (target
//!   writes/s; when the machine cannot keep up, `writes_per_s` is lower), `writes`
//!   (created records), `write_errors`, `writes_per_s`, `expected_deliveries`
//!   (`writes × subscribers`), `deliveries` (change frames received), `deliveries_per_s`
//!   (deliveries / time from first send to last receipt), `lost` (expected deliveries not
//!   received by the end of a 5 s grace period), `duplicates`, `unknown_deliveries` (change
//!   frames for records the bench did not write), `disconnects` (subscribers the server
//!   closed), `latency_ms` (per delivery), `latency_from`: `"writer_send"`,
//!   `last_subscriber_latency_ms` (per event: until the last subscriber received it; events
//!   some subscriber never received are left out), `queries` (distinct queries, `--queries`),
//!   `query_kind` (with more than one), `server_cpu_us_per_delivery` and
//!   `server_cpu_us_per_event` (server CPU over the run per delivery and per write; `child`
//!   only).
//! - `connections`: `connections` (asked), `open` (handshakes done), `connect_errors`,
//!   `connect_s` (time to open all), `alive` (answered a ping after the hold), `lost`
//!   (`connections − alive`), `rss_before_bytes`, `rss_after_bytes`, `bytes_per_connection`
//!   (`(after − before) / open`), `rss_includes_client` (true when in-process).
//! - `catchup`: `missed`, `received`, `lost`, `duplicates`, `out_of_order`, `catchup_ms`
//!   (reconnect start → last missed change received; includes the TCP and WebSocket
//!   handshakes), `deliveries_per_s` (`received / catchup time`), `write_s` (time to write the
//!   missed changes).
//! - `presence`: `members`, `expected_joins` (`members × (members − 1)`), `joins`,
//!   `expected_leaves` (members leave in turn, each seen by those still there:
//!   `members × (members − 1) / 2`), `leaves`, `lost` (expected diff entries not received
//!   within 10 s), `frame_errors` (unparsable frames and `error` replies), `latency_ms` (a
//!   member's `presence_track` send → another member's `presence_diff` receipt),
//!   `leave_latency_ms` (`leave` send → diff).

mod aggregates;
mod catchup;
pub mod ceiling;
mod connections;
mod curve;
mod fanout;
mod http;
mod presence;
mod progress;
mod stats;
mod target;
mod writes;
mod ws;

pub use ws::Protocol;

use anyhow::Context;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use target::raise_fd_limit;

/// One of the bench's workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Writes,
    Fanout,
    Connections,
    Catchup,
    Presence,
    Aggregates,
    /// `fanout` against a minimal broadcaster instead of Livebase (see `ceiling.rs`).
    Ceiling,
    /// `fanout` and `ceiling` at several subscriber counts (see `curve.rs`).
    Curve,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Writes => "writes",
            Scenario::Fanout => "fanout",
            Scenario::Connections => "connections",
            Scenario::Catchup => "catchup",
            Scenario::Presence => "presence",
            Scenario::Aggregates => "aggregates",
            Scenario::Ceiling => "ceiling",
            Scenario::Curve => "curve",
        }
    }
}

/// How the `--queries` of `fanout` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryKind {
    Eq,
    Range,
}

impl QueryKind {
    /// The filter of query `j`.
    fn filter(self, j: usize) -> String {
        match self {
            QueryKind::Eq => format!("k=eq.{j}"),
            QueryKind::Range => format!("k=gte.{j}&k=lt.{}", j + 1),
        }
    }
}

/// Flags of `livebase bench <scenario>`; [`Default`] gives the same values as the command
/// line, except that the server runs in-process unless [`BenchOptions::server_exe`] is set.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// A running server to drive (loopback only), e.g. `http://127.0.0.1:8080`. Without it
    /// the bench starts its own server.
    #[arg(long)]
    pub url: Option<String>,
    /// fanout: further nodes of a cluster (with `--url`, which receives the writes): the
    /// subscribers are spread over `--url` and these, in turn. Repeat for each node.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// The admin key of the server given by `--url`.
    #[arg(long, env = "LIVEBASE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Length of the measured phase, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Concurrent HTTP clients (`writes`).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// WebSocket subscribers, one connection each (`fanout`).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Writes per second (`fanout`).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Connections (`connections`, default 15000) or members (`presence`, default 200).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Distinct live aggregates the subscribers are spread over (`aggregates`).
    #[arg(long, default_value_t = 100)]
    pub aggregates: usize,
    /// Changes written while the subscriber is away (`catchup`).
    #[arg(long, default_value_t = 10_000)]
    pub missed: u64,
    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// fanout: subscribers are users (JWTs) and the collection has a per-row view rule, so
    /// every delivery is decided by evaluating the rule for that subscriber.
    #[arg(long)]
    pub rule: bool,
    /// Run the self-started server inside the bench process instead of as a child process
    /// (its memory and CPU then include the generator's).
    #[arg(long)]
    pub in_process: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// A PostgreSQL database for the server the bench starts (`--database` of `livebase
    /// serve`); it needs `wal_level = logical`. Each run creates its own collection there.
    #[arg(long)]
    pub database: Option<String>,
    /// fanout: write through SQL instead of the API. An external PostgreSQL client (needs
    /// `--database`) commits single-row INSERT transactions at `--rate`; latency is timed from
    /// its COMMIT returning to each subscriber's receipt of the captured change.
    #[arg(long)]
    pub sql_writer: bool,
    /// fanout: the wire protocol of the subscribers; `both` splits them half and half, so
    /// the two are measured on the same events in the same run.
    #[arg(long, value_enum, default_value_t = ws::Protocol::Native)]
    pub protocol: ws::Protocol,
    /// fanout: distinct queries the subscribers are spread over: subscriber i takes query
    /// i mod N and record n carries `k = n mod N`, so each record matches exactly one query.
    /// 1 (the default): every subscriber on the whole collection.
    #[arg(long, default_value_t = 1)]
    pub queries: usize,
    /// fanout with `--queries`: `eq` (`k=eq.<j>`, found through the equality index) or
    /// `range` (`k=gte.<j>&k=lt.<j+1>`, checked on every event).
    #[arg(long, value_enum, default_value_t = QueryKind::Eq)]
    pub query_kind: QueryKind,
    /// fanout, ceiling, curve: the writers' connections, each sending its next create when the
    /// previous one is answered (or later, when it is not due yet). Default: one per 50
    /// writes/s offered, 2 to 64 (the rate holds while answers take up to 20 ms).
    #[arg(long)]
    pub writers: Option<usize>,
    /// curve: the subscriber counts, one point each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100, 1000, 5000, 10000])]
    pub points: Vec<usize>,
    /// curve: deliveries/s offered at every point (the write rate is this / subscribers), so
    /// the points are comparable; a large value saturates every point.
    #[arg(long, default_value_t = 100_000)]
    pub deliveries: u64,
    /// curve: runs per point, Livebase and the ceiling alternating; each figure is the median
    /// over the runs (one sitting's drift and one unlucky tail weigh less).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// curve: the broadcaster executable for the ceiling runs (`livebase-bench` passes itself).
    #[arg(long, hide = true)]
    pub ceiling_exe: Option<PathBuf>,
    /// The executable to start as the server child process (`<exe> serve ...`); `livebase
    /// bench` passes itself. Default: the `livebase` binary next to this one. In the library,
    /// `None` runs a self-started server in-process.
    #[arg(long, hide = true)]
    pub server_exe: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            url: None,
            admin_key: None,
            duration: 10.0,
            clients: 16,
            subscribers: 1000,
            rate: 1000,
            connections: None,
            missed: 10_000,
            aggregates: 100,
            json: false,
            rule: false,
            in_process: false,
            quiet: false,
            database: None,
            nodes: Vec::new(),
            sql_writer: false,
            protocol: ws::Protocol::Native,
            queries: 1,
            query_kind: QueryKind::Eq,
            points: vec![100, 1000, 5000, 10000],
            deliveries: 100_000,
            repeat: 1,
            writers: None,
            ceiling_exe: None,
            server_exe: None,
        }
    }
}

/// Hard caps on the inputs, so a typo cannot start an unbounded run.
const MAX_DURATION_S: f64 = 3600.0;
const MAX_CLIENTS: usize = 4096;
const MAX_SOCKETS: usize = 500_000;
pub(crate) const MAX_RATE: u64 = 1_000_000;
const MAX_MISSED: u64 = 10_000_000;
const MAX_REPEAT: usize = 20;
/// Beyond the measured phase, no run takes longer than this (setup, grace periods, checks).
const HARD_CAP_EXTRA: Duration = Duration::from_secs(300);

impl BenchOptions {
    fn checked(mut self) -> anyhow::Result<BenchOptions> {
        anyhow::ensure!(
            self.duration.is_finite() && self.duration > 0.0 && self.duration <= MAX_DURATION_S,
            "--duration must be between 0 and {MAX_DURATION_S} seconds"
        );
        anyhow::ensure!((1..=MAX_CLIENTS).contains(&self.clients), "--clients must be 1..={MAX_CLIENTS}");
        anyhow::ensure!(
            (1..=MAX_SOCKETS).contains(&self.subscribers),
            "--subscribers must be 1..={MAX_SOCKETS}"
        );
        anyhow::ensure!((1..=MAX_RATE).contains(&self.rate), "--rate must be 1..={MAX_RATE}");
        if let Some(c) = self.connections {
            anyhow::ensure!((1..=MAX_SOCKETS).contains(&c), "--connections must be 1..={MAX_SOCKETS}");
        }
        anyhow::ensure!((1..=MAX_MISSED).contains(&self.missed), "--missed must be 1..={MAX_MISSED}");
        anyhow::ensure!((1..=MAX_SOCKETS).contains(&self.queries), "--queries must be 1..={MAX_SOCKETS}");
        anyhow::ensure!(
            !self.points.is_empty() && self.points.iter().all(|p| (1..=MAX_SOCKETS).contains(p)),
            "--points must be subscriber counts in 1..={MAX_SOCKETS}"
        );
        anyhow::ensure!(
            (1..=MAX_RATE * 100).contains(&self.deliveries),
            "--deliveries must be 1..={}",
            MAX_RATE * 100
        );
        if let Some(w) = self.writers {
            anyhow::ensure!((1..=MAX_CLIENTS).contains(&w), "--writers must be 1..={MAX_CLIENTS}");
        }
        anyhow::ensure!((1..=MAX_REPEAT).contains(&self.repeat), "--repeat must be 1..={MAX_REPEAT}");
        if self.url.is_some() {
            anyhow::ensure!(self.admin_key.is_some(), "--url needs --admin-key (or LIVEBASE_ADMIN_KEY)");
        }
        if self.in_process {
            self.server_exe = None;
        }
        Ok(self)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }
}

/// The instant all bench timestamps count from: record fields `t` and receipt times are
/// nanoseconds since it, so send and receipt times compare within the one generator process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// What every scenario gets: the server, the options, the progress bar, a unique name part.
struct Ctx {
    target: target::Target,
    opts: BenchOptions,
    progress: progress::Progress,
    suffix: String,
}

impl Ctx {
    /// A collection or channel name unique to this run (`bench_writes_3fa9c2`).
    fn name(&self, what: &str) -> String {
        format!("bench_{what}_{}", self.suffix)
    }
}

/// Runs one scenario and returns its figures (see the module docs for the keys).
pub async fn run(scenario: Scenario, opts: BenchOptions) -> anyhow::Result<Value> {
    let opts = opts.checked()?;
    if scenario == Scenario::Curve {
        return curve::run(opts).await;
    }
    anyhow::ensure!(
        opts.queries == 1 || scenario == Scenario::Fanout,
        "--queries is a fanout option (the ceiling broadcasts every event to every subscriber)"
    );
    if scenario == Scenario::Ceiling {
        anyhow::ensure!(
            opts.url.is_none() && opts.server_exe.is_some() && opts.database.is_none(),
            "ceiling starts its own broadcaster as a child process (no --url, --in-process or --database)"
        );
        anyhow::ensure!(
            !opts.rule && opts.protocol == ws::Protocol::Native,
            "ceiling has no rules and speaks the native protocol only"
        );
    }
    anyhow::ensure!(
        opts.nodes.is_empty() || (scenario == Scenario::Fanout && opts.url.is_some()),
        "--node spreads fanout's subscribers over a cluster: only with fanout and --url"
    );
    epoch();
    raise_fd_limit();
    let progress = progress::Progress::new(!opts.quiet);
    progress.phase("starting the server", 1);
    let target = target::Target::start(&opts).await.context("cannot start or reach the server")?;
    let hard_cap = opts.duration() + HARD_CAP_EXTRA;
    let ctx = Ctx { target, opts, progress, suffix: hex::encode(rand::random::<[u8; 3]>()) };
    let result = tokio::time::timeout(hard_cap, async {
        match scenario {
            Scenario::Writes => writes::run(&ctx).await,
            Scenario::Fanout | Scenario::Ceiling => fanout::run(&ctx).await,
            Scenario::Connections => connections::run(&ctx).await,
            Scenario::Catchup => catchup::run(&ctx).await,
            Scenario::Presence => presence::run(&ctx).await,
            Scenario::Aggregates => aggregates::run(&ctx).await,
            Scenario::Curve => Err(anyhow::anyhow!("curve runs its points itself")),
        }
    })
    .await;
    ctx.progress.finish();
    let rss = ctx.target.rss_bytes();
    let mode = ctx.target.mode();
    ctx.target.stop().await;
    let figures = match result {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the {} scenario did not finish within {hard_cap:?}", scenario.name()),
    };
    let mut out = Map::new();
    out.insert("scenario".into(), json!(scenario.name()));
    out.insert("server".into(), json!(mode));
    out.extend(figures);
    if let Some(rss) = rss {
        out.insert("server_rss_bytes".into(), json!(rss));
    }
    Ok(Value::Object(out))
}

/// CPU time of the server (when it is a child process) and of the bench itself over a phase.
struct CpuMeter {
    start: Instant,
    server: Option<f64>,
    bench: Option<f64>,
}

impl CpuMeter {
    fn start(target: &target::Target) -> CpuMeter {
        CpuMeter {
            start: Instant::now(),
            server: target.child_cpu_seconds(),
            bench: target::cpu_seconds("self"),
        }
    }

    /// Adds `server_cpu_s` and `server_cpu_percent` when the server is a child process, and
    /// `bench_cpu_s` and `bench_cpu_percent` (the generator, plus the server when in-process).
    fn finish(self, target: &target::Target, out: &mut Map<String, Value>) {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let mut put = |what: &str, c0: Option<f64>, c1: Option<f64>| {
            if let (Some(c0), Some(c1)) = (c0, c1) {
                out.insert(format!("{what}_cpu_s"), json!(round3(c1 - c0)));
                out.insert(format!("{what}_cpu_percent"), json!(round3((c1 - c0) / wall * 100.0)));
            }
        };
        put("server", self.server, target.child_cpu_seconds());
        put("bench", self.bench, target::cpu_seconds("self"));
    }
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The figures as a two-column table (nested objects flattened to `a.b`).
pub fn render_table(v: &Value) -> String {
    fn walk(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, rows);
                }
            }
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(0.0);
                let s = if f.abs() >= 1000.0 { format!("{f:.0}") } else { format!("{f:.3}") };
                rows.push((prefix.to_string(), s));
            }
            Value::String(s) => rows.push((prefix.to_string(), s.clone())),
            other => rows.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut rows = Vec::new();
    walk("", v, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("  {k:<width$}  {v}\n"));
    }
    out
}
