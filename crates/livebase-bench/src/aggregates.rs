//! `aggregates`: `--aggregates` distinct live aggregates over one collection, `--subscribers`
//! connections spread over them, records created at `--rate` for `--duration` seconds. Every
//! aggregate covers every record (distinct filters that all match), so each write moves all of
//! them: per write the server folds it into each aggregate once and sends one frame per
//! subscriber. Update latency is from the send of the newest record an aggregate counts
//! (`max(t)` of the frame) to the subscriber's receipt.

use super::http::{record_body, HttpConn};
use super::ws::{self, Connector, Ws};
use super::{now_ns, stats, CpuMeter, Ctx};
use futures_util::StreamExt;
use hyper::{Method, StatusCode, Uri};
use livebase_protocol::{num_ref, AggregateReq, ClientFrame, Subscribe};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const GRACE: Duration = Duration::from_secs(5);
const MAX_EVENTS: u64 = 5_000_000;

#[derive(Default)]
struct Shared {
    next: AtomicU64,
    writes: AtomicU64,
    write_errors: AtomicU64,
    /// Aggregate frames after the first (`full: false`) received.
    updates: AtomicU64,
    disconnects: AtomicU64,
}

fn subscribe_frame(collection: &str, k: usize) -> ClientFrame {
    ClientFrame::Subscribe(Subscribe {
        reference: num_ref(1),
        collection: collection.to_string(),
        // Distinct queries that all match every record the bench writes (n >= 0).
        filter: Some(format!("n=gt.-{}", k + 1)),
        since: None,
        snapshot: false,
        epoch: None,
        aggregate: Some(AggregateReq {
            group: Vec::new(),
            fns: vec!["count".into(), "sum(n)".into(), "max(t)".into()],
        }),
    })
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Map<String, Value>> {
    let opts = &ctx.opts;
    let addr = ctx.target.addr;
    let key = ctx.target.admin_key.clone();
    let collection = ctx.name("aggregates");
    let mut admin = HttpConn::connect(addr, &key).await?;
    admin.create_bench_collection(&collection).await?;
    let aggregates = opts.aggregates.clamp(1, opts.subscribers);
    let total = ((opts.rate as f64 * opts.duration).ceil() as u64).clamp(1, MAX_EVENTS);
    let shared = Arc::new(Shared::default());
    let latency = Arc::new(stats::PerThread::new(3));

    ctx.progress.phase("subscribing", opts.subscribers as u64);
    let connector = Connector::new(addr, &key);
    let ws::Subscribed { sockets: opened, errors: subscribe_errors, first_error, .. } = ws::subscribe_all(
        &connector,
        opts.subscribers,
        |i| subscribe_frame(&collection, i % aggregates),
        &ctx.progress,
    )
    .await?;
    let subscribers = opened.len() as u64;

    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers: Vec<_> = opened
        .into_iter()
        .map(|ws| tokio::spawn(receive(ws, shared.clone(), latency.clone(), stop_rx.clone())))
        .collect();

    let writers = (opts.rate / 250).clamp(2, 16) as usize;
    let uri: Uri = format!("/api/collections/{collection}/records").parse()?;
    let duration = opts.duration();
    let cpu = CpuMeter::start(&ctx.target);
    let start = Instant::now();
    let mut writer_tasks = Vec::with_capacity(writers);
    for _ in 0..writers {
        let mut conn = HttpConn::connect(addr, &key).await?;
        let (shared, uri, rate) = (shared.clone(), uri.clone(), opts.rate as f64);
        writer_tasks.push(tokio::spawn(async move {
            let hard_end = start + duration + Duration::from_secs(1);
            loop {
                let n = shared.next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() > hard_end {
                    break;
                }
                tokio::time::sleep_until((start + Duration::from_secs_f64(n as f64 / rate)).into()).await;
                match conn.send(Method::POST, &uri, record_body(n, now_ns())).await {
                    Ok((StatusCode::CREATED, _)) => shared.writes.fetch_add(1, Ordering::Relaxed),
                    _ => shared.write_errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let s = shared.clone();
    ctx.progress
        .timed(
            "aggregates",
            duration,
            || {
                format!(
                    "{} writes, {} updates",
                    s.writes.load(Ordering::Relaxed),
                    s.updates.load(Ordering::Relaxed)
                )
            },
            || false,
        )
        .await;
    for t in writer_tasks {
        t.await?;
    }
    let write_span = start.elapsed().as_secs_f64().max(1e-9);
    let writes = shared.writes.load(Ordering::Relaxed);
    let expected = writes * subscribers;
    let s = shared.clone();
    ctx.progress
        .timed(
            "draining",
            GRACE,
            || format!("{}/{expected} updates", s.updates.load(Ordering::Relaxed)),
            || s.updates.load(Ordering::Relaxed) >= expected,
        )
        .await;
    let mut out = Map::new();
    cpu.finish(&ctx.target, &mut out);
    let _ = stop_tx.send(true);
    for r in receivers {
        r.await?;
    }
    if ctx.target.mode() == "external" {
        admin.drop_collection(&collection).await;
    }
    let updates = shared.updates.load(Ordering::Relaxed);
    let mut figures = Map::new();
    figures.insert("duration_s".into(), json!(super::round3(write_span)));
    figures.insert("aggregates".into(), json!(aggregates));
    figures.insert("subscribers".into(), json!(subscribers));
    figures.insert("subscribe_errors".into(), json!(subscribe_errors));
    if let Some(e) = first_error {
        figures.insert("first_error".into(), json!(e));
    }
    figures.insert("rate".into(), json!(opts.rate));
    figures.insert("writes".into(), json!(writes));
    figures.insert("write_errors".into(), json!(shared.write_errors.load(Ordering::Relaxed)));
    figures.insert("writes_per_s".into(), json!((writes as f64 / write_span).round()));
    figures.insert("expected_updates".into(), json!(expected));
    figures.insert("updates".into(), json!(updates));
    figures.insert("lost".into(), json!(expected.saturating_sub(updates)));
    figures.insert("disconnects".into(), json!(shared.disconnects.load(Ordering::Relaxed)));
    figures.insert("latency_from".into(), json!("writer_send_of_max_t"));
    figures.insert("latency_ms".into(), stats::latency_json(&latency.merged()));
    if let (Some(cpu_s), true) = (out.get("server_cpu_s").and_then(Value::as_f64), writes > 0) {
        figures.insert("server_cpu_us_per_change".into(), json!(super::round3(cpu_s * 1e6 / writes as f64)));
        figures.insert(
            "server_cpu_us_per_update".into(),
            json!(super::round3(cpu_s * 1e6 / updates.max(1) as f64)),
        );
    }
    figures.extend(out);
    Ok(figures)
}

/// One subscriber: counts and times every aggregate update until told to stop.
async fn receive(
    mut ws: Ws,
    shared: Arc<Shared>,
    latency: Arc<stats::PerThread>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if ws::frame_type(text) != Some("aggregate") || text.contains("\"full\":true") {
                        continue;
                    }
                    let now = now_ns();
                    if let Some(t) = ws::scan_u64(text, "\"max(t)\":") {
                        latency.record_ns(now.saturating_sub(t));
                    }
                    shared.updates.fetch_add(1, Ordering::Relaxed);
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
