//! Subscriptions, and stitching those that start in the past to the live stream.
//!
//! A subscription with `since` (resume) or a snapshot (live query) starts parked: the hub
//! buffers its live frames while a catch-up task sends the history or the rows; the task then
//! drains the buffer, skipping sequences the history already covered, and flips it live
//! under the registry lock — so no frame is lost, repeated or reordered.

use super::dispatch::{seen_by, FrameCache};
use super::registry::{ConnEntry, ConnId, Ops, Outlet, Query, QueryId, Registry, SubState};
use super::Hub;
use crate::access::Access;
use crate::auth::Principal;
use crate::realtime::codec::{Codec, Delivery};
use crate::realtime::protocol::{ProtoError, Ref};
use livebase_core::filter::{BoundFilter, Filter};
use livebase_core::query::ListQuery;
use livebase_store::StoreError;
use std::collections::HashMap;
use std::sync::Arc;

/// How a subscription starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// With the next event.
    Now,
    /// After `seq` of the log named `epoch` (a resume). Without an epoch the position is
    /// taken to be in the current log.
    Since { seq: u64, epoch: Option<String> },
    /// With the rows that match now, then every change after them (a live query).
    Snapshot,
}

/// One subscription of a [`Hub::subscribe_set`]: a collection, a filter in query form, and
/// the operations it follows.
#[derive(Debug, Clone, PartialEq)]
pub struct SetSpec {
    pub collection: String,
    pub filter: Option<String>,
    pub ops: Ops,
}

/// A subscription's channel back to its connection: the queue and the codec.
#[derive(Clone)]
struct Outbox {
    tx: Arc<dyn Outlet>,
    codec: Arc<dyn Codec>,
}

impl Outbox {
    async fn send(&self, d: Delivery<'_>) -> bool {
        match self.codec.encode(d) {
            Some(f) => self.tx.send(f).await.is_ok(),
            None => !self.tx.is_closed(),
        }
    }
}

/// The connection, when it may hold `more` subscriptions besides those it has.
fn room_for<'r>(
    reg: &'r Registry,
    conn: ConnId,
    reference: &Ref,
    limit: usize,
    more: usize,
) -> Result<&'r ConnEntry, ProtoError> {
    let Some(entry) = reg.conns.get(&conn) else {
        return Err(ProtoError::new(reference, "internal", "connection is closing"));
    };
    if entry.queries.len() + more > limit {
        return Err(ProtoError::new(
            reference,
            "too_many_subscriptions",
            format!("a connection holds at most {limit} subscriptions"),
        ));
    }
    Ok(entry)
}

/// A checked subscription request: the caller, the rules, the filter parsed and bound.
type Prepared = (Principal, Arc<Access>, Option<Filter>, Option<BoundFilter>);

/// How long a resume from a position past the feed's head waits for the head to get there
/// (a live query's snapshot may be ahead of the published head by one sync).
const AHEAD_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Hub {
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
        let (_, _, parsed, bound) = self.prepare(conn, &reference, collection, filter)?;
        let key = parsed.as_ref().map(|f| f.to_string()).unwrap_or_default();

        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let limit = self.inner.limits.max_subscriptions;
        room_for(reg, conn, &reference, limit, 1)?;
        let qid = reg.query_for(collection, key, bound, Ops::ALL);
        let q = reg.queries.get_mut(&qid).ok_or_else(|| err("internal", "query vanished".into()))?;
        if q.subscribers.contains_key(&conn) {
            return Err(err(
                "already_subscribed",
                format!("already subscribed to this query as sub_id {qid}"),
            )
            .with_sub(qid));
        }
        let Some(entry) = reg.conns.get_mut(&conn) else {
            return Err(err("internal", "connection is closing".into()));
        };
        let epoch = self.inner.feed.epoch();
        if let Start::Since { epoch: Some(theirs), .. } = &start {
            if theirs != epoch.as_str() {
                // Their position is in another log: resuming would start at the wrong place.
                // An unused query made above is dropped again.
                entry.send(Delivery::ResyncRequired {
                    reference: &reference,
                    sub_id: qid,
                    reason: "epoch_changed",
                });
                reg.remove_subscriber(conn, qid);
                return Ok(());
            }
        }
        entry.queries.insert(qid);
        reg.subscriptions += 1;
        self.inner.metrics.set_subscriptions(reg.subscriptions);
        let at = reg.dispatched;
        let out = Outbox { tx: entry.handle.tx.clone(), codec: entry.handle.codec.clone() };
        match start {
            Start::Now => {
                q.subscribers.insert(conn, SubState::Live(at));
                // Queued under the lock, so it precedes every change the hub sends next.
                entry.send(Delivery::Subscribed { reference: &reference, sub_id: qid, seq: at, epoch });
            }
            Start::Since { seq, .. } => {
                q.subscribers.insert(conn, SubState::CatchingUp(Vec::new()));
                let hub = self.clone();
                tokio::spawn(async move { hub.catch_up(conn, qid, reference, out, seq, at, true).await });
            }
            Start::Snapshot => {
                q.subscribers.insert(conn, SubState::CatchingUp(Vec::new()));
                let hub = self.clone();
                let filter = parsed;
                tokio::spawn(async move { hub.snapshot(conn, qid, reference, out, filter).await });
            }
        }
        Ok(())
    }

    /// Registers several subscriptions at once, all live from the same position, and answers
    /// with one [`Delivery::SubscribedSet`] naming them in the order asked (a request naming
    /// the same query twice gets the same id twice). Nothing is registered when one of them
    /// is refused. The reply is queued under the hub's lock, so it precedes every change of
    /// these queries. Returns the ids.
    pub fn subscribe_set(
        &self,
        conn: ConnId,
        reference: &Ref,
        specs: &[SetSpec],
    ) -> Result<Vec<QueryId>, ProtoError> {
        let mut prepared = Vec::with_capacity(specs.len());
        for s in specs {
            let (_, _, parsed, bound) = self.prepare(conn, reference, &s.collection, s.filter.as_deref())?;
            let key = parsed.as_ref().map(|f| f.to_string()).unwrap_or_default();
            prepared.push((s.collection.as_str(), key, bound, s.ops));
        }
        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let limit = self.inner.limits.max_subscriptions;
        room_for(reg, conn, reference, limit, prepared.len())?;
        let at = reg.dispatched;
        let mut ids = Vec::with_capacity(prepared.len());
        for (collection, key, bound, ops) in prepared {
            let qid = reg.query_for(collection, key, bound, ops);
            ids.push(qid);
            let Some(q) = reg.queries.get_mut(&qid) else { continue };
            if q.subscribers.contains_key(&conn) {
                continue;
            }
            q.subscribers.insert(conn, SubState::Live(at));
            reg.subscriptions += 1;
            if let Some(entry) = reg.conns.get_mut(&conn) {
                entry.queries.insert(qid);
            }
        }
        self.inner.metrics.set_subscriptions(reg.subscriptions);
        let epoch = self.inner.feed.epoch();
        if let Some(entry) = reg.conns.get(&conn) {
            entry.send(Delivery::SubscribedSet { reference, sub_ids: &ids, seq: at, epoch });
        }
        Ok(ids)
    }

    /// What every subscription checks first: the collection exists, the caller may list it,
    /// the filter parses and binds. Returns the caller, the rules, and the filter.
    fn prepare(
        &self,
        conn: ConnId,
        reference: &Ref,
        collection: &str,
        filter: Option<&str>,
    ) -> Result<Prepared, ProtoError> {
        let err = |code, msg: String| ProtoError::new(reference, code, msg);
        let schema = self.inner.store.schema();
        let Some(c) = schema.get(collection) else {
            return Err(err("collection_not_found", format!("collection '{collection}' does not exist")));
        };
        let who = self.principal_of(conn).ok_or_else(|| err("internal", "connection is closing".into()))?;
        let access = self.access();
        if !access.can_list(&who, collection) {
            return Err(err("forbidden", format!("not allowed to subscribe to '{collection}'")));
        }
        let parsed = match filter.map(str::trim).filter(|f| !f.is_empty()) {
            None => None,
            Some(f) => Filter::parse(f).map_err(|e| err("bad_filter", e.message))?,
        };
        let bound =
            parsed.as_ref().map(|f| f.bind(c)).transpose().map_err(|e| err("bad_filter", e.message))?;
        Ok((who, access, parsed, bound))
    }

    /// Registers a live aggregate over `(collection, filter)`: `subscribed`, the current values
    /// (`aggregate` with `full: true`), then the groups each change moves. A resume (`since`)
    /// is answered with the current values: an aggregate resumes by value.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe_aggregate(
        &self,
        conn: ConnId,
        reference: Ref,
        collection: &str,
        filter: Option<&str>,
        start: Start,
        group: &[String],
        fns: &[String],
    ) -> Result<(), ProtoError> {
        let (who, access, parsed, bound) = self.prepare(conn, &reference, collection, filter)?;
        let spec = self
            .inner
            .service
            .aggregate_spec(collection, group, fns)
            .map_err(|e| ProtoError::new(&reference, "invalid_aggregate", e.to_string()))?;
        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let limit = self.inner.limits.max_subscriptions;
        let entry = room_for(reg, conn, &reference, limit, 1)?;
        if let Start::Since { epoch: Some(theirs), .. } = &start {
            if theirs != self.inner.feed.epoch().as_str() {
                entry.send(Delivery::ResyncRequired {
                    reference: &reference,
                    sub_id: 0,
                    reason: "epoch_changed",
                });
                return Ok(());
            }
        }
        self.subscribe_aggregate_in(reg, &access, conn, reference, who, collection, (parsed, bound), spec)
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
        reg.remove_subscriber(conn, qid);
        self.inner.metrics.set_subscriptions(reg.subscriptions);
        Ok(())
    }

    /// Drops a subscription whose start failed, after telling the client why.
    fn abandon(&self, conn: ConnId, qid: QueryId, out: &Outbox, d: Delivery<'_>) {
        let mut reg = self.inner.reg.lock();
        reg.remove_subscriber(conn, qid);
        self.inner.metrics.set_subscriptions(reg.subscriptions);
        if let Some(f) = out.codec.encode(d) {
            let _ = out.tx.try_send(f);
        }
    }

    /// Resumes a paused subscription (fresh token): the events in `(since, at]`, then live.
    pub(super) fn resume_paused(&self, conn: ConnId, qid: QueryId, since: u64, at: u64) {
        let out = {
            let reg = self.inner.reg.lock();
            let Some(c) = reg.conns.get(&conn) else { return };
            Outbox { tx: c.handle.tx.clone(), codec: c.handle.codec.clone() }
        };
        let hub = self.clone();
        tokio::spawn(async move { hub.catch_up(conn, qid, None, out, since, at, false).await });
    }

    /// Sends the matching events in `(since, at]`, then goes live. `announce`: reply
    /// `subscribed` first (not when resuming a paused subscription).
    #[allow(clippy::too_many_arguments)]
    async fn catch_up(
        &self,
        conn: ConnId,
        qid: QueryId,
        reference: Ref,
        out: Outbox,
        since: u64,
        at: u64,
        announce: bool,
    ) {
        let feed = self.inner.feed.clone();
        let Some((filter, collection, ops)) = self.query_parts(qid) else { return };
        let Some(who) = self.principal_of(conn) else { return };
        let access = self.access();
        let open = who.is_admin() || access.open_rows(&who, &collection);
        let q = Query { collection, filter, ops, key: String::new(), subscribers: HashMap::new() };
        if announce && since > feed.head() {
            // A position this log has not reached: wait a moment (a snapshot can be one sync
            // ahead of the published head), else it belongs to a log that has been replaced
            // by an older copy, and resuming would skip what this log writes next.
            let mut watch = feed.watch();
            let reached = tokio::time::timeout(AHEAD_GRACE, watch.wait_for(|h| *h >= since)).await;
            if !matches!(reached, Ok(Ok(_))) {
                let d =
                    Delivery::ResyncRequired { reference: &reference, sub_id: qid, reason: "ahead_of_log" };
                return self.abandon(conn, qid, &out, d);
            }
        }
        // `subscribed` goes out once the first read proved the history is still there;
        // otherwise the reply is `resync_required` instead.
        let mut announced = !announce;
        let mut cursor = since;
        let epoch = feed.epoch().clone();
        while cursor < at {
            let events = match feed.read_after(cursor, 1000, Some(&q.collection)).await {
                Ok(e) if e.is_empty() => {
                    cursor = at;
                    e
                }
                Ok(e) => e,
                Err(StoreError::Trimmed { .. }) => {
                    let d = Delivery::ResyncRequired {
                        reference: &reference,
                        sub_id: qid,
                        reason: "log_trimmed",
                    };
                    return self.abandon(conn, qid, &out, d);
                }
                Err(e) => {
                    let pe =
                        ProtoError::new(&reference, "internal", format!("cannot read the change log: {e}"));
                    return self.abandon(conn, qid, &out, Delivery::Error(&pe));
                }
            };
            if !announced {
                announced = true;
                if !out
                    .send(Delivery::Subscribed {
                        reference: &reference,
                        sub_id: qid,
                        seq: since,
                        epoch: &epoch,
                    })
                    .await
                {
                    return;
                }
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
                    let frame = FrameCache::default().get(&out.codec, &ev, qid, seen);
                    if out.tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
        if !announced
            && !out
                .send(Delivery::Subscribed { reference: &reference, sub_id: qid, seq: since, epoch: &epoch })
                .await
        {
            return;
        }
        self.go_live(conn, qid, &out, since).await;
    }

    /// Sends the rows matching the query at a sequence S, then the changes after S.
    async fn snapshot(
        &self,
        conn: ConnId,
        qid: QueryId,
        reference: Ref,
        out: Outbox,
        filter: Option<Filter>,
    ) {
        let Some((_, collection, _)) = self.query_parts(qid) else { return };
        let max = self.inner.limits.max_snapshot_rows;
        let q = ListQuery { filter, limit: Some(max + 1), ..Default::default() };
        let Some(who) = self.principal_of(conn) else { return };
        let (page, seq) = match self.inner.service.snapshot(&who, &collection, q).await {
            Ok(r) => r,
            Err(e) => {
                let pe = ProtoError::new(&reference, "internal", format!("snapshot failed: {e}"));
                return self.abandon(conn, qid, &out, Delivery::Error(&pe));
            }
        };
        if page.items.len() > max {
            let pe = ProtoError::new(
                &reference,
                "snapshot_too_large",
                format!("the query matches more than {max} rows; narrow the filter"),
            );
            return self.abandon(conn, qid, &out, Delivery::Error(&pe));
        }
        let epoch = self.inner.feed.epoch().clone();
        if !out.send(Delivery::Subscribed { reference: &reference, sub_id: qid, seq, epoch: &epoch }).await {
            return;
        }
        let chunks: Vec<&[livebase_core::Record]> =
            if page.items.is_empty() { vec![&[]] } else { page.items.chunks(500).collect() };
        let n = chunks.len();
        for (i, rows) in chunks.into_iter().enumerate() {
            if !out.send(Delivery::Snapshot { sub_id: qid, seq, rows, done: i + 1 == n }).await {
                return;
            }
        }
        self.go_live(conn, qid, &out, seq).await;
    }

    /// Drains the frames parked during catch-up (skipping seq <= `covered`) and flips the
    /// subscription live once the buffer is empty under the lock.
    async fn go_live(&self, conn: ConnId, qid: QueryId, out: &Outbox, covered: u64) {
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
                if seq > covered && out.tx.send(frame).await.is_err() {
                    return;
                }
            }
        }
    }

    fn query_parts(&self, qid: QueryId) -> Option<(Option<BoundFilter>, String, Ops)> {
        let reg = self.inner.reg.lock();
        reg.queries.get(&qid).map(|q| (q.filter.clone(), q.collection.clone(), q.ops))
    }
}
