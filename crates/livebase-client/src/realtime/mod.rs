//! The realtime connection: one WebSocket owned by a background task, with automatic
//! reconnect and resume.
//!
//! [`RealtimeHandle`] sends commands to the task over an mpsc channel; every
//! [`Subscription`] and [`Channel`] receives its own events over its own mpsc channel. The
//! task keeps, per subscription, the last `seq` delivered, and after a reconnect subscribes
//! again with `since` = that seq, so each subscription sees every change exactly once and in
//! order across disconnects.

mod channel;
mod state;
mod subscription;
mod task;

pub use channel::{Channel, ChannelMessage, Presence};
pub use subscription::{
    AggregateValues, GroupKey, Kept, Live, LiveAggregate, LiveQuery, RowCache, SubEvent, Subscription,
};

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::protocol::{AggregateReq, SubscribeMode};
use serde_json::Value;
use state::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The state of the connection, as published on [`RealtimeHandle::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The first connection attempt is under way.
    Connecting,
    /// Connected and welcomed; subscriptions and channels have been (re)sent.
    Connected,
    /// The connection was lost (or could not be made); this is the `attempt`-th consecutive
    /// try (1-based), made after a backoff delay.
    Reconnecting { attempt: u32 },
    /// Closed for good: [`RealtimeHandle::close`] was called or every handle was dropped.
    Disconnected,
}

/// An error of the connection that answers no request of this client: e.g. `token_expired`
/// (send a fresh token with [`RealtimeHandle::auth`]), `rate_limited`, a subscription or
/// presence that could not be restored, `invalid_token` (the token given at connect was
/// refused: the server closes with 4003), or `connect_refused` (the WebSocket handshake
/// failed with an HTTP error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub code: String,
    pub message: String,
}

/// Settings of a realtime connection.
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// Reconnect delays (full jitter; defaults: base 100 ms, cap 10 s).
    pub backoff: Backoff,
    /// Gives up on a connection attempt (TCP + WebSocket handshake + `welcome`) after this.
    pub connect_timeout: Duration,
    /// Declares the connection dead when nothing at all (not even the server's heartbeat
    /// Pings) arrives for this long. `None`: the server's `timeout_ms` from `welcome`
    /// (45 s when absent).
    pub idle_timeout: Option<Duration>,
    /// The WebSocket read buffer, allocated up front per connection.
    pub read_buffer_size: usize,
    /// The WebSocket write buffer target; 0 writes each frame at once.
    pub write_buffer_size: usize,
    /// The largest accepted incoming message (snapshot chunks are the biggest).
    pub max_message_size: usize,
    /// Frames per second this client sends at most (0: unlimited), with bursts of
    /// `send_burst`. Keep it under the server's per-connection limit (default 100/s, burst
    /// 200): frames over it are refused with a `rate_limited` error that carries no `ref`.
    pub max_send_rate: f64,
    pub send_burst: f64,
}

impl Default for RealtimeConfig {
    fn default() -> RealtimeConfig {
        RealtimeConfig {
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: None,
            read_buffer_size: 4096,
            write_buffer_size: 0,
            max_message_size: 16 << 20,
            max_send_rate: 90.0,
            send_burst: 180.0,
        }
    }
}

/// Where the task connects: the base URL (changeable) and the current token.
#[derive(Debug)]
pub(crate) struct Shared {
    pub base_url: Mutex<String>,
    pub token: Mutex<Option<String>>,
    pub conn_id: Mutex<Option<String>>,
    next_local: AtomicU64,
}

impl Shared {
    pub fn ws_url(&self) -> Result<String> {
        let base = lock(&self.base_url).clone();
        let token = lock(&self.token).clone();
        ws_url(&base, token.as_deref())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The realtime endpoint for a REST base URL: `http://h:p[/prefix]` →
/// `ws://h:p[/prefix]/api/realtime[?token=…]` (`https` → `wss`).
pub fn ws_url(base_url: &str, token: Option<&str>) -> Result<String> {
    let base = base_url.trim().trim_end_matches('/');
    let (scheme, rest) =
        base.split_once("://").ok_or_else(|| Error::InvalidUrl(format!("{base_url:?} has no scheme")))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => return Err(Error::InvalidUrl(format!("{base_url:?}: unsupported scheme {other:?}"))),
    };
    if rest.is_empty() || rest.contains(['?', '#']) {
        return Err(Error::InvalidUrl(format!("{base_url:?} must be scheme://host[:port][/path]")));
    }
    let mut url = format!("{scheme}://{rest}/api/realtime");
    if let Some(t) = token {
        url.push_str("?token=");
        url.extend(form_urlencoded::byte_serialize(t.as_bytes()));
    }
    Ok(url)
}

/// A handle on one realtime connection. Cheap to clone; the connection stays up while a
/// handle, a [`Subscription`], a [`LiveQuery`] or a [`Channel`] of it is alive, or until
/// [`RealtimeHandle::close`].
#[derive(Debug, Clone)]
pub struct RealtimeHandle {
    cmd: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
    shared: Arc<Shared>,
}

impl RealtimeHandle {
    /// Starts the background task (must be inside a Tokio runtime).
    pub fn connect(base_url: &str, token: Option<String>, config: RealtimeConfig) -> Self {
        let shared = Arc::new(Shared {
            base_url: Mutex::new(base_url.to_string()),
            token: Mutex::new(token),
            conn_id: Mutex::new(None),
            next_local: AtomicU64::new(1),
        });
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Status::Connecting);
        tokio::spawn(task::run(cmd_rx, status_tx, shared.clone(), config));
        RealtimeHandle { cmd, status, shared }
    }

    /// The connection state; `changed().await` on it to follow transitions.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until the connection is up (returns at once when it is).
    pub async fn wait_connected(&self) -> Result<()> {
        let mut rx = self.status.clone();
        let r = rx
            .wait_for(|s| matches!(s, Status::Connected | Status::Disconnected))
            .await
            .map_err(|_| Error::Closed)?;
        match *r {
            Status::Connected => Ok(()),
            _ => Err(Error::Closed),
        }
    }

    /// The server-assigned id of the current connection (`from` of broadcasts, `conn_id` of
    /// presence entries); `None` while disconnected.
    pub fn conn_id(&self) -> Option<String> {
        lock(&self.shared.conn_id).clone()
    }

    /// Connection-level errors from now on (see [`Notice`]).
    pub fn notices(&self) -> mpsc::UnboundedReceiver<Notice> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.cmd.send(Command::Notices { tx });
        rx
    }

    /// Points the connection at another server (same data, e.g. after a failover or a
    /// restart on a new port). Takes effect on the next (re)connect; call
    /// [`RealtimeHandle::reconnect`] to switch now.
    pub fn set_url(&self, base_url: &str) {
        *lock(&self.shared.base_url) = base_url.to_string();
    }

    /// Drops the current connection without a close handshake (as a network failure would)
    /// and reconnects, resuming every subscription.
    pub fn reconnect(&self) {
        let _ = self.cmd.send(Command::Reconnect);
    }

    /// Closes the connection for good: subscriptions and channels end, requests fail with
    /// [`Error::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Close { reply: tx }).is_ok() {
            let _ = rx.await;
        }
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Subscribes to changes of `collection` matching `filter` (REST filter grammar, e.g.
    /// `"qty=gt.5"`), committed from now on. Resolves once the server confirmed (waiting
    /// through reconnects if the connection is down).
    pub async fn subscribe(&self, collection: &str, filter: Option<&str>) -> Result<Subscription> {
        self.subscribe_with(collection, filter, SubscribeMode::Plain).await
    }

    /// Subscribes to every matching change after `since`, then live ones. When the log no
    /// longer reaches back that far the first event is [`SubEvent::ResyncRequired`] and the
    /// subscription continues live.
    pub async fn subscribe_since(
        &self,
        collection: &str,
        filter: Option<&str>,
        since: u64,
    ) -> Result<Subscription> {
        self.subscribe_with(collection, filter, SubscribeMode::Since(since)).await
    }

    /// Subscribes in the given mode. With [`SubscribeMode::Snapshot`] the first event is a
    /// [`SubEvent::Snapshot`] holding every matching row.
    pub async fn subscribe_with(
        &self,
        collection: &str,
        filter: Option<&str>,
        mode: SubscribeMode,
    ) -> Result<Subscription> {
        self.subscribe_inner(collection, filter, mode, None).await
    }

    async fn subscribe_inner(
        &self,
        collection: &str,
        filter: Option<&str>,
        mode: SubscribeMode,
        aggregate: Option<AggregateReq>,
    ) -> Result<Subscription> {
        let local = self.shared.next_local.fetch_add(1, Ordering::Relaxed);
        let (events, rx) = mpsc::unbounded_channel();
        let filter = filter.filter(|f| !f.is_empty()).map(str::to_string);
        self.request(|reply| Command::Subscribe {
            local,
            collection: collection.to_string(),
            filter: filter.clone(),
            mode,
            aggregate: aggregate.clone(),
            events,
            reply,
        })
        .await?;
        Ok(Subscription::new(local, collection.to_string(), filter, rx, self.cmd.clone()))
    }

    /// A live query: a cache of the rows matching `filter`, kept equal to the server's query
    /// result. Resolves once the initial snapshot is loaded.
    pub async fn live_query(&self, collection: &str, filter: Option<&str>) -> Result<LiveQuery> {
        let sub = self.subscribe_with(collection, filter, SubscribeMode::Snapshot).await?;
        LiveQuery::start(sub).await
    }

    /// A live aggregate: `fns` (`count`, `sum(f)`, `avg(f)`, `min(f)`, `max(f)`) over the rows
    /// of `collection` matching `filter` that this connection may see, grouped by `group`
    /// (zero, one or two fields; without, exactly one group). Resolves once the first values
    /// are in; re-subscribes after reconnects, and the fresh values replace the old ones.
    /// Refused aggregates fail with [`Error::Request`] code `invalid_aggregate`.
    ///
    /// ```no_run
    /// # async fn demo(rt: livebase_client::RealtimeHandle) -> livebase_client::Result<()> {
    /// let mut kpi = rt.aggregate("shipments", None, &["status"], &["count", "sum(weight_kg)"]).await?;
    /// loop {
    ///     if let Some(late) = kpi.group(&["late".into()]) {
    ///         println!("{} late, {} kg", late["count"], late["sum(weight_kg)"]);
    ///     }
    ///     if kpi.changed().await.is_none() {
    ///         break;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn aggregate(
        &self,
        collection: &str,
        filter: Option<&str>,
        group: &[&str],
        fns: &[&str],
    ) -> Result<LiveAggregate> {
        let group: Vec<String> = group.iter().map(|g| g.to_string()).collect();
        let fns = fns.iter().map(|f| f.split_whitespace().collect::<String>()).collect();
        let req = AggregateReq { group: group.clone(), fns };
        let sub = self.subscribe_inner(collection, filter, SubscribeMode::Plain, Some(req)).await?;
        LiveAggregate::start(sub, group).await
    }

    /// Joins a broadcast/presence channel. Resolves once the server confirmed; the channel's
    /// `presence_state` follows as its first message.
    pub async fn join(&self, channel: &str) -> Result<Channel> {
        let gen = self.shared.next_local.fetch_add(1, Ordering::Relaxed);
        let (messages, rx) = mpsc::unbounded_channel();
        self.request(|reply| Command::Join { channel: channel.to_string(), gen, messages, reply }).await?;
        Ok(Channel::new(channel.to_string(), gen, rx, self.cmd.clone()))
    }

    /// Leaves a channel: its [`Channel`] stream ends and tracked presence vanishes.
    pub async fn leave(&self, channel: &str) -> Result<()> {
        self.request(|reply| Command::Leave { channel: channel.to_string(), gen: None, reply: Some(reply) })
            .await
    }

    /// Tracks this connection's presence on a joined channel under `key` (default: the
    /// connection id). Tracking again replaces the meta. Re-tracked after reconnects; while
    /// disconnected it is only recorded (and returns at once) and goes out on reconnect.
    pub async fn track(&self, channel: &str, key: Option<&str>, meta: Value) -> Result<()> {
        self.request(|reply| Command::Track {
            channel: channel.to_string(),
            key: key.map(str::to_string),
            meta,
            reply,
        })
        .await
    }

    /// Removes this connection's presence entry from a channel.
    pub async fn untrack(&self, channel: &str) -> Result<()> {
        self.request(|reply| Command::Untrack { channel: channel.to_string(), reply }).await
    }

    /// Sends a broadcast to the channel's members (to this connection too when `self_`).
    /// Fire and forget: returns once queued; [`Error::NotConnected`] while reconnecting.
    pub async fn broadcast(&self, channel: &str, event: &str, payload: Value, self_: bool) -> Result<()> {
        self.request(Command::broadcast(channel, event, payload, self_, false)).await
    }

    /// [`RealtimeHandle::broadcast`] that waits for the server's `ok` (`ack: true`).
    pub async fn broadcast_ack(&self, channel: &str, event: &str, payload: Value, self_: bool) -> Result<()> {
        self.request(Command::broadcast(channel, event, payload, self_, true)).await
    }

    /// Round-trip time of a `ping` frame to its `pong`.
    pub async fn ping(&self) -> Result<Duration> {
        self.request(|reply| Command::Ping { reply }).await
    }

    /// Sends an `auth` frame with a new token (e.g. a refreshed JWT); later reconnects use
    /// it too. While disconnected it only takes effect on reconnect.
    pub async fn auth(&self, token: &str) -> Result<()> {
        *lock(&self.shared.token) = Some(token.to_string());
        self.request(|reply| Command::Auth { token: token.to_string(), reply }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls_derive_from_the_base_url() {
        assert_eq!(ws_url("http://127.0.0.1:8080", None).unwrap(), "ws://127.0.0.1:8080/api/realtime");
        assert_eq!(
            ws_url("https://db.example.com/lb/", Some("a b&c")).unwrap(),
            "wss://db.example.com/lb/api/realtime?token=a+b%26c"
        );
        assert_eq!(ws_url("ws://h:1", Some("t")).unwrap(), "ws://h:1/api/realtime?token=t");
        assert!(ws_url("h:1", None).is_err());
        assert!(ws_url("ftp://h", None).is_err());
        assert!(ws_url("http://h/?x=1", None).is_err());
    }
}
