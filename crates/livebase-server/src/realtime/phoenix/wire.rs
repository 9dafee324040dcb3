//! Phoenix channel frames as supabase-js speaks them: serializer `1.0.0` (JSON objects) and
//! `2.0.0` (JSON arrays, plus binary broadcast frames). Parsing is total: any input gives a
//! message or a [`WireError`] that still names the `ref` and topic when they could be read.

use serde_json::{Map, Value};

/// The serializer a socket asked for with `vsn` (none means 1.0.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    pub fn parse(v: Option<&str>) -> Result<Vsn, String> {
        match v {
            None | Some("1.0.0") => Ok(Vsn::V1),
            Some("2.0.0") => Ok(Vsn::V2),
            Some(other) => Err(format!("unsupported vsn '{other}': use 1.0.0 or 2.0.0")),
        }
    }
}

/// One message from a client. `join_ref` and `reference` are kept as they came (Phoenix
/// sends strings; they are echoed, never interpreted).
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub join_ref: Value,
    pub reference: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// A frame that could not be read: the reply goes to `reference` on `topic` when known.
#[derive(Debug, Clone, PartialEq)]
pub struct WireError {
    pub reference: Value,
    pub topic: String,
    pub reason: String,
}

fn bad(reference: Value, topic: Option<&str>, reason: impl Into<String>) -> WireError {
    WireError { reference, topic: topic.unwrap_or("phoenix").to_string(), reason: reason.into() }
}

/// A ref or join_ref: a string, a number or null.
fn reference(v: Option<&Value>) -> Option<Value> {
    match v {
        None | Some(Value::Null) => Some(Value::Null),
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Some(_) => None,
    }
}

/// Parses a text frame.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Msg, WireError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| bad(Value::Null, None, format!("malformed JSON: {e}")))?;
    let (join_ref, r, topic, event, payload) = match (vsn, &v) {
        (Vsn::V2, Value::Array(a)) => {
            if a.len() != 5 {
                let r = a.get(1).and_then(|r| reference(Some(r))).unwrap_or(Value::Null);
                return Err(bad(
                    r,
                    None,
                    format!("a frame is [join_ref, ref, topic, event, payload]; got {} elements", a.len()),
                ));
            }
            (a.first(), a.get(1), a.get(2), a.get(3), a.get(4))
        }
        (Vsn::V1, Value::Object(o)) => {
            (o.get("join_ref"), o.get("ref"), o.get("topic"), o.get("event"), o.get("payload"))
        }
        (Vsn::V2, _) => return Err(bad(Value::Null, None, "vsn 2.0.0 frames are JSON arrays")),
        (Vsn::V1, _) => return Err(bad(Value::Null, None, "vsn 1.0.0 frames are JSON objects")),
    };
    let r = reference(r).ok_or_else(|| bad(Value::Null, None, "ref must be a string, a number or null"))?;
    let topic = match topic {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err(bad(r, None, "topic must be a non-empty string")),
    };
    let join_ref = reference(join_ref)
        .ok_or_else(|| bad(r.clone(), Some(&topic), "join_ref must be a string, a number or null"))?;
    let event = match event {
        Some(Value::String(e)) if !e.is_empty() => e.clone(),
        _ => return Err(bad(r, Some(&topic), "event must be a non-empty string")),
    };
    let payload = match payload {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(bad(r, Some(&topic), "payload must be a JSON object")),
    };
    Ok(Msg { join_ref, reference: r, topic, event, payload })
}

/// The one binary frame a client sends: kind 3, a broadcast push. It becomes the same message
/// a text broadcast is (`{"type":"broadcast","event":…,"payload":…}`); a raw payload
/// (encoding 0) is carried as [`binary_value`].
pub fn decode_binary(vsn: Vsn, b: &[u8]) -> Result<Msg, WireError> {
    if vsn == Vsn::V1 {
        return Err(bad(Value::Null, None, "vsn 1.0.0 has no binary frames"));
    }
    match b.first() {
        Some(3) => {}
        Some(k) => {
            return Err(bad(Value::Null, None, format!("unknown binary frame kind {k}: clients send kind 3")))
        }
        None => return Err(bad(Value::Null, None, "empty binary frame")),
    }
    const HEADER: usize = 7;
    if b.len() < HEADER {
        return Err(bad(Value::Null, None, "binary frame shorter than its header"));
    }
    let lens = [b[1], b[2], b[3], b[4], b[5]].map(usize::from);
    let encoding = b[6];
    let mut at = HEADER;
    let mut fields: Vec<&str> = Vec::with_capacity(5);
    for (i, n) in lens.into_iter().enumerate() {
        let Some(bytes) = b.get(at..at + n) else {
            return Err(bad(Value::Null, None, "binary frame shorter than its field lengths"));
        };
        let Ok(s) = std::str::from_utf8(bytes) else {
            return Err(bad(Value::Null, None, format!("binary frame field {i} is not UTF-8")));
        };
        fields.push(s);
        at += n;
    }
    let opt = |s: &str| if s.is_empty() { Value::Null } else { Value::String(s.to_string()) };
    let (join_ref, r, topic, event, meta) = (opt(fields[0]), opt(fields[1]), fields[2], fields[3], fields[4]);
    if topic.is_empty() {
        return Err(bad(r, None, "topic must be a non-empty string"));
    }
    if event.is_empty() {
        return Err(bad(r, Some(topic), "the broadcast event must be a non-empty string"));
    }
    let rest = &b[at..];
    let payload = match encoding {
        1 => serde_json::from_slice::<Value>(rest)
            .map_err(|e| bad(r.clone(), Some(topic), format!("broadcast payload is not JSON: {e}")))?,
        0 => binary_value(rest),
        other => return Err(bad(r, Some(topic), format!("unknown payload encoding {other}"))),
    };
    let mut body = Map::new();
    body.insert("type".into(), Value::String("broadcast".into()));
    body.insert("event".into(), Value::String(event.to_string()));
    body.insert("payload".into(), payload);
    if !meta.is_empty() {
        let m = serde_json::from_str::<Value>(meta)
            .map_err(|e| bad(r.clone(), Some(topic), format!("broadcast metadata is not JSON: {e}")))?;
        body.insert("meta".into(), m);
    }
    Ok(Msg {
        join_ref,
        reference: r,
        topic: topic.to_string(),
        event: "broadcast".into(),
        payload: Value::Object(body),
    })
}

/// How a raw binary broadcast payload travels through the hub (whose payloads are JSON):
/// `{"$binary": "<base64>"}`. Phoenix 2.0.0 receivers get the bytes back in a binary frame;
/// other receivers see this object.
pub fn binary_value(bytes: &[u8]) -> Value {
    use base64::Engine;
    let mut m = Map::new();
    m.insert("$binary".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)));
    Value::Object(m)
}

/// The bytes of a payload made by [`binary_value`].
pub fn binary_bytes(v: &Value) -> Option<Vec<u8>> {
    use base64::Engine;
    let o = v.as_object().filter(|o| o.len() == 1)?;
    base64::engine::general_purpose::STANDARD.decode(o.get("$binary")?.as_str()?).ok()
}

/// A user broadcast to a 2.0.0 client with a raw payload: binary kind 4 (no refs). None when
/// the topic or event does not fit its one-byte lengths.
pub fn user_broadcast(topic: &str, event: &str, payload: &[u8]) -> Option<Vec<u8>> {
    let (t, e) = (u8::try_from(topic.len()).ok()?, u8::try_from(event.len()).ok()?);
    let mut out = Vec::with_capacity(5 + topic.len() + event.len() + payload.len());
    out.extend_from_slice(&[4, t, e, 0, 0]);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

/// Encodes one server frame; `payload` is JSON text. Version 1.0.0 writes no `join_ref`.
pub fn frame(
    vsn: Vsn,
    join_ref: &Value,
    reference: &Value,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    let (topic, event) = (json_str(topic), json_str(event));
    match vsn {
        Vsn::V2 => format!("[{join_ref},{reference},{topic},{event},{payload}]"),
        Vsn::V1 => {
            format!("{{\"topic\":{topic},\"event\":{event},\"payload\":{payload},\"ref\":{reference}}}")
        }
    }
}

/// A reply to the request `reference` of the channel joined as `join_ref`.
pub fn reply(
    vsn: Vsn,
    join_ref: &Value,
    reference: &Value,
    topic: &str,
    ok: bool,
    response: &Value,
) -> String {
    let status = if ok { "ok" } else { "error" };
    let payload = serde_json::json!({"status": status, "response": response}).to_string();
    frame(vsn, join_ref, reference, topic, "phx_reply", &payload)
}

/// An error reply: `{"status":"error","response":{"reason":…}}`.
pub fn error_reply(vsn: Vsn, join_ref: &Value, reference: &Value, topic: &str, reason: &str) -> String {
    reply(vsn, join_ref, reference, topic, false, &serde_json::json!({"reason": reason}))
}

pub fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_serializers_read_the_same_message() {
        let v2 = decode_text(Vsn::V2, r#"["3","4","realtime:room1","phx_join",{"config":{}}]"#).unwrap();
        let v1 = decode_text(
            Vsn::V1,
            r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"4","join_ref":"3"}"#,
        )
        .unwrap();
        assert_eq!(v1, v2);
        assert_eq!((v2.join_ref, v2.reference), (json!("3"), json!("4")));
    }

    #[test]
    fn a_kind_3_frame_is_a_broadcast_push() {
        // channel.send({type:'broadcast', event:'cursor-pos', payload:{x:1}}), join_ref 1, ref 8.
        let mut b = vec![3u8, 1, 1, 14, 10, 0, 1];
        b.extend_from_slice(b"18realtime:room1cursor-pos{\"x\":1}");
        let m = decode_binary(Vsn::V2, &b).unwrap();
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("realtime:room1", "broadcast"));
        assert_eq!(m.payload, json!({"type": "broadcast", "event": "cursor-pos", "payload": {"x": 1}}));
        assert_eq!((m.join_ref, m.reference), (json!("1"), json!("8")));
    }

    #[test]
    fn broken_frames_are_errors_that_keep_what_could_be_read() {
        assert!(decode_text(Vsn::V2, "[").unwrap_err().reason.starts_with("malformed JSON"));
        assert_eq!(decode_text(Vsn::V2, r#"[null,"7","t"]"#).unwrap_err().reference, json!("7"));
        let e = decode_text(Vsn::V2, r#"[null,"7","realtime:a","x",[1]]"#).unwrap_err();
        assert_eq!((e.reference, e.topic.as_str()), (json!("7"), "realtime:a"));
        assert!(decode_text(Vsn::V2, r#"{"topic":"a"}"#).is_err());
        assert!(decode_text(Vsn::V1, r#"[null,"7","a","b",{}]"#).is_err());
        assert!(decode_text(Vsn::V2, r#"[{},"7","a","b",{}]"#).is_err());
        assert!(decode_binary(Vsn::V2, &[4, 0, 0]).unwrap_err().reason.contains("kind 4"));
        assert!(decode_binary(Vsn::V2, &[3, 0, 0, 1, 1, 0, 7, b't', b'e'])
            .unwrap_err()
            .reason
            .contains("encoding"));
        assert!(decode_binary(Vsn::V2, &[3, 9, 9, 9, 9, 9, 1, b'a']).is_err());
        assert!(decode_binary(Vsn::V2, &[]).is_err());
        assert!(decode_binary(Vsn::V1, &[3, 0, 0, 1, 1, 0, 1, b't', b'e', b'{', b'}']).is_err());
    }

    #[test]
    fn raw_payloads_travel_as_base64_and_come_back_as_kind_4() {
        let mut b = vec![3u8, 0, 0, 1, 3, 0, 0];
        b.extend_from_slice(b"tbin");
        b.extend_from_slice(&[0, 1, 255]);
        let m = decode_binary(Vsn::V2, &b).unwrap();
        assert_eq!(binary_bytes(&m.payload["payload"]), Some(vec![0, 1, 255]));
        assert_eq!(binary_bytes(&json!({"$binary": "AAH/", "x": 1})), None);
        let out = user_broadcast("t", "bin", &[0, 1, 255]).unwrap();
        assert_eq!(out, [4, 1, 3, 0, 0, b't', b'b', b'i', b'n', 0, 1, 255]);
    }

    #[test]
    fn server_frames_follow_the_serializer() {
        let r = reply(Vsn::V2, &json!("3"), &json!("4"), "realtime:a", true, &json!({}));
        assert_eq!(r, r#"["3","4","realtime:a","phx_reply",{"status":"ok","response":{}}]"#);
        let r = reply(Vsn::V1, &json!("3"), &json!("4"), "realtime:a", true, &json!({}));
        assert_eq!(
            serde_json::from_str::<Value>(&r).unwrap(),
            json!({"topic": "realtime:a", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "4"})
        );
    }
}
