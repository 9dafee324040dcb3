//! Wire frames of the realtime protocol (`docs/protocol.md`): parsing what the server sends
//! and building what the client sends.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// What happened to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// What happens to the subscription's result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// The row now matches: put `new` in the cache.
    Add,
    /// It matched and still does: replace it with `new`.
    Update,
    /// It no longer matches (or was deleted): drop the row with this `id`.
    Remove,
}

/// One committed change delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub op: Op,
    pub view: View,
    pub id: String,
    /// The record after the change (`None` for deletes).
    #[serde(default, deserialize_with = "null_as_none")]
    pub new: Option<Value>,
    /// The record before the change (`None` for inserts).
    #[serde(default, deserialize_with = "null_as_none")]
    pub old: Option<Value>,
    pub version: i64,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub committed_at: String,
}

fn null_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        v => Some(v),
    })
}

/// One connection's entry under a presence key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub conn_id: String,
    #[serde(default)]
    pub meta: Value,
}

/// Presence entries by key.
pub type PresenceMap = BTreeMap<String, Vec<PresenceEntry>>;

/// A request `ref`: the client sends numbers; the server echoes a string or a number.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ref(pub Option<u64>);

impl<'de> Deserialize<'de> for Ref {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ref, D::Error> {
        Ok(Ref(match Value::deserialize(d)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }))
    }
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        conn_id: String,
        #[serde(default)]
        server_time: Option<String>,
        #[serde(default)]
        heartbeat_ms: Option<u64>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    Subscribed {
        #[serde(rename = "ref", default)]
        ref_: Ref,
        sub_id: u64,
        seq: u64,
    },
    Change {
        sub_id: u64,
        #[serde(flatten)]
        change: Box<Change>,
    },
    Snapshot {
        sub_id: u64,
        seq: u64,
        #[serde(default)]
        rows: Vec<Value>,
        #[serde(default)]
        done: bool,
    },
    Broadcast {
        channel: String,
        event: String,
        #[serde(default)]
        payload: Value,
        #[serde(default)]
        from: Option<String>,
    },
    PresenceState {
        channel: String,
        #[serde(default)]
        state: PresenceMap,
    },
    PresenceDiff {
        channel: String,
        #[serde(default)]
        joins: PresenceMap,
        #[serde(default)]
        leaves: PresenceMap,
    },
    Pong {
        #[serde(rename = "ref", default)]
        ref_: Ref,
        #[serde(default)]
        server_time: Option<String>,
    },
    Ok {
        #[serde(rename = "ref", default)]
        ref_: Ref,
    },
    Error {
        #[serde(rename = "ref", default)]
        ref_: Ref,
        code: String,
        #[serde(default)]
        message: String,
        /// `already_subscribed` names the existing subscription.
        #[serde(default)]
        sub_id: Option<u64>,
    },
    ResyncRequired {
        #[serde(rename = "ref", default)]
        ref_: Ref,
        #[serde(default)]
        sub_id: Option<u64>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// A frame type this client does not know (ignored).
    #[serde(other)]
    Unknown,
}

impl ServerFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<ServerFrame, serde_json::Error> {
        serde_json::from_str(text)
    }
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

/// Builders of the frames the client sends.
pub mod client {
    use super::*;

    fn with_ref(kind: &str, r: u64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(kind.into()));
        m.insert("ref".into(), json!(r));
        m
    }

    pub fn subscribe(r: u64, collection: &str, filter: Option<&str>, mode: SubscribeMode) -> Value {
        let mut m = with_ref("subscribe", r);
        m.insert("collection".into(), json!(collection));
        if let Some(f) = filter.filter(|f| !f.is_empty()) {
            m.insert("filter".into(), json!(f));
        }
        match mode {
            SubscribeMode::Plain => {}
            SubscribeMode::Since(n) => {
                m.insert("since".into(), json!(n));
            }
            SubscribeMode::Snapshot => {
                m.insert("snapshot".into(), json!(true));
            }
        }
        Value::Object(m)
    }

    pub fn unsubscribe(r: u64, sub_id: u64) -> Value {
        let mut m = with_ref("unsubscribe", r);
        m.insert("sub_id".into(), json!(sub_id));
        Value::Object(m)
    }

    pub fn join(r: u64, channel: &str) -> Value {
        let mut m = with_ref("join", r);
        m.insert("channel".into(), json!(channel));
        Value::Object(m)
    }

    pub fn leave(r: u64, channel: &str) -> Value {
        let mut m = with_ref("leave", r);
        m.insert("channel".into(), json!(channel));
        Value::Object(m)
    }

    /// A broadcast; with `ack` the server answers `ok` to the ref.
    pub fn broadcast(r: Option<u64>, channel: &str, event: &str, payload: &Value, self_: bool) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!("broadcast"));
        if let Some(r) = r {
            m.insert("ref".into(), json!(r));
            m.insert("ack".into(), json!(true));
        }
        m.insert("channel".into(), json!(channel));
        m.insert("event".into(), json!(event));
        m.insert("payload".into(), payload.clone());
        if self_ {
            m.insert("self".into(), json!(true));
        }
        Value::Object(m)
    }

    pub fn track(r: u64, channel: &str, key: Option<&str>, meta: &Value) -> Value {
        let mut m = with_ref("presence_track", r);
        m.insert("channel".into(), json!(channel));
        if let Some(k) = key {
            m.insert("key".into(), json!(k));
        }
        m.insert("meta".into(), meta.clone());
        Value::Object(m)
    }

    pub fn untrack(r: u64, channel: &str) -> Value {
        let mut m = with_ref("presence_untrack", r);
        m.insert("channel".into(), json!(channel));
        Value::Object(m)
    }

    pub fn ping(r: u64) -> Value {
        Value::Object(with_ref("ping", r))
    }

    pub fn auth(r: u64, token: &str) -> Value {
        let mut m = with_ref("auth", r);
        m.insert("token".into(), json!(token));
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> ServerFrame {
        ServerFrame::parse(&v.to_string()).expect("frame parses")
    }

    #[test]
    fn welcome() {
        let f = parse(json!({"type": "welcome", "conn_id": "c7",
            "server_time": "2026-11-23T14:00:00.000000Z", "heartbeat_ms": 15000, "timeout_ms": 45000}));
        assert_eq!(
            f,
            ServerFrame::Welcome {
                conn_id: "c7".into(),
                server_time: Some("2026-11-23T14:00:00.000000Z".into()),
                heartbeat_ms: Some(15000),
                timeout_ms: Some(45000)
            }
        );
    }

    #[test]
    fn subscribed_with_numeric_and_string_refs() {
        let f = parse(json!({"type": "subscribed", "ref": 1, "sub_id": 12, "seq": 4810}));
        assert_eq!(f, ServerFrame::Subscribed { ref_: Ref(Some(1)), sub_id: 12, seq: 4810 });
        let f = parse(json!({"type": "subscribed", "ref": "9", "sub_id": 1, "seq": 0}));
        assert!(matches!(f, ServerFrame::Subscribed { ref_: Ref(Some(9)), .. }));
    }

    #[test]
    fn change_update_moving_out_of_the_filter() {
        let f = parse(json!({"type": "change", "sub_id": 12, "seq": 4811, "op": "update",
            "view": "remove", "id": "01jd", "version": 4, "actor": "u1",
            "committed_at": "2026-11-23T14:00:01.120000Z",
            "new": {"id": "01jd", "version": 4, "status": "delivered"},
            "old": {"id": "01jd", "version": 3, "status": "late"}}));
        let ServerFrame::Change { sub_id, change } = f else { panic!("not a change: {f:?}") };
        assert_eq!(sub_id, 12);
        assert_eq!(change.seq, 4811);
        assert_eq!(change.op, Op::Update);
        assert_eq!(change.view, View::Remove);
        assert_eq!(change.id, "01jd");
        assert_eq!(change.version, 4);
        assert_eq!(change.actor.as_deref(), Some("u1"));
        assert_eq!(change.committed_at, "2026-11-23T14:00:01.120000Z");
        assert_eq!(change.new.as_ref().map(|n| n["status"].clone()), Some(json!("delivered")));
        assert_eq!(change.old.as_ref().map(|o| o["version"].clone()), Some(json!(3)));
    }

    #[test]
    fn change_insert_and_delete_have_null_sides() {
        let f = parse(json!({"type": "change", "sub_id": 1, "seq": 2, "op": "insert",
            "view": "add", "id": "a", "version": 1, "actor": null,
            "committed_at": "t", "new": {"id": "a"}, "old": null}));
        let ServerFrame::Change { change, .. } = f else { panic!() };
        assert_eq!(change.old, None);
        assert_eq!(change.actor, None);
        let f = parse(json!({"type": "change", "sub_id": 1, "seq": 3, "op": "delete",
            "view": "remove", "id": "a", "version": 1, "committed_at": "t",
            "new": null, "old": {"id": "a"}}));
        let ServerFrame::Change { change, .. } = f else { panic!() };
        assert_eq!(change.op, Op::Delete);
        assert_eq!(change.new, None);
        assert!(change.old.is_some());
    }

    #[test]
    fn snapshot_chunks() {
        let f = parse(json!({"type": "snapshot", "sub_id": 12, "seq": 4810,
            "rows": [{"id": "a"}, {"id": "b"}], "done": false}));
        assert_eq!(
            f,
            ServerFrame::Snapshot {
                sub_id: 12,
                seq: 4810,
                rows: vec![json!({"id": "a"}), json!({"id": "b"})],
                done: false
            }
        );
        let f = parse(json!({"type": "snapshot", "sub_id": 12, "seq": 4810, "rows": [], "done": true}));
        assert!(matches!(f, ServerFrame::Snapshot { done: true, .. }));
    }

    #[test]
    fn broadcast() {
        let f = parse(json!({"type": "broadcast", "channel": "room:7", "event": "cursor",
            "payload": {"x": 10}, "from": "c7"}));
        assert_eq!(
            f,
            ServerFrame::Broadcast {
                channel: "room:7".into(),
                event: "cursor".into(),
                payload: json!({"x": 10}),
                from: Some("c7".into())
            }
        );
    }

    #[test]
    fn presence_state_and_diff() {
        let f = parse(json!({"type": "presence_state", "channel": "room:7",
            "state": {"u1": [{"conn_id": "c7", "meta": {"name": "Ada"}}]}}));
        let ServerFrame::PresenceState { channel, state } = f else { panic!() };
        assert_eq!(channel, "room:7");
        assert_eq!(state["u1"][0].conn_id, "c7");
        assert_eq!(state["u1"][0].meta, json!({"name": "Ada"}));
        let f = parse(json!({"type": "presence_diff", "channel": "room:7",
            "joins": {"u2": [{"conn_id": "c9", "meta": {}}]}, "leaves": {}}));
        let ServerFrame::PresenceDiff { joins, leaves, .. } = f else { panic!() };
        assert_eq!(joins["u2"][0].conn_id, "c9");
        assert!(leaves.is_empty());
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse(json!({"type": "pong", "ref": 5, "server_time": "t"})),
            ServerFrame::Pong { ref_: Ref(Some(5)), server_time: Some("t".into()) }
        );
        assert_eq!(parse(json!({"type": "ok", "ref": 3})), ServerFrame::Ok { ref_: Ref(Some(3)) });
        assert_eq!(
            parse(json!({"type": "error", "ref": 4, "code": "bad_filter",
                "message": "unknown operator 'gtx' in 'qty=gtx.5'"})),
            ServerFrame::Error {
                ref_: Ref(Some(4)),
                code: "bad_filter".into(),
                message: "unknown operator 'gtx' in 'qty=gtx.5'".into(),
                sub_id: None
            }
        );
        // Errors for frames without a usable ref (malformed JSON) have none.
        assert!(matches!(
            parse(json!({"type": "error", "code": "malformed_json", "message": "x"})),
            ServerFrame::Error { ref_: Ref(None), .. }
        ));
        assert_eq!(
            parse(json!({"type": "resync_required", "ref": 1, "sub_id": 12, "reason": "log_trimmed"})),
            ServerFrame::ResyncRequired {
                ref_: Ref(Some(1)),
                sub_id: Some(12),
                reason: Some("log_trimmed".into())
            }
        );
    }

    #[test]
    fn unknown_types_are_tolerated() {
        assert_eq!(parse(json!({"type": "something_new", "x": 1})), ServerFrame::Unknown);
        assert!(ServerFrame::parse("not json").is_err());
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            client::subscribe(1, "shipments", Some("status=in.(late,pending)"), SubscribeMode::Plain),
            json!({"type": "subscribe", "ref": 1, "collection": "shipments",
                "filter": "status=in.(late,pending)"})
        );
        assert_eq!(
            client::subscribe(2, "s", None, SubscribeMode::Since(40)),
            json!({"type": "subscribe", "ref": 2, "collection": "s", "since": 40})
        );
        assert_eq!(
            client::subscribe(3, "s", Some(""), SubscribeMode::Snapshot),
            json!({"type": "subscribe", "ref": 3, "collection": "s", "snapshot": true})
        );
        assert_eq!(
            client::broadcast(None, "r", "e", &json!({"x": 1}), true),
            json!({"type": "broadcast", "channel": "r", "event": "e", "payload": {"x": 1}, "self": true})
        );
        assert_eq!(
            client::broadcast(Some(4), "r", "e", &json!(null), false),
            json!({"type": "broadcast", "ref": 4, "ack": true, "channel": "r", "event": "e", "payload": null})
        );
        assert_eq!(
            client::track(5, "r", Some("u1"), &json!({"n": 1})),
            json!({"type": "presence_track", "ref": 5, "channel": "r", "key": "u1", "meta": {"n": 1}})
        );
        assert_eq!(client::untrack(6, "r"), json!({"type": "presence_untrack", "ref": 6, "channel": "r"}));
        assert_eq!(client::unsubscribe(7, 12), json!({"type": "unsubscribe", "ref": 7, "sub_id": 12}));
        assert_eq!(client::ping(8), json!({"type": "ping", "ref": 8}));
        assert_eq!(client::auth(9, "tok"), json!({"type": "auth", "ref": 9, "token": "tok"}));
        assert_eq!(client::join(10, "r"), json!({"type": "join", "ref": 10, "channel": "r"}));
        assert_eq!(client::leave(11, "r"), json!({"type": "leave", "ref": 11, "channel": "r"}));
    }
}
