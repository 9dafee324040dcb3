//! Cluster mode: several nodes on one database share one change log.
//!
//! Exactly one node at a time captures (the slot admits one reader; who does is decided
//! outside the store, by the cluster's leadership). Its capture logs each batch to
//! `_lb_changes` as on a single node, then hands it to a [`LogSink`] — the shared, ordered
//! log every node reads (a JetStream stream) — instead of its own tail. Every node, the
//! capturing one included, feeds its hub by [`PgStore::apply`]ing what it reads from there, so
//! all nodes see the same events with the same sequence numbers and epoch.
//!
//! What a node applies keeps the feed's invariants whatever the shared log delivers: events
//! at or below the head are skipped (a republished batch), a gap is filled from
//! `_lb_changes` first (the database's log is complete: every batch is logged there before it
//! is published), and a batch of another epoch is refused.

use super::capture::Capture;
use super::{changes_in, pg_error, PgStore};
use crate::{BoxFuture, ChangeQuery, StoreError};
use livebase_core::ChangeEvent;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One captured batch as the shared log carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogBatch {
    /// The log's epoch: the same on every node of the cluster.
    pub epoch: String,
    /// The log head once this batch is applied.
    pub head: u64,
    /// Consecutive events ending at `head` (may be empty).
    pub events: Vec<ChangeEvent>,
    /// Transactions captured: the writers waiting for them (on any node) are answered.
    pub xids: Vec<u32>,
    /// Snapshot fences reached (see `PgStore::snapshot`).
    pub fences: Vec<String>,
    /// A collection's definition changed: nodes reload their schema before these events.
    pub schema: bool,
}

/// Where the capturing node publishes (the port; the cluster's JetStream stream is the
/// adapter).
pub trait LogSink: Send + Sync + 'static {
    /// The head of the newest batch the shared log holds; None when it holds none.
    fn last(&self) -> BoxFuture<'_, Result<Option<u64>, String>>;
    /// Appends a batch; Ok once the shared log has it durably. Fails for a capturer that is
    /// no longer the one allowed to append.
    fn publish(&self, batch: LogBatch) -> BoxFuture<'_, Result<(), String>>;
}

/// A running capture of a cluster node; [`CaptureTerm::stop`] ends it (leadership lost).
pub struct CaptureTerm {
    stop: tokio::sync::watch::Sender<bool>,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl CaptureTerm {
    /// Asks the capture to end and waits until it has let go of the slot (at most 5 s).
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.stopped.wait_for(|d| *d)).await;
    }

    /// Whether the capture has ended by itself (the store closed).
    pub fn ended(&self) -> bool {
        *self.stopped.borrow()
    }
}

impl PgStore {
    /// Cluster mode: starts capturing for the whole cluster, every batch going to `sink`.
    /// The caller makes sure only one node does (leadership); whoever held the slot before
    /// is disconnected first, so a stale capturer cannot keep reading it.
    pub async fn start_capture(&self, sink: Arc<dyn LogSink>) -> Result<CaptureTerm, StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&self.slot],
        )
        .await
        .map_err(pg_error)?;
        drop(c);
        Ok(self.spawn_capture(Some(sink)))
    }

    /// Starts a capture task from the log's current position.
    pub(super) fn spawn_capture(&self, sink: Option<Arc<dyn LogSink>>) -> CaptureTerm {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
        let spec = &self.spec;
        let capture = Capture {
            wal: spec.wal.clone(),
            url: spec.wal.url.clone(),
            schema: self.schema.clone(),
            tail: spec.tail.clone(),
            state: self.capture.clone(),
            head: 0,
            logged_lsn: 0,
            max_events: spec.max_events,
            log_start: 1,
            epoch: self.feed.epoch().clone(),
            alive: Arc::downgrade(&self._open),
            stop: stop_rx,
            stopped: stopped_tx,
            sink,
        };
        tokio::spawn(capture.run());
        CaptureTerm { stop, stopped }
    }

    /// Cluster mode: applies a batch read from the shared log to this node's feed, answers
    /// this node's writers waiting for its transactions and its snapshots waiting for its
    /// fences.
    pub async fn apply(&self, batch: LogBatch) -> Result<(), StoreError> {
        if batch.epoch != self.feed.epoch().as_str() {
            return Err(StoreError::Internal(format!(
                "the shared log carries epoch {}, this database's log is {}: the stream belongs to another database",
                batch.epoch,
                self.feed.epoch()
            )));
        }
        if batch.schema {
            self.reload_schema().await?;
        }
        let tail = &self.spec.tail;
        let mut head = tail.head();
        let first_new = batch.events.iter().find(|e| e.seq > head).map_or(batch.head + 1, |e| e.seq);
        // A gap: what the shared log lost or this node missed is in the database's log.
        while head + 1 < first_new {
            let c = self.pool.get().await?;
            let page =
                changes_in(&c, &ChangeQuery { since: head, limit: 1000, ..Default::default() }).await?;
            let missing: Vec<Arc<ChangeEvent>> =
                page.events.into_iter().filter(|e| e.seq < first_new).map(Arc::new).collect();
            let Some(last) = missing.last().map(|e| e.seq) else {
                return Err(StoreError::Internal(format!(
                    "events {} to {} are neither in the shared log nor in the database's log",
                    head + 1,
                    first_new - 1
                )));
            };
            tail.push(missing);
            head = last;
        }
        let new: Vec<Arc<ChangeEvent>> =
            batch.events.into_iter().filter(|e| e.seq > head).map(Arc::new).collect();
        tail.push(new);
        for x in batch.xids {
            self.capture.pending.complete(x);
        }
        for f in &batch.fences {
            self.capture.reach_fence(f, batch.head.max(tail.head()));
        }
        Ok(())
    }

    /// Fills this node's feed up to the database's log head (a node starting, or its
    /// reader of the shared log restarting).
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        let head: i64 = c
            .query_one("SELECT coalesce(max(seq), 0) FROM _lb_changes", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_error)?;
        drop(c);
        let batch = LogBatch {
            epoch: self.feed.epoch().to_string(),
            head: head as u64,
            events: Vec::new(),
            xids: Vec::new(),
            fences: Vec::new(),
            schema: true,
        };
        self.apply(batch).await
    }

    /// Reads every collection's definition again (another node changed one).
    pub async fn reload_schema(&self) -> Result<(), StoreError> {
        let schema = super::load_schema(&*self.pool.get().await?).await?;
        if **self.schema.read() != schema {
            *self.schema.write() = Arc::new(schema);
        }
        Ok(())
    }
}
