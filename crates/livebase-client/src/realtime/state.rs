//! The connection's bookkeeping, free of I/O: commands and server frames go in, frames to
//! send (the outbox) and events to subscribers come out. The task in `task.rs` moves bytes.

use super::channel::ChannelMessage;
use super::subscription::SubEvent;
use super::Notice;
use crate::error::{Error, Result};
use crate::protocol::{client, ref_u64, AggregateReq, Change, ClientFrame, Ref, ServerFrame, SubscribeMode};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// What a handle, subscription or channel asks the task to do.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        local: u64,
        collection: String,
        filter: Option<String>,
        mode: SubscribeMode,
        /// A live aggregate over the matching rows instead of the rows.
        aggregate: Option<AggregateReq>,
        events: mpsc::UnboundedSender<SubEvent>,
        reply: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        local: u64,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    Join {
        channel: String,
        gen: u64,
        messages: mpsc::UnboundedSender<ChannelMessage>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// `gen`: leave only if the channel is still this join (a dropped [`super::Channel`]).
    Leave {
        channel: String,
        gen: Option<u64>,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    Track {
        channel: String,
        key: Option<String>,
        meta: Value,
        reply: oneshot::Sender<Result<()>>,
    },
    Untrack {
        channel: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Broadcast {
        channel: String,
        event: String,
        payload: Value,
        self_: bool,
        ack: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    Ping {
        reply: oneshot::Sender<Result<Duration>>,
    },
    Auth {
        token: String,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Drop the socket and reconnect (handled by the task).
    /// Register a receiver of connection-level errors.
    Notices {
        tx: mpsc::UnboundedSender<Notice>,
    },
    Reconnect,
    /// Close for good (handled by the task).
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl Command {
    /// A broadcast request, as the handle and a [`super::Channel`] both send it.
    pub(crate) fn broadcast(
        channel: &str,
        event: &str,
        payload: Value,
        self_: bool,
        ack: bool,
    ) -> impl FnOnce(oneshot::Sender<Result<()>>) -> Command {
        let (channel, event) = (channel.to_string(), event.to_string());
        move |reply| Command::Broadcast { channel, event, payload, self_, ack, reply }
    }
}

/// A request waiting for its reply, by `ref`.
#[derive(Debug)]
enum Pending {
    Subscribe { local: u64, mode: SubscribeMode },
    Join { channel: String, gen: u64 },
    Reply(oneshot::Sender<Result<()>>),
    Ping(Instant, oneshot::Sender<Result<Duration>>),
    Ignore,
}

/// Snapshot chunks collected until `done`.
#[derive(Debug, Default)]
struct SnapshotBuf {
    seq: u64,
    rows: Vec<Value>,
    /// Changes that arrived before the last chunk (the protocol says they follow it).
    held: Vec<Change>,
}

#[derive(Debug)]
struct Sub {
    collection: String,
    filter: Option<String>,
    /// Snapshot mode: (re)starts with a snapshot when there is no seq to resume from.
    live: bool,
    /// A live aggregate: resumes by value (every `subscribe` is answered with a `full` frame).
    aggregate: Option<AggregateReq>,
    /// A live aggregate got its `full` frame on the current connection (deltas before it
    /// would move values of another time: dropped).
    fresh: bool,
    /// The highest seq delivered or established (subscribed / snapshot done); the resume point.
    last_seq: Option<u64>,
    /// The server epoch `last_seq` belongs to (from `subscribed`), sent back beside `since`.
    epoch: Option<String>,
    /// The server's `sub_id` on the current connection.
    server_id: Option<u64>,
    snapshot: Option<SnapshotBuf>,
    /// The caller of `subscribe`, until the first reply.
    waiter: Option<oneshot::Sender<Result<()>>>,
    events: mpsc::UnboundedSender<SubEvent>,
}

/// Tracked presence: the key (default: the connection id) and the meta.
type Tracked = Option<(Option<String>, Value)>;

#[derive(Debug)]
struct Chan {
    gen: u64,
    messages: mpsc::UnboundedSender<ChannelMessage>,
    waiter: Option<oneshot::Sender<Result<()>>>,
    /// Re-sent after a reconnect.
    tracked: Tracked,
}

fn request_error(code: &str, message: impl Into<String>) -> Error {
    Error::Request { code: code.to_string(), message: message.into() }
}

/// Everything the connection remembers across sockets.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Welcomed on the current socket: frames in the outbox get sent.
    pub online: bool,
    /// Frames to send, in order.
    pub outbox: Vec<String>,
    next_ref: u64,
    pending: HashMap<u64, Pending>,
    subs: BTreeMap<u64, Sub>,
    by_server: HashMap<u64, u64>,
    channels: BTreeMap<String, Chan>,
    notices: Vec<mpsc::UnboundedSender<Notice>>,
}

impl State {
    fn send(&mut self, frame: ClientFrame) {
        self.outbox.push(frame.encode());
    }

    fn request(&mut self, pending: Pending, frame: impl FnOnce(u64) -> ClientFrame) {
        self.next_ref += 1;
        let r = self.next_ref;
        self.pending.insert(r, pending);
        let f = frame(r);
        self.send(f);
    }

    fn take_pending(&mut self, r: &Ref) -> Option<Pending> {
        ref_u64(r).and_then(|r| self.pending.remove(&r))
    }

    /// Number of live subscriptions (for tests and diagnostics).
    #[cfg(test)]
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// Handles a command other than `Reconnect` / `Close`.
    pub fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe { local, collection, filter, mode, aggregate, events, reply } => {
                if self
                    .subs
                    .values()
                    .any(|s| s.collection == collection && s.filter == filter && s.aggregate == aggregate)
                {
                    let _ = reply.send(Err(request_error(
                        "already_subscribed",
                        format!(
                            "this connection already subscribes to {collection} {}",
                            filter.as_deref().unwrap_or("")
                        ),
                    )));
                    return;
                }
                let sub = Sub {
                    collection,
                    filter,
                    live: mode == SubscribeMode::Snapshot && aggregate.is_none(),
                    aggregate,
                    fresh: false,
                    last_seq: match mode {
                        SubscribeMode::Since(n) => Some(n),
                        _ => None,
                    },
                    epoch: None,
                    server_id: None,
                    snapshot: None,
                    waiter: Some(reply),
                    events,
                };
                self.subs.insert(local, sub);
                if self.online {
                    self.send_subscribe(local);
                }
            }
            Command::Unsubscribe { local, reply } => {
                let mut reply = reply;
                if let Some(sub) = self.subs.remove(&local) {
                    if let Some(sid) = sub.server_id {
                        self.by_server.remove(&sid);
                        if self.online {
                            let p = reply.take().map_or(Pending::Ignore, Pending::Reply);
                            self.request(p, |r| client::unsubscribe(r, sid));
                        }
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Join { channel, gen, messages, reply } => {
                if self.channels.contains_key(&channel) {
                    let _ = reply.send(Err(request_error(
                        "already_joined",
                        format!("this connection already joined {channel}"),
                    )));
                    return;
                }
                let chan = Chan { gen, messages, waiter: Some(reply), tracked: None };
                self.channels.insert(channel.clone(), chan);
                if self.online {
                    self.request(Pending::Join { channel: channel.clone(), gen }, |r| {
                        client::join(r, &channel)
                    });
                }
            }
            Command::Leave { channel, gen, reply } => {
                let known = self.channels.get(&channel).is_some_and(|c| gen.is_none_or(|g| g == c.gen));
                if !known {
                    if let Some(reply) = reply {
                        let _ = reply.send(match gen {
                            None => Err(request_error("not_joined", format!("{channel} is not joined"))),
                            Some(_) => Ok(()),
                        });
                    }
                    return;
                }
                self.channels.remove(&channel);
                if self.online {
                    let p = reply.map_or(Pending::Ignore, Pending::Reply);
                    self.request(p, |r| client::leave(r, &channel));
                } else if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Track { channel, key, meta, reply } => {
                let Some(chan) = self.channels.get_mut(&channel) else {
                    let _ = reply.send(Err(request_error(
                        "not_joined",
                        format!("join {channel} before tracking presence on it"),
                    )));
                    return;
                };
                chan.tracked = Some((key.clone(), meta.clone()));
                if self.online {
                    self.request(Pending::Reply(reply), |r| {
                        client::track(r, &channel, key.as_deref(), &meta)
                    });
                } else {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Untrack { channel, reply } => {
                let Some(chan) = self.channels.get_mut(&channel) else {
                    let _ = reply.send(Err(request_error("not_joined", format!("{channel} is not joined"))));
                    return;
                };
                chan.tracked = None;
                if self.online {
                    self.request(Pending::Reply(reply), |r| client::untrack(r, &channel));
                } else {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Broadcast { channel, event, payload, self_, ack, reply } => {
                if !self.online {
                    let _ = reply.send(Err(Error::NotConnected));
                } else if ack {
                    self.request(Pending::Reply(reply), |r| {
                        client::broadcast(Some(r), &channel, &event, &payload, self_)
                    });
                } else {
                    self.send(client::broadcast(None, &channel, &event, &payload, self_));
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Ping { reply } => {
                if self.online {
                    self.request(Pending::Ping(Instant::now(), reply), client::ping);
                } else {
                    let _ = reply.send(Err(Error::NotConnected));
                }
            }
            Command::Auth { token, reply } => {
                if self.online {
                    self.request(Pending::Reply(reply), |r| client::auth(r, &token));
                } else {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Notices { tx } => self.notices.push(tx),
            Command::Reconnect | Command::Close { .. } => {}
        }
    }

    /// Tells the `notices()` receivers about an error no request is waiting for.
    pub fn notice(&mut self, code: &str, message: &str) {
        self.notices
            .retain(|tx| tx.send(Notice { code: code.to_string(), message: message.to_string() }).is_ok());
    }

    /// Sends `subscribe` for a local subscription: resuming from its last seq when it has
    /// one, else in its initial mode.
    fn send_subscribe(&mut self, local: u64) {
        let Some(sub) = self.subs.get(&local) else {
            return;
        };
        let mode = match sub.last_seq {
            Some(n) => SubscribeMode::Since(n),
            None if sub.live => SubscribeMode::Snapshot,
            None => SubscribeMode::Plain,
        };
        let (collection, filter, epoch) = (sub.collection.clone(), sub.filter.clone(), sub.epoch.clone());
        let aggregate = sub.aggregate.clone();
        if let Some(sub) = self.subs.get_mut(&local) {
            sub.fresh = false;
        }
        self.request(Pending::Subscribe { local, mode }, |r| {
            let mut f = client::subscribe(r, &collection, filter.as_deref(), mode, epoch.as_deref());
            if let ClientFrame::Subscribe(s) = &mut f {
                s.aggregate = aggregate;
            }
            f
        });
    }

    /// Drops a subscription whose consumer is gone, unsubscribing on the server.
    fn drop_sub(&mut self, local: u64) {
        if let Some(sub) = self.subs.remove(&local) {
            if let Some(sid) = sub.server_id {
                self.by_server.remove(&sid);
                if self.online {
                    self.request(Pending::Ignore, |r| client::unsubscribe(r, sid));
                }
            }
        }
    }

    fn drop_channel(&mut self, channel: &str) {
        if self.channels.remove(channel).is_some() && self.online {
            self.request(Pending::Ignore, |r| client::leave(r, channel));
        }
    }

    fn emit(&mut self, local: u64, ev: SubEvent) {
        let gone = match self.subs.get(&local) {
            Some(sub) => sub.events.send(ev).is_err(),
            None => false,
        };
        if gone {
            self.drop_sub(local);
        }
    }

    /// Delivers a change unless it is at or before the subscription's last seq.
    fn deliver(&mut self, local: u64, change: Change) {
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        if sub.last_seq.is_some_and(|last| change.seq <= last) {
            tracing::trace!(seq = change.seq, "dropping a duplicate change");
            return;
        }
        sub.last_seq = Some(change.seq);
        self.emit(local, SubEvent::Change(change));
    }

    fn channel_message(&mut self, channel: &str, msg: ChannelMessage) {
        let gone = match self.channels.get(channel) {
            Some(c) => c.messages.send(msg).is_err(),
            None => {
                tracing::trace!(channel, "message for a channel not joined");
                false
            }
        };
        if gone {
            self.drop_channel(channel);
        }
    }

    /// The socket was welcomed: resume every subscription and channel.
    pub fn on_connected(&mut self) {
        self.online = true;
        let locals: Vec<u64> = self.subs.keys().copied().collect();
        for local in locals {
            self.send_subscribe(local);
        }
        let channels: Vec<(String, u64, Tracked)> =
            self.channels.iter().map(|(name, c)| (name.clone(), c.gen, c.tracked.clone())).collect();
        for (name, gen, tracked) in channels {
            self.request(Pending::Join { channel: name.clone(), gen }, |r| client::join(r, &name));
            if let Some((key, meta)) = tracked {
                self.request(Pending::Ignore, |r| client::track(r, &name, key.as_deref(), &meta));
            }
        }
    }

    /// The socket is gone: in-flight one-shot requests fail, subscriptions and channels
    /// wait for the next connection.
    pub fn on_disconnect(&mut self) {
        self.online = false;
        self.outbox.clear();
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Reply(tx) => {
                    let _ = tx.send(Err(Error::NotConnected));
                }
                Pending::Ping(_, tx) => {
                    let _ = tx.send(Err(Error::NotConnected));
                }
                Pending::Subscribe { .. } | Pending::Join { .. } | Pending::Ignore => {}
            }
        }
        self.by_server.clear();
        for sub in self.subs.values_mut() {
            sub.server_id = None;
            sub.snapshot = None;
            sub.fresh = false;
        }
    }

    /// Closed for good: every waiter fails, every stream ends.
    pub fn close(&mut self) {
        self.on_disconnect();
        for (_, sub) in std::mem::take(&mut self.subs) {
            if let Some(w) = sub.waiter {
                let _ = w.send(Err(Error::Closed));
            }
        }
        for (_, chan) in std::mem::take(&mut self.channels) {
            if let Some(w) = chan.waiter {
                let _ = w.send(Err(Error::Closed));
            }
        }
    }

    /// Handles a server frame other than `welcome`.
    pub fn on_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Welcome { .. } => {}
            ServerFrame::Subscribed { reference, sub_id, seq, epoch } => {
                self.on_subscribed(&reference, sub_id, seq, epoch)
            }
            ServerFrame::Change { sub_id, change } => {
                let Some(&local) = self.by_server.get(&sub_id) else {
                    tracing::trace!(sub_id, "change for an unknown subscription");
                    return;
                };
                match self.subs.get_mut(&local).and_then(|s| s.snapshot.as_mut()) {
                    Some(buf) => buf.held.push(*change),
                    None => self.deliver(local, *change),
                }
            }
            ServerFrame::Snapshot { sub_id, seq, rows, done } => self.on_snapshot(sub_id, seq, rows, done),
            ServerFrame::Broadcast { channel, event, payload, from } => {
                self.channel_message(&channel.clone(), ChannelMessage::Broadcast { event, payload, from })
            }
            ServerFrame::PresenceState { channel, state } => {
                self.channel_message(&channel, ChannelMessage::PresenceState(state))
            }
            ServerFrame::PresenceDiff { channel, joins, leaves } => {
                self.channel_message(&channel, ChannelMessage::PresenceDiff { joins, leaves })
            }
            ServerFrame::Pong { reference, .. } => match self.take_pending(&reference) {
                Some(Pending::Ping(sent, tx)) => {
                    let _ = tx.send(Ok(sent.elapsed()));
                }
                Some(p) => self.resolve_ok(p),
                None => {}
            },
            ServerFrame::Ok { reference } => {
                if let Some(p) = self.take_pending(&reference) {
                    self.resolve_ok(p);
                }
            }
            ServerFrame::Error { reference, code, message, .. } => self.on_error(&reference, code, message),
            ServerFrame::ResyncRequired { reference, sub_id, reason } => {
                self.on_resync(&reference, sub_id, reason)
            }
            ServerFrame::Aggregate { sub_id, seq, full, groups, removed } => {
                self.on_aggregate(sub_id, seq, full, groups, removed)
            }
            ServerFrame::Unknown => {}
        }
    }

    fn resolve_ok(&mut self, p: Pending) {
        match p {
            Pending::Join { channel, gen } => {
                let waiter = match self.channels.get_mut(&channel) {
                    Some(c) if c.gen == gen => c.waiter.take(),
                    _ => None,
                };
                if let Some(w) = waiter {
                    if w.send(Ok(())).is_err() {
                        self.drop_channel(&channel);
                    }
                }
            }
            Pending::Reply(tx) => {
                let _ = tx.send(Ok(()));
            }
            Pending::Ping(sent, tx) => {
                let _ = tx.send(Ok(sent.elapsed()));
            }
            Pending::Subscribe { local, .. } => {
                tracing::warn!(local, "`ok` in reply to subscribe (expected `subscribed`)");
            }
            Pending::Ignore => {}
        }
    }

    fn on_subscribed(&mut self, r: &Ref, sub_id: u64, seq: u64, epoch: Option<String>) {
        let (local, mode) = match self.take_pending(r) {
            Some(Pending::Subscribe { local, mode }) => (local, mode),
            other => {
                tracing::warn!(?r, sub_id, "`subscribed` that answers no subscribe");
                if let Some(p) = other {
                    self.resolve_ok(p);
                }
                return;
            }
        };
        let Some(sub) = self.subs.get_mut(&local) else {
            // Dropped while the subscribe was in flight.
            if self.online {
                self.request(Pending::Ignore, |r| client::unsubscribe(r, sub_id));
            }
            return;
        };
        sub.server_id = Some(sub_id);
        // The reply's epoch is the one the seqs that follow belong to (none from older servers).
        sub.epoch = epoch.filter(|e| !e.is_empty());
        match mode {
            SubscribeMode::Plain => sub.last_seq = Some(seq),
            SubscribeMode::Since(n) => {
                // Keep `n`: every change after it is wanted, whatever the reply says.
                // An aggregate resumes by value: its `seq` is the one of the values that follow.
                if seq != n && sub.aggregate.is_none() {
                    tracing::warn!(since = n, seq, "`subscribed.seq` differs from `since`");
                }
            }
            SubscribeMode::Snapshot => {
                sub.snapshot = Some(SnapshotBuf { seq, ..SnapshotBuf::default() });
            }
        }
        let waiter = sub.waiter.take();
        self.by_server.insert(sub_id, local);
        if let Some(w) = waiter {
            if w.send(Ok(())).is_err() {
                self.drop_sub(local);
            }
        }
    }

    /// A live aggregate's values: a `full` frame replaces them (after every subscribe, and
    /// after an `auth` with a new identity); a delta is passed on only after one, and only
    /// when it is not older than the values held.
    fn on_aggregate(
        &mut self,
        sub_id: u64,
        seq: u64,
        full: bool,
        groups: Vec<serde_json::Map<String, Value>>,
        removed: Vec<serde_json::Map<String, Value>>,
    ) {
        let Some(&local) = self.by_server.get(&sub_id) else {
            tracing::trace!(sub_id, "aggregate for an unknown subscription");
            return;
        };
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        if sub.aggregate.is_none() {
            return;
        }
        if !full && (!sub.fresh || sub.last_seq.is_some_and(|l| seq < l)) {
            tracing::trace!(sub_id, seq, "dropping an aggregate delta that does not follow the values held");
            return;
        }
        sub.fresh = true;
        sub.last_seq = Some(seq);
        self.emit(local, SubEvent::Aggregate { seq, full, groups, removed });
    }

    fn on_snapshot(&mut self, sub_id: u64, seq: u64, rows: Vec<Value>, done: bool) {
        let Some(&local) = self.by_server.get(&sub_id) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        let buf = sub.snapshot.get_or_insert_with(|| SnapshotBuf { seq, ..SnapshotBuf::default() });
        buf.seq = seq;
        buf.rows.extend(rows);
        if !done {
            return;
        }
        let buf = sub.snapshot.take().unwrap_or_default();
        sub.last_seq = Some(buf.seq);
        self.emit(local, SubEvent::Snapshot { seq: buf.seq, rows: buf.rows });
        for change in buf.held {
            self.deliver(local, change);
        }
    }

    fn on_resync(&mut self, r: &Ref, sub_id: Option<u64>, reason: Option<String>) {
        let local = match self.take_pending(r) {
            Some(Pending::Subscribe { local, .. }) => Some(local),
            Some(p) => {
                self.resolve_ok(p);
                None
            }
            None => None,
        }
        .or_else(|| sub_id.and_then(|s| self.by_server.get(&s).copied()));
        let Some(local) = local else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        if let Some(sid) = sub.server_id.take() {
            self.by_server.remove(&sid);
        }
        // `log_trimmed`, `epoch_changed` or a reason added later: the seq to resume from is
        // gone or means nothing now; start over (a live query refetches its snapshot).
        sub.last_seq = None;
        sub.epoch = None;
        sub.snapshot = None;
        let waiter = sub.waiter.take();
        let reason = reason.unwrap_or_else(|| crate::protocol::reason::LOG_TRIMMED.into());
        self.emit(local, SubEvent::ResyncRequired { reason });
        if let Some(w) = waiter {
            if w.send(Ok(())).is_err() {
                self.drop_sub(local);
                return;
            }
        }
        if self.online && self.subs.contains_key(&local) {
            self.send_subscribe(local);
        }
    }

    fn on_error(&mut self, r: &Ref, code: String, message: String) {
        match self.take_pending(r) {
            Some(Pending::Subscribe { local, .. }) => {
                if let Some(sub) = self.subs.remove(&local) {
                    match sub.waiter {
                        Some(w) => {
                            let _ = w.send(Err(Error::Request { code, message }));
                        }
                        None => {
                            tracing::warn!(%code, %message, collection = %sub.collection,
                                "resubscribing failed; the subscription ends");
                            let _ = sub.events.send(SubEvent::Error { code, message });
                        }
                    }
                }
            }
            Some(Pending::Join { channel, gen }) => {
                if self.channels.get(&channel).is_some_and(|c| c.gen == gen) {
                    if let Some(chan) = self.channels.remove(&channel) {
                        match chan.waiter {
                            Some(w) => {
                                let _ = w.send(Err(Error::Request { code, message }));
                            }
                            None => {
                                tracing::warn!(%code, %message, %channel,
                                    "rejoining failed; the channel ends");
                                let _ = chan.messages.send(ChannelMessage::Error { code, message });
                            }
                        }
                    }
                }
            }
            Some(Pending::Reply(tx)) => {
                let _ = tx.send(Err(Error::Request { code, message }));
            }
            Some(Pending::Ping(_, tx)) => {
                let _ = tx.send(Err(Error::Request { code, message }));
            }
            // `token_expired`, `rate_limited`, a failed re-track...: nobody is waiting.
            Some(Pending::Ignore) | None => {
                tracing::warn!(%code, %message, "realtime error");
                self.notice(&code, &message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Op, View};
    use serde_json::json;

    struct Harness {
        state: State,
    }

    fn frame(v: Value) -> ServerFrame {
        ServerFrame::parse(&v.to_string()).expect("test frame parses")
    }

    fn change(sub_id: u64, seq: u64, id: &str, view: &str) -> ServerFrame {
        frame(json!({"type": "change", "sub_id": sub_id, "seq": seq, "op": "update",
            "view": view, "id": id, "version": seq, "actor": null, "committed_at": "t",
            "new": {"id": id, "version": seq}, "old": {"id": id}}))
    }

    impl Harness {
        fn online() -> Harness {
            let mut state = State::default();
            state.on_connected();
            Harness { state }
        }

        /// The frames sent since the last call.
        fn sent(&mut self) -> Vec<Value> {
            self.state
                .outbox
                .drain(..)
                .map(|s| serde_json::from_str(&s).expect("outbox holds JSON"))
                .collect()
        }

        fn subscribe(
            &mut self,
            local: u64,
            collection: &str,
            filter: Option<&str>,
            mode: SubscribeMode,
        ) -> (mpsc::UnboundedReceiver<SubEvent>, oneshot::Receiver<Result<()>>) {
            let (events, rx) = mpsc::unbounded_channel();
            let (reply, wait) = oneshot::channel();
            self.state.command(Command::Subscribe {
                aggregate: None,
                local,
                collection: collection.into(),
                filter: filter.map(str::to_string),
                mode,
                events,
                reply,
            });
            (rx, wait)
        }

        fn aggregate(
            &mut self,
            local: u64,
            filter: Option<&str>,
            group: &[&str],
            fns: &[&str],
        ) -> (mpsc::UnboundedReceiver<SubEvent>, oneshot::Receiver<Result<()>>) {
            let (events, rx) = mpsc::unbounded_channel();
            let (reply, wait) = oneshot::channel();
            self.state.command(Command::Subscribe {
                aggregate: Some(AggregateReq {
                    group: group.iter().map(|g| g.to_string()).collect(),
                    fns: fns.iter().map(|f| f.to_string()).collect(),
                }),
                local,
                collection: "shipments".into(),
                filter: filter.map(str::to_string),
                mode: SubscribeMode::Plain,
                events,
                reply,
            });
            (rx, wait)
        }
    }

    /// (seq, full, number of groups, number removed) of each aggregate event queued.
    fn aggregates(rx: &mut mpsc::UnboundedReceiver<SubEvent>) -> Vec<(u64, bool, usize, usize)> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let SubEvent::Aggregate { seq, full, groups, removed } = ev {
                out.push((seq, full, groups.len(), removed.len()));
            }
        }
        out
    }

    fn agg(sub_id: u64, seq: u64, full: bool, groups: Value, removed: Value) -> ServerFrame {
        frame(json!({"type": "aggregate", "sub_id": sub_id, "seq": seq, "full": full,
            "groups": groups, "removed": removed}))
    }

    #[test]
    fn aggregate_subscribe_sends_the_aggregate_and_passes_full_then_deltas() {
        let mut h = Harness::online();
        let (mut rx, mut wait) =
            h.aggregate(1, Some("status=neq.lost"), &["status"], &["count", "sum(weight_kg)"]);
        let sent = h.sent();
        let fixture: Value = serde_json::from_str(include_str!(
            "../../../livebase-protocol/fixtures/client/subscribe_aggregate.json"
        ))
        .unwrap();
        assert_eq!(sent[0]["aggregate"], fixture["aggregate"]);
        assert_eq!(
            (&sent[0]["collection"], &sent[0]["filter"]),
            (&fixture["collection"], &fixture["filter"])
        );
        h.state
            .on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 31, "seq": 10, "epoch": "e1"})));
        assert!(matches!(wait.try_recv(), Ok(Ok(()))));
        // A delta before the full frame is not for the values held: dropped.
        h.state.on_frame(agg(31, 10, false, json!([{"status": "late", "count": 9}]), json!([])));
        h.state.on_frame(agg(
            31,
            10,
            true,
            json!([{"status": "late", "count": 2}, {"status": "ok", "count": 1}]),
            json!([]),
        ));
        h.state.on_frame(agg(
            31,
            11,
            false,
            json!([{"status": "ok", "count": 2}]),
            json!([{"status": "late"}]),
        ));
        h.state.on_frame(agg(31, 9, false, json!([{"status": "ok", "count": 0}]), json!([]))); // older: dropped
        h.state.on_frame(agg(99, 12, false, json!([]), json!([]))); // not ours
        assert_eq!(aggregates(&mut rx), vec![(10, true, 2, 0), (11, false, 1, 1)]);
    }

    #[test]
    fn aggregate_resubscribes_after_a_reconnect_and_waits_for_the_fresh_full_frame() {
        let mut h = Harness::online();
        let (mut rx, _w) = h.aggregate(1, None, &[], &["count"]);
        h.sent();
        h.state
            .on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 5, "seq": 3, "epoch": "e1"})));
        h.state.on_frame(agg(5, 3, true, json!([{"count": 3}]), json!([])));
        h.state.on_frame(agg(5, 4, false, json!([{"count": 4}]), json!([])));
        h.state.on_disconnect();
        h.state.on_connected();
        assert_eq!(
            h.sent(),
            vec![json!({"type": "subscribe", "ref": 2, "collection": "shipments", "since": 4, "epoch": "e1",
                "aggregate": {"fn": ["count"]}})]
        );
        h.state
            .on_frame(frame(json!({"type": "subscribed", "ref": 2, "sub_id": 6, "seq": 8, "epoch": "e1"})));
        h.state.on_frame(agg(6, 8, false, json!([{"count": 70}]), json!([]))); // before the full frame
        h.state.on_frame(agg(6, 8, true, json!([{"count": 7}]), json!([])));
        // A full frame on the running subscription (an `auth` with another identity) passes too.
        h.state.on_frame(agg(6, 8, true, json!([{"count": 1}]), json!([])));
        assert_eq!(
            aggregates(&mut rx),
            vec![(3, true, 1, 0), (4, false, 1, 0), (8, true, 1, 0), (8, true, 1, 0)]
        );
        // The epoch changed while away: ask again without since.
        h.state.on_disconnect();
        h.state.on_connected();
        h.sent();
        h.state.on_frame(frame(
            json!({"type": "resync_required", "ref": 3, "sub_id": 0, "reason": "epoch_changed"}),
        ));
        assert_eq!(
            h.sent(),
            vec![
                json!({"type": "subscribe", "ref": 4, "collection": "shipments", "aggregate": {"fn": ["count"]}})
            ]
        );
    }

    #[test]
    fn the_same_filter_as_rows_and_as_an_aggregate_are_two_subscriptions() {
        let mut h = Harness::online();
        let (_rx, _w) = h.subscribe(1, "shipments", Some("a=eq.1"), SubscribeMode::Plain);
        let (_rx2, _w2) = h.aggregate(2, Some("a=eq.1"), &[], &["count"]);
        let (_rx3, mut w3) = h.aggregate(3, Some("a=eq.1"), &[], &["count"]);
        assert_eq!(h.state.subscription_count(), 2);
        assert!(matches!(w3.try_recv(), Ok(Err(e)) if e.code() == Some("already_subscribed")));
    }

    fn changes(rx: &mut mpsc::UnboundedReceiver<SubEvent>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let SubEvent::Change(c) = ev {
                out.push(c.seq);
            }
        }
        out
    }

    #[test]
    fn subscribe_resolves_on_subscribed_and_routes_changes() {
        let mut h = Harness::online();
        let (mut rx, mut wait) = h.subscribe(1, "items", Some("qty=gt.5"), SubscribeMode::Plain);
        let sent = h.sent();
        assert_eq!(
            sent,
            vec![json!({"type": "subscribe", "ref": 1, "collection": "items", "filter": "qty=gt.5"})]
        );
        assert!(wait.try_recv().is_err(), "not resolved before the reply");
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 12, "seq": 100})));
        assert!(matches!(wait.try_recv(), Ok(Ok(()))));
        h.state.on_frame(change(12, 101, "a", "add"));
        h.state.on_frame(change(99, 102, "b", "add")); // another query's id: ignored
        match rx.try_recv() {
            Ok(SubEvent::Change(c)) => {
                assert_eq!((c.seq, c.op, c.view), (101, Op::Update, View::Add));
                assert_eq!(c.new, Some(json!({"id": "a", "version": 101})));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn changes_at_or_before_the_last_seq_are_dropped() {
        let mut h = Harness::online();
        let (mut rx, _w) = h.subscribe(1, "items", None, SubscribeMode::Plain);
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 3, "seq": 10})));
        for seq in [9, 10, 11, 11, 12, 12, 11, 13] {
            h.state.on_frame(change(3, seq, "a", "update"));
        }
        assert_eq!(changes(&mut rx), vec![11, 12, 13]);
    }

    #[test]
    fn reconnect_resumes_from_the_last_seq_and_remaps_sub_ids() {
        let mut h = Harness::online();
        let (mut rx, _w) = h.subscribe(1, "items", Some("qty=gt.5"), SubscribeMode::Plain);
        let (mut rx2, _w2) = h.subscribe(2, "orders", None, SubscribeMode::Since(40));
        let sent = h.sent();
        assert_eq!(sent[1]["since"], 40);
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 12, "seq": 100})));
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 2, "sub_id": 13, "seq": 40})));
        h.state.on_frame(change(12, 101, "a", "add"));
        h.state.on_frame(change(13, 41, "o", "add"));
        h.state.on_frame(change(12, 105, "a", "update"));

        h.state.on_disconnect();
        // Frames of the dead socket's sub_ids are not routed any more.
        h.state.on_frame(change(12, 106, "a", "update"));
        h.state.on_connected();
        let sent = h.sent();
        assert_eq!(
            sent,
            vec![
                json!({"type": "subscribe", "ref": 3, "collection": "items", "filter": "qty=gt.5", "since": 105}),
                json!({"type": "subscribe", "ref": 4, "collection": "orders", "since": 41}),
            ]
        );
        // The new connection numbers the queries differently.
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 3, "sub_id": 7, "seq": 105})));
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 4, "sub_id": 12, "seq": 41})));
        h.state.on_frame(change(7, 105, "a", "update")); // duplicate at the seam
        h.state.on_frame(change(7, 106, "a", "update"));
        h.state.on_frame(change(12, 42, "o", "update"));
        assert_eq!(changes(&mut rx), vec![101, 105, 106]);
        assert_eq!(changes(&mut rx2), vec![41, 42]);
    }

    #[test]
    fn subscriptions_made_offline_are_sent_on_connect() {
        let mut h = Harness { state: State::default() };
        let (_rx, mut wait) = h.subscribe(1, "items", None, SubscribeMode::Plain);
        assert!(h.sent().is_empty());
        h.state.on_connected();
        assert_eq!(h.sent()[0]["type"], "subscribe");
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 1, "seq": 0})));
        assert!(matches!(wait.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn snapshot_chunks_are_assembled_and_changes_follow() {
        let mut h = Harness::online();
        let (mut rx, _w) = h.subscribe(1, "items", Some("qty=gt.5"), SubscribeMode::Snapshot);
        assert_eq!(h.sent()[0]["snapshot"], true);
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 4, "seq": 50})));
        h.state.on_frame(frame(
            json!({"type": "snapshot", "sub_id": 4, "seq": 50, "rows": [{"id": "a"}], "done": false}),
        ));
        assert!(rx.try_recv().is_err(), "nothing before the last chunk");
        // A change that (against the protocol) overtakes the last chunk is held back.
        h.state.on_frame(change(4, 52, "c", "add"));
        h.state.on_frame(frame(
            json!({"type": "snapshot", "sub_id": 4, "seq": 50, "rows": [{"id": "b"}], "done": true}),
        ));
        h.state.on_frame(change(4, 50, "a", "update")); // not after S: dropped
        h.state.on_frame(change(4, 53, "a", "remove"));
        match rx.try_recv() {
            Ok(SubEvent::Snapshot { seq, rows }) => {
                assert_eq!(seq, 50);
                assert_eq!(rows, vec![json!({"id": "a"}), json!({"id": "b"})]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(changes(&mut rx), vec![52, 53]);
        // Resumes from the last change, not with another snapshot.
        h.state.on_disconnect();
        h.state.on_connected();
        assert_eq!(h.sent()[0]["since"], 53);
    }

    #[test]
    fn an_interrupted_snapshot_is_fetched_again() {
        let mut h = Harness::online();
        let (mut rx, _w) = h.subscribe(1, "items", None, SubscribeMode::Snapshot);
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 4, "seq": 50})));
        h.state.on_frame(frame(
            json!({"type": "snapshot", "sub_id": 4, "seq": 50, "rows": [{"id": "a"}], "done": false}),
        ));
        h.state.on_disconnect();
        h.state.on_connected();
        let sent = h.sent();
        assert_eq!(sent.last().map(|f| f["snapshot"].clone()), Some(json!(true)));
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 2, "sub_id": 9, "seq": 60})));
        h.state.on_frame(frame(
            json!({"type": "snapshot", "sub_id": 9, "seq": 60, "rows": [{"id": "b"}], "done": true}),
        ));
        match rx.try_recv() {
            Ok(SubEvent::Snapshot { seq, rows }) => {
                assert_eq!(seq, 60);
                assert_eq!(rows, vec![json!({"id": "b"})], "no rows of the broken snapshot");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn resync_required_refetches_a_snapshot_for_live_queries() {
        let mut h = Harness::online();
        let (mut rx, _w) = h.subscribe(1, "items", None, SubscribeMode::Snapshot);
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 4, "seq": 5})));
        h.state.on_frame(frame(json!({"type": "snapshot", "sub_id": 4, "seq": 5, "rows": [], "done": true})));
        h.state.on_disconnect();
        h.state.on_connected();
        h.sent();
        h.state.on_frame(frame(
            json!({"type": "resync_required", "ref": 2, "sub_id": 4, "reason": "log_trimmed"}),
        ));
        let sent = h.sent();
        assert_eq!(
            sent,
            vec![json!({"type": "subscribe", "ref": 3, "collection": "items", "snapshot": true})]
        );
        assert!(matches!(rx.try_recv(), Ok(SubEvent::Snapshot { seq: 5, .. })));
        assert!(matches!(rx.try_recv(), Ok(SubEvent::ResyncRequired { reason }) if reason == "log_trimmed"));
    }

    #[test]
    fn resume_sends_back_the_epoch_of_the_last_subscribed() {
        let mut h = Harness::online();
        let (mut rx, _w) = h.subscribe(1, "items", None, SubscribeMode::Plain);
        h.sent();
        h.state
            .on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 4, "seq": 5, "epoch": "e1"})));
        h.state.on_frame(change(4, 6, "a", "add"));
        h.state.on_disconnect();
        h.state.on_connected();
        assert_eq!(
            h.sent(),
            vec![json!({"type": "subscribe", "ref": 2, "collection": "items", "since": 6, "epoch": "e1"})]
        );
        // A server without epochs: the next resume sends `since` alone.
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 2, "sub_id": 4, "seq": 6})));
        h.state.on_disconnect();
        h.state.on_connected();
        assert_eq!(h.sent(), vec![json!({"type": "subscribe", "ref": 3, "collection": "items", "since": 6})]);
        assert_eq!(changes(&mut rx), vec![6]);
    }

    #[test]
    fn epoch_changed_refetches_a_live_query_like_a_trimmed_log() {
        let mut h = Harness::online();
        let (mut rx, _w) = h.subscribe(1, "items", None, SubscribeMode::Snapshot);
        h.state
            .on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 4, "seq": 5, "epoch": "e1"})));
        h.state.on_frame(frame(json!({"type": "snapshot", "sub_id": 4, "seq": 5, "rows": [], "done": true})));
        h.state.on_disconnect();
        h.state.on_connected();
        assert_eq!(h.sent()[0]["epoch"], "e1");
        h.state.on_frame(frame(
            json!({"type": "resync_required", "ref": 2, "sub_id": 4, "reason": "epoch_changed"}),
        ));
        assert_eq!(
            h.sent(),
            vec![json!({"type": "subscribe", "ref": 3, "collection": "items", "snapshot": true})]
        );
        assert!(matches!(rx.try_recv(), Ok(SubEvent::Snapshot { seq: 5, .. })));
        assert!(
            matches!(rx.try_recv(), Ok(SubEvent::ResyncRequired { reason }) if reason == "epoch_changed")
        );
        h.state
            .on_frame(frame(json!({"type": "subscribed", "ref": 3, "sub_id": 8, "seq": 2, "epoch": "e2"})));
        h.state.on_frame(frame(json!({"type": "snapshot", "sub_id": 8, "seq": 2, "rows": [], "done": true})));
        assert!(matches!(rx.try_recv(), Ok(SubEvent::Snapshot { seq: 2, .. })));
    }

    #[test]
    fn resync_required_on_a_plain_subscription_continues_live() {
        let mut h = Harness::online();
        let (mut rx, mut wait) = h.subscribe(1, "items", None, SubscribeMode::Since(3));
        h.sent();
        h.state.on_frame(frame(
            json!({"type": "resync_required", "ref": 1, "sub_id": 4, "reason": "log_trimmed"}),
        ));
        assert!(matches!(wait.try_recv(), Ok(Ok(()))));
        assert!(matches!(rx.try_recv(), Ok(SubEvent::ResyncRequired { .. })));
        assert_eq!(h.sent(), vec![json!({"type": "subscribe", "ref": 2, "collection": "items"})]);
    }

    #[test]
    fn subscribe_errors_fail_the_call_or_end_the_stream() {
        let mut h = Harness::online();
        let (_rx, mut wait) = h.subscribe(1, "items", Some("qty=gtx.5"), SubscribeMode::Plain);
        h.state.on_frame(frame(
            json!({"type": "error", "ref": 1, "code": "bad_filter", "message": "unknown operator"}),
        ));
        match wait.try_recv() {
            Ok(Err(e)) => assert_eq!(e.code(), Some("bad_filter")),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(h.state.subscription_count(), 0);

        let (mut rx, _w) = h.subscribe(2, "items", None, SubscribeMode::Plain);
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 2, "sub_id": 1, "seq": 0})));
        h.state.on_disconnect();
        h.state.on_connected();
        h.state.on_frame(frame(
            json!({"type": "error", "ref": 3, "code": "collection_not_found", "message": "gone"}),
        ));
        assert!(matches!(rx.try_recv(), Ok(SubEvent::Error { code, .. }) if code == "collection_not_found"));
        assert!(matches!(rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
    }

    #[test]
    fn duplicate_queries_are_refused_locally() {
        let mut h = Harness::online();
        let (_rx, _w) = h.subscribe(1, "items", Some("a=eq.1"), SubscribeMode::Plain);
        let (_rx2, mut w2) = h.subscribe(2, "items", Some("a=eq.1"), SubscribeMode::Snapshot);
        match w2.try_recv() {
            Ok(Err(e)) => assert_eq!(e.code(), Some("already_subscribed")),
            other => panic!("unexpected {other:?}"),
        }
        let (_rx3, _w3) = h.subscribe(3, "items", Some("a=eq.2"), SubscribeMode::Plain);
        assert_eq!(h.state.subscription_count(), 2);
    }

    #[test]
    fn dropped_consumers_are_unsubscribed() {
        let mut h = Harness::online();
        let (rx, _w) = h.subscribe(1, "items", None, SubscribeMode::Plain);
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 1, "sub_id": 8, "seq": 0})));
        h.sent();
        drop(rx);
        h.state.on_frame(change(8, 1, "a", "add"));
        assert_eq!(h.sent(), vec![json!({"type": "unsubscribe", "ref": 2, "sub_id": 8})]);
        assert_eq!(h.state.subscription_count(), 0);

        // Dropped while the subscribe is in flight: unsubscribed once the id is known.
        let (_rx, w) = h.subscribe(2, "items", None, SubscribeMode::Plain);
        h.state.command(Command::Unsubscribe { local: 2, reply: None });
        drop(w);
        h.sent();
        h.state.on_frame(frame(json!({"type": "subscribed", "ref": 3, "sub_id": 8, "seq": 0})));
        assert_eq!(h.sent(), vec![json!({"type": "unsubscribe", "ref": 4, "sub_id": 8})]);
    }

    #[test]
    fn channels_are_rejoined_and_presence_retracked() {
        let mut h = Harness::online();
        let (messages, mut mrx) = mpsc::unbounded_channel();
        let (reply, mut wait) = oneshot::channel();
        h.state.command(Command::Join { channel: "room:7".into(), gen: 1, messages, reply });
        h.state.on_frame(frame(json!({"type": "ok", "ref": 1})));
        assert!(matches!(wait.try_recv(), Ok(Ok(()))));
        let (reply, mut tw) = oneshot::channel();
        h.state.command(Command::Track {
            channel: "room:7".into(),
            key: Some("u1".into()),
            meta: json!({"name": "Ada"}),
            reply,
        });
        h.state.on_frame(frame(json!({"type": "ok", "ref": 2})));
        assert!(matches!(tw.try_recv(), Ok(Ok(()))));
        h.state.on_frame(frame(json!({"type": "broadcast", "channel": "room:7",
            "event": "cursor", "payload": {"x": 1}, "from": "c2"})));
        assert!(matches!(
            mrx.try_recv(),
            Ok(ChannelMessage::Broadcast { event, .. }) if event == "cursor"
        ));
        h.sent();
        h.state.on_disconnect();
        h.state.on_connected();
        assert_eq!(
            h.sent(),
            vec![
                json!({"type": "join", "ref": 3, "channel": "room:7"}),
                json!({"type": "presence_track", "ref": 4, "channel": "room:7", "key": "u1",
                    "meta": {"name": "Ada"}}),
            ]
        );
    }

    #[test]
    fn one_shot_requests_fail_when_offline_or_disconnected() {
        let mut state = State::default();
        let (reply, mut rx) = oneshot::channel();
        state.command(Command::Ping { reply });
        assert!(matches!(rx.try_recv(), Ok(Err(Error::NotConnected))));
        state.on_connected();
        let (reply, mut rx) = oneshot::channel();
        state.command(Command::Ping { reply });
        let (reply, mut brx) = oneshot::channel();
        state.command(Command::Broadcast {
            channel: "r".into(),
            event: "e".into(),
            payload: json!(1),
            self_: false,
            ack: true,
            reply,
        });
        state.on_disconnect();
        assert!(matches!(rx.try_recv(), Ok(Err(Error::NotConnected))));
        assert!(matches!(brx.try_recv(), Ok(Err(Error::NotConnected))));
    }

    #[test]
    fn errors_nobody_waits_for_become_notices() {
        let mut h = Harness::online();
        let (tx, mut rx) = mpsc::unbounded_channel();
        h.state.command(Command::Notices { tx });
        h.state
            .on_frame(frame(json!({"type": "error", "ref": null, "code": "token_expired", "message": "m"})));
        h.state.on_frame(frame(json!({"type": "error", "ref": 99, "code": "rate_limited", "message": "r"})));
        let codes: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok()).map(|n| n.code).collect();
        assert_eq!(codes, vec!["token_expired", "rate_limited"]);
    }

    #[test]
    fn pong_resolves_ping() {
        let mut h = Harness::online();
        let (reply, mut rx) = oneshot::channel();
        h.state.command(Command::Ping { reply });
        assert_eq!(h.sent(), vec![json!({"type": "ping", "ref": 1})]);
        h.state.on_frame(frame(json!({"type": "pong", "ref": 1, "server_time": "t"})));
        assert!(matches!(rx.try_recv(), Ok(Ok(_))));
    }

    #[test]
    fn close_fails_waiters_and_ends_streams() {
        let mut h = Harness::online();
        let (mut rx, mut wait) = h.subscribe(1, "items", None, SubscribeMode::Plain);
        h.state.close();
        assert!(matches!(wait.try_recv(), Ok(Err(Error::Closed))));
        assert!(matches!(rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
    }
}
