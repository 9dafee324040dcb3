//! The registry: connections, queries with their subscribers, the index that finds the
//! queries an event concerns, and channel membership. Plain data behind the hub's one lock.

use super::super::bus::MemberId;
use super::super::codec::{Codec, Delivery, Frame};
use crate::auth::Principal;
use futures_util::future::BoxFuture;
use livebase_core::filter::{BoundFilter, Scalar};
use livebase_core::{ChangeEvent, ChangeOp, Record};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

pub type ConnId = u64;
pub type QueryId = u64;

/// What the hub knows of a connection: its queue, how to tell it to close, and the codec
/// that turns deliveries into its frames.
pub struct ConnHandle {
    pub tx: Arc<dyn Outlet>,
    pub close: Arc<CloseSignal>,
    pub codec: Arc<dyn Codec>,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: the connection is a slow consumer.
    Full,
    /// The connection is closing; nothing more reaches it.
    Closed,
}

/// A connection's outbound queue, as the hub sees it (the port deliveries leave by). A
/// WebSocket's is [`crate::realtime::socket::Sock`]; an in-process consumer may use a channel.
pub trait Outlet: Send + Sync + 'static {
    /// Queues a frame without waiting.
    fn try_send(&self, frame: Frame) -> Result<(), Refused>;
    /// Queues a frame, waiting for room (history, which is read at the consumer's pace).
    fn send(&self, frame: Frame) -> BoxFuture<'_, Result<(), Refused>>;
    fn is_closed(&self) -> bool;
    /// Frames queued and not yet handed to the network.
    fn queued(&self) -> usize;
}

impl Outlet for mpsc::Sender<Frame> {
    fn try_send(&self, frame: Frame) -> Result<(), Refused> {
        mpsc::Sender::try_send(self, frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refused::Full,
            mpsc::error::TrySendError::Closed(_) => Refused::Closed,
        })
    }

    fn send(&self, frame: Frame) -> BoxFuture<'_, Result<(), Refused>> {
        Box::pin(async move { mpsc::Sender::send(self, frame).await.map_err(|_| Refused::Closed) })
    }

    fn is_closed(&self) -> bool {
        mpsc::Sender::is_closed(self)
    }

    fn queued(&self) -> usize {
        self.max_capacity() - self.capacity()
    }
}

/// Tells a connection's task to close with a code and reason.
#[derive(Default)]
pub struct CloseSignal {
    pub notify: Notify,
    pub reason: Mutex<Option<(u16, &'static str)>>,
}

impl CloseSignal {
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut r = self.reason.lock();
        if r.is_none() {
            *r = Some((code, reason));
            self.notify.notify_one();
        }
    }
}

pub(super) struct ConnEntry {
    pub handle: ConnHandle,
    pub member: MemberId,
    pub name: Arc<str>,
    pub who: Principal,
    /// The token expired: nothing is delivered until a fresh one arrives.
    pub expired: bool,
    pub queries: HashSet<QueryId>,
    pub channels: HashSet<String>,
}

impl ConnEntry {
    /// Encodes and queues a delivery; false when the queue is full.
    pub fn send(&self, d: Delivery<'_>) -> bool {
        match self.handle.codec.encode(d) {
            Some(f) => self.handle.tx.try_send(f).is_ok(),
            None => true,
        }
    }
}

pub(super) enum SubState {
    /// Receives every matching event after this sequence. The bound matters for a live query:
    /// its snapshot may already reflect events the hub has not dispatched yet (committed, still
    /// being synced), and those must not arrive a second time.
    Live(u64),
    /// History is being sent; live frames wait here with their sequence numbers.
    CatchingUp(Vec<(u64, Frame)>),
    /// The connection's token expired after every event up to this sequence was queued.
    Paused(u64),
}

/// Whether a query's filter matches the record before and after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Matched {
    pub before: bool,
    pub after: bool,
}

/// The operations a query follows (a set of [`ChangeOp`]s); most follow all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ops(u8);

impl Ops {
    pub const ALL: Ops = Ops(0b111);

    fn bit(op: ChangeOp) -> u8 {
        match op {
            ChangeOp::Insert => 1,
            ChangeOp::Update => 2,
            ChangeOp::Delete => 4,
        }
    }

    pub fn only(op: ChangeOp) -> Ops {
        Ops(Self::bit(op))
    }

    pub fn has(self, op: ChangeOp) -> bool {
        self.0 & Self::bit(op) != 0
    }
}

pub(super) struct Query {
    pub collection: String,
    pub filter: Option<BoundFilter>,
    pub ops: Ops,
    pub key: String,
    pub subscribers: HashMap<ConnId, SubState>,
}

impl Query {
    pub fn matches(&self, e: &ChangeEvent) -> Matched {
        if !self.ops.has(e.op) {
            return Matched { before: false, after: false };
        }
        let m = |r: &Option<Record>| match (r, &self.filter) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(r), Some(f)) => f.matches(r),
        };
        Matched { before: m(&e.old), after: m(&e.new) }
    }
}

/// The hashable form of an equality value, for the index. Numbers are keyed by their f64
/// value so `5` and `5.0` meet; the full filter is still evaluated on every candidate.
pub(super) fn scalar_key(s: &Scalar) -> Option<String> {
    Some(match s {
        Scalar::Null => return None,
        Scalar::Bool(b) => format!("b{b}"),
        Scalar::Int(i) => format!("n{}", *i as f64),
        Scalar::Num(n) => format!("n{n}"),
        Scalar::Text(t) => format!("s{t}"),
    })
}

pub(super) fn value_key(v: &Value) -> Option<String> {
    Some(match v {
        Value::Bool(b) => format!("b{b}"),
        Value::Number(n) => format!("n{}", n.as_f64()?),
        Value::String(t) => format!("s{t}"),
        _ => return None,
    })
}

/// Queries of one collection: those with a top-level equality are found by value, the rest
/// are checked on every event.
#[derive(Default)]
pub(super) struct CollectionIndex {
    pub scan: HashSet<QueryId>,
    pub by_eq: HashMap<String, HashMap<String, HashSet<QueryId>>>,
}

impl CollectionIndex {
    /// The queries an event may concern (each once, in id order).
    pub fn candidates(&self, ev: &ChangeEvent) -> Vec<QueryId> {
        let mut candidates: Vec<QueryId> = self.scan.iter().copied().collect();
        for (field, by_value) in &self.by_eq {
            for r in [&ev.new, &ev.old].into_iter().flatten() {
                if let Some(ids) = r.get(field).and_then(value_key).and_then(|k| by_value.get(&k)) {
                    candidates.extend(ids);
                }
            }
        }
        if candidates.len() > 1 {
            candidates.sort_unstable();
            candidates.dedup();
        }
        candidates
    }

    fn remove(&mut self, qid: QueryId) {
        self.scan.remove(&qid);
        for by_value in self.by_eq.values_mut() {
            for ids in by_value.values_mut() {
                ids.remove(&qid);
            }
            by_value.retain(|_, ids| !ids.is_empty());
        }
        self.by_eq.retain(|_, m| !m.is_empty());
    }

    fn is_empty(&self) -> bool {
        self.scan.is_empty() && self.by_eq.is_empty()
    }
}

/// Presence of one channel, cluster-wide: key → one entry per tracking connection, on
/// whichever node it is.
pub(super) type Presence = BTreeMap<String, Vec<(MemberId, Value)>>;

#[derive(Default)]
pub(super) struct Registry {
    /// Every event up to this sequence has been dispatched.
    pub dispatched: u64,
    pub conns: HashMap<ConnId, ConnEntry>,
    pub queries: HashMap<QueryId, Query>,
    pub query_ids: HashMap<(String, String), QueryId>,
    pub index: HashMap<String, CollectionIndex>,
    /// Channel → this node's member connections.
    pub members: HashMap<String, HashSet<ConnId>>,
    /// Channel → presence of the whole cluster.
    pub presence: HashMap<String, Presence>,
    /// Live aggregates (ids from the same space as queries), by key and by collection.
    pub aggregates: HashMap<QueryId, super::aggregates::AggQuery>,
    pub agg_ids: HashMap<(String, String), QueryId>,
    pub agg_index: HashMap<String, HashSet<QueryId>>,
    pub next_query: QueryId,
    pub subscriptions: i64,
    pub presence_members: i64,
}

impl Registry {
    /// The query for `(collection, normalized filter)`, created and indexed when new.
    pub fn query_for(
        &mut self,
        collection: &str,
        key: String,
        filter: Option<BoundFilter>,
        ops: Ops,
    ) -> QueryId {
        // A query limited to some operations is another query than the same filter on all.
        let key = if ops == Ops::ALL { key } else { format!("{key}#ops={}", ops.0) };
        let k = (collection.to_string(), key);
        if let Some(q) = self.query_ids.get(&k) {
            return *q;
        }
        let qid = self.next_query;
        self.next_query += 1;
        let ix = self.index.entry(collection.to_string()).or_default();
        match filter
            .as_ref()
            .and_then(|b| b.index_key())
            .and_then(|(f, v)| Some((f.to_string(), scalar_key(v)?)))
        {
            Some((field, value)) => {
                ix.by_eq.entry(field).or_default().entry(value).or_default().insert(qid);
            }
            None => {
                ix.scan.insert(qid);
            }
        }
        let query =
            Query { collection: k.0.clone(), filter, ops, key: k.1.clone(), subscribers: HashMap::new() };
        self.query_ids.insert(k, qid);
        self.queries.insert(qid, query);
        qid
    }

    pub fn remove_subscriber(&mut self, conn: ConnId, qid: QueryId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queries.remove(&qid);
        }
        if super::Hub::remove_aggregate_subscriber(self, conn, qid) {
            return;
        }
        let Some(q) = self.queries.get_mut(&qid) else { return };
        if q.subscribers.remove(&conn).is_some() {
            self.subscriptions -= 1;
        }
        if !q.subscribers.is_empty() {
            return;
        }
        let Some(q) = self.queries.remove(&qid) else { return };
        self.query_ids.remove(&(q.collection.clone(), q.key.clone()));
        if let Some(ix) = self.index.get_mut(&q.collection) {
            ix.remove(qid);
            if ix.is_empty() {
                self.index.remove(&q.collection);
            }
        }
    }

    pub fn principal_of(&self, conn: ConnId) -> Option<Principal> {
        self.conns.get(&conn).map(|c| c.who.clone())
    }
}
