//! The server's encoders: each writes one frame as compact JSON text, fields in the order of
//! `docs/protocol.md`. Rows and presence values are borrowed `Serialize` values, never copied.

use crate::{to_json, Op, Ref, View};
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
struct Replied<'a, T> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(rename = "ref")]
    reference: &'a Ref,
    #[serde(flatten)]
    rest: T,
}

fn replied<T: Serialize>(ty: &'static str, reference: &Ref, rest: T) -> String {
    to_json(&Replied { ty, reference, rest })
}

#[derive(Serialize)]
struct Nothing {}

/// `{"type":"ok","ref":…}`
pub fn ok(reference: &Ref) -> String {
    replied("ok", reference, Nothing {})
}

/// `{"type":"pong","ref":…,"server_time":…}`
pub fn pong(reference: &Ref, server_time: &str) -> String {
    #[derive(Serialize)]
    struct P<'a> {
        server_time: &'a str,
    }
    replied("pong", reference, P { server_time })
}

/// `{"type":"error","ref":…,"code":…,"message":…}`, with `sub_id` when one is concerned.
pub fn error(reference: &Ref, code: &str, message: &str, sub_id: Option<u64>) -> String {
    #[derive(Serialize)]
    struct E<'a> {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        sub_id: Option<u64>,
    }
    replied("error", reference, E { code, message, sub_id })
}

/// `{"type":"subscribed","ref":…,"sub_id":…,"seq":…,"epoch":…}`
pub fn subscribed(reference: &Ref, sub_id: u64, seq: u64, epoch: &str) -> String {
    #[derive(Serialize)]
    struct S<'a> {
        sub_id: u64,
        seq: u64,
        epoch: &'a str,
    }
    replied("subscribed", reference, S { sub_id, seq, epoch })
}

/// `{"type":"resync_required","ref":…,"sub_id":…,"reason":…}`
pub fn resync_required(reference: &Ref, sub_id: u64, reason: &str) -> String {
    #[derive(Serialize)]
    struct R<'a> {
        sub_id: u64,
        reason: &'a str,
    }
    replied("resync_required", reference, R { sub_id, reason })
}

/// `{"type":"welcome","conn_id":…,"server_time":…,"heartbeat_ms":…,"timeout_ms":…,"epoch":…}`,
/// with `"cut_off":{…}` when the client's previous connection was cut off.
pub fn welcome(
    conn_id: &str,
    server_time: &str,
    heartbeat_ms: u64,
    timeout_ms: u64,
    epoch: &str,
    cut_off: Option<&Value>,
) -> String {
    #[derive(Serialize)]
    struct W<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        conn_id: &'a str,
        server_time: &'a str,
        heartbeat_ms: u64,
        timeout_ms: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cut_off: Option<&'a Value>,
    }
    to_json(&W { ty: "welcome", conn_id, server_time, heartbeat_ms, timeout_ms, epoch, cut_off })
}

/// `{"type":"aggregate","sub_id":…,"seq":…,"full":…,"groups":[…],"removed":[…]}`
pub fn aggregate<G: Serialize>(sub_id: u64, seq: u64, full: bool, groups: &[G], removed: &[G]) -> String {
    #[derive(Serialize)]
    struct A<'a, G> {
        #[serde(rename = "type")]
        ty: &'static str,
        sub_id: u64,
        seq: u64,
        full: bool,
        groups: &'a [G],
        removed: &'a [G],
    }
    to_json(&A { ty: "aggregate", sub_id, seq, full, groups, removed })
}

/// `{"type":"snapshot","sub_id":…,"seq":…,"rows":[…],"done":…}`
pub fn snapshot<R: Serialize>(sub_id: u64, seq: u64, rows: &[R], done: bool) -> String {
    #[derive(Serialize)]
    struct S<'a, R> {
        #[serde(rename = "type")]
        ty: &'static str,
        sub_id: u64,
        seq: u64,
        rows: &'a [R],
        done: bool,
    }
    to_json(&S { ty: "snapshot", sub_id, seq, rows, done })
}

/// `{"type":"presence_state","channel":…,"state":{key: [{"conn_id":…,"meta":…}]}}`
pub fn presence_state<S: Serialize + ?Sized>(channel: &str, state: &S) -> String {
    #[derive(Serialize)]
    struct P<'a, S: ?Sized> {
        #[serde(rename = "type")]
        ty: &'static str,
        channel: &'a str,
        state: &'a S,
    }
    to_json(&P { ty: "presence_state", channel, state })
}

/// `{"type":"presence_diff","channel":…,"joins":{…},"leaves":{…}}`
pub fn presence_diff<J: Serialize + ?Sized, L: Serialize + ?Sized>(
    channel: &str,
    joins: &J,
    leaves: &L,
) -> String {
    #[derive(Serialize)]
    struct P<'a, J: ?Sized, L: ?Sized> {
        #[serde(rename = "type")]
        ty: &'static str,
        channel: &'a str,
        joins: &'a J,
        leaves: &'a L,
    }
    to_json(&P { ty: "presence_diff", channel, joins, leaves })
}

/// `{"type":"broadcast","channel":…,"event":…,"payload":…,"from":…}`
pub fn broadcast(channel: &str, event: &str, payload: &Value, from: &str) -> String {
    #[derive(Serialize)]
    struct B<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        channel: &'a str,
        event: &'a str,
        payload: &'a Value,
        from: &'a str,
    }
    to_json(&B { ty: "broadcast", channel, event, payload, from })
}

/// The fields of a change frame common to every query that receives the event, borrowed
/// from the server's event. A side the receiver may not see is `None` (sent as `null`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ChangeBody<'a, R> {
    pub seq: u64,
    pub op: Op,
    pub id: &'a str,
    pub version: i64,
    pub actor: Option<&'a str>,
    pub committed_at: &'a str,
    pub new: Option<&'a R>,
    pub old: Option<&'a R>,
}

/// The body of a change frame: encoded once per event (per combination of visible sides),
/// without its opening brace; [`change_frame`] prefixes it per query.
pub fn change_body<R: Serialize>(body: &ChangeBody<'_, R>) -> String {
    let mut s = to_json(body);
    // Drop the opening brace (a shift in place, no allocation): the frame prefix supplies it.
    if s.starts_with('{') {
        s.remove(0);
    }
    s
}

const CHANGE_PREFIX: &str = "{\"type\":\"change\",\"sub_id\":";

/// A change frame for one query: `{"type":"change","sub_id":…,"view":…,` then the body. One
/// allocation, of the final size.
pub fn change_frame(body: &str, sub_id: u64, view: View) -> String {
    let mut digits = [0u8; 20];
    let sub = decimal(sub_id, &mut digits);
    let view = view.as_str();
    let mut s = String::with_capacity(
        CHANGE_PREFIX.len() + sub.len() + ",\"view\":\"".len() + view.len() + "\",".len() + body.len(),
    );
    s.push_str(CHANGE_PREFIX);
    s.push_str(sub);
    s.push_str(",\"view\":\"");
    s.push_str(view);
    s.push_str("\",");
    s.push_str(body);
    s
}

/// `n` in decimal, written into `buf` (no allocation).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn change_frames_are_the_query_prefix_then_the_shared_body() {
        let row = json!({"id": "a", "version": 1, "x": 1});
        let body = change_body(&ChangeBody {
            seq: 9,
            op: Op::Insert,
            id: "a",
            version: 1,
            actor: None,
            committed_at: "t",
            new: Some(&row),
            old: None,
        });
        let f = change_frame(&body, 12, View::Add);
        assert_eq!(
            f,
            r#"{"type":"change","sub_id":12,"view":"add","seq":9,"op":"insert","id":"a","version":1,"actor":null,"committed_at":"t","new":{"id":"a","version":1,"x":1},"old":null}"#
        );
        assert_eq!(f.capacity(), f.len());
    }

    #[test]
    fn sub_ids_of_every_width_are_written_in_decimal() {
        for n in [0, 7, 10, 999, u64::MAX] {
            let mut b = [0u8; 20];
            assert_eq!(decimal(n, &mut b), n.to_string());
        }
    }

    #[test]
    fn missing_refs_are_sent_as_null() {
        assert_eq!(ok(&None), r#"{"type":"ok","ref":null}"#);
        assert_eq!(
            error(&None, "malformed_json", "x", None),
            r#"{"type":"error","ref":null,"code":"malformed_json","message":"x"}"#
        );
        assert_eq!(
            error(&crate::num_ref(1), "already_subscribed", "m", Some(3)),
            r#"{"type":"error","ref":1,"code":"already_subscribed","message":"m","sub_id":3}"#
        );
    }
}
