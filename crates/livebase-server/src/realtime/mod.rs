//! Realtime: the WebSocket protocol of `docs/protocol.md` over the [`hub::Hub`].
//!
//! - [`protocol`]: the native JSON frames: request parsing, frame encoding.
//! - [`codec`]: typed deliveries out of the hub, and the codec that turns them into a
//!   connection's frames ([`codec::NativeCodec`] for the protocol above).
//! - [`bus`]: the channel-bus port that carries broadcast and presence between nodes.
//! - [`hub`]: subscriptions, their index, fan-out, catch-up stitching, channels and presence.
//! - [`conn`]: one task per WebSocket: reads requests, answers them, heartbeats.
//! - [`socket`]: the write side of every WebSocket: per-socket queues written by per-core
//!   shards, whole frames encoded once.
//! - [`upgrade`]: the listener, and the upgrade that hands a TCP stream to [`socket`].
//! - [`cutoff`]: recently cut-off connections, reported to their client when it resumes.
//! - [`phoenix`]: Supabase Realtime's Phoenix protocol on the same hub (supabase-js).

pub mod bus;
pub mod codec;
pub mod conn;
pub mod cutoff;
pub mod hub;
pub mod phoenix;
pub mod protocol;
pub mod socket;
pub mod upgrade;

use std::time::Duration;

/// Bounds on what one connection may hold or send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Frames queued for one connection before it counts as a slow consumer.
    pub queue_frames: usize,
    pub max_subscriptions: usize,
    pub max_channels: usize,
    /// Largest accepted client frame; larger ones get an error and are dropped.
    pub max_frame_bytes: usize,
    pub max_snapshot_rows: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub max_connections: usize,
    /// Messages per second per connection (0: unlimited) and the burst above it.
    pub ws_rate: f64,
    pub ws_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_frames: 4096,
            max_subscriptions: 100,
            max_channels: 100,
            max_frame_bytes: 64 * 1024,
            max_snapshot_rows: 10_000,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            max_connections: 100_000,
            ws_rate: 100.0,
            ws_burst: 200.0,
        }
    }
}
