//! The wire shapes of `docs/protocol.md`: client requests parsed, server frames encoded.
//!
//! Frames are encoded straight to UTF-8 bytes ([`Utf8Bytes`]) so one encoding can be cloned
//! (a reference count) into every receiver's queue.

use axum::extract::ws::Utf8Bytes;
use livebase_core::record::now_timestamp;
use livebase_core::ChangeEvent;
use serde::Deserialize;
use serde_json::{json, Value};

/// A request id chosen by the client, echoed in the reply.
pub type Ref = Option<Box<Value>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    #[serde(rename = "ref")]
    pub reference: Ref,
    pub collection: String,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub since: Option<u64>,
    /// The log `since` belongs to (from an earlier `subscribed`).
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default)]
    pub snapshot: bool,
    /// A live aggregate instead of rows.
    #[serde(default)]
    pub aggregate: Option<AggregateReq>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateReq {
    #[serde(default)]
    pub group: Vec<String>,
    #[serde(rename = "fn")]
    pub fns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    #[serde(rename = "ref")]
    pub reference: Ref,
    pub sub_id: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelReq {
    #[serde(rename = "ref")]
    pub reference: Ref,
    pub channel: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broadcast {
    #[serde(rename = "ref", default)]
    pub reference: Ref,
    pub channel: String,
    pub event: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(rename = "self", default)]
    pub include_self: bool,
    #[serde(default)]
    pub ack: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    #[serde(rename = "ref")]
    pub reference: Ref,
    pub channel: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub meta: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {
    #[serde(rename = "ref", default)]
    pub reference: Ref,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(rename = "ref", default)]
    pub reference: Ref,
    pub token: String,
}

#[derive(Debug)]
pub enum ClientMsg {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Join(ChannelReq),
    Leave(ChannelReq),
    Broadcast(Broadcast),
    Track(Track),
    Untrack(ChannelReq),
    Ping(Ping),
    Auth(Auth),
}

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
        let mut v =
            json!({"type": "error", "ref": self.reference, "code": self.code, "message": self.message});
        if let Some(id) = self.sub_id {
            v["sub_id"] = json!(id);
        }
        encode(&v)
    }
}

/// The `ref` of a frame, read without interpreting the rest (for refusals that come before
/// parsing, such as rate limiting).
pub fn peek_ref(text: &str) -> Ref {
    #[derive(Deserialize)]
    struct OnlyRef {
        #[serde(rename = "ref", default)]
        reference: Ref,
    }
    serde_json::from_str::<OnlyRef>(text).ok().and_then(|r| r.reference)
}

/// Parses one text frame. The error keeps the request's `ref` when it could be read.
pub fn parse(text: &str) -> Result<ClientMsg, ProtoError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ProtoError::new(&None, "malformed_json", format!("frame is not valid JSON: {e}")))?;
    let Value::Object(mut m) = v else {
        return Err(ProtoError::new(&None, "bad_request", "a frame must be a JSON object"));
    };
    let reference = m.get("ref").cloned().map(Box::new);
    let ty = match m.remove("type") {
        Some(Value::String(t)) => t,
        _ => return Err(ProtoError::new(&reference, "bad_request", "a frame needs a string 'type'")),
    };
    let v = Value::Object(m);
    fn de<T: for<'a> Deserialize<'a>>(v: Value, r: &Ref, ty: &str) -> Result<T, ProtoError> {
        serde_json::from_value(v)
            .map_err(|e| ProtoError::new(r, "bad_request", format!("invalid '{ty}': {e}")))
    }
    let r = &reference;
    Ok(match ty.as_str() {
        "subscribe" => ClientMsg::Subscribe(de(v, r, &ty)?),
        "unsubscribe" => ClientMsg::Unsubscribe(de(v, r, &ty)?),
        "join" => ClientMsg::Join(de(v, r, &ty)?),
        "leave" => ClientMsg::Leave(de(v, r, &ty)?),
        "broadcast" => ClientMsg::Broadcast(de(v, r, &ty)?),
        "presence_track" => ClientMsg::Track(de(v, r, &ty)?),
        "presence_untrack" => ClientMsg::Untrack(de(v, r, &ty)?),
        "ping" => ClientMsg::Ping(de(v, r, &ty)?),
        "auth" => ClientMsg::Auth(de(v, r, &ty)?),
        other => return Err(ProtoError::new(r, "unknown_type", format!("unknown frame type '{other}'"))),
    })
}

pub fn encode(v: &Value) -> Utf8Bytes {
    Utf8Bytes::from(v.to_string())
}

pub fn ok(reference: &Ref) -> Utf8Bytes {
    encode(&json!({"type": "ok", "ref": reference}))
}

pub fn pong(reference: &Ref) -> Utf8Bytes {
    encode(&json!({"type": "pong", "ref": reference, "server_time": now_timestamp()}))
}

pub fn subscribed(reference: &Ref, sub_id: u64, seq: u64, epoch: &str) -> Utf8Bytes {
    encode(&json!({"type": "subscribed", "ref": reference, "sub_id": sub_id, "seq": seq, "epoch": epoch}))
}

pub fn resync_required(reference: &Ref, sub_id: u64, reason: &str) -> Utf8Bytes {
    encode(&json!({"type": "resync_required", "ref": reference, "sub_id": sub_id, "reason": reason}))
}

/// What a change does to a subscription's result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Add,
    Update,
    Remove,
}

impl View {
    pub fn between(matched_before: bool, matches_now: bool) -> Option<View> {
        match (matched_before, matches_now) {
            (false, false) => None,
            (false, true) => Some(View::Add),
            (true, true) => Some(View::Update),
            (true, false) => Some(View::Remove),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            View::Add => "add",
            View::Update => "update",
            View::Remove => "remove",
        }
    }
}

/// The part of a change frame common to every query that receives the event: encoded once
/// per event, then prefixed per query with its `sub_id` and `view`.
/// `show_new` / `show_old`: whether the receiver may see each side (a hidden side is null).
pub fn change_body(e: &ChangeEvent, show_new: bool, show_old: bool) -> String {
    let none = &None;
    let v = json!({
        "seq": e.seq, "op": e.op.as_str(), "id": e.id, "version": e.version, "actor": e.actor,
        "committed_at": e.committed_at,
        "new": if show_new { &e.new } else { none },
        "old": if show_old { &e.old } else { none },
    });
    let s = v.to_string();
    // Drop the opening brace: the frame prefix supplies it.
    s[1..].to_string()
}

pub fn change_frame(body: &str, sub_id: u64, view: View) -> Utf8Bytes {
    let mut s = String::with_capacity(body.len() + 56);
    s.push_str("{\"type\":\"change\",\"sub_id\":");
    s.push_str(itoa(sub_id).as_str());
    s.push_str(",\"view\":\"");
    s.push_str(view.as_str());
    s.push_str("\",");
    s.push_str(body);
    Utf8Bytes::from(s)
}

fn itoa(n: u64) -> String {
    n.to_string()
}

pub fn snapshot(sub_id: u64, seq: u64, rows: &[livebase_core::Record], done: bool) -> Utf8Bytes {
    encode(&json!({"type": "snapshot", "sub_id": sub_id, "seq": seq, "rows": rows, "done": done}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use livebase_core::{ChangeOp, Record};

    #[test]
    fn change_frames_are_valid_json_with_the_query_prefix() {
        let e = ChangeEvent {
            seq: 9,
            collection: "c".into(),
            op: ChangeOp::Insert,
            id: "a".into(),
            new: Some(Record::new("a", 1, "t", "t", [("x".to_string(), json!(1))])),
            old: None,
            version: 1,
            actor: None,
            committed_at: "t".into(),
        };
        let f = change_frame(&change_body(&e, true, true), 12, View::Add);
        let v: Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["type"], "change");
        assert_eq!(v["sub_id"], 12);
        assert_eq!(v["view"], "add");
        assert_eq!(v["seq"], 9);
        assert_eq!(v["new"]["x"], 1);
        assert_eq!(v["old"], Value::Null);
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
}
