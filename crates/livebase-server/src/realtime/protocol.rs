//! The realtime frames of `docs/protocol.md` as the hub and the connections use them: a thin
//! layer over `livebase-protocol` (which the client and the bench share) that turns the
//! server's own types (`ChangeEvent`, `Record`) into frames.
//!
//! Frames are encoded straight to UTF-8 bytes ([`Utf8Bytes`]) so one encoding can be cloned
//! (a reference count) into every receiver's queue.

use axum::extract::ws::Utf8Bytes;
use livebase_core::record::now_timestamp;
use livebase_core::{ChangeEvent, ChangeOp, Record};
use livebase_protocol as wire;
use serde::Serialize;
use serde_json::Value;

pub use wire::{AggregateReq, Auth, Broadcast, ChannelReq, Ping, Ref, Subscribe, Track, Unsubscribe, View};

/// A request from a client.
pub type ClientMsg = wire::ClientFrame;

/// A refusal: sent as an `error` frame; the connection stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtoError {
    pub reference: Ref,
    pub code: &'static str,
    pub message: String,
    /// The subscription concerned, when there is one (e.g. `already_subscribed`).
    pub sub_id: Option<u64>,
}

impl ProtoError {
    pub fn new(reference: &Ref, code: &'static str, message: impl Into<String>) -> ProtoError {
        ProtoError { reference: reference.clone(), code, message: message.into(), sub_id: None }
    }

    pub fn with_sub(mut self, sub_id: u64) -> ProtoError {
        self.sub_id = Some(sub_id);
        self
    }

    pub fn frame(&self) -> Utf8Bytes {
        Utf8Bytes::from(wire::error(&self.reference, self.code, &self.message, self.sub_id))
    }
}

impl From<wire::DecodeError> for ProtoError {
    fn from(e: wire::DecodeError) -> ProtoError {
        ProtoError { reference: e.reference, code: e.code, message: e.message, sub_id: None }
    }
}

/// The `ref` of a frame, read without interpreting the rest (for refusals that come before
/// parsing, such as rate limiting).
pub fn peek_ref(text: &str) -> Ref {
    wire::peek_ref(text)
}

/// Parses one text frame. The error keeps the request's `ref` when it could be read.
pub fn parse(text: &str) -> Result<ClientMsg, ProtoError> {
    wire::decode_client_frame(text).map_err(ProtoError::from)
}

pub fn ok(reference: &Ref) -> Utf8Bytes {
    Utf8Bytes::from(wire::ok(reference))
}

pub fn pong(reference: &Ref) -> Utf8Bytes {
    Utf8Bytes::from(wire::pong(reference, &now_timestamp()))
}

/// `epoch`: the server's epoch, which gives `seq` its meaning; a resuming client sends it back.
pub fn subscribed(reference: &Ref, sub_id: u64, seq: u64, epoch: &str) -> Utf8Bytes {
    Utf8Bytes::from(wire::subscribed(reference, sub_id, seq, epoch))
}

/// `reason`: `log_trimmed`, `epoch_changed` (see `livebase_protocol::reason`).
pub fn resync_required(reference: &Ref, sub_id: u64, reason: &str) -> Utf8Bytes {
    Utf8Bytes::from(wire::resync_required(reference, sub_id, reason))
}

pub fn welcome(
    conn_id: &str,
    server_time: &str,
    heartbeat_ms: u64,
    timeout_ms: u64,
    epoch: &str,
    cut_off: Option<&Value>,
) -> Utf8Bytes {
    Utf8Bytes::from(wire::welcome(conn_id, server_time, heartbeat_ms, timeout_ms, epoch, cut_off))
}

/// A live aggregate's values (see `docs/protocol.md`).
pub fn aggregate(
    sub_id: u64,
    seq: u64,
    full: bool,
    groups: &[serde_json::Map<String, Value>],
    removed: &[serde_json::Map<String, Value>],
) -> Utf8Bytes {
    Utf8Bytes::from(wire::aggregate(sub_id, seq, full, groups, removed))
}

/// `state`: presence entries by key, each `[{"conn_id": …, "meta": …}]`.
pub fn presence_state<S: Serialize + ?Sized>(channel: &str, state: &S) -> Utf8Bytes {
    Utf8Bytes::from(wire::presence_state(channel, state))
}

pub fn presence_diff<J: Serialize + ?Sized, L: Serialize + ?Sized>(
    channel: &str,
    joins: &J,
    leaves: &L,
) -> Utf8Bytes {
    Utf8Bytes::from(wire::presence_diff(channel, joins, leaves))
}

/// `from`: the sender's `conn_id`.
pub fn broadcast(channel: &str, event: &str, payload: &Value, from: &str) -> Utf8Bytes {
    Utf8Bytes::from(wire::broadcast(channel, event, payload, from))
}

fn op(op: ChangeOp) -> wire::Op {
    match op {
        ChangeOp::Insert => wire::Op::Insert,
        ChangeOp::Update => wire::Op::Update,
        ChangeOp::Delete => wire::Op::Delete,
    }
}

/// The part of a change frame common to every query that receives the event: encoded once
/// per event, then prefixed per query with its `sub_id` and `view`.
/// `show_new` / `show_old`: whether the receiver may see each side (a hidden side is null).
pub fn change_body(e: &ChangeEvent, show_new: bool, show_old: bool) -> String {
    wire::change_body::<Record>(&wire::ChangeBody {
        seq: e.seq,
        op: op(e.op),
        id: &e.id,
        version: e.version,
        actor: e.actor.as_deref(),
        committed_at: &e.committed_at,
        new: e.new.as_ref().filter(|_| show_new),
        old: e.old.as_ref().filter(|_| show_old),
    })
}

pub fn change_frame(body: &str, sub_id: u64, view: View) -> Utf8Bytes {
    Utf8Bytes::from(wire::change_frame(body, sub_id, view))
}

pub fn snapshot(sub_id: u64, seq: u64, rows: &[Record], done: bool) -> Utf8Bytes {
    Utf8Bytes::from(wire::snapshot(sub_id, seq, rows, done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> ChangeEvent {
        ChangeEvent {
            seq: 9,
            collection: "c".into(),
            op: ChangeOp::Update,
            id: "a".into(),
            new: Some(Record::new("a", 2, "t", "t", [("x".to_string(), json!(1))])),
            old: Some(Record::new("a", 1, "t", "t", [("x".to_string(), json!(0))])),
            version: 2,
            actor: Some("u1".into()),
            committed_at: "t".into(),
        }
    }

    #[test]
    fn change_frames_are_the_bytes_the_json_encoding_gave() {
        let e = event();
        // The encoding before livebase-protocol: a `json!` object, its brace replaced.
        let old = json!({
            "seq": e.seq, "op": e.op.as_str(), "id": e.id, "version": e.version, "actor": e.actor,
            "committed_at": e.committed_at, "new": &e.new, "old": None::<Record>,
        })
        .to_string();
        let want = format!("{{\"type\":\"change\",\"sub_id\":12,\"view\":\"add\",{}", &old[1..]);
        let f = change_frame(&change_body(&e, true, false), 12, View::Add);
        assert_eq!(f.as_str(), want);
    }

    #[test]
    fn snapshot_frames_serialize_records_as_objects() {
        let rows = [event().new.unwrap_or_default()];
        let f = snapshot(3, 9, &rows, true);
        let v: Value = serde_json::from_str(f.as_str()).expect("json");
        assert_eq!(v, json!({"type": "snapshot", "sub_id": 3, "seq": 9, "rows": [rows[0]], "done": true}));
    }

    #[test]
    fn bad_frames_are_refused_with_codes() {
        assert_eq!(parse("{").unwrap_err().code, "malformed_json");
        assert_eq!(parse("[]").unwrap_err().code, "bad_request");
        let e = parse(r#"{"type":"dance","ref":3}"#).unwrap_err();
        assert_eq!((e.code, e.reference), ("unknown_type", Some(Box::new(json!(3)))));
        assert_eq!(parse(r#"{"type":"subscribe","ref":1}"#).unwrap_err().code, "bad_request");
        assert_eq!(parse(r#"{"type":"ping","ref":1,"extra":2}"#).unwrap_err().code, "bad_request");
        assert!(matches!(parse(r#"{"type":"ping","ref":"x"}"#), Ok(ClientMsg::Ping(_))));
    }

    #[test]
    fn refusals_keep_the_old_error_frame_shape() {
        let e = ProtoError::new(&Some(Box::new(json!("r"))), "already_subscribed", "m").with_sub(4);
        assert_eq!(
            e.frame().as_str(),
            r#"{"type":"error","ref":"r","code":"already_subscribed","message":"m","sub_id":4}"#
        );
        assert_eq!(
            subscribed(&None, 1, 2, "").as_str(),
            r#"{"type":"subscribed","ref":null,"sub_id":1,"seq":2,"epoch":""}"#
        );
    }
}
