//! `fanout`: many subscribers on one collection, records created at a fixed rate; every
//! delivery is counted and timed from the writer's send to the subscriber's receipt.

use super::http::{record_body, record_body_k, HttpConn};
use super::ws::{self, Connector, Ws};
use super::{now_ns, stats, CpuMeter, Ctx};
use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode, Uri};
use livebase_protocol::{client, SubscribeMode};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// After the last write, deliveries still in flight get this long.
const GRACE: Duration = Duration::from_secs(5);
/// At most this many events per run (rate × duration), to bound the generator's memory.
const MAX_EVENTS: u64 = 5_000_000;

/// What the bench knows about event `n` (the record's `n` field).
#[derive(Default)]
struct EventSlot {
    /// When the writer sent it (ns since the bench epoch); also the record's `t`.
    sent_ns: AtomicU64,
    /// The create was answered 201.
    ok: AtomicBool,
    received: AtomicU32,
    /// The latest receipt time over all subscribers.
    last_ns: AtomicU64,
}

struct Shared {
    events: Vec<EventSlot>,
    next: AtomicU64,
    writes: AtomicU64,
    write_errors: AtomicU64,
    /// Deliveries of events the bench did not write (or with no readable `n`).
    unknown: AtomicU64,
    disconnects: AtomicU64,
    /// Per-delivery latency.
    latency: stats::PerThread,
    /// The same, per protocol of the receiver: [native, phoenix].
    by_protocol: [stats::PerThread; 2],
    /// Latency counts from `sent_ns` (an outside client's COMMIT returning), not the record's
    /// `t` (the writer's send).
    from_commit: bool,
}

impl Shared {
    /// Deliveries so far and the latest receipt time, summed over the events (the receivers
    /// touch only their event's slot, no global counter).
    fn totals(&self) -> (u64, u64) {
        self.events.iter().fold((0, 0), |(n, last), e| {
            (n + u64::from(e.received.load(Ordering::Relaxed)), last.max(e.last_ns.load(Ordering::Relaxed)))
        })
    }
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Map<String, Value>> {
    let opts = &ctx.opts;
    let addr = ctx.target.addr;
    let key = ctx.target.admin_key.clone();
    let collection = ctx.name("fanout");
    let mut admin = HttpConn::connect(addr, &key).await?;
    // With --rule, every delivery passes a per-row view rule evaluated for that subscriber.
    let rules = if opts.rule {
        json!({"list": "auth.role == \"viewer\"",
               "view": "(record.n >= 0 && auth.team == \"ops\") || record.pad == auth.sub"})
    } else {
        Value::Null
    };
    if opts.rule {
        admin.create_collection_with_rules(&collection, rules).await?;
    } else {
        admin.create_bench_collection(&collection).await?;
    }
    if ctx.target.is_in_process() {
        let need = opts.subscribers * 2 + 256;
        let have = super::raise_fd_limit() as usize;
        anyhow::ensure!(
            need <= have,
            "{} subscribers need ~{need} open files in one process (limit {have}): run the server as a child process",
            opts.subscribers
        );
    }

    let total = ((opts.rate as f64 * opts.duration).ceil() as u64).clamp(1, MAX_EVENTS);
    let shared = Arc::new(Shared {
        events: (0..total).map(|_| EventSlot::default()).collect(),
        next: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        write_errors: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        latency: stats::PerThread::new(3),
        by_protocol: [stats::PerThread::new(3), stats::PerThread::new(3)],
        from_commit: opts.sql_writer,
    });
    anyhow::ensure!(!opts.sql_writer || opts.database.is_some(), "--sql-writer needs --database");

    // Subscribers: open and subscribe them all before the first write.
    ctx.progress.phase("subscribing", opts.subscribers as u64);
    // A cluster: the subscribers spread over every node, once each node knows the collection.
    anyhow::ensure!(
        opts.nodes.is_empty() || opts.url.is_some(),
        "--node needs --url (the node that takes the writes)"
    );
    let mut addrs = vec![addr];
    for url in &opts.nodes {
        let node = super::target::loopback_addr(url).await?;
        let mut http = HttpConn::connect(node, &key).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _) = http.json(Method::GET, &format!("/api/collections/{collection}"), None).await?;
            if status.is_success() {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "node {url} did not learn the collection within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        addrs.push(node);
    }
    let connector = if opts.rule {
        let mut claims = serde_json::Map::new();
        claims.insert("team".into(), json!("ops"));
        let token =
            livebase_server::auth::sign(super::target::JWT_SECRET, "bench-user", "viewer", 3600, claims)?;
        Connector::spread(&addrs, &token)
    } else {
        Connector::spread(&addrs, &key)
    };
    let subscribe = client::subscribe(1, &collection, None, SubscribeMode::Plain, None);
    let protocol = opts.protocol;
    let queries = opts.queries;
    anyhow::ensure!(
        queries == 1 || protocol == ws::Protocol::Native,
        "--queries is measured with native subscribers"
    );
    let kind = opts.query_kind;
    let setup = |i: usize| match protocol.phoenix(i) {
        true => ws::Setup::Phoenix { collection: collection.clone() },
        false if queries > 1 => ws::Setup::Native(client::subscribe(
            1,
            &collection,
            Some(&kind.filter(i % queries)),
            SubscribeMode::Plain,
            None,
        )),
        false => ws::Setup::Native(subscribe.clone()),
    };
    let ws::Subscribed { sockets: opened, phoenix, errors: subscribe_errors, first_error } =
        ws::subscribe_all_with(&connector, opts.subscribers, setup, &ctx.progress).await?;
    let subscribers = opened.len() as u64;
    anyhow::ensure!(
        queries == 1 || subscribe_errors == 0,
        "{subscribe_errors} subscribers failed, so the deliveries due per query are unknown: {}",
        first_error.unwrap_or_default()
    );
    // Subscribers per query: query j has those i with i mod N = j.
    let q = queries as u64;
    let due = |n: u64| subscribers / q + u64::from(n % q < subscribers % q);
    let phoenix_subscribers = phoenix.iter().filter(|p| **p).count();

    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers: Vec<_> = opened
        .into_iter()
        .zip(phoenix)
        .map(|(ws, phoenix)| tokio::spawn(receive(ws, phoenix, shared.clone(), stop_rx.clone())))
        .collect();

    // Writers: enough connections that the offered rate is still offered when a loaded
    // server takes 20 ms to answer a create (each connection waits for its answer).
    let writers = opts.writers.unwrap_or((opts.rate / 50).clamp(2, 64) as usize);
    let uri: Uri = format!("/api/collections/{collection}/records").parse()?;
    let duration = opts.duration();
    let cpu = CpuMeter::start(&ctx.target);
    let start = Instant::now();
    let first_send_ns = now_ns();
    let mut writer_tasks = Vec::with_capacity(writers);
    for _ in 0..writers {
        let shared = shared.clone();
        let rate = opts.rate as f64;
        let schedule = Schedule { start, hard_end: start + duration + Duration::from_secs(1), rate, total };
        if let (true, Some(url)) = (opts.sql_writer, &opts.database) {
            let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let insert = db.prepare(&format!("INSERT INTO \"{collection}\" (n, t) VALUES ($1, $2)")).await?;
            writer_tasks.push(tokio::spawn(async move {
                while let Some((n, slot)) = schedule.next(&shared).await {
                    let t = now_ns();
                    // Autocommit: one single-row transaction; latency counts from its return.
                    match db.execute(&insert, &[&(n as i64), &(t as i64)]).await {
                        Ok(_) => {
                            slot.sent_ns.store(now_ns(), Ordering::Relaxed);
                            slot.ok.store(true, Ordering::Relaxed);
                            shared.writes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            shared.write_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
            continue;
        }
        let mut conn = HttpConn::connect(addr, &key).await?;
        let uri = uri.clone();
        writer_tasks.push(tokio::spawn(async move {
            while let Some((n, slot)) = schedule.next(&shared).await {
                let t = now_ns();
                slot.sent_ns.store(t, Ordering::Relaxed);
                let body =
                    if queries > 1 { record_body_k(n, t, n % queries as u64) } else { record_body(n, t) };
                match conn.send(Method::POST, &uri, body).await {
                    Ok((StatusCode::CREATED, _)) => {
                        slot.ok.store(true, Ordering::Relaxed);
                        shared.writes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let s = shared.clone();
    ctx.progress
        .timed(
            "fanout",
            duration,
            || format!("{} writes, {} deliveries", s.writes.load(Ordering::Relaxed), s.totals().0),
            || false,
        )
        .await;
    for t in writer_tasks {
        t.await?;
    }
    let write_end = Instant::now();
    let writes = shared.writes.load(Ordering::Relaxed);
    let expected: u64 = (0..shared.events.len() as u64)
        .filter(|n| shared.events[*n as usize].ok.load(Ordering::Relaxed))
        .map(due)
        .sum();
    // Let the deliveries in flight arrive, then stop.
    let s = shared.clone();
    ctx.progress
        .timed(
            "draining",
            GRACE,
            || format!("{}/{expected} deliveries", s.totals().0),
            || s.totals().0 >= expected,
        )
        .await;
    let mut out = Map::new();
    cpu.finish(&ctx.target, &mut out);
    let _ = stop_tx.send(true);
    for r in receivers {
        r.await?;
    }
    let hist = shared.latency.merged();
    if ctx.target.mode() == "external" {
        admin.drop_collection(&collection).await;
    }

    // Per event: who got it, and when the last one did.
    let mut lost = 0u64;
    let mut duplicates = 0u64;
    let mut last_hist = stats::histogram(3);
    for (n, slot) in shared.events.iter().enumerate() {
        let received = u64::from(slot.received.load(Ordering::Relaxed));
        if !slot.ok.load(Ordering::Relaxed) {
            continue;
        }
        let due = due(n as u64);
        lost += due.saturating_sub(received);
        duplicates += received.saturating_sub(due);
        if received >= due {
            let sent = slot.sent_ns.load(Ordering::Relaxed);
            stats::record_ns(&mut last_hist, slot.last_ns.load(Ordering::Relaxed).saturating_sub(sent));
        }
    }
    let (known, last_receipt) = shared.totals();
    let deliveries = known + shared.unknown.load(Ordering::Relaxed);
    let delivery_span = (last_receipt.saturating_sub(first_send_ns) as f64 / 1e9).max(1e-9);
    let write_span = write_end.duration_since(start).as_secs_f64().max(1e-9);

    let mut figures = Map::new();
    figures.insert("duration_s".into(), json!(super::round3(write_span)));
    figures.insert("subscribers".into(), json!(subscribers));
    figures.insert("nodes".into(), json!(addrs.len()));
    figures.insert("subscribe_errors".into(), json!(subscribe_errors));
    if let Some(e) = first_error {
        figures.insert("first_error".into(), json!(e));
    }
    figures.insert("rate".into(), json!(opts.rate));
    figures.insert("writers".into(), json!(writers));
    figures.insert("writes".into(), json!(writes));
    figures.insert("write_errors".into(), json!(shared.write_errors.load(Ordering::Relaxed)));
    figures.insert("writes_per_s".into(), json!((writes as f64 / write_span).round()));
    figures.insert("expected_deliveries".into(), json!(expected));
    figures.insert("deliveries".into(), json!(deliveries));
    figures.insert("deliveries_per_s".into(), json!((deliveries as f64 / delivery_span).round()));
    figures.insert("lost".into(), json!(lost));
    figures.insert("duplicates".into(), json!(duplicates));
    figures.insert("unknown_deliveries".into(), json!(shared.unknown.load(Ordering::Relaxed)));
    figures.insert("disconnects".into(), json!(shared.disconnects.load(Ordering::Relaxed)));
    figures.insert(
        "latency_from".into(),
        json!(if opts.sql_writer { "external_commit" } else { "writer_send" }),
    );
    figures.insert("latency_ms".into(), stats::latency_json(&hist));
    figures.insert("protocol".into(), json!(protocol.name()));
    if protocol == ws::Protocol::Both {
        let [native, phoenix] = &shared.by_protocol;
        figures.insert(
            "by_protocol".into(),
            json!({
                "native": {"subscribers": subscribers as usize - phoenix_subscribers, "latency_ms": stats::latency_json(&native.merged())},
                "phoenix": {"subscribers": phoenix_subscribers, "latency_ms": stats::latency_json(&phoenix.merged())},
            }),
        );
    }
    figures.insert("last_subscriber_latency_ms".into(), stats::latency_json(&last_hist));
    figures.insert("queries".into(), json!(queries));
    if queries > 1 {
        figures.insert("query_kind".into(), json!(format!("{kind:?}").to_lowercase()));
    }
    if let Some(cpu) = out.get("server_cpu_s").and_then(Value::as_f64) {
        // Server CPU per unit of work (the whole run: matching, encoding, sending).
        let per = |n: u64| json!(super::round3(cpu * 1e6 / n.max(1) as f64));
        figures.insert("server_cpu_us_per_delivery".into(), per(deliveries));
        figures.insert("server_cpu_us_per_event".into(), per(writes));
    }
    figures.extend(out);
    Ok(figures)
}

/// When each event is due: event n at start + n / rate (a writer that falls behind sends at
/// once), none after `hard_end`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    hard_end: Instant,
    rate: f64,
    total: u64,
}

impl Schedule {
    /// The next event to write and its slot, after waiting until it is due.
    async fn next<'s>(&self, shared: &'s Shared) -> Option<(u64, &'s EventSlot)> {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= self.total || Instant::now() > self.hard_end {
            return None;
        }
        tokio::time::sleep_until((self.start + Duration::from_secs_f64(n as f64 / self.rate)).into()).await;
        Some((n, &shared.events[n as usize]))
    }
}

/// Phoenix sockets send a heartbeat this often (the server closes silent ones).
const PHOENIX_HEARTBEAT: Duration = Duration::from_secs(20);

/// One subscriber: counts and times every change frame until told to stop.
async fn receive(mut ws: Ws, phoenix: bool, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut beat =
        tokio::time::interval_at(tokio::time::Instant::now() + PHOENIX_HEARTBEAT, PHOENIX_HEARTBEAT);
    loop {
        tokio::select! {
            _ = beat.tick(), if phoenix => {
                let _ = ws.send(Message::text(r#"[null,"hb","phoenix","heartbeat",{}]"#)).await;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    // The record's fields: in `new` (an insert's `old` is null), for Phoenix
                    // in `record`.
                    let (change, side) = match phoenix {
                        false => (ws::frame_type(text) == Some("change"), "\"new\""),
                        true => (ws::phoenix_event(text) == Some("postgres_changes"), "\"record\""),
                    };
                    if !change {
                        continue;
                    }
                    let now = now_ns();
                    let new = text.find(side).map_or(text, |at| &text[at..]);
                    let (Some(n), Some(t)) = (ws::scan_u64(new, "\"n\":"), ws::scan_u64(new, "\"t\":")) else {
                        shared.unknown.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let Some(slot) = shared.events.get(n as usize) else {
                        shared.unknown.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let from = if shared.from_commit { slot.sent_ns.load(Ordering::Relaxed) } else { t };
                    // A frame may beat its COMMIT's answer to the client: that counts as 0.
                    let took = if from == 0 { 0 } else { now.saturating_sub(from) };
                    shared.latency.record_ns(took);
                    shared.by_protocol[usize::from(phoenix)].record_ns(took);
                    slot.received.fetch_add(1, Ordering::Relaxed);
                    slot.last_ns.fetch_max(now, Ordering::Relaxed);
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    shared.disconnects.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            },
            _ = stop.changed() => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}
