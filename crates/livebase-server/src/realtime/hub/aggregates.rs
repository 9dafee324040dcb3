//! Live aggregates: an aggregate over a query, computed once from a snapshot and then kept
//! current from the change feed, shared by every subscriber that sees the same rows.
//!
//! An aggregate query has one *view* per distinct visibility (everyone who may see every row
//! shares one; a caller whose rules hide rows gets the view of its own claims). A view starts
//! `Building`: a task reads a snapshot and folds it (`Service::aggregate`) while the dispatcher
//! parks the view's events; the task then applies the parked events after the snapshot's
//! sequence and the view is `Live`. From then on each event costs one fold (O(1); O(log n) for
//! min/max) and, when values moved, one frame per codec for all of the view's subscribers.

use super::registry::{ConnId, QueryId, Registry};
use super::Hub;
use crate::access::Access;
use crate::auth::Principal;
use crate::realtime::codec::{Delivery, PerCodec};
use crate::realtime::protocol::{ProtoError, Ref};
use livebase_core::aggregate::{AggregateDelta, AggregateSpec, AggregateState};
use livebase_core::filter::{BoundFilter, Filter};
use livebase_core::{ChangeEvent, Record};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub(super) enum ViewState {
    /// The snapshot is being read; events dispatched meanwhile wait here, and so do the
    /// subscribers (with the `ref` of their subscribe).
    Building { parked: Vec<Arc<ChangeEvent>>, waiting: Vec<(ConnId, Option<Ref>)> },
    /// Current at `seq`.
    Live { state: AggregateState, seq: u64 },
}

pub(super) struct AggView {
    /// Whose rules decide which rows count (one representative of the view).
    who: Principal,
    /// Every row counts (admin, or rules that hide nothing): no per-row check.
    open: bool,
    state: ViewState,
    subscribers: HashSet<ConnId>,
}

pub(super) struct AggQuery {
    pub collection: String,
    filter: Option<BoundFilter>,
    /// The unbound filter, for the snapshot.
    parsed: Option<Filter>,
    spec: Arc<AggregateSpec>,
    key: (String, String),
    views: HashMap<String, AggView>,
    /// Subscriber → the view it is in.
    conns: HashMap<ConnId, String>,
}

/// Which rows a caller counts: everyone who sees every row shares `*`; otherwise the claims
/// that rules can read (not the token's timing claims).
fn view_key(access: &Access, who: &Principal, collection: &str) -> (String, bool) {
    if who.is_admin() || access.open_rows(who, collection) {
        return ("*".into(), true);
    }
    let mut claims = who.claims().clone();
    for k in ["exp", "iat", "nbf", "jti"] {
        claims.remove(k);
    }
    (format!("{}|{}", who.scope(), serde_json::Value::Object(claims)), false)
}

/// The rows of a change that count for a view: (old, new).
fn counted<'e>(
    collection: &str,
    filter: &Option<BoundFilter>,
    access: &Access,
    v: &AggView,
    e: &'e ChangeEvent,
) -> (Option<&'e Record>, Option<&'e Record>) {
    let counts = |r: &'e Option<Record>| {
        r.as_ref().filter(|r| {
            filter.as_ref().is_none_or(|f| f.matches(r))
                && (v.open || access.row_visible(&v.who, collection, r))
        })
    };
    (counts(&e.old), counts(&e.new))
}

impl Hub {
    /// Subscribes a connection to a live aggregate: `subscribed`, then the current values
    /// (`full`), then a frame per change that moves them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn subscribe_aggregate_in(
        &self,
        reg: &mut Registry,
        access: &Access,
        conn: ConnId,
        reference: Ref,
        who: Principal,
        collection: &str,
        filter: (Option<Filter>, Option<BoundFilter>),
        spec: AggregateSpec,
    ) -> Result<(), ProtoError> {
        let fkey = filter.0.as_ref().map(|f| f.to_string()).unwrap_or_default();
        let key = (collection.to_string(), format!("{fkey}#{}", spec.key()));
        let qid = match reg.agg_ids.get(&key) {
            Some(q) => *q,
            None => {
                let qid = reg.next_query;
                reg.next_query += 1;
                reg.agg_index.entry(collection.to_string()).or_default().insert(qid);
                reg.agg_ids.insert(key.clone(), qid);
                reg.aggregates.insert(
                    qid,
                    AggQuery {
                        collection: collection.to_string(),
                        filter: filter.1,
                        parsed: filter.0,
                        spec: Arc::new(spec),
                        key,
                        views: HashMap::new(),
                        conns: HashMap::new(),
                    },
                );
                qid
            }
        };
        let Some(q) = reg.aggregates.get_mut(&qid) else { return Ok(()) };
        if q.conns.contains_key(&conn) {
            return Err(ProtoError::new(
                &reference,
                "already_subscribed",
                format!("already subscribed to this aggregate as sub_id {qid}"),
            )
            .with_sub(qid));
        }
        let Some(entry) = reg.conns.get_mut(&conn) else { return Ok(()) };
        entry.queries.insert(qid);
        reg.subscriptions += 1;
        self.inner.metrics.set_subscriptions(reg.subscriptions);
        self.join_view(reg, access, qid, conn, Some(reference), who);
        Ok(())
    }

    /// Puts a subscriber in the view of its visibility: answered at once when the view is
    /// live, else when its snapshot is folded (the first subscriber starts that). With a
    /// `reference`, `subscribed` precedes the values.
    fn join_view(
        &self,
        reg: &mut Registry,
        access: &Access,
        qid: QueryId,
        conn: ConnId,
        reference: Option<Ref>,
        who: Principal,
    ) {
        let Some(q) = reg.aggregates.get_mut(&qid) else { return };
        let (vkey, open) = view_key(access, &who, &q.collection);
        q.conns.insert(conn, vkey.clone());
        let epoch = self.inner.feed.epoch().clone();
        match q.views.get_mut(&vkey) {
            Some(v) => {
                v.subscribers.insert(conn);
                match &mut v.state {
                    ViewState::Building { waiting, .. } => waiting.push((conn, reference)),
                    ViewState::Live { state, seq } => {
                        if let Some(c) = reg.conns.get(&conn) {
                            if let Some(reference) = &reference {
                                c.send(Delivery::Subscribed {
                                    reference,
                                    sub_id: qid,
                                    seq: *seq,
                                    epoch: &epoch,
                                });
                            }
                            let groups = state.groups();
                            c.send(Delivery::Aggregate {
                                sub_id: qid,
                                seq: *seq,
                                groups: &groups,
                                removed: &[],
                                full: true,
                            });
                        }
                    }
                }
            }
            None => {
                let state = ViewState::Building { parked: Vec::new(), waiting: vec![(conn, reference)] };
                let view = AggView { who: who.clone(), open, state, subscribers: HashSet::from([conn]) };
                q.views.insert(vkey.clone(), view);
                let (collection, filter, spec) = (q.collection.clone(), q.parsed.clone(), q.spec.clone());
                let hub = self.clone();
                tokio::spawn(async move { hub.build_view(qid, vkey, who, collection, filter, spec).await });
            }
        }
    }

    /// Reads and folds a view's snapshot, applies what was dispatched meanwhile, answers the
    /// waiting subscribers.
    async fn build_view(
        &self,
        qid: QueryId,
        vkey: String,
        who: Principal,
        collection: String,
        filter: Option<Filter>,
        spec: Arc<AggregateSpec>,
    ) {
        let built = self.inner.service.aggregate(&who, &collection, filter, spec).await;
        let access = self.access();
        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let dispatched = reg.dispatched;
        let Some(q) = reg.aggregates.get_mut(&qid) else { return };
        let Some(mut v) = q.views.remove(&vkey) else { return };
        let ViewState::Building { parked, waiting } =
            std::mem::replace(&mut v.state, ViewState::Building { parked: Vec::new(), waiting: Vec::new() })
        else {
            q.views.insert(vkey, v);
            return;
        };
        let (mut state, snap_seq) = match built {
            Ok(b) => b,
            Err(e) => {
                let code = match e {
                    crate::service::ServiceError::TooManyRows(_) => "aggregate_too_large",
                    crate::service::ServiceError::Store(livebase_store::StoreError::Forbidden(_)) => {
                        "forbidden"
                    }
                    _ => "internal",
                };
                for (conn, reference) in &waiting {
                    if let Some(c) = reg.conns.get(conn) {
                        let reference = reference.clone().flatten();
                        c.send(Delivery::Error(&ProtoError::new(&reference, code, e.to_string())));
                    }
                }
                for conn in v.subscribers {
                    q.conns.remove(&conn);
                    if let Some(c) = reg.conns.get_mut(&conn) {
                        c.queries.remove(&qid);
                        reg.subscriptions -= 1;
                    }
                }
                self.inner.metrics.set_subscriptions(reg.subscriptions);
                Self::drop_aggregate_if_unused(reg, qid);
                return;
            }
        };
        for ev in parked.iter().filter(|e| e.seq > snap_seq) {
            let (old, new) = counted(&q.collection, &q.filter, &access, &v, ev);
            state.apply(old, new);
        }
        let seq = snap_seq.max(dispatched);
        let epoch = self.inner.feed.epoch().clone();
        let groups = state.groups();
        for (conn, reference) in &waiting {
            if let Some(c) = reg.conns.get(conn) {
                if let Some(reference) = reference {
                    c.send(Delivery::Subscribed { reference, sub_id: qid, seq, epoch: &epoch });
                }
                c.send(Delivery::Aggregate { sub_id: qid, seq, groups: &groups, removed: &[], full: true });
            }
        }
        v.state = ViewState::Live { state, seq };
        q.views.insert(vkey, v);
    }

    /// Folds one event into every view of the collection's aggregates and sends what moved:
    /// one frame per (view, codec), shared by the view's subscribers. Connections whose
    /// queue overflowed are added to `slow`.
    pub(super) fn dispatch_aggregates(
        &self,
        reg: &mut Registry,
        access: &Access,
        ev: &Arc<ChangeEvent>,
        delivered: &mut u64,
        slow: &mut Vec<ConnId>,
    ) {
        let Some(ids) = reg.agg_index.get(&ev.collection) else { return };
        for qid in ids {
            let Some(q) = reg.aggregates.get_mut(qid) else { continue };
            for v in q.views.values_mut() {
                let (old, new) = counted(&q.collection, &q.filter, access, v, ev);
                if old.is_none() && new.is_none() {
                    continue;
                }
                let (delta, seq): (AggregateDelta, u64) = match &mut v.state {
                    ViewState::Building { parked, .. } => {
                        parked.push(ev.clone());
                        continue;
                    }
                    ViewState::Live { seq, .. } if ev.seq <= *seq => continue,
                    ViewState::Live { state, seq } => {
                        *seq = ev.seq;
                        (state.apply(old, new), ev.seq)
                    }
                };
                if delta.is_empty() {
                    continue;
                }
                let d = Delivery::Aggregate {
                    sub_id: *qid,
                    seq,
                    groups: &delta.changed,
                    removed: &delta.removed,
                    full: false,
                };
                let mut frames = PerCodec::new(d);
                for conn in &v.subscribers {
                    let Some(c) = reg.conns.get(conn).filter(|c| !c.expired) else { continue };
                    if slow.contains(conn) {
                        continue;
                    }
                    let Some(f) = frames.frame(&c.handle.codec) else { continue };
                    match c.handle.tx.try_send(f) {
                        Ok(()) => *delivered += 1,
                        Err(super::registry::Refused::Full) => slow.push(*conn),
                        Err(super::registry::Refused::Closed) => {}
                    }
                }
            }
        }
    }

    /// Takes a subscriber out of an aggregate (its view and the query go when unused).
    pub(super) fn remove_aggregate_subscriber(reg: &mut Registry, conn: ConnId, qid: QueryId) -> bool {
        let Some(q) = reg.aggregates.get_mut(&qid) else { return false };
        if let Some(vkey) = q.conns.remove(&conn) {
            reg.subscriptions -= 1;
            if let Some(v) = q.views.get_mut(&vkey) {
                v.subscribers.remove(&conn);
                if let ViewState::Building { waiting, .. } = &mut v.state {
                    waiting.retain(|(c, _)| *c != conn);
                }
                if v.subscribers.is_empty() {
                    q.views.remove(&vkey);
                }
            }
        }
        Self::drop_aggregate_if_unused(reg, qid);
        true
    }

    fn drop_aggregate_if_unused(reg: &mut Registry, qid: QueryId) {
        let Some(q) = reg.aggregates.get(&qid) else { return };
        if !q.conns.is_empty() {
            return;
        }
        if let Some(q) = reg.aggregates.remove(&qid) {
            reg.agg_ids.remove(&q.key);
            if let Some(ids) = reg.agg_index.get_mut(&q.collection) {
                ids.remove(&qid);
                if ids.is_empty() {
                    reg.agg_index.remove(&q.collection);
                }
            }
        }
    }

    /// A connection's identity changed (fresh token): its aggregate subscriptions move to
    /// the view of the new identity and get that view's current values.
    pub(super) fn reauthorize_aggregates(
        &self,
        reg: &mut Registry,
        access: &Access,
        conn: ConnId,
        who: &Principal,
    ) {
        let qids: Vec<QueryId> = reg
            .conns
            .get(&conn)
            .map(|c| c.queries.iter().copied().filter(|q| reg.aggregates.contains_key(q)).collect())
            .unwrap_or_default();
        for qid in qids {
            let Some(q) = reg.aggregates.get_mut(&qid) else { continue };
            if let Some(vkey) = q.conns.remove(&conn) {
                if let Some(v) = q.views.get_mut(&vkey) {
                    v.subscribers.remove(&conn);
                    if v.subscribers.is_empty() {
                        q.views.remove(&vkey);
                    }
                }
            }
            self.join_view(reg, access, qid, conn, None, who.clone());
        }
    }
}
