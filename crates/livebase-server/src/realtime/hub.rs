//! The hub: who is subscribed to what, and the fan-out of committed changes.
//!
//! One task reads the change log's tail in sequence order and, for each event, finds the
//! *queries* (collection + filter) it concerns through an index, encodes one frame per query,
//! and pushes the same bytes into each subscriber's bounded queue with `try_send`: the hub
//! never waits on a client. A full queue means a slow consumer: the connection is closed
//! (code 4001) and its client resumes from its last sequence.
//!
//! Subscriptions that start in the past (resume with `since`, live queries with a snapshot)
//! are stitched to the live stream by sequence: while their history is being sent by a
//! catch-up task, the hub parks their live frames in a buffer; the catch-up task drains the
//! buffer, skipping what the history already covered, and only then flips them live — all
//! under the registry lock, so no frame is lost, repeated or reordered.

use super::protocol::{self, change_body, change_frame, ProtoError, Ref, View};
use super::Limits;
use crate::access::{Access, AccessCache};
use crate::auth::Principal;
use crate::metrics::Metrics;
use axum::extract::ws::Utf8Bytes;
use livebase_core::filter::{BoundFilter, Filter, Scalar};
use livebase_core::query::ListQuery;
use livebase_core::ChangeEvent;
use livebase_store::tail::TailRead;
use livebase_store::{ChangeQuery, Store, StoreError};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

pub type ConnId = u64;
pub type QueryId = u64;

/// What the hub knows of a connection: its queue and how to tell it to close.
pub struct ConnHandle {
    pub tx: mpsc::Sender<Utf8Bytes>,
    pub close: Arc<CloseSignal>,
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

struct ConnEntry {
    handle: ConnHandle,
    name: String,
    who: Principal,
    /// The token expired: nothing is delivered until a fresh one arrives.
    expired: bool,
    queries: HashSet<QueryId>,
    channels: HashSet<String>,
}

enum SubState {
    /// Receives every matching event after this sequence. The bound matters for a live query:
    /// its snapshot may already reflect events the hub has not dispatched yet (committed, still
    /// being synced), and those must not arrive a second time.
    Live(u64),
    /// History is being sent; live frames wait here as (seq, frame).
    CatchingUp(Vec<(u64, Utf8Bytes)>),
    /// The connection's token expired after every event up to this sequence was queued.
    Paused(u64),
}

struct Query {
    collection: String,
    filter: Option<BoundFilter>,
    key: String,
    subscribers: HashMap<ConnId, SubState>,
}

impl Query {
    /// Whether the event's old and new records match the filter.
    fn matches(&self, e: &ChangeEvent) -> (bool, bool) {
        let m = |r: &Option<livebase_core::Record>| match (r, &self.filter) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(r), Some(f)) => f.matches(r),
        };
        (m(&e.old), m(&e.new))
    }
}

/// How one subscriber sees one event: the effect on its result set, and which sides of the
/// change it may see. Subscribers with the same answer share one encoded frame.
type Seen = (View, bool, bool);

fn seen_by(
    access: &Access,
    who: &Principal,
    open: bool,
    collection: &str,
    e: &ChangeEvent,
    m: (bool, bool),
) -> Option<Seen> {
    if open {
        return View::between(m.0, m.1).map(|v| (v, e.new.is_some(), e.old.is_some()));
    }
    let vis = |r: &Option<livebase_core::Record>| {
        r.as_ref().is_some_and(|r| access.row_visible(who, collection, r))
    };
    let (old_vis, new_vis) = (vis(&e.old), vis(&e.new));
    View::between(m.0 && old_vis, m.1 && new_vis).map(|v| (v, new_vis, old_vis))
}

/// Frames of one event for one query, by what the receiver may see (encoded on first use).
#[derive(Default)]
struct Frames {
    bodies: Vec<((bool, bool), String)>,
    frames: Vec<(Seen, Utf8Bytes)>,
}

impl Frames {
    fn get(&mut self, e: &ChangeEvent, qid: QueryId, seen: Seen) -> Utf8Bytes {
        if let Some((_, f)) = self.frames.iter().find(|(s, _)| *s == seen) {
            return f.clone();
        }
        let sides = (seen.1, seen.2);
        let body = match self.bodies.iter().find(|(s, _)| *s == sides) {
            Some((_, b)) => b,
            None => {
                self.bodies.push((sides, change_body(e, sides.0, sides.1)));
                &self.bodies[self.bodies.len() - 1].1
            }
        };
        let f = change_frame(body, qid, seen.0);
        self.frames.push((seen, f.clone()));
        f
    }
}

/// The hashable form of an equality value, for the index. Numbers are keyed by their f64
/// value so `5` and `5.0` meet; the full filter is still evaluated on every candidate.
fn scalar_key(s: &Scalar) -> Option<String> {
    Some(match s {
        Scalar::Null => return None,
        Scalar::Bool(b) => format!("b{b}"),
        Scalar::Int(i) => format!("n{}", *i as f64),
        Scalar::Num(n) => format!("n{n}"),
        Scalar::Text(t) => format!("s{t}"),
    })
}

fn value_key(v: &Value) -> Option<String> {
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
struct CollectionIndex {
    scan: HashSet<QueryId>,
    by_eq: HashMap<String, HashMap<String, HashSet<QueryId>>>,
}

#[derive(Default)]
struct Channel {
    members: HashSet<ConnId>,
    /// key → one entry per tracking connection.
    presence: BTreeMap<String, Vec<(ConnId, Value)>>,
}

#[derive(Default)]
struct Registry {
    /// Every event up to this sequence has been dispatched.
    dispatched: u64,
    conns: HashMap<ConnId, ConnEntry>,
    queries: HashMap<QueryId, Query>,
    query_ids: HashMap<(String, String), QueryId>,
    index: HashMap<String, CollectionIndex>,
    channels: HashMap<String, Channel>,
    next_query: QueryId,
    subscriptions: i64,
    presence_members: i64,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    store: Arc<dyn Store>,
    reg: Mutex<Registry>,
    limits: Limits,
    next_conn: AtomicU64,
    metrics: Arc<Metrics>,
    access: Arc<AccessCache>,
}

/// How a subscription starts.
pub enum Start {
    Now,
    Since(u64),
    Snapshot,
}

impl Hub {
    pub fn new(
        store: Arc<dyn Store>,
        limits: Limits,
        metrics: Arc<Metrics>,
        access: Arc<AccessCache>,
    ) -> Hub {
        let reg = Registry { dispatched: store.tail().head(), next_query: 1, ..Default::default() };
        Hub {
            inner: Arc::new(HubInner {
                store,
                reg: Mutex::new(reg),
                limits,
                next_conn: AtomicU64::new(1),
                metrics,
                access,
            }),
        }
    }

    fn access(&self) -> Arc<Access> {
        self.inner.access.get(&self.inner.store.schema())
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Starts the dispatch task. It ends when the store's tail is dropped.
    pub fn spawn_dispatcher(&self) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move { hub.dispatch_loop().await })
    }

    async fn dispatch_loop(&self) {
        let store = self.inner.store.clone();
        let mut watch = store.tail().watch();
        loop {
            let head = *watch.borrow_and_update();
            let from = self.inner.reg.lock().dispatched;
            if from >= head {
                if watch.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let events = match store.tail().read_after(from, 512) {
                TailRead::Events(e) => e,
                TailRead::TooOld => {
                    // Fell behind the in-memory tail: read the durable log instead.
                    match store.changes(ChangeQuery { since: from, limit: 1000, ..Default::default() }).await
                    {
                        Ok(p) => p.events.into_iter().map(Arc::new).collect(),
                        Err(e) => {
                            tracing::error!(error = %e, "hub cannot read the change log");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
            };
            self.dispatch(&events);
        }
    }

    /// Fans a run of consecutive events out to their subscribers. The registry lock is taken
    /// per event, so subscribes and joins interleave with a long run.
    fn dispatch(&self, events: &[Arc<ChangeEvent>]) {
        let access = self.access();
        let (mut delivered, mut committed) = (0u64, 0u64);
        let mut head = 0;
        for ev in events {
            let mut reg = self.inner.reg.lock();
            if ev.seq <= reg.dispatched {
                continue;
            }
            committed += 1;
            let slow = self.dispatch_one(&mut reg, &access, ev, &mut delivered);
            // A connection that missed this event must receive nothing after it: it is cut
            // off before the next event is dispatched, and resumes from its last sequence.
            for conn in slow {
                self.inner.metrics.slow_consumer_dropped();
                if let Some(c) = reg.conns.get(&conn) {
                    c.handle.close.close(4001, "slow_consumer");
                }
                Self::remove_conn(&mut reg, conn, &self.inner.metrics);
            }
            head = reg.dispatched;
        }
        if let Some(last) = events.last() {
            if let Ok(secs) = time_since(&last.committed_at) {
                self.inner.metrics.fanout_latency(secs);
            }
        }
        self.inner.metrics.events_committed(committed);
        self.inner.metrics.events_delivered(delivered);
        if committed > 0 {
            self.inner.metrics.set_log_head(head);
        }
    }

    /// Queues one event for every subscriber that sees it; returns the connections whose
    /// queue (or catch-up buffer) overflowed.
    fn dispatch_one(
        &self,
        reg: &mut Registry,
        access: &Access,
        ev: &ChangeEvent,
        delivered: &mut u64,
    ) -> Vec<ConnId> {
        let mut slow: Vec<ConnId> = Vec::new();
        reg.dispatched = ev.seq;
        let Some(ix) = reg.index.get(&ev.collection) else { return slow };
        let mut candidates: Vec<QueryId> = ix.scan.iter().copied().collect();
        for (field, by_value) in &ix.by_eq {
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
        // Rules that let everyone see every row need no per-subscriber work.
        let anon_open = access.open_to_all(&ev.collection);
        let buffer_cap = self.inner.limits.queue_frames * 4;
        for qid in candidates {
            let Some(q) = reg.queries.get_mut(&qid) else { continue };
            let m = q.matches(ev);
            if !m.0 && !m.1 {
                continue;
            }
            let mut frames = Frames::default();
            for (conn, state) in q.subscribers.iter_mut() {
                if matches!(state, SubState::Paused(_)) || slow.contains(conn) {
                    continue;
                }
                let Some(c) = reg.conns.get(conn) else { continue };
                let open = anon_open || c.who.is_admin();
                let Some(seen) = seen_by(access, &c.who, open, &ev.collection, ev, m) else { continue };
                let frame = frames.get(ev, qid, seen);
                match state {
                    SubState::Paused(_) => {}
                    SubState::Live(after) if ev.seq <= *after => {}
                    SubState::Live(_) => match c.handle.tx.try_send(frame) {
                        Ok(()) => *delivered += 1,
                        Err(_) => slow.push(*conn),
                    },
                    SubState::CatchingUp(buf) if buf.len() >= buffer_cap => slow.push(*conn),
                    SubState::CatchingUp(buf) => buf.push((ev.seq, frame)),
                }
            }
        }
        slow
    }

    // ---------- connections ----------

    pub fn connect(&self, handle: ConnHandle, who: Principal) -> Result<(ConnId, String), ConnHandle> {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let name = format!("c{id}");
        let entry = ConnEntry {
            handle,
            name: name.clone(),
            who,
            expired: false,
            queries: HashSet::new(),
            channels: HashSet::new(),
        };
        let mut reg = self.inner.reg.lock();
        if reg.conns.len() >= self.inner.limits.max_connections {
            return Err(entry.handle);
        }
        reg.conns.insert(id, entry);
        drop(reg);
        self.inner.metrics.connection_opened();
        Ok((id, name))
    }

    /// The token of a connection expired: stop delivering (subscriptions keep their place).
    pub fn pause(&self, conn: ConnId) {
        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let at = reg.dispatched;
        let Some(c) = reg.conns.get_mut(&conn) else { return };
        c.expired = true;
        for qid in &c.queries {
            if let Some(state) = reg.queries.get_mut(qid).and_then(|q| q.subscribers.get_mut(&conn)) {
                *state = match state {
                    // Frames already parked were due before expiry: keep their place.
                    SubState::CatchingUp(buf) => {
                        SubState::Paused(buf.first().map(|(s, _)| s - 1).unwrap_or(at))
                    }
                    _ => SubState::Paused(at),
                };
            }
        }
    }

    /// A fresh token: new rules apply from now on; paused subscriptions catch up on what they
    /// missed (under the new identity's rules) and go live again.
    pub fn reauthorize(&self, conn: ConnId, who: Principal) {
        let mut resumes = Vec::new();
        {
            let mut reg = self.inner.reg.lock();
            let reg = &mut *reg;
            let at = reg.dispatched;
            let Some(c) = reg.conns.get_mut(&conn) else { return };
            c.who = who;
            c.expired = false;
            for qid in &c.queries {
                if let Some(state) = reg.queries.get_mut(qid).and_then(|q| q.subscribers.get_mut(&conn)) {
                    if let SubState::Paused(since) = *state {
                        *state = SubState::CatchingUp(Vec::new());
                        resumes.push((*qid, since, at, c.handle.tx.clone()));
                    }
                }
            }
        }
        for (qid, since, at, tx) in resumes {
            let hub = self.clone();
            tokio::spawn(async move { hub.catch_up(conn, qid, None, tx, since, at, false).await });
        }
    }

    fn principal_of(&self, conn: ConnId) -> Option<Principal> {
        self.inner.reg.lock().conns.get(&conn).map(|c| c.who.clone())
    }

    pub fn disconnect(&self, conn: ConnId, reason: &str) {
        let mut reg = self.inner.reg.lock();
        Self::remove_conn(&mut reg, conn, &self.inner.metrics);
        self.inner.metrics.connection_closed(reason);
    }

    fn remove_conn(reg: &mut Registry, conn: ConnId, metrics: &Metrics) {
        let Some(entry) = reg.conns.get(&conn) else { return };
        let queries: Vec<QueryId> = entry.queries.iter().copied().collect();
        let channels: Vec<String> = entry.channels.iter().cloned().collect();
        for q in queries {
            Self::remove_subscriber(reg, conn, q);
        }
        for ch in channels {
            Self::leave_channel(reg, conn, &ch);
        }
        reg.conns.remove(&conn);
        metrics.set_subscriptions(reg.subscriptions);
        metrics.set_presence_members(reg.presence_members);
    }

    // ---------- subscriptions ----------

    /// Registers a subscription. Replies (`subscribed`, history, snapshot) go to the
    /// connection's queue; a refusal is returned.
    pub fn subscribe(
        &self,
        conn: ConnId,
        reference: Ref,
        collection: &str,
        filter: Option<&str>,
        start: Start,
    ) -> Result<(), ProtoError> {
        let err = |code, msg: String| ProtoError::new(&reference, code, msg);
        let schema = self.inner.store.schema();
        let Some(c) = schema.get(collection) else {
            return Err(err("collection_not_found", format!("collection '{collection}' does not exist")));
        };
        let who = self.principal_of(conn).ok_or_else(|| err("internal", "connection is closing".into()))?;
        if !self.access().can_list(&who, collection) {
            return Err(err("forbidden", format!("not allowed to subscribe to '{collection}'")));
        }
        let parsed = match filter.map(str::trim).filter(|f| !f.is_empty()) {
            None => None,
            Some(f) => Filter::parse(f).map_err(|e| err("bad_filter", e.message))?,
        };
        let bound =
            parsed.as_ref().map(|f| f.bind(c)).transpose().map_err(|e| err("bad_filter", e.message))?;
        let key = (collection.to_string(), parsed.as_ref().map(|f| f.to_string()).unwrap_or_default());

        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let limit = self.inner.limits.max_subscriptions;
        let Some(entry) = reg.conns.get_mut(&conn) else {
            return Err(err("internal", "connection is closing".into()));
        };
        if entry.queries.len() >= limit {
            return Err(err(
                "too_many_subscriptions",
                format!("a connection holds at most {limit} subscriptions"),
            ));
        }
        let qid = match reg.query_ids.get(&key) {
            Some(q) => *q,
            None => {
                let qid = reg.next_query;
                reg.next_query += 1;
                let ix = reg.index.entry(collection.to_string()).or_default();
                match bound
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
                reg.query_ids.insert(key.clone(), qid);
                reg.queries.insert(
                    qid,
                    Query {
                        collection: collection.to_string(),
                        filter: bound,
                        key: key.1.clone(),
                        subscribers: HashMap::new(),
                    },
                );
                qid
            }
        };
        let q = reg.queries.get_mut(&qid).ok_or_else(|| err("internal", "query vanished".into()))?;
        if q.subscribers.contains_key(&conn) {
            return Err(err(
                "already_subscribed",
                format!("already subscribed to this query as sub_id {qid}"),
            )
            .with_sub(qid));
        }
        entry.queries.insert(qid);
        reg.subscriptions += 1;
        self.inner.metrics.set_subscriptions(reg.subscriptions);
        let at = reg.dispatched;
        match start {
            Start::Now => {
                q.subscribers.insert(conn, SubState::Live(at));
                // Queued under the lock, so it precedes every change the hub sends next.
                let _ = entry.handle.tx.try_send(protocol::subscribed(&reference, qid, at));
            }
            Start::Since(since) => {
                q.subscribers.insert(conn, SubState::CatchingUp(Vec::new()));
                let hub = self.clone();
                let tx = entry.handle.tx.clone();
                tokio::spawn(async move { hub.catch_up(conn, qid, reference, tx, since, at, true).await });
            }
            Start::Snapshot => {
                q.subscribers.insert(conn, SubState::CatchingUp(Vec::new()));
                let hub = self.clone();
                let tx = entry.handle.tx.clone();
                let filter = parsed;
                tokio::spawn(async move { hub.snapshot(conn, qid, reference, tx, filter).await });
            }
        }
        Ok(())
    }

    pub fn unsubscribe(&self, conn: ConnId, reference: &Ref, qid: QueryId) -> Result<(), ProtoError> {
        let mut reg = self.inner.reg.lock();
        let subscribed = reg.conns.get(&conn).is_some_and(|c| c.queries.contains(&qid));
        if !subscribed {
            return Err(ProtoError::new(
                reference,
                "not_subscribed",
                format!("no subscription with sub_id {qid}"),
            ));
        }
        Self::remove_subscriber(&mut reg, conn, qid);
        self.inner.metrics.set_subscriptions(reg.subscriptions);
        Ok(())
    }

    fn remove_subscriber(reg: &mut Registry, conn: ConnId, qid: QueryId) {
        if let Some(c) = reg.conns.get_mut(&conn) {
            c.queries.remove(&qid);
        }
        let Some(q) = reg.queries.get_mut(&qid) else { return };
        if q.subscribers.remove(&conn).is_some() {
            reg.subscriptions -= 1;
        }
        if !q.subscribers.is_empty() {
            return;
        }
        let Some(q) = reg.queries.remove(&qid) else { return };
        reg.query_ids.remove(&(q.collection.clone(), q.key.clone()));
        if let Some(ix) = reg.index.get_mut(&q.collection) {
            ix.scan.remove(&qid);
            for by_value in ix.by_eq.values_mut() {
                for ids in by_value.values_mut() {
                    ids.remove(&qid);
                }
                by_value.retain(|_, ids| !ids.is_empty());
            }
            ix.by_eq.retain(|_, m| !m.is_empty());
            if ix.scan.is_empty() && ix.by_eq.is_empty() {
                reg.index.remove(&q.collection);
            }
        }
    }

    /// Drops a subscription whose start failed, after telling the client why.
    fn abandon(&self, conn: ConnId, qid: QueryId, tx: &mpsc::Sender<Utf8Bytes>, frame: Utf8Bytes) {
        let mut reg = self.inner.reg.lock();
        Self::remove_subscriber(&mut reg, conn, qid);
        self.inner.metrics.set_subscriptions(reg.subscriptions);
        let _ = tx.try_send(frame);
    }

    /// Sends the matching events in `(since, at]`, then goes live.
    /// Sends the matching events in `(since, at]`, then goes live. `announce`: reply
    /// `subscribed` first (not when resuming a paused subscription).
    #[allow(clippy::too_many_arguments)]
    async fn catch_up(
        &self,
        conn: ConnId,
        qid: QueryId,
        reference: Ref,
        tx: mpsc::Sender<Utf8Bytes>,
        since: u64,
        at: u64,
        announce: bool,
    ) {
        let store = self.inner.store.clone();
        let Some((filter, collection)) = self.query_parts(qid) else { return };
        let Some(who) = self.principal_of(conn) else { return };
        let access = self.access();
        let open = who.is_admin() || access.open_rows(&who, &collection);
        let q = Query { collection, filter, key: String::new(), subscribers: HashMap::new() };
        // `subscribed` goes out once the first read proved the history is still there;
        // otherwise the reply is `resync_required` instead.
        let mut announced = !announce;
        let mut cursor = since;
        while cursor < at {
            let events: Vec<Arc<ChangeEvent>> = match store.tail().read_after(cursor, 1000) {
                TailRead::Events(e) => e,
                TailRead::TooOld => {
                    let cq = ChangeQuery {
                        since: cursor,
                        limit: 1000,
                        collection: Some(q.collection.clone()),
                        ..Default::default()
                    };
                    match store.changes(cq).await {
                        Ok(p) if p.events.is_empty() => {
                            cursor = at;
                            Vec::new()
                        }
                        Ok(p) => p.events.into_iter().map(Arc::new).collect(),
                        Err(StoreError::Trimmed { .. }) => {
                            return self.abandon(
                                conn,
                                qid,
                                &tx,
                                protocol::resync_required(&reference, qid, "log_trimmed"),
                            );
                        }
                        Err(e) => {
                            let pe = ProtoError::new(
                                &reference,
                                "internal",
                                format!("cannot read the change log: {e}"),
                            );
                            return self.abandon(conn, qid, &tx, pe.frame());
                        }
                    }
                }
            };
            if !announced {
                announced = true;
                if tx.send(protocol::subscribed(&reference, qid, since)).await.is_err() {
                    return;
                }
            }
            if events.is_empty() {
                break;
            }
            for ev in events {
                if ev.seq > at {
                    cursor = at;
                    break;
                }
                cursor = ev.seq;
                if ev.collection != q.collection {
                    continue;
                }
                let m = q.matches(&ev);
                if let Some(seen) = seen_by(&access, &who, open, &q.collection, &ev, m) {
                    if tx.send(Frames::default().get(&ev, qid, seen)).await.is_err() {
                        return;
                    }
                }
            }
        }
        if !announced && tx.send(protocol::subscribed(&reference, qid, since)).await.is_err() {
            return;
        }
        self.go_live(conn, qid, &tx, since).await;
    }

    /// Sends the rows matching the query at a sequence S, then the changes after S.
    async fn snapshot(
        &self,
        conn: ConnId,
        qid: QueryId,
        reference: Ref,
        tx: mpsc::Sender<Utf8Bytes>,
        filter: Option<Filter>,
    ) {
        let Some((_, collection)) = self.query_parts(qid) else { return };
        let max = self.inner.limits.max_snapshot_rows;
        let q = ListQuery { filter, limit: Some(max + 1), ..Default::default() };
        let (page, seq) = match self.inner.store.snapshot(&collection, q).await {
            Ok(r) => r,
            Err(e) => {
                let pe = ProtoError::new(&reference, "internal", format!("snapshot failed: {e}"));
                return self.abandon(conn, qid, &tx, pe.frame());
            }
        };
        let mut page = page;
        if let Some(who) = self.principal_of(conn) {
            let access = self.access();
            if !access.open_rows(&who, &collection) {
                page.items.retain(|r| access.row_visible(&who, &collection, r));
            }
        }
        if page.items.len() > max {
            let pe = ProtoError::new(
                &reference,
                "snapshot_too_large",
                format!("the query matches more than {max} rows; narrow the filter"),
            );
            return self.abandon(conn, qid, &tx, pe.frame());
        }
        if tx.send(protocol::subscribed(&reference, qid, seq)).await.is_err() {
            return;
        }
        let chunks: Vec<&[livebase_core::Record]> =
            if page.items.is_empty() { vec![&[]] } else { page.items.chunks(500).collect() };
        let n = chunks.len();
        for (i, rows) in chunks.into_iter().enumerate() {
            if tx.send(protocol::snapshot(qid, seq, rows, i + 1 == n)).await.is_err() {
                return;
            }
        }
        self.go_live(conn, qid, &tx, seq).await;
    }

    /// Drains the frames parked during catch-up (skipping seq <= `covered`) and flips the
    /// subscription live once the buffer is empty under the lock.
    async fn go_live(&self, conn: ConnId, qid: QueryId, tx: &mpsc::Sender<Utf8Bytes>, covered: u64) {
        loop {
            let parked = {
                let mut reg = self.inner.reg.lock();
                let Some(state) = reg.queries.get_mut(&qid).and_then(|q| q.subscribers.get_mut(&conn)) else {
                    return;
                };
                match state {
                    // Live already, or paused again: `reauthorize` restarts the catch-up.
                    SubState::Live(_) | SubState::Paused(_) => return,
                    SubState::CatchingUp(buf) if buf.is_empty() => {
                        *state = SubState::Live(covered);
                        return;
                    }
                    SubState::CatchingUp(buf) => std::mem::take(buf),
                }
            };
            for (seq, frame) in parked {
                if seq > covered && tx.send(frame).await.is_err() {
                    return;
                }
            }
        }
    }

    fn query_parts(&self, qid: QueryId) -> Option<(Option<BoundFilter>, String)> {
        let reg = self.inner.reg.lock();
        reg.queries.get(&qid).map(|q| (q.filter.clone(), q.collection.clone()))
    }

    // ---------- channels: broadcast and presence ----------

    pub fn join(&self, conn: ConnId, reference: &Ref, channel: &str) -> Result<(), ProtoError> {
        check_channel(reference, channel)?;
        let Some(who) = self.principal_of(conn) else { return Ok(()) };
        if !self.access().channel_allowed(&who, channel) {
            return Err(ProtoError::new(reference, "forbidden", format!("not allowed to join '{channel}'")));
        }
        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let limit = self.inner.limits.max_channels;
        let Some(entry) = reg.conns.get_mut(&conn) else { return Ok(()) };
        if !entry.channels.contains(channel) && entry.channels.len() >= limit {
            return Err(ProtoError::new(
                reference,
                "too_many_channels",
                format!("a connection joins at most {limit} channels"),
            ));
        }
        entry.channels.insert(channel.to_string());
        let ch = reg.channels.entry(channel.to_string()).or_default();
        ch.members.insert(conn);
        let state = presence_json(&ch.presence, &reg.conns);
        let _ = entry_tx(&reg.conns, conn).map(|tx| {
            let _ = tx.try_send(protocol::ok(reference));
            let _ = tx.try_send(protocol::encode(
                &json!({"type": "presence_state", "channel": channel, "state": state}),
            ));
        });
        Ok(())
    }

    pub fn leave(&self, conn: ConnId, reference: &Ref, channel: &str) -> Result<(), ProtoError> {
        let mut reg = self.inner.reg.lock();
        if !reg.conns.get(&conn).is_some_and(|c| c.channels.contains(channel)) {
            return Err(ProtoError::new(reference, "not_joined", format!("not a member of '{channel}'")));
        }
        Self::leave_channel(&mut reg, conn, channel);
        self.inner.metrics.set_presence_members(reg.presence_members);
        Ok(())
    }

    fn leave_channel(reg: &mut Registry, conn: ConnId, channel: &str) {
        Self::untrack_in(reg, conn, channel);
        if let Some(c) = reg.conns.get_mut(&conn) {
            c.channels.remove(channel);
        }
        if let Some(ch) = reg.channels.get_mut(channel) {
            ch.members.remove(&conn);
            if ch.members.is_empty() && ch.presence.is_empty() {
                reg.channels.remove(channel);
            }
        }
    }

    pub fn broadcast(&self, conn: ConnId, b: &protocol::Broadcast) -> Result<(), ProtoError> {
        let reg = self.inner.reg.lock();
        let Some(ch) = reg.channels.get(&b.channel).filter(|ch| ch.members.contains(&conn)) else {
            return Err(ProtoError::new(
                &b.reference,
                "not_joined",
                format!("join '{}' before broadcasting", b.channel),
            ));
        };
        let from = reg.conns.get(&conn).map(|c| c.name.clone()).unwrap_or_default();
        let frame = protocol::encode(&json!({
            "type": "broadcast", "channel": b.channel, "event": b.event, "payload": b.payload, "from": from,
        }));
        for m in &ch.members {
            if *m == conn && !b.include_self {
                continue;
            }
            match reg.conns.get(m) {
                Some(c) if !c.expired => {
                    let _ = c.handle.tx.try_send(frame.clone());
                }
                _ => {}
            }
        }
        if b.ack {
            if let Some(tx) = entry_tx(&reg.conns, conn) {
                let _ = tx.try_send(protocol::ok(&b.reference));
            }
        }
        Ok(())
    }

    pub fn track(&self, conn: ConnId, t: &protocol::Track) -> Result<(), ProtoError> {
        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let Some(entry) = reg.conns.get(&conn).filter(|c| c.channels.contains(&t.channel)) else {
            return Err(ProtoError::new(
                &t.reference,
                "not_joined",
                format!("join '{}' before tracking presence", t.channel),
            ));
        };
        let key = t.key.clone().unwrap_or_else(|| entry.name.clone());
        if key.is_empty() || key.len() > 256 {
            return Err(ProtoError::new(&t.reference, "bad_request", "presence key must be 1 to 256 bytes"));
        }
        let name = entry.name.clone();
        let Some(ch) = reg.channels.get_mut(&t.channel) else { return Ok(()) };
        let mut leaves = BTreeMap::new();
        for (k, entries) in ch.presence.iter_mut() {
            if let Some(pos) = entries.iter().position(|(c, _)| *c == conn) {
                let (_, meta) = entries.remove(pos);
                leaves.insert(k.clone(), vec![json!({"conn_id": name, "meta": meta})]);
                reg.presence_members -= 1;
            }
        }
        ch.presence.retain(|_, e| !e.is_empty());
        ch.presence.entry(key.clone()).or_default().push((conn, t.meta.clone()));
        reg.presence_members += 1;
        let joins = json!({ key: [{"conn_id": name, "meta": t.meta}] });
        let frame = protocol::encode(
            &json!({"type": "presence_diff", "channel": t.channel, "joins": joins, "leaves": leaves}),
        );
        if let Some(tx) = entry_tx(&reg.conns, conn) {
            let _ = tx.try_send(protocol::ok(&t.reference));
        }
        for m in &ch.members {
            if let Some(tx) = entry_tx(&reg.conns, *m) {
                let _ = tx.try_send(frame.clone());
            }
        }
        self.inner.metrics.set_presence_members(reg.presence_members);
        Ok(())
    }

    pub fn untrack(&self, conn: ConnId, reference: &Ref, channel: &str) -> Result<(), ProtoError> {
        let mut reg = self.inner.reg.lock();
        if !reg.conns.get(&conn).is_some_and(|c| c.channels.contains(channel)) {
            return Err(ProtoError::new(reference, "not_joined", format!("not a member of '{channel}'")));
        }
        if let Some(tx) = entry_tx(&reg.conns, conn) {
            let _ = tx.try_send(protocol::ok(reference));
        }
        Self::untrack_in(&mut reg, conn, channel);
        self.inner.metrics.set_presence_members(reg.presence_members);
        Ok(())
    }

    /// Removes a connection's presence entries in a channel and tells the members.
    fn untrack_in(reg: &mut Registry, conn: ConnId, channel: &str) {
        let Some(ch) = reg.channels.get_mut(channel) else { return };
        let name = reg.conns.get(&conn).map(|c| c.name.clone()).unwrap_or_default();
        let mut leaves = BTreeMap::new();
        for (k, entries) in ch.presence.iter_mut() {
            if let Some(pos) = entries.iter().position(|(c, _)| *c == conn) {
                let (_, meta) = entries.remove(pos);
                leaves.insert(k.clone(), vec![json!({"conn_id": name, "meta": meta})]);
            }
        }
        if leaves.is_empty() {
            return;
        }
        reg.presence_members -= leaves.len() as i64;
        ch.presence.retain(|_, e| !e.is_empty());
        let frame = protocol::encode(
            &json!({"type": "presence_diff", "channel": channel, "joins": {}, "leaves": leaves}),
        );
        for m in &ch.members {
            if *m == conn {
                continue;
            }
            if let Some(tx) = entry_tx(&reg.conns, *m) {
                let _ = tx.try_send(frame.clone());
            }
        }
    }

    /// Asks every connection to close (e.g. 1001 when the server shuts down).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        let reg = self.inner.reg.lock();
        for c in reg.conns.values() {
            c.handle.close.close(code, reason);
        }
    }

    /// Total frames waiting in outbound queues (sampled for metrics).
    pub fn queue_depth(&self) -> i64 {
        let reg = self.inner.reg.lock();
        reg.conns.values().map(|c| (c.handle.tx.max_capacity() - c.handle.tx.capacity()) as i64).sum()
    }
}

fn entry_tx(conns: &HashMap<ConnId, ConnEntry>, conn: ConnId) -> Option<&mpsc::Sender<Utf8Bytes>> {
    conns.get(&conn).map(|c| &c.handle.tx)
}

fn presence_json(p: &BTreeMap<String, Vec<(ConnId, Value)>>, conns: &HashMap<ConnId, ConnEntry>) -> Value {
    let mut out = serde_json::Map::new();
    for (k, entries) in p {
        let list: Vec<Value> = entries
            .iter()
            .map(|(c, meta)| {
                json!({"conn_id": conns.get(c).map(|e| e.name.as_str()).unwrap_or_default(), "meta": meta})
            })
            .collect();
        out.insert(k.clone(), Value::Array(list));
    }
    Value::Object(out)
}

fn check_channel(reference: &Ref, channel: &str) -> Result<(), ProtoError> {
    if channel.is_empty() || channel.len() > 255 {
        return Err(ProtoError::new(reference, "bad_request", "channel names are 1 to 255 bytes"));
    }
    Ok(())
}

/// Seconds since a canonical timestamp.
fn time_since(ts: &str) -> Result<f64, ()> {
    let t =
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).map_err(|_| ())?;
    Ok((time::OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0))
}

impl Hub {
    /// Every open channel: its name, the connections that joined it and its presence entries
    /// (read-only; for the admin status endpoint).
    pub fn channel_counts(&self) -> Vec<(String, usize, usize)> {
        let reg = self.inner.reg.lock();
        let mut out: Vec<(String, usize, usize)> = reg
            .channels
            .iter()
            .map(|(name, ch)| (name.clone(), ch.members.len(), ch.presence.values().map(Vec::len).sum()))
            .collect();
        out.sort();
        out
    }
}
