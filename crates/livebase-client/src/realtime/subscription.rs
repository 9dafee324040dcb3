//! Subscriptions and live queries.

use super::state::Command;
use crate::error::{Error, Result};
use crate::protocol::{Change, View};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use tokio::sync::{mpsc, oneshot};

/// An event of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum SubEvent {
    /// A committed change (exactly once, in `seq` order, across reconnects).
    Change(Change),
    /// Every row matching the query at `seq` (all snapshot chunks, assembled); changes after
    /// `seq` follow. A live query replaces its rows with these.
    Snapshot { seq: u64, rows: Vec<Value> },
    /// The server cannot resume from the subscription's last seq: its log no longer reaches
    /// back that far (`log_trimmed`), or the seq belongs to another epoch of the server
    /// (`epoch_changed`). Changes were missed. A live query fetches a fresh snapshot by
    /// itself; a plain subscription continues live from now on (re-read what you need).
    ResyncRequired { reason: String },
    /// A live aggregate's values at `seq`: every group (`full`: replaces what was held), or
    /// the groups a change moved (current values) and, in `removed`, the group fields of the
    /// groups it emptied. [`LiveAggregate`] applies these.
    Aggregate { seq: u64, full: bool, groups: Vec<Map<String, Value>>, removed: Vec<Map<String, Value>> },
    /// The server refused to resume the subscription after a reconnect (e.g. the collection
    /// was dropped, or the token no longer grants access). The stream ends after this.
    Error { code: String, message: String },
}

/// A stream of changes of one query. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    local: u64,
    collection: String,
    filter: Option<String>,
    rx: mpsc::UnboundedReceiver<SubEvent>,
    cmd: mpsc::UnboundedSender<Command>,
    last_seq: Option<u64>,
}

impl Subscription {
    pub(crate) fn new(
        local: u64,
        collection: String,
        filter: Option<String>,
        rx: mpsc::UnboundedReceiver<SubEvent>,
        cmd: mpsc::UnboundedSender<Command>,
    ) -> Subscription {
        Subscription { local, collection, filter, rx, cmd, last_seq: None }
    }

    pub fn collection(&self) -> &str {
        &self.collection
    }

    pub fn filter(&self) -> Option<&str> {
        self.filter.as_deref()
    }

    /// The seq of the last change (or snapshot) returned by [`Subscription::next`].
    pub fn seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The next event; `None` once the subscription has ended (connection closed, or after
    /// [`SubEvent::Error`]).
    pub async fn next(&mut self) -> Option<SubEvent> {
        loop {
            let ev = self.rx.recv().await?;
            if self.accept(&ev) {
                return Some(ev);
            }
        }
    }

    /// The next event if one is already queued.
    pub fn try_next(&mut self) -> Option<SubEvent> {
        loop {
            let ev = self.rx.try_recv().ok()?;
            if self.accept(&ev) {
                return Some(ev);
            }
        }
    }

    /// Tracks the seq; drops a change at or before the last one (the task already dedupes;
    /// this keeps the guarantee local).
    fn accept(&mut self, ev: &SubEvent) -> bool {
        match ev {
            SubEvent::Change(c) => {
                if self.last_seq.is_some_and(|l| c.seq <= l) {
                    return false;
                }
                self.last_seq = Some(c.seq);
            }
            SubEvent::Snapshot { seq, .. } => self.last_seq = Some(*seq),
            SubEvent::Aggregate { seq, full, .. } => {
                if !*full && self.last_seq.is_some_and(|l| *seq < l) {
                    return false;
                }
                self.last_seq = Some(*seq);
            }
            SubEvent::ResyncRequired { .. } => self.last_seq = None,
            SubEvent::Error { .. } => {}
        }
        true
    }

    /// Unsubscribes and waits for the server's `ok`.
    pub async fn unsubscribe(mut self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let local = std::mem::take(&mut self.local);
        self.cmd.send(Command::Unsubscribe { local, reply: Some(tx) }).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.local != 0 {
            let _ = self.cmd.send(Command::Unsubscribe { local: self.local, reply: None });
        }
    }
}

/// Rows of a query kept equal to the server's result by applying snapshots and `view`s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowCache {
    rows: BTreeMap<String, Value>,
    seq: u64,
}

impl RowCache {
    pub fn new() -> RowCache {
        RowCache::default()
    }

    pub fn rows(&self) -> &BTreeMap<String, Value> {
        &self.rows
    }

    /// The seq the rows are at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Applies an event; returns whether it touched the cache.
    pub fn apply(&mut self, ev: &SubEvent) -> bool {
        match ev {
            SubEvent::Snapshot { seq, rows } => {
                self.rows = rows
                    .iter()
                    .filter_map(|r| Some((r.get("id")?.as_str()?.to_string(), r.clone())))
                    .collect();
                self.seq = *seq;
                true
            }
            SubEvent::Change(c) => {
                if c.seq <= self.seq {
                    return false;
                }
                self.seq = c.seq;
                match c.view {
                    View::Add | View::Update => match &c.new {
                        Some(new) => {
                            self.rows.insert(c.id.clone(), new.clone());
                        }
                        None => {
                            tracing::warn!(id = %c.id, seq = c.seq, "add/update without `new`");
                            self.rows.remove(&c.id);
                        }
                    },
                    View::Remove => {
                        self.rows.remove(&c.id);
                    }
                }
                true
            }
            SubEvent::ResyncRequired { .. } | SubEvent::Error { .. } | SubEvent::Aggregate { .. } => false,
        }
    }
}

/// The identity of an aggregate group: its group-field values, in group order. Ordered
/// field by field: nulls, then booleans, numbers, text, anything else (by its JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupKey(pub Vec<Value>);

impl GroupKey {
    /// The key of `group` (a group or a `removed` entry) for the group fields `fields`.
    pub fn of(fields: &[String], group: &Map<String, Value>) -> GroupKey {
        GroupKey(fields.iter().map(|f| group.get(f).cloned().unwrap_or(Value::Null)).collect())
    }
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        _ => 4,
    }
}

fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(p), Some(q)) => p.cmp(&q),
            _ => x.as_f64().unwrap_or(f64::NAN).total_cmp(&y.as_f64().unwrap_or(f64::NAN)),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)).then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

impl Eq for GroupKey {}

impl PartialOrd for GroupKey {
    fn partial_cmp(&self, other: &GroupKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GroupKey {
    fn cmp(&self, other: &GroupKey) -> Ordering {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| compare_values(a, b))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

/// The groups of a live aggregate, kept equal to the server's values by applying its
/// `aggregate` frames: a `full` frame replaces them, a delta replaces the groups it names
/// and removes the ones it empties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggregateValues {
    group: Vec<String>,
    groups: BTreeMap<GroupKey, Map<String, Value>>,
    seq: u64,
    ready: bool,
}

impl AggregateValues {
    /// Values of an aggregate grouped by `group` (empty: one group).
    pub fn new(group: Vec<String>) -> AggregateValues {
        AggregateValues { group, ..AggregateValues::default() }
    }

    /// Every group, sorted by its group fields.
    pub fn groups(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.groups.values()
    }

    /// The group whose group fields have these values (in group order).
    pub fn get(&self, key: &[Value]) -> Option<&Map<String, Value>> {
        self.groups.get(&GroupKey(key.to_vec()))
    }

    /// The seq the values are current at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A `full` frame has been applied.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Applies an event; returns whether it moved the values.
    pub fn apply(&mut self, ev: &SubEvent) -> bool {
        let SubEvent::Aggregate { seq, full, groups, removed } = ev else {
            return false;
        };
        if *full {
            self.groups = groups.iter().map(|g| (GroupKey::of(&self.group, g), g.clone())).collect();
            self.ready = true;
        } else {
            if !self.ready || *seq < self.seq {
                return false;
            }
            for g in removed {
                self.groups.remove(&GroupKey::of(&self.group, g));
            }
            for g in groups {
                self.groups.insert(GroupKey::of(&self.group, g), g.clone());
            }
        }
        self.seq = *seq;
        true
    }
}

/// What a [`Live`] subscription keeps current: the rows of a query or the values of an
/// aggregate.
pub trait Kept {
    /// Applies one event; whether the state changed.
    fn apply(&mut self, ev: &SubEvent) -> bool;
    /// The seq the state is current at.
    fn seq(&self) -> u64;
}

impl Kept for RowCache {
    fn apply(&mut self, ev: &SubEvent) -> bool {
        RowCache::apply(self, ev)
    }

    fn seq(&self) -> u64 {
        RowCache::seq(self)
    }
}

impl Kept for AggregateValues {
    fn apply(&mut self, ev: &SubEvent) -> bool {
        AggregateValues::apply(self, ev)
    }

    fn seq(&self) -> u64 {
        AggregateValues::seq(self)
    }
}

/// A subscription whose result the client keeps equal to the server's: [`LiveQuery`] (rows)
/// or [`LiveAggregate`] (KPI values).
///
/// Call [`Live::changed`] in a loop (or `select!` on it) to apply updates; the state only
/// changes inside that call.
#[derive(Debug)]
pub struct Live<S> {
    sub: Subscription,
    state: S,
}

/// A live query: the rows matching a filter, kept equal to the server's query result. After a
/// reconnect the query resumes from its seq; when the server cannot resume it a fresh
/// snapshot replaces the rows.
pub type LiveQuery = Live<RowCache>;

/// A live aggregate: `count`, `sum(f)`, `avg(f)`, `min(f)`, `max(f)` over the rows matching a
/// filter, grouped by up to two fields, kept current by the server. After a reconnect the
/// aggregate subscribes again and the server's fresh values (a `full` frame) replace the ones
/// held: it resumes by value.
pub type LiveAggregate = Live<AggregateValues>;

impl<S: Kept> Live<S> {
    /// Waits for the first event `first` accepts (the snapshot, the first full values).
    async fn begin(
        mut sub: Subscription,
        mut state: S,
        first: impl Fn(&SubEvent) -> bool,
    ) -> Result<Live<S>> {
        loop {
            match sub.next().await {
                Some(ev) if first(&ev) => {
                    state.apply(&ev);
                    return Ok(Live { sub, state });
                }
                Some(SubEvent::Error { code, message }) => return Err(Error::Request { code, message }),
                Some(_) => {}
                None => return Err(Error::Closed),
            }
        }
    }

    /// The seq the state is current at.
    pub fn seq(&self) -> u64 {
        self.state.seq()
    }

    pub fn collection(&self) -> &str {
        self.sub.collection()
    }

    pub fn filter(&self) -> Option<&str> {
        self.sub.filter()
    }

    /// Waits for the next event, applies it and returns it; `None` once the subscription has
    /// ended.
    pub async fn changed(&mut self) -> Option<SubEvent> {
        let ev = self.sub.next().await?;
        self.state.apply(&ev);
        Some(ev)
    }

    /// Applies every event already queued without waiting; returns how many.
    pub fn apply_pending(&mut self) -> usize {
        let mut n = 0;
        while let Some(ev) = self.sub.try_next() {
            self.state.apply(&ev);
            n += 1;
        }
        n
    }

    /// Applies events until the state is current at `seq` or later (e.g. the seq of a write
    /// you made, or of a REST aggregate).
    pub async fn wait_for_seq(&mut self, seq: u64) -> Result<()> {
        while self.seq() < seq {
            self.changed().await.ok_or(Error::Closed)?;
        }
        Ok(())
    }

    /// Unsubscribes and waits for the server's `ok`.
    pub async fn unsubscribe(self) -> Result<()> {
        self.sub.unsubscribe().await
    }
}

impl Live<RowCache> {
    /// Waits for the initial snapshot.
    pub(crate) async fn start(sub: Subscription) -> Result<LiveQuery> {
        Live::begin(sub, RowCache::new(), |ev| matches!(ev, SubEvent::Snapshot { .. })).await
    }

    /// The rows by id.
    pub fn rows(&self) -> &BTreeMap<String, Value> {
        self.state.rows()
    }
}

impl Live<AggregateValues> {
    /// Waits for the first values.
    pub(crate) async fn start(sub: Subscription, group: Vec<String>) -> Result<LiveAggregate> {
        Live::begin(sub, AggregateValues::new(group), |ev| {
            matches!(ev, SubEvent::Aggregate { full: true, .. })
        })
        .await
    }

    /// Every group, sorted by its group fields; each holds its group fields and one value per
    /// function, keyed as written (`"sum(weight_kg)"`).
    pub fn groups(&self) -> Vec<&Map<String, Value>> {
        self.state.groups().collect()
    }

    /// The group whose group fields have these values, in group order (`&[]` without
    /// grouping).
    pub fn group(&self, key: &[Value]) -> Option<&Map<String, Value>> {
        self.state.get(key)
    }

    /// The values, for reading without borrowing the subscription.
    pub fn values(&self) -> &AggregateValues {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Op;
    use serde_json::json;

    fn change(seq: u64, id: &str, view: View, new: Option<Value>) -> SubEvent {
        SubEvent::Change(Change {
            seq,
            op: match view {
                View::Add => Op::Insert,
                View::Update => Op::Update,
                View::Remove => Op::Delete,
            },
            view,
            id: id.into(),
            new,
            old: None,
            version: 1,
            actor: None,
            committed_at: String::new(),
        })
    }

    #[test]
    fn snapshot_then_add_update_remove() {
        let mut c = RowCache::new();
        assert!(c.apply(&SubEvent::Snapshot {
            seq: 10,
            rows: vec![json!({"id": "a", "qty": 6}), json!({"id": "b", "qty": 7})],
        }));
        assert_eq!(c.seq(), 10);
        assert_eq!(c.rows().len(), 2);
        c.apply(&change(11, "c", View::Add, Some(json!({"id": "c", "qty": 9}))));
        c.apply(&change(12, "a", View::Update, Some(json!({"id": "a", "qty": 8}))));
        c.apply(&change(13, "b", View::Remove, None));
        assert_eq!(c.seq(), 13);
        let ids: Vec<&str> = c.rows().keys().map(String::as_str).collect();
        assert_eq!(ids, vec!["a", "c"]);
        assert_eq!(c.rows()["a"]["qty"], 8);
    }

    #[test]
    fn a_new_snapshot_replaces_the_rows() {
        let mut c = RowCache::new();
        c.apply(&SubEvent::Snapshot { seq: 1, rows: vec![json!({"id": "a"}), json!({"id": "b"})] });
        c.apply(&SubEvent::ResyncRequired { reason: "log_trimmed".into() });
        c.apply(&SubEvent::Snapshot { seq: 90, rows: vec![json!({"id": "z"})] });
        assert_eq!(c.rows().keys().collect::<Vec<_>>(), vec!["z"]);
        assert_eq!(c.seq(), 90);
    }

    #[test]
    fn stale_changes_do_not_touch_the_cache() {
        let mut c = RowCache::new();
        c.apply(&SubEvent::Snapshot { seq: 5, rows: vec![json!({"id": "a", "v": 1})] });
        assert!(!c.apply(&change(5, "a", View::Remove, None)));
        assert!(!c.apply(&change(3, "b", View::Add, Some(json!({"id": "b"})))));
        assert_eq!(c.rows().len(), 1);
        assert!(c.apply(&change(6, "a", View::Remove, None)));
        assert!(c.rows().is_empty());
    }

    #[test]
    fn removing_an_unknown_row_is_harmless() {
        let mut c = RowCache::new();
        assert!(c.apply(&change(1, "x", View::Remove, None)));
        assert!(c.rows().is_empty());
    }

    #[tokio::test]
    async fn subscription_tracks_seq_and_drops_repeats() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (cmd, mut cmd_rx) = mpsc::unbounded_channel();
        let mut sub = Subscription::new(5, "items".into(), None, rx, cmd);
        for seq in [3, 4, 4, 2, 6] {
            tx.send(change(seq, "a", View::Update, Some(json!({"id": "a"})))).unwrap();
        }
        drop(tx);
        let mut seen = Vec::new();
        while let Some(SubEvent::Change(c)) = sub.next().await {
            seen.push(c.seq);
        }
        assert_eq!(seen, vec![3, 4, 6]);
        assert_eq!(sub.seq(), Some(6));
        drop(sub);
        assert!(matches!(cmd_rx.recv().await, Some(Command::Unsubscribe { local: 5, reply: None })));
    }

    fn agg(seq: u64, full: bool, groups: Value, removed: Value) -> SubEvent {
        let objs = |v: Value| v.as_array().unwrap().iter().map(|g| g.as_object().unwrap().clone()).collect();
        SubEvent::Aggregate { seq, full, groups: objs(groups), removed: objs(removed) }
    }

    #[test]
    fn aggregate_values_replace_changed_groups_drop_removed_ones_and_sort_by_group_key() {
        let mut v = AggregateValues::new(vec!["status".into()]);
        assert!(
            !v.apply(&agg(1, false, json!([{"status": "x", "count": 1}]), json!([]))),
            "no delta before full"
        );
        v.apply(&agg(
            4,
            true,
            json!([{"status": "ok", "count": 9}, {"status": null, "count": 1}, {"status": "late", "count": 2}]),
            json!([]),
        ));
        let order: Vec<&Value> = v.groups().map(|g| &g["status"]).collect();
        assert_eq!(order, vec![&json!(null), &json!("late"), &json!("ok")]);
        assert!(v.apply(&agg(5, false, json!([{"status": "ok", "count": 10}]), json!([{"status": "late"}]))));
        assert!(!v.apply(&agg(3, false, json!([{"status": "ok", "count": 0}]), json!([]))), "older delta");
        assert_eq!(v.seq(), 5);
        assert_eq!(v.get(&[json!("ok")]).unwrap()["count"], 10);
        assert!(v.get(&[json!("late")]).is_none());
        // A full frame replaces everything (a resume, an auth with another identity).
        v.apply(&agg(9, true, json!([{"status": "lost", "count": 1}]), json!([])));
        assert_eq!(v.groups().count(), 1);
        // Numbers order by value, field by field.
        let mut two = AggregateValues::new(vec!["a".into(), "b".into()]);
        two.apply(&agg(
            1,
            true,
            json!([{"a": 10, "b": "x"}, {"a": 9.5, "b": "z"}, {"a": 10, "b": "a"}]),
            json!([]),
        ));
        let keys: Vec<(f64, &str)> =
            two.groups().map(|g| (g["a"].as_f64().unwrap(), g["b"].as_str().unwrap())).collect();
        assert_eq!(keys, vec![(9.5, "z"), (10.0, "a"), (10.0, "x")]);
    }

    #[tokio::test]
    async fn live_aggregate_starts_from_the_full_frame_and_follows_deltas() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (cmd, _cmd_rx) = mpsc::unbounded_channel();
        let sub = Subscription::new(1, "shipments".into(), None, rx, cmd);
        tx.send(agg(7, true, json!([{"count": 2}]), json!([]))).unwrap();
        tx.send(agg(8, false, json!([{"count": 3}]), json!([]))).unwrap();
        let mut a = LiveAggregate::start(sub, vec![]).await.unwrap();
        assert_eq!((a.seq(), a.groups()[0]["count"].clone()), (7, json!(2)));
        a.wait_for_seq(8).await.unwrap();
        assert_eq!(a.group(&[]).unwrap()["count"], 3);
        drop(tx);
        assert!(a.changed().await.is_none());
    }

    #[tokio::test]
    async fn live_query_starts_from_the_snapshot_and_follows_changes() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (cmd, _cmd_rx) = mpsc::unbounded_channel();
        let sub = Subscription::new(1, "items".into(), Some("qty=gt.5".into()), rx, cmd);
        tx.send(SubEvent::Snapshot { seq: 7, rows: vec![json!({"id": "a", "qty": 6})] }).unwrap();
        tx.send(change(8, "b", View::Add, Some(json!({"id": "b", "qty": 9})))).unwrap();
        let mut lq = LiveQuery::start(sub).await.unwrap();
        assert_eq!(lq.seq(), 7);
        assert_eq!(lq.rows().len(), 1);
        lq.wait_for_seq(8).await.unwrap();
        assert_eq!(lq.rows().len(), 2);
        assert_eq!(lq.filter(), Some("qty=gt.5"));
        drop(tx);
        assert!(lq.changed().await.is_none());
    }
}
