//! The hub: who is subscribed to what, and the fan-out of committed changes.
//!
//! It sits between two ports. In: a [`ChangeFeed`] (committed events in sequence order) and a
//! [`ChannelBus`] (broadcast and presence from other nodes). Out: typed
//! [`Delivery`](super::codec::Delivery) values that each connection's
//! [`Codec`](super::codec::Codec) turns into frames, pushed into the connection's bounded
//! queue with `try_send` — the hub never waits on a client. A full queue means a slow
//! consumer: the connection is closed (code 4001) and its client resumes from its last
//! sequence.
//!
//! - [`registry`]: connections, queries, the index, channel membership and presence tables.
//! - [`dispatch`]: the task that reads the feed and fans events out.
//! - [`catchup`]: subscribing, and stitching history or a snapshot to the live stream.
//! - [`channels`]: join, leave, broadcast, presence; events from other nodes.
//! - [`aggregates`]: live aggregates, folded once per view and kept current per event.

mod aggregates;
mod catchup;
mod channels;
mod dispatch;
mod registry;

pub use catchup::{SetSpec, Start};
pub use channels::{BroadcastReq, TrackReq};
pub use registry::{CloseSignal, ConnHandle, ConnId, Ops, Outlet, QueryId, Refused};

use super::bus::{ChannelBus, MemberId, NodeId};
use super::Limits;
use crate::access::{Access, AccessCache};
use crate::auth::Principal;
use crate::metrics::Metrics;
use crate::service::Service;
use livebase_store::{ChangeFeed, Store};
use parking_lot::Mutex;
use registry::{ConnEntry, Registry, SubState};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    /// Schema and snapshots (live queries).
    store: Arc<dyn Store>,
    feed: Arc<dyn ChangeFeed>,
    bus: Arc<dyn ChannelBus>,
    /// Snapshots for live queries, with the caller's access decided as on every path.
    service: Service,
    reg: Mutex<Registry>,
    limits: Limits,
    next_conn: AtomicU64,
    metrics: Arc<Metrics>,
    access: Arc<AccessCache>,
    /// Recently cut-off connections, told to their client on its next connection.
    cut_offs: super::cutoff::CutOffs,
    /// Frames the connections' writers hold, when they say (see [`Backlog`]).
    backlog: std::sync::OnceLock<Arc<dyn Backlog>>,
    /// Dispatch is more than [`ADMIT_LAG`] behind the commits: new writes wait (see
    /// [`Hub::admit`]) until it has caught up, which `caught_up` tells them.
    behind: AtomicBool,
    caught_up: tokio::sync::Notify,
}

/// How many frames the connections' writers hold and have not written yet, all sockets
/// together. When it exceeds [`BACKLOG_QUEUES`] connection queues, the whole node is behind
/// (not one client): dispatch pauses while the writers catch up, and the events wait in the
/// change log instead of filling the queues until healthy connections are cut off as slow
/// consumers. Writers that make no progress for [`BACKLOG_PAUSE`] do not hold it up.
pub trait Backlog: Send + Sync + 'static {
    fn frames(&self) -> usize;
}

/// The node is behind when its writers hold this many connection queues' worth of frames
/// ([`super::Limits::queue_frames`] each): one slow client can never cause it.
pub const BACKLOG_QUEUES: usize = 64;
/// How long writers may make no progress before dispatch stops waiting for them (the hub
/// never stalls on clients that stopped reading).
pub const BACKLOG_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// When dispatch reaches events this long after their commit, the node is behind: it commits
/// more than it can deliver, and new writes wait (see [`Hub::admit`]). It is back when
/// dispatch reaches events younger than half of it, or the head of the feed.
pub const ADMIT_LAG: std::time::Duration = std::time::Duration::from_millis(50);
/// The longest a write waits for dispatch to catch up; then it goes on (a node whose
/// dispatch is stuck still takes writes, and its lag shows in the metrics).
pub const ADMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How a write came through [`Hub::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Dispatch was keeping up.
    AtOnce,
    /// It waited until dispatch caught up.
    CaughtUp,
    /// It waited [`ADMIT_WAIT`] and went on.
    GaveUp,
}

/// What a hub is built from.
pub struct HubParts {
    pub store: Arc<dyn Store>,
    pub feed: Arc<dyn ChangeFeed>,
    pub bus: Arc<dyn ChannelBus>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub access: Arc<AccessCache>,
}

impl Hub {
    pub fn new(p: HubParts) -> Hub {
        let reg = Registry { dispatched: p.feed.head(), next_query: 1, ..Default::default() };
        Hub {
            inner: Arc::new(HubInner {
                service: Service::new(p.store.clone(), p.access.clone()),
                store: p.store,
                feed: p.feed,
                bus: p.bus,
                reg: Mutex::new(reg),
                limits: p.limits,
                next_conn: AtomicU64::new(1),
                metrics: p.metrics,
                access: p.access,
                cut_offs: Default::default(),
                backlog: Default::default(),
                behind: AtomicBool::new(false),
                caught_up: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Lets dispatch pause while the connections' writers are behind (see [`Backlog`]).
    pub fn set_backlog(&self, b: Arc<dyn Backlog>) {
        let _ = self.inner.backlog.set(b);
    }

    fn access(&self) -> Arc<Access> {
        self.inner.access.get(&self.inner.store.schema())
    }

    /// Write admission: completes at once while dispatch keeps up with the commits. While it
    /// is behind (it reached events more than [`ADMIT_LAG`] after their commit), waits until
    /// it has caught up, at most [`ADMIT_WAIT`]. Under overload the writers then slow down to
    /// what the node can deliver, instead of the lag growing in the change log.
    pub async fn admit(&self) -> Admitted {
        if !self.inner.behind.load(Ordering::Acquire) {
            return Admitted::AtOnce;
        }
        let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
        let outcome = loop {
            // Registered before the check, so a catch-up between the two is not missed.
            let notified = self.inner.caught_up.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.inner.behind.load(Ordering::Acquire) {
                break Admitted::CaughtUp;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break Admitted::GaveUp;
            }
        };
        self.inner.metrics.write_admission(outcome == Admitted::CaughtUp);
        outcome
    }

    /// Whether dispatch is behind the commits now, so writes wait in [`Hub::admit`].
    pub fn behind(&self) -> bool {
        self.inner.behind.load(Ordering::Acquire)
    }

    /// Dispatch reached an event `age` after its commit (`None`: it reached the head).
    fn dispatched_at_age(&self, age: Option<f64>) {
        let lag = ADMIT_LAG.as_secs_f64();
        match age {
            Some(a) if a > lag => {
                self.inner.behind.store(true, Ordering::Release);
            }
            Some(a) if a > lag / 2.0 => {}
            _ => {
                if self.inner.behind.swap(false, Ordering::AcqRel) {
                    self.inner.caught_up.notify_waiters();
                }
            }
        }
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

    pub fn feed(&self) -> &Arc<dyn ChangeFeed> {
        &self.inner.feed
    }

    pub fn node(&self) -> &NodeId {
        self.inner.bus.node()
    }

    /// Whether the channel bus reaches the other nodes now (see [`ChannelBus::available`]).
    pub fn bus_available(&self) -> Result<(), String> {
        self.inner.bus.available()
    }

    /// Tells the other nodes this one stops (see [`ChannelBus::leave`]).
    pub async fn leave_cluster(&self) {
        self.inner.bus.leave().await;
    }

    /// Starts the hub's task: the dispatch of the change feed, and the application of what
    /// other nodes publish on the channel bus. It ends when the feed ends.
    pub fn spawn_dispatcher(&self) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        let mut remote = self.inner.bus.subscribe();
        tokio::spawn(async move {
            let bus = async {
                while let Some(ev) = remote.recv().await {
                    hub.apply_remote(ev);
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = hub.dispatch_loop() => {}
                _ = bus => {}
            }
        })
    }

    // ---------- connections ----------

    /// Registers a connection; its name (`"{node}-{n}"`) is unique across nodes. Refused
    /// (the handle returned) when the server holds its maximum of connections.
    pub fn connect(&self, handle: ConnHandle, who: Principal) -> Result<(ConnId, Arc<str>), ConnHandle> {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let member = MemberId { node: self.node().clone(), conn: id };
        let name = member.name();
        let entry = ConnEntry {
            handle,
            member,
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
            c.who = who.clone();
            c.expired = false;
            for qid in &c.queries {
                if let Some(state) = reg.queries.get_mut(qid).and_then(|q| q.subscribers.get_mut(&conn)) {
                    if let SubState::Paused(since) = *state {
                        *state = SubState::CatchingUp(Vec::new());
                        resumes.push((*qid, since, at));
                    }
                }
            }
            self.reauthorize_aggregates(reg, &self.access(), conn, &who);
        }
        for (qid, since, at) in resumes {
            self.resume_paused(conn, qid, since, at);
        }
    }

    /// Why the connection named `name` was cut off, when it was recently and `who` is the
    /// caller it belonged to (the `cut_off` member of a resuming client's `welcome`).
    pub fn take_cut_off(&self, name: &str, who: &Principal) -> Option<serde_json::Value> {
        self.inner.cut_offs.take(name, &who.scope())
    }

    fn principal_of(&self, conn: ConnId) -> Option<Principal> {
        self.inner.reg.lock().principal_of(conn)
    }

    pub fn disconnect(&self, conn: ConnId, reason: &str) {
        let mut reg = self.inner.reg.lock();
        self.remove_conn(&mut reg, conn);
        self.inner.metrics.connection_closed(reason);
    }

    fn remove_conn(&self, reg: &mut Registry, conn: ConnId) {
        let Some(entry) = reg.conns.get(&conn) else { return };
        let queries: Vec<QueryId> = entry.queries.iter().copied().collect();
        let channels: Vec<String> = entry.channels.iter().cloned().collect();
        for q in queries {
            reg.remove_subscriber(conn, q);
        }
        for ch in channels {
            self.leave_channel(reg, conn, &ch);
        }
        reg.conns.remove(&conn);
        self.inner.metrics.set_subscriptions(reg.subscriptions);
        self.inner.metrics.set_presence_members(reg.presence_members);
    }

    /// Connections open on this node.
    pub fn connection_count(&self) -> usize {
        self.inner.reg.lock().conns.len()
    }

    /// Asks every connection to close (e.g. 1001 when the server shuts down).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        let reg = self.inner.reg.lock();
        for c in reg.conns.values() {
            c.handle.close.close(code, reason);
        }
    }

    /// Frames the connections' writers hold, as they count them (see [`Backlog`]); 0 when
    /// no writers say.
    pub fn writer_backlog(&self) -> usize {
        self.inner.backlog.get().map_or(0, |b| b.frames())
    }

    /// Total frames waiting in outbound queues (sampled for metrics).
    pub fn queue_depth(&self) -> i64 {
        let reg = self.inner.reg.lock();
        reg.conns.values().map(|c| c.handle.tx.queued() as i64).sum()
    }

    /// Every open channel on this node: its name, the connections that joined it here and
    /// its presence entries cluster-wide (read-only; for the admin status endpoint).
    pub fn channel_counts(&self) -> Vec<(String, usize, usize)> {
        let reg = self.inner.reg.lock();
        let mut names: Vec<&String> = reg.members.keys().chain(reg.presence.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| {
                let members = reg.members.get(n).map_or(0, |m| m.len());
                let presence = reg.presence.get(n).map_or(0, |p| p.values().map(Vec::len).sum());
                (n.clone(), members, presence)
            })
            .collect()
    }
}

impl crate::service::Admission for Hub {
    fn admit(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            Hub::admit(self).await;
        })
    }
}
