//! Fan-out invariants under a random mix of fast and slow subscribers (seeded: set
//! `LIVEBASE_FANOUT_SEED` to replay a run; the seed is printed at the start of each run).
//!
//! Each round starts a fresh server with a small queue (`ws_queue`) and connects 6–16
//! subscribers to one collection: fast ones (read every frame at once), stalled ones (a tiny
//! receive buffer and no reads until the writer's first phase ends) and pausing ones (read, but
//! sleep every few frames). The writer posts batches of random size and random event sizes,
//! and before each batch waits until every fast subscriber has received the previous ones. A
//! subscriber whose connection ends reconnects with `resume_of` and resubscribes with
//! `since` = its last seq, as a fast reader, until it has the round's last event.
//!
//! Why a fast subscriber is never cut off (a proof, not a timing assumption): a batch is
//! posted only once every fast subscriber has received every earlier event, so its queue holds
//! no change frame then; a batch adds at most one frame per event to it, and a batch is never
//! larger than the queue. So its `try_send` never fails, whatever the scheduling. (A reading
//! client can be cut off too when a burst larger than its queue arrives at once: that is
//! the queue bound, not a fault, so the writer never sends such a burst.)
//!
//! Checked per round: every connection's changes are a gap-free, in-order continuation of
//! its `since` (seq 1..=k on a first connection); a connection that ended before the last
//! event ended with 4001 or no close frame, and its successor's `welcome` says
//! `slow_consumer` at an event it had not received; every subscriber ends with every event
//! exactly once; fast subscribers are never cut off; `livebase_slow_consumers_dropped_total`
//! equals the number of connections the clients saw cut off.

mod common;

use common::ws::{Ws, WAIT};
use common::TestServer;
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::sync::watch;

const DEFAULT_SEED: u64 = 0x5eed_f0a0_u64;
const COLLECTION: &str = "events";
/// The first phase of a round writes until the server has cut off as many connections as
/// there are stalled subscribers (the metric says so), or this many bytes of events were
/// written: far more than the socket buffers and queue of a client that never reads can hold
/// (about 3 MiB are enough on Linux loopback with a 4 KiB receive buffer).
const PHASE_A_MAX_BYTES: usize = 16 << 20;
/// Connections one subscriber may use in a round (the first plus its resumes).
const MAX_CONNECTIONS: usize = 40;

/// splitmix64: tiny, seedable, and the same on every platform and crate version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Reads every frame as soon as it arrives; the writer waits for it.
    Fast,
    /// A tiny receive buffer and no reads at all until the writer's first phase ends.
    Stalled,
    /// Reads, but sleeps `pause_ms` every `every` frames while the writer writes (on its first
    /// connection; a resume reads at full speed).
    Pausing { every: u64, pause_ms: u64, small_buffer: bool },
}

#[derive(Debug, Clone, PartialEq)]
enum End {
    /// Received the round's last event.
    Complete,
    /// The stream ended (close frame with this code, or null: no close frame, a reset).
    Closed(Value),
}

/// One connection of a subscriber: where its subscription started and what it received.
#[derive(Debug)]
struct Segment {
    /// `since` of its subscription (0 for the first one, which starts before any event).
    since: u64,
    /// `seq` of the `subscribed` reply.
    subscribed_at: Option<u64>,
    /// `welcome.cut_off`: why the previous connection (named by `resume_of`) was cut off.
    told: Option<Value>,
    seqs: Vec<u64>,
    end: Option<End>,
    /// Frames that are neither changes nor replies to the client's own requests.
    unexpected: Vec<Value>,
}

impl Segment {
    fn new(since: u64, told: Option<Value>) -> Segment {
        Segment { since, subscribed_at: None, told, seqs: Vec::new(), end: None, unexpected: Vec::new() }
    }

    fn last(&self) -> u64 {
        self.seqs.last().copied().unwrap_or(self.since)
    }
}

/// Where `seqs` stops being `since + 1, since + 2, …` (a gap, a repeat, a reordering), told
/// briefly; None when it never does.
fn break_in(seqs: &[u64], since: u64) -> Option<String> {
    let i = seqs.iter().zip(since + 1..).position(|(got, due)| *got != due)?;
    let before = i.checked_sub(1).map(|p| seqs[p]);
    let after: Vec<u64> = seqs[i..].iter().take(5).copied().collect();
    Some(format!(
        "frame {i} of {}: seq {} where {} was due (after {before:?}; from there: {after:?})",
        seqs.len(),
        seqs[i],
        since + 1 + i as u64
    ))
}

/// A WebSocket client over a socket whose receive buffer is tiny when `small_buffer`.
async fn connect(url: &str, key: &str, resume_of: Option<&str>, small_buffer: bool) -> Ws {
    let addr: SocketAddr = url.trim_start_matches("http://").parse().expect("server address");
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    if small_buffer {
        sock.set_recv_buffer_size(4096).expect("receive buffer");
    }
    let tcp = sock.connect(addr).await.expect("tcp connects");
    let mut ws_url = format!("ws://{addr}/api/realtime?token={key}");
    if let Some(old) = resume_of {
        ws_url.push_str(&format!("&resume_of={old}"));
    }
    let (stream, _) = tokio_tungstenite::client_async(ws_url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
        .expect("websocket upgrade");
    Ws::from_stream(stream).await.0
}

/// Subscribes to the collection (from `since` when resuming) and waits for `subscribed`;
/// false when the connection ended first (recorded in `seg`).
async fn subscribe(ws: &mut Ws, since: Option<u64>, seg: &mut Segment) -> bool {
    let mut req = json!({"type": "subscribe", "collection": COLLECTION, "ref": 1});
    if let Some(s) = since {
        req["since"] = json!(s);
    }
    ws.send(req).await;
    loop {
        let f = ws.recv().await;
        match f["type"].as_str() {
            Some("subscribed") if f["ref"] == 1 => {
                seg.subscribed_at = f["seq"].as_u64();
                return true;
            }
            Some("change") => seg.seqs.push(f["seq"].as_u64().expect("a change has a seq")),
            Some("__closed") => {
                seg.end = Some(End::Closed(f["code"].clone()));
                return false;
            }
            _ => seg.unexpected.push(f),
        }
    }
}

/// Reads changes until the round's last event (known once `finish` holds it) or until the
/// connection ends. `pause`: (every, ms): sleep `ms` every `every` frames until the writer is done.
async fn read(
    ws: &mut Ws,
    seg: &mut Segment,
    pause: Option<(u64, u64)>,
    finish: &mut watch::Receiver<Option<u64>>,
    progress: &watch::Sender<u64>,
) {
    // Frames left before the next pause.
    let mut until_pause = pause.map_or(0, |(every, _)| every);
    while seg.end.is_none() {
        let total = *finish.borrow_and_update();
        if total.is_some_and(|t| seg.last() >= t) {
            seg.end = Some(End::Complete);
            break;
        }
        let f = tokio::select! {
            f = ws.recv() => f,
            r = finish.changed() => {
                r.expect("the round outlives its subscribers");
                continue;
            }
        };
        match f["type"].as_str() {
            Some("change") => {
                let seq = f["seq"].as_u64().expect("a change has a seq");
                seg.seqs.push(seq);
                progress.send_replace(seq);
                // Slow only while the writer writes, so a round's length stays bounded.
                if let (Some((every, ms)), None) = (pause, total) {
                    until_pause -= 1;
                    if until_pause == 0 {
                        until_pause = every;
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                }
            }
            Some("__closed") => seg.end = Some(End::Closed(f["code"].clone())),
            _ => seg.unexpected.push(f),
        }
    }
    if seg.end == Some(End::Complete) {
        // Nothing more may follow the last event: whatever arrives before the pong of a ping
        // sent now is recorded (a change there fails the checks).
        ws.send(json!({"type": "ping", "ref": 2})).await;
        loop {
            let f = ws.recv().await;
            match f["type"].as_str() {
                Some("pong") if f["ref"] == 2 => break,
                Some("change") => seg.seqs.push(f["seq"].as_u64().expect("a change has a seq")),
                _ => {
                    let closed = f["type"] == "__closed";
                    seg.unexpected.push(f);
                    if closed {
                        break;
                    }
                }
            }
        }
    }
}

struct Sub {
    kind: Kind,
    url: String,
    key: String,
    finish: watch::Receiver<Option<u64>>,
    release: watch::Receiver<bool>,
    progress: watch::Sender<u64>,
}

/// One subscriber for a whole round: its first connection (already subscribed), then a
/// resume per connection that ended, until it has the round's last event.
async fn subscriber(mut s: Sub, mut ws: Ws, mut seg: Segment) -> Vec<Segment> {
    let mut segs = Vec::new();
    if s.kind == Kind::Stalled {
        s.release.wait_for(|r| *r).await.expect("the round outlives its subscribers");
    }
    let mut pause = match s.kind {
        Kind::Pausing { every, pause_ms, .. } => Some((every, pause_ms)),
        _ => None,
    };
    loop {
        read(&mut ws, &mut seg, pause, &mut s.finish, &s.progress).await;
        let complete = seg.end == Some(End::Complete);
        let (last, old) = (seg.last(), ws.conn_id.clone());
        segs.push(seg);
        if complete || segs.len() >= MAX_CONNECTIONS {
            return segs;
        }
        drop(ws);
        // Cut off: reconnect, learn why, resume after the last event received (as a fast reader).
        pause = None;
        ws = connect(&s.url, &s.key, Some(&old), false).await;
        seg = Segment::new(last, ws.welcome.get("cut_off").cloned());
        subscribe(&mut ws, Some(last), &mut seg).await;
    }
}

async fn slow_consumers_dropped(t: &TestServer) -> u64 {
    let text = t.http.get(format!("{}/metrics", t.url)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("livebase_slow_consumers_dropped_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until every fast subscriber has received event `total`. The hub never waits on a
/// client, so a stalled one cannot hold them back; if it did, this is where the test stops.
async fn await_fast(fast: &mut [(usize, watch::Receiver<u64>)], total: u64, ctx: &str) {
    for (i, rx) in fast.iter_mut() {
        let waited = tokio::time::timeout(WAIT, rx.wait_for(|s| *s >= total)).await.map(|r| r.is_ok());
        match waited {
            Ok(true) => {}
            Ok(false) => panic!("{ctx}: fast subscriber {i} ended before event {total}"),
            Err(_) => panic!(
                "{ctx}: fast subscriber {i} is stuck at seq {} of {total}: something waits on a slow client",
                *rx.borrow()
            ),
        }
    }
}

struct Writer {
    rng: Rng,
    batch_max: u64,
    pad: (u64, u64),
    total: u64,
    bytes: usize,
}

impl Writer {
    /// Posts one batch of random size (1..=batch_max) with random event sizes.
    async fn batch(&mut self, t: &TestServer, ctx: &str) {
        let n = self.rng.range(1, self.batch_max);
        let ops: Vec<Value> = (0..n)
            .map(|i| {
                let len = self.rng.range(self.pad.0, self.pad.1) as usize;
                self.bytes += len;
                let c = (b'a' + ((self.total + i) % 26) as u8) as char;
                json!({"op": "create", "data": {"line": c.to_string().repeat(len)}})
            })
            .collect();
        let (s, b) = t.post(&format!("/api/collections/{COLLECTION}/batch"), json!({ "ops": ops })).await;
        assert_eq!(s, 200, "{ctx}: batch: {b}");
        self.total += n;
    }
}

/// What a round found, for the log line.
struct Outcome {
    events: u64,
    bytes: usize,
    cut_offs: u64,
    /// Subscribers cut off at least once: (stalled, pausing); of all: cut off again on a resume.
    cut: (usize, usize),
    recut: usize,
}

/// Round `r` of the run seeded with `run_seed`, itself seeded with `seed`.
async fn round(run_seed: u64, r: usize, seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    let ctx = format!("LIVEBASE_FANOUT_SEED={run_seed}, round {r}");
    let n_subs = rng.range(6, 16) as usize;
    let ws_queue = rng.range(16, 96);
    // A batch never holds more events than the queue has room for (see the module comment).
    let batch_max = rng.range(8, (ws_queue - 1).min(90));
    let pad_lo = rng.range(1000, 3000);
    let pad = (pad_lo, pad_lo + rng.range(0, 5000));
    let phase_a_min = rng.range(50, 200);
    let phase_b = rng.range(20, 300);
    let kinds: Vec<Kind> = (0..n_subs)
        .map(|i| match (i, rng.range(0, 3)) {
            (0, _) | (2.., 0 | 1) => Kind::Fast,
            (1, _) | (2.., 2) => Kind::Stalled,
            _ => Kind::Pausing {
                every: rng.range(2, 30),
                pause_ms: rng.range(1, 25),
                small_buffer: rng.range(0, 1) == 1,
            },
        })
        .collect();
    let stalled = kinds.iter().filter(|k| **k == Kind::Stalled).count() as u64;
    println!(
        "{ctx}: {n_subs} subscribers {kinds:?}, ws_queue {ws_queue}, batches of 1..={batch_max}, \
         events of {}..={} bytes",
        pad.0, pad.1
    );

    let t = TestServer::start_with(|c| {
        c.ws_queue = ws_queue as usize;
        // No heartbeat closes: a stalled client answers no ping, and only slow-consumer
        // cut-offs may end a connection here.
        c.heartbeat_ms = 3_600_000;
        c.heartbeat_timeout_ms = 7_200_000;
    })
    .await;
    t.create_collection(json!({"name": COLLECTION, "fields": [{"name": "line", "type": "text"}]})).await;

    let (finish_tx, finish_rx) = watch::channel(None::<u64>);
    let (release_tx, release_rx) = watch::channel(false);
    let mut fast = Vec::new();
    let mut tasks = Vec::new();
    for (i, kind) in kinds.iter().copied().enumerate() {
        let small = match kind {
            Kind::Fast => false,
            Kind::Stalled => true,
            Kind::Pausing { small_buffer, .. } => small_buffer,
        };
        let mut ws = connect(&t.url, &t.admin_key, None, small).await;
        let mut seg = Segment::new(0, ws.welcome.get("cut_off").cloned());
        assert!(subscribe(&mut ws, None, &mut seg).await, "{ctx}: subscriber {i} subscribes");
        let (progress, progress_rx) = watch::channel(0u64);
        if kind == Kind::Fast {
            fast.push((i, progress_rx));
        }
        let s = Sub {
            kind,
            url: t.url.clone(),
            key: t.admin_key.clone(),
            finish: finish_rx.clone(),
            release: release_rx.clone(),
            progress,
        };
        tasks.push(tokio::spawn(subscriber(s, ws, seg)));
    }

    // Phase A: stalled subscribers read nothing; write until the server has cut off as many
    // connections as there are stalled ones, the fast ones receiving every batch meanwhile.
    let mut w = Writer { rng: Rng(rng.next()), batch_max, pad, total: 0, bytes: 0 };
    loop {
        w.batch(&t, &ctx).await;
        await_fast(&mut fast, w.total, &ctx).await;
        if w.total >= phase_a_min
            && (slow_consumers_dropped(&t).await >= stalled || w.bytes >= PHASE_A_MAX_BYTES)
        {
            break;
        }
    }
    // Phase B: the stalled ones drain what reached them, and resume while writes go on.
    release_tx.send_replace(true);
    let end = w.total + phase_b;
    while w.total < end {
        w.batch(&t, &ctx).await;
        await_fast(&mut fast, w.total, &ctx).await;
    }
    let total = w.total;
    finish_tx.send_replace(Some(total));

    let mut subs = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        subs.push(task.await.unwrap_or_else(|e| panic!("{ctx}: subscriber {i} failed: {e}")));
    }
    let dropped = slow_consumers_dropped(&t).await;

    // ---- the invariants ----
    let mut cut_offs = 0u64;
    let (mut cut, mut recut) = ((0, 0), 0);
    for (i, (segs, kind)) in subs.iter().zip(&kinds).enumerate() {
        let who = format!("{ctx}: subscriber {i} ({kind:?})");
        assert_eq!(segs[0].since, 0, "{who}");
        assert_eq!(segs[0].subscribed_at, Some(0), "{who}: subscribed before the first event");
        assert_eq!(segs[0].told, None, "{who}: a first connection is told of no cut-off");
        for (j, seg) in segs.iter().enumerate() {
            let at = format!("{who}, connection {j} (since {})", seg.since);
            // Gap-free and in order, no duplicate, starting right after `since`: seq 1..=k on the
            // first connection, the continuation of the previous one on a resume.
            if let Some(b) = break_in(&seg.seqs, seg.since) {
                panic!("{at}: not a gap-free, in-order continuation: {b}");
            }
            assert!(seg.unexpected.is_empty(), "{at}: unexpected frames {:?}", seg.unexpected);
            if j > 0 {
                let prev = &segs[j - 1];
                assert_eq!(seg.since, prev.last(), "{at}: resumes from the last seq received");
                // (Unless it was cut off before the reply left its queue: then it got nothing.)
                let unanswered = seg.seqs.is_empty() && matches!(seg.end, Some(End::Closed(_)));
                assert!(
                    seg.subscribed_at == Some(seg.since) || (seg.subscribed_at.is_none() && unanswered),
                    "{at}: subscribed at {:?}",
                    seg.subscribed_at
                );
                // The previous connection was cut off as a slow consumer, at an event it had
                // not received.
                let told = seg.told.as_ref().unwrap_or_else(|| panic!("{at}: welcome names no cut-off"));
                assert_eq!(told["reason"], "slow_consumer", "{at}: {told}");
                let at_seq = told["at_seq"].as_u64().unwrap_or(0);
                assert!(at_seq > prev.last() && at_seq <= total, "{at}: cut off at {told}");
            }
            if j + 1 < segs.len() {
                // Cut off: a 4001 close, or the stream just ended (the close frame did not fit).
                let code = match &seg.end {
                    Some(End::Closed(code)) => code,
                    other => panic!("{at}: a connection followed by a resume ended with {other:?}"),
                };
                assert!(*code == 4001 || code.is_null(), "{at}: closed with {code}");
                assert!(seg.last() < total, "{at}: cut off after receiving everything");
            }
        }
        // Whatever happened, in the end it has every event exactly once, in order: the last
        // connection completed, and the connections' ranges tile 1..=total.
        let last = segs.last().expect("one connection at least");
        assert_eq!(last.end, Some(End::Complete), "{who}: gave up after {} connections", segs.len());
        assert_eq!(last.last(), total, "{who}");
        let all: Vec<u64> = segs.iter().flat_map(|s| s.seqs.iter().copied()).collect();
        if let Some(b) = break_in(&all, 0) {
            panic!("{who}: its connections together did not get every event once, in order: {b}");
        }
        assert_eq!(all.len() as u64, total, "{who}: its connections together got every event");
        if *kind == Kind::Fast {
            assert_eq!(segs.len(), 1, "{who}: a fast subscriber was cut off");
        }
        cut_offs += segs.len() as u64 - 1;
        match (kind, segs.len()) {
            (_, 1) => {}
            (Kind::Stalled, _) => cut.0 += 1,
            _ => cut.1 += 1,
        }
        recut += usize::from(segs.len() > 2);
    }
    // The server counts exactly the connections the clients saw cut off (fast ones never are).
    assert_eq!(dropped, cut_offs, "{ctx}: livebase_slow_consumers_dropped_total vs cut-offs the clients saw");
    // Phase A ends once the metric reaches the number of stalled subscribers, unless
    // PHASE_A_MAX_BYTES was written first: far more than a client that never reads can buffer.
    assert!(cut_offs >= 1, "{ctx}: nobody was cut off after {} bytes of events", w.bytes);
    drop((finish_tx, release_tx));
    Outcome { events: total, bytes: w.bytes, cut_offs, cut, recut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_subscribers_get_every_event_in_order_while_slow_ones_are_cut_off_with_a_gap_free_prefix_and_resume_losing_nothing(
) {
    let seed = match std::env::var("LIVEBASE_FANOUT_SEED") {
        Ok(s) => s.trim().parse().expect("LIVEBASE_FANOUT_SEED is an integer"),
        Err(_) => DEFAULT_SEED,
    };
    println!("LIVEBASE_FANOUT_SEED={seed}");
    let mut rng = Rng(seed);
    let rounds = rng.range(2, 4) as usize;
    for r in 0..rounds {
        let started = std::time::Instant::now();
        let o = round(seed, r, rng.next()).await;
        println!(
            "round {r}: {} events, {} KiB of padding, {} cut-offs (stalled {}, pausing {}, again after a resume {}), {:.1} s",
            o.events,
            o.bytes >> 10,
            o.cut_offs,
            o.cut.0,
            o.cut.1,
            o.recut,
            started.elapsed().as_secs_f64()
        );
    }
}
