//! The capture: every writer's committed changes, read from PostgreSQL's WAL, become the
//! change log.
//!
//! One task reads Livebase's logical replication slot (pgoutput, through [`super::wal`]). For
//! each committed transaction, in commit order, it turns the changes to collection tables into
//! [`ChangeEvent`]s with the next sequence numbers, writes them to `_lb_changes` in one
//! transaction (with the transaction's xid and end LSN), pushes them to the [`LogTail`], answers
//! the Livebase writes waiting for that transaction, and only then confirms the position to
//! the slot. So a crash at any moment either loses nothing (the slot resends what was not
//! confirmed) or finds the transaction already logged (its end LSN is at or below the newest
//! logged one, and it is skipped): every change is logged exactly once, in order, and one
//! transaction's events are contiguous.
//!
//! Who made a change: Livebase's writer leaves a transactional `livebase` message naming the
//! actor before each request's changes; changes without one are external (`actor: null`).
//! Transactions marked `livebase-migration` (filling a new field's default) are not changes.
//! A `livebase-fence` message, committed in a transaction of its own (a commit flushes the
//! WAL, so the walsender sends it at once; a non-transactional message would wait for the WAL
//! writer), lets a snapshot wait until everything that committed before it has been logged
//! (see `PgStore::snapshot`).

use super::rows::tuple_to_record;
use super::shared::{LogBatch, LogSink};
use super::wal::{WalConfig, WalEvent, WalItem, WalOp, WalStream, WalTxn};
use super::writer::Pending;
use crate::feed::Epoch;
use crate::LogTail;
use futures_util::FutureExt;
use livebase_core::{ChangeEvent, ChangeOp, Schema};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub const FENCE_PREFIX: &str = "livebase-fence";

/// Most captured transactions logged in one write.
const MAX_TXNS_PER_WRITE: usize = 1000;

/// What the store, the writer and the metrics share with the capture task.
#[derive(Default)]
pub struct CaptureState {
    pub pending: Arc<Pending>,
    fences: Mutex<HashMap<String, oneshot::Sender<u64>>>,
    pub connected: AtomicBool,
    /// Newest server WAL position seen, and the newest position logged and confirmed.
    pub server_lsn: AtomicU64,
    pub logged_lsn: AtomicU64,
    pub captured: AtomicU64,
}

impl CaptureState {
    /// Waits for a fence: the receiver gets the log head once the capture reached it.
    pub fn fence(&self, token: String) -> oneshot::Receiver<u64> {
        let (tx, rx) = oneshot::channel();
        self.fences.lock().insert(token, tx);
        rx
    }

    pub fn drop_fence(&self, token: &str) {
        self.fences.lock().remove(token);
    }

    /// A fence was reached with the log at `head`: its snapshot may go on.
    pub fn reach_fence(&self, token: &str, head: u64) {
        let waiter = self.fences.lock().remove(token);
        if let Some(w) = waiter {
            let _ = w.send(head);
        }
    }
}

pub struct Capture {
    pub wal: WalConfig,
    pub url: String,
    pub schema: Arc<RwLock<Arc<Schema>>>,
    pub tail: Arc<LogTail>,
    pub state: Arc<CaptureState>,
    pub head: u64,
    pub logged_lsn: u64,
    /// Keep at most this many events (trimmed as the log grows, as on SQLite).
    pub max_events: Option<u64>,
    /// The oldest sequence number still in the log, as far as the capture knows.
    pub log_start: u64,
    pub epoch: Epoch,
    /// Dropped with the store: the task ends.
    pub alive: std::sync::Weak<()>,
    /// Set to end this capture (the store closing, or a cluster node losing leadership);
    /// `stopped` is set once the task has let go of the slot.
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub stopped: tokio::sync::watch::Sender<bool>,
    /// Cluster mode: each logged batch goes to the shared log instead of this node's tail
    /// (every node, this one included, reads it back from there).
    pub sink: Option<Arc<dyn LogSink>>,
}

impl Capture {
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        let mut stop = self.stop.clone();
        while self.alive.strong_count() > 0 && !*stop.borrow() {
            let r = tokio::select! {
                r = self.session() => r,
                _ = stop.wait_for(|s| *s) => Ok(()),
            };
            match r {
                Ok(()) => break,
                Err(e) => {
                    self.state.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "change capture interrupted; reconnecting");
                    let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 + 1);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(jitter)) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.state.connected.store(false, Ordering::Relaxed);
        self.stopped.send_replace(true);
    }

    /// One replication session: until the connection fails (an error) or the store is
    /// dropped.
    async fn session(&mut self) -> Result<(), String> {
        let (db, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("log connection: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // The log must be durable before the slot is confirmed past it.
        db.batch_execute("SET synchronous_commit = on").await.map_err(|e| format!("log connection: {e}"))?;
        self.resume_position(&db).await?;
        if let Some(sink) = self.sink.clone() {
            self.republish(&db, sink.as_ref()).await?;
        }
        let mut stream = WalStream::start(&self.wal).await.map_err(|e| e.to_string())?;
        self.state.connected.store(true, Ordering::Relaxed);
        tracing::info!(slot = %self.wal.slot, "change capture streaming");
        loop {
            if self.alive.strong_count() == 0 {
                return Ok(());
            }
            let ev = match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                Err(_) => continue,
                Ok(r) => r.map_err(|e| e.to_string())?,
            };
            self.state.server_lsn.fetch_max(stream.server_wal_end(), Ordering::Relaxed);
            match ev {
                WalEvent::Txn(t) => {
                    // Every transaction already received goes into one log write: one commit
                    // (and fsync) for many captured transactions under load.
                    let mut batch = vec![t];
                    let mut next = None;
                    while batch.len() < MAX_TXNS_PER_WRITE {
                        match stream.next().now_or_never() {
                            Some(Ok(WalEvent::Txn(t))) => batch.push(t),
                            Some(Ok(other)) => {
                                next = Some(other);
                                break;
                            }
                            // Not logged, not confirmed: the slot sends them again.
                            Some(Err(e)) => return Err(e.to_string()),
                            None => break,
                        }
                    }
                    let end = batch.last().map_or(0, |t| t.end_lsn);
                    self.transactions(&db, batch).await?;
                    stream.confirm(end);
                    if let Some(WalEvent::Message { prefix, content, .. }) = next {
                        if prefix == FENCE_PREFIX {
                            self.fences_reached(vec![String::from_utf8_lossy(&content).into_owned()]).await?;
                        }
                    }
                }
                WalEvent::Message { prefix, content, .. } if prefix == FENCE_PREFIX => {
                    self.fences_reached(vec![String::from_utf8_lossy(&content).into_owned()]).await?
                }
                WalEvent::Message { .. } => {}
            }
        }
    }

    /// Where the log stands, read from `_lb_changes` at the start of every session: another
    /// node may have captured meanwhile (cluster failover), and a capture that believed in a
    /// stale head would collide on `seq` (the primary key refuses it, the session restarts).
    async fn resume_position(&mut self, db: &tokio_postgres::Client) -> Result<(), String> {
        let r = db
            .query_one(
                "SELECT coalesce(max(seq), 0), coalesce(max(lsn), 0), coalesce(min(seq), 1) FROM _lb_changes",
                &[],
            )
            .await
            .map_err(|e| format!("reading the change log: {e}"))?;
        let get =
            |i| r.try_get::<_, i64>(i).map(|v| v as u64).map_err(|e| format!("reading the change log: {e}"));
        self.head = self.head.max(get(0)?);
        self.logged_lsn = self.logged_lsn.max(get(1)?);
        self.log_start = get(2)?;
        self.state.logged_lsn.fetch_max(self.logged_lsn, Ordering::Relaxed);
        Ok(())
    }

    /// Cluster mode, before capturing: whatever is logged in `_lb_changes` but not yet in
    /// the shared log (a former capturer died between the two) is published first, in order.
    async fn republish(&mut self, db: &tokio_postgres::Client, sink: &dyn LogSink) -> Result<(), String> {
        let mut last = match sink.last().await? {
            Some(h) if h > self.head => {
                return Err(format!(
                    "the shared log is at {h}, ahead of this database's change log ({}): it belongs to another log",
                    self.head
                ))
            }
            Some(h) => h,
            None => {
                // An empty shared log starts where the database's log is.
                return sink.publish(self.batch(Vec::new(), Vec::new(), Vec::new(), false)).await;
            }
        };
        while last < self.head {
            let page =
                super::changes_in(db, &crate::ChangeQuery { since: last, limit: 500, ..Default::default() })
                    .await
                    .map_err(|e| e.to_string())?;
            let Some(end) = page.events.last().map(|e| e.seq) else { break };
            let xids: Vec<u32> = db
                .query(
                    "SELECT DISTINCT xid FROM _lb_changes WHERE seq > $1 AND seq <= $2",
                    &[&(last as i64), &(end as i64)],
                )
                .await
                .map_err(|e| format!("reading the change log: {e}"))?
                .iter()
                .filter_map(|r| r.try_get::<_, i64>(0).ok().map(|x| x as u32))
                .collect();
            let mut b = self.batch(page.events, xids, Vec::new(), true);
            b.head = end;
            sink.publish(b).await?;
            last = end;
        }
        Ok(())
    }

    fn batch(&self, events: Vec<ChangeEvent>, xids: Vec<u32>, fences: Vec<String>, schema: bool) -> LogBatch {
        LogBatch { epoch: self.epoch.to_string(), head: self.head, events, xids, fences, schema }
    }

    /// Logs consecutive committed transactions in one write, then publishes them and
    /// answers their writers, in order.
    async fn transactions(&mut self, db: &tokio_postgres::Client, batch: Vec<WalTxn>) -> Result<(), String> {
        let mut events = Vec::new();
        let mut origin = Vec::new();
        let mut logged_end = None;
        let mut schema_changed = false;
        for t in &batch {
            if t.end_lsn <= self.logged_lsn {
                // Logged before a crash or reconnect, resent by the slot: never twice.
                continue;
            }
            let (evs, changed) = self.events(t, self.head + 1 + events.len() as u64);
            schema_changed |= changed;
            if !evs.is_empty() {
                origin.extend(std::iter::repeat_n((t.xid, t.end_lsn), evs.len()));
                events.extend(evs);
                logged_end = Some(t.end_lsn);
            }
        }
        if let Some(end) = logged_end {
            persist(db, &events, &origin).await?;
            self.head += events.len() as u64;
            self.state.captured.fetch_add(events.len() as u64, Ordering::Relaxed);
            self.logged_lsn = end;
            self.trim(db).await;
        }
        let xids: Vec<u32> = batch.iter().map(|t| t.xid).collect();
        let fences: Vec<String> = batch
            .iter()
            .flat_map(|t| &t.items)
            .filter_map(|item| match item {
                WalItem::Message { prefix, content } if prefix == FENCE_PREFIX => {
                    Some(String::from_utf8_lossy(content).into_owned())
                }
                _ => None,
            })
            .collect();
        for t in &batch {
            self.state.logged_lsn.fetch_max(t.end_lsn, Ordering::Relaxed);
        }
        match &self.sink {
            Some(sink) => {
                // Published before the slot is confirmed: a crash in between republishes from
                // `_lb_changes` (see `republish`).
                let b = self.batch(events, xids, fences, schema_changed);
                sink.publish(b).await?;
            }
            None => {
                self.tail.push(events.into_iter().map(Arc::new).collect());
                for x in xids {
                    self.state.pending.complete(x);
                }
                for f in fences {
                    self.state.reach_fence(&f, self.head);
                }
            }
        }
        Ok(())
    }

    async fn fences_reached(&self, tokens: Vec<String>) -> Result<(), String> {
        match &self.sink {
            Some(sink) => sink.publish(self.batch(Vec::new(), Vec::new(), tokens, false)).await,
            None => {
                for t in tokens {
                    self.state.reach_fence(&t, self.head);
                }
                Ok(())
            }
        }
    }

    /// Count-based retention: once the log exceeds its limit by 1% (at least one event), the
    /// oldest events go; the newest `max_events` stay.
    async fn trim(&mut self, db: &tokio_postgres::Client) {
        let Some(max) = self.max_events else { return };
        let len = (self.head + 1).saturating_sub(self.log_start);
        if len <= max + (max / 100).max(1) {
            return;
        }
        let cut = self.head.saturating_sub(max.max(1));
        match db.execute("DELETE FROM _lb_changes WHERE seq <= $1", &[&(cut as i64)]).await {
            Ok(_) => self.log_start = self.log_start.max(cut + 1),
            Err(e) => tracing::warn!(error = %e, "trimming the change log failed"),
        }
    }

    /// One transaction's changes to collection tables as events numbered from `first_seq`,
    /// and whether it changed a collection's definition. Definitions are applied in log
    /// order as they come by (`_lb_collections` is in the publication), so the changes that
    /// follow are read with the schema they were written under, whichever node changed it.
    fn events(&self, t: &WalTxn, first_seq: u64) -> (Vec<ChangeEvent>, bool) {
        let mut schema = self.schema.read().clone();
        let mut schema_changed = false;
        let committed_at = commit_time(t.commit_time_unix_us);
        let mut actor: Option<String> = None;
        let mut out = Vec::new();
        for item in &t.items {
            let ch = match item {
                WalItem::Message { prefix, .. } if prefix == "livebase-migration" => {
                    return (Vec::new(), schema_changed)
                }
                WalItem::Message { prefix, .. } if prefix == FENCE_PREFIX => continue,
                WalItem::Message { prefix, content } if prefix == "livebase" => {
                    actor = serde_json::from_slice::<serde_json::Value>(content)
                        .ok()
                        .and_then(|v| v.get("actor").and_then(|a| a.as_str()).map(str::to_string));
                    continue;
                }
                WalItem::Message { .. } => continue,
                WalItem::Change(ch) if ch.schema == "public" && ch.table == "_lb_collections" => {
                    if let Some(next) = apply_definition(&schema, ch) {
                        schema = Arc::new(next);
                        *self.schema.write() = schema.clone();
                    }
                    // Also when this node made the change (its schema has it already): the
                    // other nodes' have not.
                    schema_changed = true;
                    continue;
                }
                WalItem::Change(ch) => ch,
            };
            let Some(c) = schema.get(&ch.table).filter(|_| ch.schema == "public") else { continue };
            let new = ch.new.as_ref().and_then(|v| tuple_to_record(c, &ch.columns, v));
            let old = ch.old.as_ref().and_then(|v| tuple_to_record(c, &ch.columns, v));
            let (op, rec) = match ch.op {
                WalOp::Insert => (ChangeOp::Insert, new.clone()),
                WalOp::Update => (ChangeOp::Update, new.clone()),
                WalOp::Delete => (ChangeOp::Delete, old.clone()),
            };
            let Some(rec) = rec else { continue };
            out.push(ChangeEvent {
                seq: first_seq + out.len() as u64,
                collection: c.name.clone(),
                op,
                id: rec.id().to_string(),
                version: rec.version(),
                new: if op == ChangeOp::Delete { None } else { new },
                old: if op == ChangeOp::Insert { None } else { old },
                actor: actor.clone(),
                committed_at: committed_at.clone(),
            });
        }
        (out, schema_changed)
    }
}

/// A captured change of `_lb_collections` (name, definition) applied to a schema; None when
/// it changes nothing or cannot be read.
fn apply_definition(schema: &Schema, ch: &super::wal::WalChange) -> Option<Schema> {
    let col = |tuple: &Option<Vec<Option<String>>>, name: &str| -> Option<String> {
        let i = ch.columns.iter().position(|c| c == name)?;
        tuple.as_ref()?.get(i)?.clone()
    };
    let mut next = schema.clone();
    match ch.op {
        WalOp::Delete => {
            let name = col(&ch.old, "name")?;
            next.collections.remove(&name)?;
        }
        WalOp::Insert | WalOp::Update => {
            let def = col(&ch.new, "definition")?;
            let c: livebase_core::schema::Collection = match serde_json::from_str(&def) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "a captured collection definition is unreadable");
                    return None;
                }
            };
            if schema.get(&c.name) == Some(&c) {
                return None;
            }
            next.collections.insert(c.name.clone(), c);
        }
    }
    Some(next)
}

fn commit_time(unix_us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_us as i128 * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    livebase_core::record::format_timestamp(t)
}

/// Writes captured events to the durable log in one statement; `origin` is each event's
/// transaction (xid, end LSN).
async fn persist(
    db: &tokio_postgres::Client,
    events: &[ChangeEvent],
    origin: &[(u32, u64)],
) -> Result<(), String> {
    let json =
        |r: &Option<livebase_core::Record>| r.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default());
    let seq: Vec<i64> = events.iter().map(|e| e.seq as i64).collect();
    let collection: Vec<&str> = events.iter().map(|e| e.collection.as_str()).collect();
    let op: Vec<&str> = events.iter().map(|e| e.op.as_str()).collect();
    let id: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let version: Vec<i64> = events.iter().map(|e| e.version).collect();
    let actor: Vec<Option<&str>> = events.iter().map(|e| e.actor.as_deref()).collect();
    let at: Vec<&str> = events.iter().map(|e| e.committed_at.as_str()).collect();
    let new: Vec<Option<String>> = events.iter().map(|e| json(&e.new)).collect();
    let old: Vec<Option<String>> = events.iter().map(|e| json(&e.old)).collect();
    let xid: Vec<i64> = origin.iter().map(|o| o.0 as i64).collect();
    let lsn: Vec<i64> = origin.iter().map(|o| o.1 as i64).collect();
    db.execute(
        "INSERT INTO _lb_changes (seq, collection, op, record_id, version, actor, committed_at, new, old, xid, lsn) \
         SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::int8[], $11::int8[])",
        &[&seq, &collection, &op, &id, &version, &actor, &at, &new, &old, &xid, &lsn],
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("writing the change log: {e}"))
}
