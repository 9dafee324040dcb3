//! Client → server requests.

use crate::{num_ref, to_json, Ref};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

fn is_false(b: &bool) -> bool {
    !*b
}

/// `subscribe`: plain, resume (`since`, with the `epoch` it was read in) or live query
/// (`snapshot`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Ref,
    pub collection: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub snapshot: bool,
    /// The server epoch `since` was read in (from an earlier `subscribed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// A live aggregate over the matching rows instead of the rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateReq>,
}

/// What a live aggregate computes: `group` by zero, one or two fields; functions as written
/// (`count`, `sum(f)`, `avg(f)`, `min(f)`, `max(f)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateReq {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group: Vec<String>,
    #[serde(rename = "fn")]
    pub fns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Ref,
    pub sub_id: u64,
}

/// `join`, `leave` and `presence_untrack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelReq {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Ref,
    pub channel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broadcast {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Ref,
    pub channel: String,
    pub event: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(rename = "self", default, skip_serializing_if = "is_false")]
    pub include_self: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ack: bool,
}

/// `presence_track`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Ref,
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub meta: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Ref,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Ref,
    pub token: String,
}

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Join(ChannelReq),
    Leave(ChannelReq),
    Broadcast(Broadcast),
    #[serde(rename = "presence_track")]
    Track(Track),
    #[serde(rename = "presence_untrack")]
    Untrack(ChannelReq),
    Ping(Ping),
    Auth(Auth),
}

impl ClientFrame {
    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        to_json(self)
    }

    /// The frame as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The request's `ref`.
    pub fn reference(&self) -> &Ref {
        match self {
            ClientFrame::Subscribe(s) => &s.reference,
            ClientFrame::Unsubscribe(u) => &u.reference,
            ClientFrame::Join(c) | ClientFrame::Leave(c) | ClientFrame::Untrack(c) => &c.reference,
            ClientFrame::Broadcast(b) => &b.reference,
            ClientFrame::Track(t) => &t.reference,
            ClientFrame::Ping(p) => &p.reference,
            ClientFrame::Auth(a) => &a.reference,
        }
    }
}

/// Why a client frame was refused: the `error` frame's `code` and `message`, and the
/// frame's `ref` when it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub reference: Ref,
    /// `malformed_json`, `bad_request` or `unknown_type`.
    pub code: &'static str,
    pub message: String,
}

impl DecodeError {
    fn new(reference: Ref, code: &'static str, message: impl Into<String>) -> DecodeError {
        DecodeError { reference, code, message: message.into() }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for DecodeError {}

/// The `ref` of a frame, read without interpreting the rest (for refusals that come before
/// decoding, such as rate limiting).
pub fn peek_ref(text: &str) -> Ref {
    #[derive(Deserialize)]
    struct OnlyRef {
        #[serde(rename = "ref", default)]
        reference: Ref,
    }
    serde_json::from_str::<OnlyRef>(text).ok().and_then(|r| r.reference)
}

/// Decodes one text frame from a client.
///
/// Not JSON: `malformed_json`. Not an object, no string `type`, missing, mistyped or unknown
/// fields: `bad_request`. A `type` that is no request: `unknown_type`. The error keeps the
/// frame's `ref` whenever the frame was an object.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, DecodeError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::new(None, "malformed_json", format!("frame is not valid JSON: {e}")))?;
    let Value::Object(mut m) = v else {
        return Err(DecodeError::new(None, "bad_request", "a frame must be a JSON object"));
    };
    let reference = m.get("ref").cloned().map(Box::new);
    let ty = match m.remove("type") {
        Some(Value::String(t)) => t,
        _ => return Err(DecodeError::new(reference, "bad_request", "a frame needs a string 'type'")),
    };
    fn de<T: for<'a> Deserialize<'a>>(m: Map<String, Value>, r: &Ref, ty: &str) -> Result<T, DecodeError> {
        serde_json::from_value(Value::Object(m))
            .map_err(|e| DecodeError::new(r.clone(), "bad_request", format!("invalid '{ty}': {e}")))
    }
    let r = &reference;
    Ok(match ty.as_str() {
        "subscribe" => ClientFrame::Subscribe(de(m, r, &ty)?),
        "unsubscribe" => ClientFrame::Unsubscribe(de(m, r, &ty)?),
        "join" => ClientFrame::Join(de(m, r, &ty)?),
        "leave" => ClientFrame::Leave(de(m, r, &ty)?),
        "broadcast" => ClientFrame::Broadcast(de(m, r, &ty)?),
        "presence_track" => ClientFrame::Track(de(m, r, &ty)?),
        "presence_untrack" => ClientFrame::Untrack(de(m, r, &ty)?),
        "ping" => ClientFrame::Ping(de(m, r, &ty)?),
        "auth" => ClientFrame::Auth(de(m, r, &ty)?),
        other => {
            return Err(DecodeError::new(
                reference.clone(),
                "unknown_type",
                format!("unknown frame type '{other}'"),
            ))
        }
    })
}

/// How a `subscribe` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeMode {
    /// Changes committed after the subscription is registered.
    Plain,
    /// Every matching change after this seq, then live.
    Since(u64),
    /// The matching rows at some seq S, then every change after S.
    Snapshot,
}

/// Builders of the frames a client sends, with numeric refs.
pub mod client {
    use super::*;

    /// A `subscribe`; `epoch` is sent only beside `since` (resume), where it belongs.
    pub fn subscribe(
        r: u64,
        collection: &str,
        filter: Option<&str>,
        mode: SubscribeMode,
        epoch: Option<&str>,
    ) -> ClientFrame {
        let (since, snapshot, epoch) = match mode {
            SubscribeMode::Plain => (None, false, None),
            SubscribeMode::Since(n) => (Some(n), false, epoch.filter(|e| !e.is_empty()).map(str::to_string)),
            SubscribeMode::Snapshot => (None, true, None),
        };
        ClientFrame::Subscribe(Subscribe {
            reference: num_ref(r),
            collection: collection.to_string(),
            filter: filter.filter(|f| !f.is_empty()).map(str::to_string),
            since,
            snapshot,
            epoch,
            aggregate: None,
        })
    }

    pub fn unsubscribe(r: u64, sub_id: u64) -> ClientFrame {
        ClientFrame::Unsubscribe(Unsubscribe { reference: num_ref(r), sub_id })
    }

    fn channel(r: u64, channel: &str) -> ChannelReq {
        ChannelReq { reference: num_ref(r), channel: channel.to_string() }
    }

    pub fn join(r: u64, name: &str) -> ClientFrame {
        ClientFrame::Join(channel(r, name))
    }

    pub fn leave(r: u64, name: &str) -> ClientFrame {
        ClientFrame::Leave(channel(r, name))
    }

    /// A broadcast; with a ref it asks for an `ok` (`ack`).
    pub fn broadcast(
        r: Option<u64>,
        channel: &str,
        event: &str,
        payload: &Value,
        self_: bool,
    ) -> ClientFrame {
        ClientFrame::Broadcast(Broadcast {
            reference: r.and_then(num_ref),
            channel: channel.to_string(),
            event: event.to_string(),
            payload: payload.clone(),
            include_self: self_,
            ack: r.is_some(),
        })
    }

    pub fn track(r: u64, channel: &str, key: Option<&str>, meta: &Value) -> ClientFrame {
        ClientFrame::Track(Track {
            reference: num_ref(r),
            channel: channel.to_string(),
            key: key.map(str::to_string),
            meta: meta.clone(),
        })
    }

    pub fn untrack(r: u64, name: &str) -> ClientFrame {
        ClientFrame::Untrack(channel(r, name))
    }

    pub fn ping(r: u64) -> ClientFrame {
        ClientFrame::Ping(Ping { reference: num_ref(r) })
    }

    pub fn auth(r: u64, token: &str) -> ClientFrame {
        ClientFrame::Auth(Auth { reference: num_ref(r), token: token.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_frames_are_refused_with_the_servers_codes() {
        assert_eq!(decode_client_frame("{").unwrap_err().code, "malformed_json");
        assert_eq!(decode_client_frame("[]").unwrap_err().code, "bad_request");
        assert_eq!(decode_client_frame(r#"{"ref":2}"#).unwrap_err().code, "bad_request");
        assert_eq!(decode_client_frame(r#"{"type":7}"#).unwrap_err().code, "bad_request");
        let e = decode_client_frame(r#"{"type":"dance","ref":3}"#).unwrap_err();
        assert_eq!((e.code, e.reference), ("unknown_type", Some(Box::new(json!(3)))));
        assert_eq!(decode_client_frame(r#"{"type":"subscribe","ref":1}"#).unwrap_err().code, "bad_request");
        let e = decode_client_frame(r#"{"type":"ping","ref":"x","extra":2}"#).unwrap_err();
        assert_eq!((e.code, e.reference), ("bad_request", Some(Box::new(json!("x")))));
        assert!(matches!(decode_client_frame(r#"{"type":"ping","ref":"x"}"#), Ok(ClientFrame::Ping(_))));
    }

    #[test]
    fn refs_are_any_json_and_echoed_as_they_came() {
        let f = decode_client_frame(r#"{"type":"ping","ref":{"a":[1,2]}}"#).unwrap();
        assert_eq!(f.reference(), &Some(Box::new(json!({"a": [1, 2]}))));
        assert_eq!(peek_ref(r#"{"type":"whatever","ref":[true]}"#), Some(Box::new(json!([true]))));
        assert_eq!(peek_ref("not json"), None);
        assert_eq!(peek_ref(r#"{"ref":null}"#), None);
    }

    #[test]
    fn subscribe_carries_epoch_only_when_resuming() {
        let f = client::subscribe(2, "s", None, SubscribeMode::Since(40), Some("e1"));
        assert_eq!(
            f.to_value(),
            json!({"type": "subscribe", "ref": 2, "collection": "s", "since": 40, "epoch": "e1"})
        );
        let f = client::subscribe(3, "s", Some(""), SubscribeMode::Snapshot, Some("e1"));
        assert_eq!(f.to_value(), json!({"type": "subscribe", "ref": 3, "collection": "s", "snapshot": true}));
        let f = client::subscribe(1, "s", Some("a=eq.1"), SubscribeMode::Plain, Some("e1"));
        assert_eq!(
            f.to_value(),
            json!({"type": "subscribe", "ref": 1, "collection": "s", "filter": "a=eq.1"})
        );
        let f =
            decode_client_frame(r#"{"type":"subscribe","ref":1,"collection":"s","since":4,"epoch":"e9"}"#);
        let Ok(ClientFrame::Subscribe(s)) = f else { panic!("{f:?}") };
        assert_eq!((s.since, s.epoch.as_deref()), (Some(4), Some("e9")));
    }

    #[test]
    fn builders_write_the_documented_frames() {
        let cases = [
            (
                client::broadcast(None, "r", "e", &json!({"x": 1}), true),
                json!({"type": "broadcast", "channel": "r", "event": "e", "payload": {"x": 1}, "self": true}),
            ),
            (
                client::broadcast(Some(4), "r", "e", &json!(null), false),
                json!({"type": "broadcast", "ref": 4, "ack": true, "channel": "r", "event": "e", "payload": null}),
            ),
            (
                client::track(5, "r", Some("u1"), &json!({"n": 1})),
                json!({"type": "presence_track", "ref": 5, "channel": "r", "key": "u1", "meta": {"n": 1}}),
            ),
            (client::untrack(6, "r"), json!({"type": "presence_untrack", "ref": 6, "channel": "r"})),
            (client::unsubscribe(7, 12), json!({"type": "unsubscribe", "ref": 7, "sub_id": 12})),
            (client::ping(8), json!({"type": "ping", "ref": 8})),
            (client::auth(9, "tok"), json!({"type": "auth", "ref": 9, "token": "tok"})),
            (client::join(10, "r"), json!({"type": "join", "ref": 10, "channel": "r"})),
            (client::leave(11, "r"), json!({"type": "leave", "ref": 11, "channel": "r"})),
        ];
        for (frame, want) in cases {
            assert_eq!(frame.to_value(), want);
            assert_eq!(decode_client_frame(&frame.encode()).as_ref(), Ok(&frame));
        }
    }
}
