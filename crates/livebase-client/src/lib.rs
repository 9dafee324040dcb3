//! A Rust client for Livebase: REST CRUD helpers and a realtime connection with live
//! subscriptions, live queries, presence and broadcast, that reconnects and resumes by itself.
//!
//! # Layout
//! - [`rest`]: [`Client`]: records CRUD, lists, batches, optimistic concurrency
//!   ([`MutationOptions::if_version`]) and idempotency keys; the factory of realtime
//!   connections.
//! - [`realtime`]: [`RealtimeHandle`]: one WebSocket (`/api/realtime`) owned by a background
//!   task. Commands go in over an mpsc channel; each [`Subscription`], [`LiveQuery`] and
//!   [`Channel`] gets its own stream; a [`LiveAggregate`] keeps KPI numbers current. The
//!   bookkeeping (request refs, server `sub_id` ↔ local
//!   subscription, last seq per subscription, snapshot assembly, channels to rejoin) lives in
//!   an I/O-free state machine; the task only moves frames and reconnects.
//! - [`protocol`]: the wire frames of `docs/protocol.md`, parsed and built.
//! - [`backoff`]: exponential backoff with full jitter for reconnects.
//! - [`error`]: [`Error`], shared by REST and realtime calls.
//!
//! # Guarantees
//! A subscription delivers each change exactly once and in `seq` order, across reconnects:
//! the client remembers the last seq per subscription, subscribes again with `since` after a
//! reconnect (whatever closed the socket: a network failure, `4001 slow_consumer`,
//! `4002 heartbeat_timeout`, a server restart) and drops anything at or before that seq.
//! When the server's log no longer reaches back, a live query reloads a snapshot and a plain
//! subscription reports [`SubEvent::ResyncRequired`] and continues live.
//!
//! Reconnects wait a random delay in `[0, min(cap, base * 2^attempt)]` (full jitter,
//! [`Backoff`]). Outgoing frames are paced ([`RealtimeConfig::max_send_rate`]) so a resume
//! of many subscriptions stays under the server's per-connection message rate. Errors that
//! answer no request (`token_expired`, `rate_limited`, a refused handshake) arrive on
//! [`RealtimeHandle::notices`].
//!
//! # Example
//! ```no_run
//! use livebase_client::{Client, SubEvent};
//! use serde_json::json;
//!
//! # async fn demo() -> livebase_client::Result<()> {
//! let client = Client::new("http://127.0.0.1:8080").with_token("my-token");
//! let rt = client.realtime();
//!
//! // Changes to late shipments, from now on.
//! let mut late = rt.subscribe("shipments", Some("status=eq.late")).await?;
//! // The open orders with more than 5 items, kept up to date.
//! let mut orders = rt.live_query("orders", Some("and=(status.eq.open,qty.gt.5)")).await?;
//!
//! let created = client.create("shipments", json!({"status": "late"})).await?;
//! let id = created["id"].as_str().unwrap_or_default();
//! // Optimistic concurrency: fails with Error::Conflict if someone else wrote first.
//! client.update("shipments", id, json!({"status": "delivered"}), Some(1)).await?;
//!
//! while let Some(ev) = late.next().await {
//!     if let SubEvent::Change(c) = ev {
//!         println!("{} {:?} -> {:?}", c.seq, c.op, c.view);
//!     }
//! }
//! orders.changed().await;
//! println!("{} open orders", orders.rows().len());
//! # Ok(())
//! # }
//! ```

pub mod backoff;
pub mod error;
pub mod protocol;
pub mod realtime;
pub mod rest;

pub use backoff::Backoff;
pub use error::{Error, Result};
pub use protocol::{Change, Op, PresenceEntry, PresenceMap, SubscribeMode, View};
pub use realtime::{
    AggregateValues, Channel, ChannelMessage, GroupKey, Kept, Live, LiveAggregate, LiveQuery, Notice,
    Presence, RealtimeConfig, RealtimeHandle, RowCache, Status, SubEvent, Subscription,
};
pub use rest::{AggregateResult, Client, MutationOptions, Page};
