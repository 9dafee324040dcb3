//! The change-feed port: where the realtime hub reads committed changes from.
//!
//! A feed is an ordered, gap-free sequence of [`ChangeEvent`]s named by an [`Epoch`]. A
//! position in it is `(epoch, seq)`: sequence numbers only mean something within one epoch,
//! so a client that resumes with another epoch's position (a replaced or restored data
//! directory, another cluster) must refetch instead of resuming at the wrong place.
//!
//! The hub needs four things of a feed, and nothing else: the head and a watch of it, the
//! recent events after a position (fast, in memory), and history for catch-up (durable, may
//! be slow). The embedded SQLite store is one implementation ([`crate::sqlite::SqliteStore`]
//! hands out its [`LogTail`] plus its change log); a capture from PostgreSQL's WAL or a
//! JetStream consumer are others.
//!
//! Invariants every implementation keeps:
//! - only committed events appear, each once, in commit order, with `seq` one greater than
//!   the previous event of the same epoch;
//! - the head never moves backwards within an epoch, and every event up to the head is
//!   readable (from [`ChangeFeed::recent`] or [`ChangeFeed::history`]) until retention drops it;
//! - the epoch never changes while the feed is open.

use crate::tail::LogTail;
pub use crate::tail::TailRead as Recent;
use crate::{BoxFuture, ChangePage, ChangeQuery, StoreError};
use livebase_core::ChangeEvent;
use std::sync::Arc;
use tokio::sync::watch;

/// The identity of one change log. Created with the log, persisted beside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    pub fn new(s: impl Into<Arc<str>>) -> Epoch {
        Epoch(s.into())
    }

    /// A fresh epoch: 16 random bytes, hex.
    pub fn generate() -> Epoch {
        let bytes: [u8; 16] = rand::random();
        let mut s = String::with_capacity(32);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Epoch(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in a feed: every event up to `seq` of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Epoch,
    pub seq: u64,
}

/// An ordered source of committed changes (see the module docs for the invariants).
pub trait ChangeFeed: Send + Sync + 'static {
    fn epoch(&self) -> &Epoch;
    /// The newest sequence number that may be read.
    fn head(&self) -> u64;
    /// A receiver that changes whenever the head moves; closed when the feed ends.
    fn watch(&self) -> watch::Receiver<u64>;
    /// Recent events after `seq`, at most `max`, from memory; `TooOld` when they are no longer
    /// held there (read [`ChangeFeed::history`] instead).
    fn recent(&self, seq: u64, max: usize) -> Recent;
    /// Durable history: the events after `q.since` matching the query, in order.
    fn history(&self, q: ChangeQuery) -> BoxFuture<'static, Result<ChangePage, StoreError>>;
}

impl dyn ChangeFeed {
    pub fn position(&self) -> Position {
        Position { epoch: self.epoch().clone(), seq: self.head() }
    }

    /// The events after `since` (of `collection` when given), at most about `max`: from memory
    /// when it still holds them, else from history. Empty when nothing is newer.
    pub async fn read_after(
        &self,
        since: u64,
        max: usize,
        collection: Option<&str>,
    ) -> Result<Vec<Arc<ChangeEvent>>, StoreError> {
        match self.recent(since, max) {
            Recent::Events(e) => Ok(e),
            Recent::TooOld => {
                let q = ChangeQuery {
                    since,
                    limit: max,
                    collection: collection.map(str::to_string),
                    ..Default::default()
                };
                Ok(self.history(q).await?.events.into_iter().map(Arc::new).collect())
            }
        }
    }
}

/// A feed made of an in-memory tail and a durable log read through a closure: what a store
/// that is the only writer of its log offers (the embedded SQLite backend).
pub struct TailFeed<H> {
    pub epoch: Epoch,
    pub tail: Arc<LogTail>,
    pub history: H,
}

impl<H> ChangeFeed for TailFeed<H>
where
    H: Fn(ChangeQuery) -> BoxFuture<'static, Result<ChangePage, StoreError>> + Send + Sync + 'static,
{
    fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    fn head(&self) -> u64 {
        self.tail.head()
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.tail.watch()
    }

    fn recent(&self, seq: u64, max: usize) -> Recent {
        self.tail.read_after(seq, max)
    }

    fn history(&self, q: ChangeQuery) -> BoxFuture<'static, Result<ChangePage, StoreError>> {
        (self.history)(q)
    }
}
