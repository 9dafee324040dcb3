//! `presence`: N members on one channel; each in turn tracks (its meta holds the send time)
//! and later leaves, and every other member's `presence_diff` receipt is timed.

use super::ws::{self, Connector, Ws};
use super::{now_ns, stats, CpuMeter, Ctx};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use livebase_protocol::{client, ServerFrame};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

const DEFAULT_MEMBERS: usize = 200;
const CONNECT_CONCURRENCY: usize = 64;
/// Diffs still in flight after the last track (or leave) get this long.
const GRACE: Duration = Duration::from_secs(10);

enum Cmd {
    /// Track with `meta: {"t": <send time>}`; the reply says the server answered `ok`.
    Track(oneshot::Sender<bool>),
    Leave(oneshot::Sender<bool>),
}

struct Shared {
    channel: String,
    /// When member i sent its `leave` (ns since the bench epoch).
    leave_sent_ns: Vec<AtomicU64>,
    joins: AtomicU64,
    leaves: AtomicU64,
    errors: AtomicU64,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Map<String, Value>> {
    let n = ctx.opts.connections.unwrap_or(DEFAULT_MEMBERS);
    let channel = ctx.name("presence");
    let connector = Connector::new(ctx.target.addr, &ctx.target.admin_key);
    let shared = Arc::new(Shared {
        channel: channel.clone(),
        leave_sent_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
        joins: AtomicU64::new(0),
        leaves: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });

    ctx.progress.phase("joining", n as u64);
    let join = client::join(1, &channel);
    let mut attempts = futures_util::stream::iter(0..n)
        .map(|i| {
            let connector = connector.clone();
            let join = join.clone();
            async move {
                let mut ws = connector.connect(i).await?;
                ws::request(&mut ws, &join).await?;
                anyhow::Ok((i, ws))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    let mut members = Vec::with_capacity(n);
    while let Some(r) = attempts.next().await {
        members.push(r?);
        ctx.progress.inc();
    }
    drop(attempts);
    members.sort_by_key(|(i, _)| *i);
    let members: Vec<_> = members
        .into_iter()
        .map(|(i, ws)| {
            let (tx, rx) = mpsc::channel(4);
            (tx, tokio::spawn(member(i, ws, rx, shared.clone())))
        })
        .collect();
    let count = members.len() as u64;
    let expected_joins = count * count.saturating_sub(1);
    // Members leave one after the other: the k-th leaver is seen by the count-1-k after it.
    let expected_leaves = count * count.saturating_sub(1) / 2;

    let cpu = CpuMeter::start(&ctx.target);
    let start = std::time::Instant::now();
    ctx.progress.phase("tracking", count);
    for (tx, _) in &members {
        let (reply, answered) = oneshot::channel();
        anyhow::ensure!(tx.send(Cmd::Track(reply)).await.is_ok(), "a member stopped");
        anyhow::ensure!(answered.await.unwrap_or(false), "presence_track was not answered ok");
        ctx.progress.inc();
    }
    let s = shared.clone();
    ctx.progress
        .timed(
            "join diffs",
            GRACE,
            || format!("{}/{expected_joins}", s.joins.load(Ordering::Relaxed)),
            || s.joins.load(Ordering::Relaxed) >= expected_joins,
        )
        .await;

    ctx.progress.phase("leaving", count);
    for (tx, _) in &members {
        let (reply, answered) = oneshot::channel();
        anyhow::ensure!(tx.send(Cmd::Leave(reply)).await.is_ok(), "a member stopped");
        anyhow::ensure!(answered.await.unwrap_or(false), "leave was not answered ok");
        ctx.progress.inc();
    }
    ctx.progress
        .timed(
            "leave diffs",
            GRACE,
            || format!("{}/{expected_leaves}", s.leaves.load(Ordering::Relaxed)),
            || s.leaves.load(Ordering::Relaxed) >= expected_leaves,
        )
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    let mut out = Map::new();
    cpu.finish(&ctx.target, &mut out);

    let mut track_hist = stats::histogram(3);
    let mut leave_hist = stats::histogram(3);
    for (tx, task) in members {
        drop(tx);
        let (t, l) = task.await?;
        stats::merge(&mut track_hist, &t);
        stats::merge(&mut leave_hist, &l);
    }
    let joins = shared.joins.load(Ordering::Relaxed);
    let leaves = shared.leaves.load(Ordering::Relaxed);

    let mut figures = Map::new();
    figures.insert("duration_s".into(), json!(super::round3(elapsed)));
    figures.insert("members".into(), json!(count));
    figures.insert("expected_joins".into(), json!(expected_joins));
    figures.insert("joins".into(), json!(joins));
    figures.insert("expected_leaves".into(), json!(expected_leaves));
    figures.insert("leaves".into(), json!(leaves));
    figures.insert(
        "lost".into(),
        json!(expected_joins.saturating_sub(joins) + expected_leaves.saturating_sub(leaves)),
    );
    figures.insert("frame_errors".into(), json!(shared.errors.load(Ordering::Relaxed)));
    figures.insert("latency_ms".into(), stats::latency_json(&track_hist));
    figures.insert("leave_latency_ms".into(), stats::latency_json(&leave_hist));
    figures.extend(out);
    Ok(figures)
}

/// One member: answers commands, times the diffs about the others. Returns the track and
/// leave latency histograms when its command channel closes.
async fn member(
    i: usize,
    mut ws: Ws,
    mut cmds: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
) -> (Histogram<u64>, Histogram<u64>) {
    let own_key = format!("m{i}");
    let mut track_hist = stats::histogram(2);
    let mut leave_hist = stats::histogram(2);
    let mut pending: Option<oneshot::Sender<bool>> = None;
    let mut next_ref = 10u64;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(text))) => {
                    let now = now_ns();
                    let Ok(v) = ServerFrame::parse(text.as_str()) else {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match v {
                        ServerFrame::PresenceDiff { joins, leaves, .. } => {
                            for (key, entries) in &joins {
                                if *key == own_key {
                                    continue;
                                }
                                for e in entries {
                                    shared.joins.fetch_add(1, Ordering::Relaxed);
                                    if let Some(t) = e.meta["t"].as_u64() {
                                        stats::record_ns(&mut track_hist, now.saturating_sub(t));
                                    }
                                }
                            }
                            for (key, entries) in &leaves {
                                if *key == own_key {
                                    continue;
                                }
                                let sent = key
                                    .strip_prefix('m')
                                    .and_then(|k| k.parse::<usize>().ok())
                                    .and_then(|k| shared.leave_sent_ns.get(k))
                                    .map(|a| a.load(Ordering::Relaxed));
                                for _ in entries {
                                    shared.leaves.fetch_add(1, Ordering::Relaxed);
                                    if let Some(sent) = sent.filter(|s| *s > 0) {
                                        stats::record_ns(&mut leave_hist, now.saturating_sub(sent));
                                    }
                                }
                            }
                        }
                        ServerFrame::Ok { .. } => {
                            if let Some(p) = pending.take() {
                                let _ = p.send(true);
                            }
                        }
                        ServerFrame::Error { .. } => {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            if let Some(p) = pending.take() {
                                let _ = p.send(false);
                            }
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            cmd = cmds.recv() => {
                next_ref += 1;
                let frame = match cmd {
                    Some(Cmd::Track(reply)) => {
                        pending = Some(reply);
                        client::track(next_ref, &shared.channel, Some(&own_key), &json!({"t": now_ns()}))
                    }
                    Some(Cmd::Leave(reply)) => {
                        pending = Some(reply);
                        shared.leave_sent_ns[i].store(now_ns(), Ordering::Relaxed);
                        client::leave(next_ref, &shared.channel)
                    }
                    None => break,
                };
                if ws.send(Message::text(frame.encode())).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    (track_hist, leave_hist)
}
