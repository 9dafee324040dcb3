//! Typed deliveries out of the hub, and the codecs that turn them into frames.
//!
//! The hub decides *what* a connection receives — a change with the view it has of it, the
//! rows of a snapshot, presence, a broadcast, a reply — as a [`Delivery`]. *How* it looks on
//! the wire is the connection's [`Codec`]: the native JSON protocol of `docs/protocol.md` is
//! [`NativeCodec`]; another wire protocol is another codec on the same hub, with the same
//! matching, permissions and slow-consumer policy.
//!
//! Change frames are the hot path. A codec encodes the part of a change common to every
//! subscription that sees the same sides of it once per event ([`Codec::change_body`]), and the
//! frame per (query, view) from that body ([`Codec::change`]); the hub shares the resulting
//! bytes between every subscriber that uses the same codec instance and sees the event the
//! same way. Codecs are therefore shared, stateless values: a connection holds an
//! `Arc<dyn Codec>`, and the hub keys its per-event frame cache by that instance.

use super::protocol::{self, ProtoError, Ref, View};
use bytes::Bytes;
use livebase_core::{ChangeEvent, Record};
use livebase_store::Epoch;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// What a connection's queue carries: a finished server-to-client WebSocket frame, header
/// included. Server frames are unmasked, so the bytes are the same for every receiver: they
/// are built once and shared (reference counted) by every queue that carries them.
#[derive(Debug, Clone)]
pub struct Frame {
    wire: Bytes,
    /// Where the payload starts (the header's length).
    at: u8,
    binary: bool,
}

impl Frame {
    pub fn text(payload: &str) -> Frame {
        Frame::build(OpCode::Data(Data::Text), payload.as_bytes())
    }

    pub fn binary(payload: &[u8]) -> Frame {
        Frame::build(OpCode::Data(Data::Binary), payload)
    }

    /// A close frame with a status code and a reason (at most 123 bytes are kept).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut payload = code.to_be_bytes().to_vec();
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        Frame::build(OpCode::Control(Control::Close), &payload)
    }

    pub fn ping() -> Frame {
        Frame::build(OpCode::Control(Control::Ping), &[])
    }

    fn build(opcode: OpCode, payload: &[u8]) -> Frame {
        let header = FrameHeader { opcode, ..FrameHeader::default() };
        let mut wire = Vec::with_capacity(payload.len() + 10);
        // Formatting into a Vec cannot fail.
        let _ = header.format(payload.len() as u64, &mut wire);
        let at = wire.len() as u8;
        wire.extend_from_slice(payload);
        Frame { wire: Bytes::from(wire), at, binary: opcode == OpCode::Data(Data::Binary) }
    }

    /// The whole frame as it goes on the wire.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    pub fn payload(&self) -> &[u8] {
        &self.wire[self.at as usize..]
    }

    pub fn is_binary(&self) -> bool {
        self.binary
    }

    pub fn len(&self) -> usize {
        self.wire.len() - self.at as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text of a text frame (tests and logs).
    pub fn as_text(&self) -> Option<&str> {
        if self.binary {
            return None;
        }
        std::str::from_utf8(self.payload()).ok()
    }
}

/// Which sides of a change a receiver may see (a hidden side is sent as null).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sides {
    pub new: bool,
    pub old: bool,
}

/// One presence entry: a connection's tracked state under a key.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEntry {
    /// The tracking connection's cluster-wide name (`welcome.conn_id`).
    pub conn_id: Arc<str>,
    pub meta: Value,
}

/// Presence of a channel, or a diff of it: key → entries.
pub type PresenceMap = BTreeMap<String, Vec<PresenceEntry>>;

/// Everything the hub and a connection send, before it has a wire shape.
#[derive(Debug, Clone, Copy)]
pub enum Delivery<'a> {
    /// `cut_off`: why the client's previous connection was cut off, when it asked
    /// (`?resume_of=`) and that is known.
    Welcome {
        conn_id: &'a str,
        epoch: &'a Epoch,
        heartbeat_ms: u64,
        timeout_ms: u64,
        cut_off: Option<&'a Value>,
    },
    Subscribed {
        reference: &'a Ref,
        sub_id: u64,
        seq: u64,
        epoch: &'a Epoch,
    },
    /// Several subscriptions made at once ([`Hub::subscribe_set`](super::hub::Hub::subscribe_set)),
    /// all live from `seq`: one reply naming each, in the order they were asked for.
    SubscribedSet {
        reference: &'a Ref,
        sub_ids: &'a [u64],
        seq: u64,
        epoch: &'a Epoch,
    },
    Snapshot {
        sub_id: u64,
        seq: u64,
        rows: &'a [Record],
        done: bool,
    },
    ResyncRequired {
        reference: &'a Ref,
        sub_id: u64,
        reason: &'a str,
    },
    Ok {
        reference: &'a Ref,
    },
    Pong {
        reference: &'a Ref,
    },
    Error(&'a ProtoError),
    PresenceState {
        channel: &'a str,
        state: &'a PresenceMap,
    },
    PresenceDiff {
        channel: &'a str,
        joins: &'a PresenceMap,
        leaves: &'a PresenceMap,
    },
    Broadcast {
        channel: &'a str,
        event: &'a str,
        payload: &'a Value,
        from: &'a str,
    },
    /// A live aggregate's values: every group (`full`), or the groups a change moved and
    /// those it emptied.
    Aggregate {
        sub_id: u64,
        seq: u64,
        groups: &'a [serde_json::Map<String, Value>],
        removed: &'a [serde_json::Map<String, Value>],
        full: bool,
    },
}

/// Turns deliveries into frames for one wire protocol. Implementations are stateless and
/// shared by every connection that speaks them (see the module docs).
pub trait Codec: Send + Sync + 'static {
    /// The shared part of a change frame for receivers that see `sides` of the event.
    fn change_body(&self, e: &ChangeEvent, sides: Sides) -> Arc<str>;
    /// The change frame for one query from a body made by [`Codec::change_body`].
    fn change(&self, body: &str, sub_id: u64, view: View) -> Frame;
    /// Every other delivery; None when the protocol has no frame for it (a Phoenix socket has
    /// no `welcome`, for one).
    fn encode(&self, d: Delivery<'_>) -> Option<Frame>;
}

/// One delivery's frames, encoded once per codec instance and shared by every receiver that
/// speaks it.
pub struct PerCodec<'a> {
    delivery: Delivery<'a>,
    frames: Vec<(usize, Option<Frame>)>,
}

impl<'a> PerCodec<'a> {
    pub fn new(delivery: Delivery<'a>) -> PerCodec<'a> {
        PerCodec { delivery, frames: Vec::new() }
    }

    pub fn frame(&mut self, codec: &Arc<dyn Codec>) -> Option<Frame> {
        let key = codec_key(codec);
        if let Some((_, f)) = self.frames.iter().find(|(k, _)| *k == key) {
            return f.clone();
        }
        let f = codec.encode(self.delivery);
        self.frames.push((key, f.clone()));
        f
    }
}

/// A codec instance's identity, for caches of encoded frames.
pub fn codec_key(c: &Arc<dyn Codec>) -> usize {
    Arc::as_ptr(c) as *const () as usize
}

/// The native JSON protocol (`docs/protocol.md`).
#[derive(Debug, Default)]
pub struct NativeCodec;

impl NativeCodec {
    /// The one shared instance every native connection uses.
    pub fn shared() -> Arc<dyn Codec> {
        static NATIVE: std::sync::OnceLock<Arc<dyn Codec>> = std::sync::OnceLock::new();
        NATIVE.get_or_init(|| Arc::new(NativeCodec)).clone()
    }
}

/// Presence in the wire shape: key → `[{"conn_id", "meta"}]`, borrowed.
fn presence(p: &PresenceMap) -> BTreeMap<&str, Vec<WireEntry<'_>>> {
    p.iter()
        .map(|(k, entries)| {
            (k.as_str(), entries.iter().map(|e| WireEntry { conn_id: &e.conn_id, meta: &e.meta }).collect())
        })
        .collect()
}

#[derive(serde::Serialize)]
struct WireEntry<'a> {
    conn_id: &'a str,
    meta: &'a Value,
}

impl Codec for NativeCodec {
    fn change_body(&self, e: &ChangeEvent, sides: Sides) -> Arc<str> {
        protocol::change_body(e, sides.new, sides.old).into()
    }

    fn change(&self, body: &str, sub_id: u64, view: View) -> Frame {
        Frame::text(&protocol::change_frame(body, sub_id, view))
    }

    fn encode(&self, d: Delivery<'_>) -> Option<Frame> {
        let text = match d {
            Delivery::Welcome { conn_id, epoch, heartbeat_ms, timeout_ms, cut_off } => protocol::welcome(
                conn_id,
                &livebase_core::record::now_timestamp(),
                heartbeat_ms,
                timeout_ms,
                epoch.as_str(),
                cut_off,
            ),
            Delivery::Subscribed { reference, sub_id, seq, epoch } => {
                protocol::subscribed(reference, sub_id, seq, epoch.as_str())
            }
            // The native protocol subscribes one query per request.
            Delivery::SubscribedSet { .. } => return None,
            Delivery::Snapshot { sub_id, seq, rows, done } => protocol::snapshot(sub_id, seq, rows, done),
            Delivery::ResyncRequired { reference, sub_id, reason } => {
                protocol::resync_required(reference, sub_id, reason)
            }
            Delivery::Ok { reference } => protocol::ok(reference),
            Delivery::Pong { reference } => protocol::pong(reference),
            Delivery::Error(e) => e.frame(),
            Delivery::PresenceState { channel, state } => protocol::presence_state(channel, &presence(state)),
            Delivery::PresenceDiff { channel, joins, leaves } => {
                protocol::presence_diff(channel, &presence(joins), &presence(leaves))
            }
            Delivery::Broadcast { channel, event, payload, from } => {
                protocol::broadcast(channel, event, payload, from)
            }
            Delivery::Aggregate { sub_id, seq, groups, removed, full } => {
                protocol::aggregate(sub_id, seq, full, groups, removed)
            }
        };
        Some(Frame::text(&text))
    }
}
