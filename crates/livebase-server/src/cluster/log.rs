//! The cluster's one ordered change log, carried by a JetStream stream.
//!
//! Several nodes share one PostgreSQL database. Exactly one of them — the leader — captures
//! from the replication slot; every node, the leader included, feeds its hub from the stream.
//! So the epoch and the sequence numbers are the same on every node, and a client resumes on
//! any of them.
//!
//! - **Leadership** is a lease: the one message of the stream `livebase_lease_<slot>`,
//!   whose messages expire after [`LEASE_TTL`]. A node that appends it where none is leads and
//!   renews it every [`RENEW_EVERY`]; the others try to take it as often. A leader that cannot renew
//!   for [`LEASE_GIVE_UP`] (NATS unreachable) or finds the key taken stops capturing. A new
//!   leader disconnects whoever still holds the slot before it starts
//!   (`PgStore::start_capture`). A leader that stops cleanly purges the lease, so another node
//!   takes over at its next attempt.
//! - **Appending** is fenced: each publish expects the stream's last sequence to be the one
//!   the publisher saw last, so a stale leader's append fails instead of interleaving. The
//!   database is the other fence: `_lb_changes.seq` is its primary key, and a capture reads the
//!   log's head again at every session start.
//! - **Reading**: each node runs an ordered consumer from the stream's end (read at start),
//!   after filling its tail from `_lb_changes`; [`PgStore::apply`] skips what it already has
//!   and fills any gap from the database, so the feed stays gap-free and in order.
//!
//! One stream message is one captured batch ([`LogBatch`] as JSON), split so that a message
//! stays well under NATS's 1 MB payload limit; the writers' transaction ids and the fences
//! travel in the last part.

use crate::metrics::Metrics;
use crate::realtime::bus::NodeId;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use livebase_store::postgres::shared::{CaptureTerm, LogBatch, LogSink};
use livebase_store::postgres::PgStore;
use livebase_store::BoxFuture;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A lease not renewed for this long expires: the longest a dead leader blocks a takeover.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A leader that could not renew for this long stops capturing (before its lease expires).
pub const LEASE_GIVE_UP: Duration = Duration::from_secs(4);
/// Stream messages are cut below this many bytes of events.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// What the rest of the node sees of the shared log.
pub struct SharedLog {
    leader: Arc<AtomicBool>,
    /// Stream messages applied, and the newest stream sequence applied.
    applied: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    done: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

fn names(slot: &str) -> (String, String) {
    (format!("livebase_log_{slot}"), format!("livebase.log.{slot}"))
}

impl SharedLog {
    /// Creates the stream and the lease bucket when missing, and starts following the log and
    /// contending for leadership.
    pub async fn start(
        client: async_nats::Client,
        store: Arc<PgStore>,
        node: NodeId,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<SharedLog> {
        let js = jetstream::new(client);
        let (stream_name, subject) = names(store.slot());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                // History for `since` comes from the database's log; the stream only needs to
                // carry recent batches to the followers.
                max_age: Duration::from_secs(24 * 3600),
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the JetStream stream {stream_name}: {e}"))?;
        let lease_stream = format!("livebase_lease_{}", store.slot());
        let lease_subject = format!("livebase.lease.{}", store.slot());
        let lease = js
            .get_or_create_stream(stream::Config {
                name: lease_stream.clone(),
                subjects: vec![lease_subject.clone()],
                storage: stream::StorageType::File,
                max_age: LEASE_TTL,
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the JetStream stream {lease_stream}: {e}"))?;
        let leader = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        // The follower first: it reads where the stream ends before anything new is appended.
        let start = stream.cached_info().state.last_sequence + 1;
        let follower =
            tokio::spawn(follow(stream.clone(), store.clone(), start, applied.clone(), stop_rx.clone()));
        let sink = Arc::new(StreamSink {
            js: js.clone(),
            stream: stream_name,
            subject,
            last: AtomicU64::new(0),
            metrics: metrics.clone(),
        });
        let leading = tokio::spawn(lead(
            Lease { js: js.clone(), stream: lease, subject: lease_subject, node },
            store,
            sink,
            leader.clone(),
            metrics,
            stop_rx,
            done_tx,
        ));
        Ok(SharedLog { leader, applied, tasks: vec![follower, leading], stop, done: Mutex::new(Some(done)) })
    }

    /// Whether this node captures for the cluster now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The newest stream sequence this node has applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Stops following; a leader stops capturing and gives up its lease, so another node
    /// takes over at once.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let done = self.done.lock().take();
        if let Some(d) = done {
            let _ = tokio::time::timeout(Duration::from_secs(6), d).await;
        }
    }
}

impl Drop for SharedLog {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The capture lease: the one message of a stream whose messages expire after
/// [`LEASE_TTL`]. Taking it appends only where the subject holds nothing (it expired or was
/// given back); renewing appends only after the holder's own last message. JetStream checks
/// both (expected last subject sequence), so two nodes can never both hold it.
struct Lease {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    node: NodeId,
}

enum LeaseError {
    /// Someone else's message is the newest: the lease is theirs.
    Taken,
    /// NATS did not answer.
    Unreachable(String),
}

impl Lease {
    /// Appends after `revision` (0: only if nobody holds it); the new revision.
    async fn append(&self, revision: u64) -> Result<u64, LeaseError> {
        let msg = jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::from(self.node.to_string()))
            .expected_last_subject_sequence(revision);
        let sent = self.js.send_publish(self.subject.clone(), msg).await;
        let r = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match r {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(LeaseError::Taken)
            }
            Err(e) => Err(LeaseError::Unreachable(e.to_string())),
        }
    }

    /// Gives the lease back (a clean stop): the next node takes it at its next attempt.
    async fn release(&self) {
        let _ = self.stream.purge().filter(self.subject.clone()).await;
    }
}

/// Contends for the lease; captures while holding it.
async fn lead(
    lease: Lease,
    store: Arc<PgStore>,
    sink: Arc<StreamSink>,
    leader: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let mut term: Option<(CaptureTerm, u64, Instant)> = None;
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        term = match term.take() {
            None => match lease.append(0).await {
                Ok(rev) => match store.start_capture(sink.clone()).await {
                    Ok(t) => {
                        tracing::info!(node = %lease.node, "leading: capturing the change log for the cluster");
                        Some((t, rev, Instant::now()))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start capturing; giving the lease back");
                        lease.release().await;
                        None
                    }
                },
                // Someone else leads, or NATS is unreachable: try again at the next tick.
                Err(_) => None,
            },
            Some((t, rev, renewed)) => match lease.append(rev).await {
                Ok(rev) => Some((t, rev, Instant::now())),
                Err(LeaseError::Taken) => {
                    tracing::warn!("lost the capture lease to another node; stopping the capture");
                    t.stop().await;
                    None
                }
                Err(LeaseError::Unreachable(e)) if renewed.elapsed() >= LEASE_GIVE_UP => {
                    tracing::warn!(error = %e, "cannot renew the capture lease; stopping the capture");
                    t.stop().await;
                    None
                }
                Err(_) => Some((t, rev, renewed)),
            },
        };
        leader.store(term.is_some(), Ordering::Relaxed);
        metrics.set_cluster_leader(term.is_some());
    }
    if let Some((t, rev, _)) = term {
        t.stop().await;
        let _ = rev;
        lease.release().await;
    }
    leader.store(false, Ordering::Relaxed);
    let _ = done.send(());
}

/// Reads the stream from `start` and applies every batch to the store's feed, in order.
async fn follow(
    stream: stream::Stream,
    store: Arc<PgStore>,
    mut start: u64,
    applied: Arc<AtomicU64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let r = tokio::select! {
            r = follow_from(&stream, &store, &mut start, &applied) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "following the shared log interrupted");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn follow_from(
    stream: &stream::Stream,
    store: &PgStore,
    start: &mut u64,
    applied: &AtomicU64,
) -> anyhow::Result<()> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: (*start).max(1) },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    // Whatever the database logged before the consumer's start point (and this node has not
    // seen) comes from the database.
    store.catch_up().await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let seq = m.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
        match serde_json::from_slice::<LogBatch>(&m.payload) {
            Ok(batch) => apply_until_done(store, batch).await,
            Err(e) => {
                tracing::error!(error = %e, stream_seq = seq, "unreadable batch in the shared log; skipped")
            }
        }
        *start = seq + 1;
        applied.store(seq, Ordering::Relaxed);
    }
    Ok(())
}

/// A batch is applied or the node stops trying only when it cannot ever be (another epoch):
/// the database being away is waited out, never skipped.
async fn apply_until_done(store: &PgStore, batch: LogBatch) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.apply(batch.clone()).await {
            Ok(()) => return,
            Err(livebase_store::StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "cannot apply a batch of the shared log yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, "a batch of the shared log cannot be applied; skipped");
                return;
            }
        }
    }
}

/// The capture's [`LogSink`]: a JetStream stream, appended with an expected last sequence.
struct StreamSink {
    js: jetstream::Context,
    stream: String,
    subject: String,
    /// The stream sequence this publisher appended or saw last.
    last: AtomicU64,
    metrics: Arc<Metrics>,
}

impl StreamSink {
    async fn append(&self, payload: Vec<u8>) -> Result<(), String> {
        let started = Instant::now();
        let expected = self.last.load(Ordering::Relaxed);
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .expected_last_sequence(expected);
        let ack = self
            .js
            .send_publish(self.subject.clone(), msg)
            .await
            .map_err(|e| format!("publishing to the shared log: {e}"))?
            .await
            .map_err(|e| format!("publishing to the shared log (after sequence {expected}): {e}"))?;
        self.last.store(ack.sequence, Ordering::Relaxed);
        self.metrics.cluster_publish(started.elapsed().as_secs_f64());
        Ok(())
    }
}

impl LogSink for StreamSink {
    fn last(&self) -> BoxFuture<'_, Result<Option<u64>, String>> {
        Box::pin(async move {
            let s =
                self.js.get_stream(&self.stream).await.map_err(|e| format!("reading the shared log: {e}"))?;
            let state = &s.cached_info().state;
            self.last.store(state.last_sequence, Ordering::Relaxed);
            if state.messages == 0 {
                return Ok(None);
            }
            let m = s
                .get_raw_message(state.last_sequence)
                .await
                .map_err(|e| format!("reading the shared log's last message: {e}"))?;
            let b: LogBatch = serde_json::from_slice(&m.payload)
                .map_err(|e| format!("the shared log's last message is unreadable: {e}"))?;
            Ok(Some(b.head))
        })
    }

    fn publish(&self, batch: LogBatch) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for part in split(batch) {
                self.append(part).await?;
            }
            Ok(())
        })
    }
}

/// A batch as one or more messages, each below [`MAX_MESSAGE_BYTES`] of events (a single
/// bigger event travels alone); every part is a whole [`LogBatch`] whose head is its last
/// event, and the transactions and fences go with the last part.
fn split(b: LogBatch) -> Vec<Vec<u8>> {
    let encoded: Vec<Vec<u8>> = b.events.iter().map(|e| serde_json::to_vec(e).unwrap_or_default()).collect();
    let mut parts = Vec::new();
    let mut start = 0;
    while start < encoded.len() {
        let mut end = start;
        let mut size = 0;
        while end < encoded.len() && (end == start || size + encoded[end].len() <= MAX_MESSAGE_BYTES) {
            size += encoded[end].len() + 1;
            end += 1;
        }
        parts.push((start, end));
        start = end;
    }
    if parts.is_empty() {
        parts.push((0, 0));
    }
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, (s, e))| {
            let last = i + 1 == n;
            let head = if last { b.head } else { b.events[e - 1].seq };
            let meta = serde_json::json!({
                "epoch": b.epoch,
                "head": head,
                "xids": if last { b.xids.clone() } else { Vec::new() },
                "fences": if last { b.fences.clone() } else { Vec::new() },
                "schema": b.schema && i == 0,
            });
            let mut out = serde_json::to_vec(&meta).unwrap_or_default();
            // `{...}` + `,"events":[…]}`: the events encoded once.
            out.pop();
            out.extend_from_slice(b",\"events\":[");
            for (k, ev) in encoded[s..e].iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(ev);
            }
            out.extend_from_slice(b"]}");
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use livebase_core::{ChangeEvent, ChangeOp};

    fn ev(seq: u64, size: usize) -> ChangeEvent {
        let mut r = serde_json::Map::new();
        r.insert("id".into(), serde_json::Value::String(seq.to_string()));
        r.insert("text".into(), serde_json::Value::String("x".repeat(size)));
        ChangeEvent {
            seq,
            collection: "c".into(),
            op: ChangeOp::Insert,
            id: seq.to_string(),
            version: 1,
            new: Some(livebase_core::Record(r)),
            old: None,
            actor: None,
            committed_at: "2026-12-02T00:00:00.000000Z".into(),
        }
    }

    #[test]
    fn a_big_batch_travels_in_parts_that_read_back_as_the_same_events() {
        let events: Vec<ChangeEvent> = (11..=30).map(|s| ev(s, 40_000)).collect();
        let b = LogBatch {
            epoch: "e".into(),
            head: 30,
            events: events.clone(),
            xids: vec![7, 8],
            fences: vec!["f".into()],
            schema: true,
        };
        let parts: Vec<LogBatch> = split(b).iter().map(|p| serde_json::from_slice(p).unwrap()).collect();
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.events.len() <= 7));
        let back: Vec<ChangeEvent> = parts.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(back, events);
        for p in &parts {
            assert_eq!(p.head, p.events.last().unwrap().seq);
        }
        assert!(parts[0].schema && !parts[1].schema);
        assert_eq!(parts.last().unwrap().xids, vec![7, 8]);
        assert!(parts[0].xids.is_empty() && parts[0].fences.is_empty());
        let empty = split(LogBatch {
            epoch: "e".into(),
            head: 5,
            events: vec![],
            xids: vec![],
            fences: vec![],
            schema: false,
        });
        let one: LogBatch = serde_json::from_slice(&empty[0]).unwrap();
        assert_eq!((one.head, one.events.len()), (5, 0));
    }
}
