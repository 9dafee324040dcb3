//! `connections`: many idle WebSocket connections; the server's memory per connection, and
//! whether every connection still answers after the hold.

use super::ws::{self, Connector, Ws};
use super::{CpuMeter, Ctx};
use futures_util::{SinkExt, StreamExt};
use livebase_protocol::client;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Default `--connections` for this scenario: what fits under a 20,000-file limit.
const DEFAULT_CONNECTIONS: usize = 15_000;
const CONNECT_CONCURRENCY: usize = 128;
/// Time for the server's memory to settle after the last handshake.
const SETTLE: Duration = Duration::from_secs(1);
/// Every connection must answer its ping within this.
const PING_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Hold,
    Ping,
    Close,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Map<String, Value>> {
    let n = ctx.opts.connections.unwrap_or(DEFAULT_CONNECTIONS);
    let have = super::raise_fd_limit() as usize;
    let per_conn = if ctx.target.is_in_process() { 2 } else { 1 };
    anyhow::ensure!(
        n * per_conn + 256 <= have,
        "{n} connections need ~{} open files in the bench process (limit {have}){}",
        n * per_conn + 256,
        if per_conn == 2 { ": run the server as a child process" } else { "" }
    );
    let connector = Connector::new(ctx.target.addr, &ctx.target.admin_key);
    // Let the fresh server settle before the baseline.
    tokio::time::sleep(SETTLE).await;
    let rss_before = ctx.target.rss_bytes();

    ctx.progress.phase("connecting", n as u64);
    let connect_start = Instant::now();
    let mut opened: Vec<Ws> = Vec::with_capacity(n);
    let mut connect_errors = 0u64;
    let mut first_error = None;
    let mut attempts = futures_util::stream::iter(0..n)
        .map(|i| {
            let connector = connector.clone();
            async move { connector.connect(i).await }
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    while let Some(r) = attempts.next().await {
        match r {
            Ok(ws) => opened.push(ws),
            Err(e) => {
                connect_errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        ctx.progress.inc();
    }
    drop(attempts);
    let connect_s = connect_start.elapsed().as_secs_f64();
    let open = opened.len() as u64;

    // Each connection gets a task that reads (so the server's pings are answered) and acts
    // on the phase.
    let alive = Arc::new(AtomicU64::new(0));
    let closed_early = Arc::new(AtomicU64::new(0));
    let (phase_tx, phase_rx) = watch::channel(Phase::Hold);
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|ws| tokio::spawn(hold(ws, phase_rx.clone(), alive.clone(), closed_early.clone())))
        .collect();
    drop(phase_rx);
    tokio::time::sleep(SETTLE).await;
    let rss_after = ctx.target.rss_bytes();

    let cpu = CpuMeter::start(&ctx.target);
    let hold_start = Instant::now();
    let c = closed_early.clone();
    ctx.progress
        .timed(
            "holding",
            ctx.opts.duration(),
            || format!("{open} open, {} closed by the server", c.load(Ordering::Relaxed)),
            || false,
        )
        .await;
    let hold_s = hold_start.elapsed().as_secs_f64();
    let mut out = Map::new();
    cpu.finish(&ctx.target, &mut out);

    let _ = phase_tx.send(Phase::Ping);
    let a = alive.clone();
    let all_answered = || a.load(Ordering::Relaxed) >= open;
    ctx.progress
        .timed(
            "pinging",
            PING_TIMEOUT,
            || format!("{}/{open} pongs", a.load(Ordering::Relaxed)),
            all_answered,
        )
        .await;
    let _ = phase_tx.send(Phase::Close);
    ctx.progress.phase("closing", open);
    for t in tasks {
        let _ = t.await;
        ctx.progress.inc();
    }
    let alive = alive.load(Ordering::Relaxed);

    let mut figures = Map::new();
    figures.insert("duration_s".into(), json!(super::round3(hold_s)));
    figures.insert("connections".into(), json!(n));
    figures.insert("open".into(), json!(open));
    figures.insert("connect_errors".into(), json!(connect_errors));
    if let Some(e) = first_error {
        figures.insert("first_error".into(), json!(e));
    }
    figures.insert("connect_s".into(), json!(super::round3(connect_s)));
    figures.insert("alive".into(), json!(alive));
    figures.insert("lost".into(), json!((n as u64).saturating_sub(alive)));
    figures.insert("rss_before_bytes".into(), json!(rss_before));
    figures.insert("rss_after_bytes".into(), json!(rss_after));
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if open > 0 => json!((a.saturating_sub(b) as f64 / open as f64).round()),
        _ => Value::Null,
    };
    figures.insert("bytes_per_connection".into(), per_conn);
    figures.insert("rss_includes_client".into(), json!(ctx.target.is_in_process()));
    figures.extend(out);
    Ok(figures)
}

/// Holds one connection: reads until the ping phase, sends a `ping` and counts the `pong`,
/// then closes on the close phase.
async fn hold(mut ws: Ws, mut phase: watch::Receiver<Phase>, alive: Arc<AtomicU64>, closed: Arc<AtomicU64>) {
    let mut pinged = false;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if pinged && ws::frame_type(t.as_str()) == Some("pong") {
                        alive.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            },
            changed = phase.changed() => {
                let p = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Close };
                match p {
                    Phase::Hold => {}
                    Phase::Ping => {
                        pinged = true;
                        let ping = Message::text(client::ping(1).encode());
                        if ws.send(ping).await.is_err() {
                            closed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    Phase::Close => break,
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
}
