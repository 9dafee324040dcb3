//! The Phoenix codec: hub deliveries as the frames supabase-js expects.
//!
//! A Phoenix frame names its channel's topic, so there is one codec instance per (serializer,
//! topic), shared by every channel joined to that topic ([`PhoenixCodec::shared`]): the hub
//! then encodes a change once per topic and view, and every subscriber of the topic gets the
//! same bytes. A change's `data` (the part without topic and ids) is the shared body.
//!
//! References: the connection task hands the hub `[join_ref, ref]` (and, for a join, the
//! client's `postgres_changes` bindings as a third element) as the request's `Ref`; a `Ref`
//! of `null` means the request wants no reply.

use super::wire::{self, Vsn};
use crate::realtime::codec::{Codec, Delivery, Frame, PresenceMap, Sides};
use crate::realtime::protocol::{Ref, View};
use livebase_core::{ChangeEvent, ChangeOp, Record};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

pub struct PhoenixCodec {
    vsn: Vsn,
    topic: String,
    /// The topic without `realtime:`, as `system` messages name the channel.
    channel: String,
}

type Interned = Mutex<HashMap<(Vsn, String), Weak<PhoenixCodec>>>;

impl PhoenixCodec {
    /// The codec every channel of `topic` speaking `vsn` shares.
    pub fn shared(vsn: Vsn, topic: &str) -> Arc<PhoenixCodec> {
        static ALL: OnceLock<Interned> = OnceLock::new();
        let mut all = ALL.get_or_init(Default::default).lock();
        let key = (vsn, topic.to_string());
        if let Some(c) = all.get(&key).and_then(Weak::upgrade) {
            return c;
        }
        if all.len() >= 64 && all.len().is_power_of_two() {
            all.retain(|_, w| w.strong_count() > 0);
        }
        let channel = topic.strip_prefix("realtime:").unwrap_or(topic).to_string();
        let c = Arc::new(PhoenixCodec { vsn, topic: topic.to_string(), channel });
        all.insert(key, Arc::downgrade(&c));
        c
    }

    fn text(&self, join_ref: &Value, reference: &Value, event: &str, payload: &str) -> Frame {
        Frame::text(&wire::frame(self.vsn, join_ref, reference, &self.topic, event, payload))
    }

    /// A channel push (no ref).
    pub fn push(&self, event: &str, payload: &Value) -> Frame {
        self.text(&Value::Null, &Value::Null, event, &payload.to_string())
    }

    /// A `system` message about this channel.
    pub fn system(&self, extension: &str, ok: bool, message: &str) -> Frame {
        let status = if ok { "ok" } else { "error" };
        self.push(
            "system",
            &json!({"extension": extension, "status": status, "message": message, "channel": self.channel}),
        )
    }

    fn reply(&self, r: &[Value], ok: bool, response: &Value) -> Frame {
        let (join_ref, reference) = (r.first().unwrap_or(&Value::Null), r.get(1).unwrap_or(&Value::Null));
        Frame::text(&wire::reply(self.vsn, join_ref, reference, &self.topic, ok, response))
    }
}

/// The `[join_ref, ref, …]` a request's `Ref` carries, when it wants a reply.
fn refs(r: &Ref) -> Option<&[Value]> {
    match r.as_deref() {
        Some(Value::Array(a)) => Some(a),
        _ => None,
    }
}

/// A change's `data`, borrowing the records (encoded once per event and view).
#[derive(serde::Serialize)]
struct ChangeData<'a> {
    schema: &'static str,
    table: &'a str,
    commit_timestamp: String,
    r#type: &'static str,
    columns: Vec<Column<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a Record>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_record: Option<&'a Record>,
    /// Always null (Supabase's `errors` when there are none).
    errors: (),
}

#[derive(serde::Serialize)]
struct Column<'a> {
    name: &'a str,
    r#type: &'static str,
}

/// The column type supabase-js converts a value by; values are already typed JSON, so the
/// names only have to be ones it passes such values through unchanged.
fn column_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int8",
        Value::Number(_) => "float8",
        Value::Object(_) | Value::Array(_) => "jsonb",
        Value::String(_) | Value::Null => "text",
    }
}

/// `2026-01-02T03:04:05.678901Z` → `2026-01-02T03:04:05.678Z` (the precision Supabase sends).
fn millis(ts: &str) -> String {
    match (ts.find('.'), ts.strip_suffix('Z')) {
        (Some(dot), Some(_)) if ts.len() >= dot + 4 => format!("{}Z", &ts[..dot + 4]),
        _ => ts.to_string(),
    }
}

/// Presence as Phoenix groups it: `{key: {metas: [{phx_ref, …meta}]}}`.
fn presence(p: &PresenceMap) -> Value {
    let mut out = Map::new();
    for (key, entries) in p {
        let metas: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("phx_ref".into(), Value::String(e.conn_id.to_string()));
                match &e.meta {
                    Value::Object(o) => m.extend(o.iter().map(|(k, v)| (k.clone(), v.clone()))),
                    Value::Null => {}
                    other => {
                        m.insert("meta".into(), other.clone());
                    }
                }
                Value::Object(m)
            })
            .collect();
        out.insert(key.clone(), json!({ "metas": metas }));
    }
    Value::Object(out)
}

impl Codec for PhoenixCodec {
    fn change_body(&self, e: &ChangeEvent, sides: Sides) -> Arc<str> {
        let record = e.new.as_ref().filter(|_| sides.new);
        let old_record = e.old.as_ref().filter(|_| sides.old);
        let mut columns: Vec<Column<'_>> = Vec::new();
        for r in [record, old_record].into_iter().flatten() {
            for (name, v) in r.0.iter() {
                if !columns.iter().any(|c| c.name == name) {
                    columns.push(Column { name, r#type: column_type(v) });
                }
            }
        }
        let r#type = match e.op {
            ChangeOp::Insert => "INSERT",
            ChangeOp::Update => "UPDATE",
            ChangeOp::Delete => "DELETE",
        };
        let data = ChangeData {
            schema: "public",
            table: &e.collection,
            commit_timestamp: millis(&e.committed_at),
            r#type,
            columns,
            record,
            old_record,
            errors: (),
        };
        serde_json::to_string(&data).unwrap_or_default().into()
    }

    fn change(&self, body: &str, sub_id: u64, _view: View) -> Frame {
        self.text(
            &Value::Null,
            &Value::Null,
            "postgres_changes",
            &format!("{{\"ids\":[{sub_id}],\"data\":{body}}}"),
        )
    }

    fn encode(&self, d: Delivery<'_>) -> Option<Frame> {
        Some(match d {
            Delivery::SubscribedSet { reference, sub_ids, .. } => {
                let r = refs(reference)?;
                let bindings = r.get(2).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                let echoed: Vec<Value> = bindings
                    .iter()
                    .zip(sub_ids)
                    .map(|(b, id)| {
                        let mut b = b.as_object().cloned().unwrap_or_default();
                        b.insert("id".into(), Value::from(*id));
                        Value::Object(b)
                    })
                    .collect();
                self.reply(r, true, &json!({ "postgres_changes": echoed }))
            }
            Delivery::Ok { reference } => self.reply(refs(reference)?, true, &json!({})),
            Delivery::Error(e) => match refs(&e.reference) {
                Some(r) => self.reply(r, false, &json!({"reason": format!("{}: {}", e.code, e.message)})),
                None => self.system("system", false, &e.message),
            },
            Delivery::PresenceState { state, .. } => self.push("presence_state", &presence(state)),
            Delivery::PresenceDiff { joins, leaves, .. } => {
                self.push("presence_diff", &json!({"joins": presence(joins), "leaves": presence(leaves)}))
            }
            Delivery::Broadcast { event, payload, .. } => match wire::binary_bytes(payload) {
                // Raw bytes: to 2.0.0 in a binary frame; 1.0.0 has none, so it gets nothing.
                Some(bytes) => match self.vsn {
                    Vsn::V2 => Frame::binary(&wire::user_broadcast(&self.topic, event, &bytes)?),
                    Vsn::V1 => return None,
                },
                None => {
                    self.push("broadcast", &json!({"type": "broadcast", "event": event, "payload": payload}))
                }
            },
            // Phoenix has no welcome, no single subscribe, snapshots, resyncs or aggregates;
            // heartbeats are answered by the connection.
            Delivery::Welcome { .. }
            | Delivery::Subscribed { .. }
            | Delivery::Snapshot { .. }
            | Delivery::ResyncRequired { .. }
            | Delivery::Pong { .. }
            | Delivery::Aggregate { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> ChangeEvent {
        ChangeEvent {
            seq: 9,
            collection: "todos".into(),
            op: ChangeOp::Update,
            id: "a".into(),
            new: Some(Record::new("a", 2, "t", "t", [("done".to_string(), json!(true))])),
            old: Some(Record::new("a", 1, "t", "t", [("done".to_string(), json!(false))])),
            version: 2,
            actor: None,
            committed_at: "2026-01-02T03:04:05.678901Z".into(),
        }
    }

    #[test]
    fn a_change_is_a_postgres_changes_push_with_its_ids_and_columns() {
        let c = PhoenixCodec::shared(Vsn::V2, "realtime:room1");
        let body = c.change_body(&event(), Sides { new: true, old: true });
        let f = c.change(&body, 7, View::Update);
        let v: Value = serde_json::from_str(f.as_text().expect("text")).unwrap();
        assert_eq!(v[0], Value::Null);
        assert_eq!((v[2].as_str(), v[3].as_str()), (Some("realtime:room1"), Some("postgres_changes")));
        assert_eq!(v[4]["ids"], json!([7]));
        let data = &v[4]["data"];
        assert_eq!((data["type"].as_str(), data["table"].as_str()), (Some("UPDATE"), Some("todos")));
        assert_eq!(data["commit_timestamp"], "2026-01-02T03:04:05.678Z");
        assert_eq!(
            (data["record"]["done"].clone(), data["old_record"]["done"].clone()),
            (json!(true), json!(false))
        );
        assert!(data["columns"].as_array().unwrap().contains(&json!({"name": "done", "type": "bool"})));
        assert_eq!(data["errors"], Value::Null);
    }

    #[test]
    fn codecs_are_shared_per_serializer_and_topic() {
        let a = PhoenixCodec::shared(Vsn::V2, "realtime:x");
        assert!(Arc::ptr_eq(&a, &PhoenixCodec::shared(Vsn::V2, "realtime:x")));
        assert!(!Arc::ptr_eq(&a, &PhoenixCodec::shared(Vsn::V1, "realtime:x")));
        assert!(!Arc::ptr_eq(&a, &PhoenixCodec::shared(Vsn::V2, "realtime:y")));
    }
}
