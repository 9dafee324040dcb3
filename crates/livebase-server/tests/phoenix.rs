//! Supabase Realtime's Phoenix protocol, frame by frame, as supabase-js relies on it: join
//! replies that echo the bindings with ids, `postgres_changes` pushes naming those ids,
//! broadcast (binary and text, self, ack), presence, leave, heartbeats, both serializers,
//! keys, rules, and clear replies to malformed frames on a socket that stays usable.
//! (`clients/supabase-compat` drives the real supabase-js against the binary.)

mod common;

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use livebase_server::auth::sign;
use serde_json::{json, Map, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "phoenix-suite-secret";
const WAIT: Duration = Duration::from_secs(15);

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn key(sub: &str, role: &str, ttl: u64) -> String {
    sign(SECRET, sub, role, ttl, Map::new()).expect("sign")
}

async fn server() -> TestServer {
    let t = TestServer::start_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    t.create_collection(json!({"name": "todos", "fields": [
        {"name": "title", "type": "text", "required": true},
        {"name": "status", "type": "select", "values": ["open", "late", "done"]},
        {"name": "owner", "type": "text"},
        {"name": "qty", "type": "integer"}],
      "rules": {"list": "true", "view": "auth.role != \"user\" || record.owner == auth.sub",
                "create": "true", "update": "true", "delete": "true"}}))
        .await;
    t
}

/// A Phoenix client. Frames are read back as `[join_ref, ref, topic, event, payload]` for
/// both serializers (1.0.0 objects are turned into that shape, `join_ref` null).
struct Phx {
    stream: Stream,
    vsn: &'static str,
    next: u64,
}

impl Phx {
    async fn connect(url: &str, apikey: &str, vsn: &'static str) -> Phx {
        let url = format!(
            "{}/realtime/v1/websocket?apikey={apikey}&vsn={vsn}",
            url.replacen("http://", "ws://", 1)
        );
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Phx { stream, vsn, next: 0 }
    }

    fn make_ref(&mut self) -> String {
        self.next += 1;
        self.next.to_string()
    }

    async fn send(&mut self, join_ref: Option<&str>, r: &str, topic: &str, event: &str, payload: Value) {
        let text = if self.vsn == "2.0.0" {
            json!([join_ref, r, topic, event, payload]).to_string()
        } else {
            json!({"join_ref": join_ref, "ref": r, "topic": topic, "event": event, "payload": payload})
                .to_string()
        };
        self.stream.send(Message::Text(text.into())).await.expect("send");
    }

    async fn raw(&mut self, m: Message) {
        self.stream.send(m).await.expect("send");
    }

    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame within the wait")
                .expect("socket open")
                .expect("frame");
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
                    if v.is_array() {
                        return v;
                    }
                    assert!(v.get("join_ref").is_none(), "1.0.0 frames carry no join_ref: {v}");
                    return json!([null, v["ref"], v["topic"], v["event"], v["payload"]]);
                }
                Message::Binary(b) => panic!("unexpected binary frame {b:?}"),
                _ => continue,
            }
        }
    }

    /// The next binary frame (text frames in between are skipped).
    async fn recv_binary(&mut self) -> Vec<u8> {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame within the wait")
                .expect("socket open")
                .expect("frame");
            if let Message::Binary(b) = m {
                return b.to_vec();
            }
        }
    }

    async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let f = self.recv().await;
            if pred(&f) {
                return f;
            }
        }
    }

    /// Joins `topic`; returns the reply's payload.
    async fn join(&mut self, topic: &str, config: Value) -> (String, Value) {
        let r = self.make_ref();
        self.send(Some(&r), &r, topic, "phx_join", json!({ "config": config })).await;
        let reply = self.recv_until(|f| f[3] == "phx_reply" && f[1] == json!(r)).await;
        (r, reply[4].clone())
    }

    /// No frame within `d` (used after the event that would have caused one was awaited
    /// elsewhere).
    async fn quiet_for(&mut self, d: Duration) -> Option<Value> {
        tokio::time::timeout(d, self.recv()).await.ok()
    }
}

fn config(bindings: Value) -> Value {
    json!({"broadcast": {"ack": false, "self": false}, "presence": {"key": ""}, "postgres_changes": bindings, "private": false})
}

#[tokio::test]
async fn a_join_echoes_every_binding_with_an_id_and_changes_name_the_ids_they_match() {
    let t = server().await;
    let mut s = Phx::connect(&t.url, &key("u1", "authenticated", 3600), "2.0.0").await;
    let bindings = json!([
        {"event": "*", "schema": "public", "table": "todos"},
        {"event": "INSERT", "schema": "public", "table": "todos", "filter": "status=eq.late"},
        {"event": "DELETE", "schema": "public", "table": "todos"}
    ]);
    let (r, reply) = s.join("realtime:room1", config(bindings.clone())).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let echoed = reply["response"]["postgres_changes"].as_array().expect("bindings echoed").clone();
    assert_eq!(echoed.len(), 3);
    for (e, b) in echoed.iter().zip(bindings.as_array().unwrap()) {
        for k in ["event", "schema", "table", "filter"] {
            assert_eq!(e.get(k), b.get(k), "echoed verbatim: {e}");
        }
        assert!(e["id"].as_u64().is_some_and(|id| id > 0), "a non-zero integer id: {e}");
    }
    let (all, late, deletes) = (echoed[0]["id"].clone(), echoed[1]["id"].clone(), echoed[2]["id"].clone());
    assert!(all != late && all != deletes && late != deletes, "{echoed:?}");
    let sys = s.recv_until(|f| f[3] == "system").await;
    assert_eq!(sys[4]["extension"], "postgres_changes");
    assert_eq!(sys[4]["status"], "ok");
    assert_eq!(sys[4]["channel"], "room1");
    let _ = r;

    let open = t.create("todos", json!({"title": "open one", "status": "open", "qty": 2})).await;
    let f = s.recv_until(|f| f[3] == "postgres_changes").await;
    assert_eq!(
        (f[0].clone(), f[1].clone(), f[2].clone()),
        (Value::Null, Value::Null, json!("realtime:room1"))
    );
    assert_eq!(f[4]["ids"], json!([all]), "only the binding it matches: {f}");
    let data = &f[4]["data"];
    assert_eq!(
        (data["type"].as_str(), data["schema"].as_str(), data["table"].as_str()),
        (Some("INSERT"), Some("public"), Some("todos"))
    );
    assert_eq!(data["record"]["id"], open["id"]);
    assert_eq!(data["record"]["qty"], 2);
    assert!(data.get("old_record").is_none(), "an insert has no old_record: {data}");
    assert_eq!(data["errors"], Value::Null);
    let names: Vec<&str> =
        data["columns"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    for n in ["id", "version", "title", "status", "qty"] {
        assert!(names.contains(&n), "column {n} listed: {names:?}");
    }
    assert!(
        data["commit_timestamp"].as_str().is_some_and(|ts| ts.ends_with('Z') && ts.len() == 24),
        "{data}"
    );

    t.create("todos", json!({"title": "late one", "status": "late"})).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let f = s.recv_until(|f| f[3] == "postgres_changes").await;
        assert_eq!(f[4]["data"]["record"]["title"], "late one");
        ids.push(f[4]["ids"][0].clone());
    }
    ids.sort_by_key(|v| v.as_u64());
    let mut want = vec![all.clone(), late.clone()];
    want.sort_by_key(|v| v.as_u64());
    assert_eq!(ids, want, "one push per binding it matches");

    let id = open["id"].as_str().unwrap();
    t.patch(&format!("/api/collections/todos/records/{id}"), json!({"qty": 3})).await;
    let f = s.recv_until(|f| f[3] == "postgres_changes").await;
    assert_eq!(f[4]["data"]["type"], "UPDATE");
    assert_eq!(
        (f[4]["data"]["record"]["qty"].clone(), f[4]["data"]["old_record"]["qty"].clone()),
        (json!(3), json!(2))
    );
    assert_eq!(f[4]["ids"], json!([all]), "an update matches neither the INSERT nor the DELETE binding");
    t.delete(&format!("/api/collections/todos/records/{id}")).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let f = s.recv_until(|f| f[3] == "postgres_changes").await;
        assert_eq!(f[4]["data"]["type"], "DELETE");
        assert!(f[4]["data"].get("record").is_none());
        assert_eq!(f[4]["data"]["old_record"]["id"], open["id"]);
        ids.push(f[4]["ids"][0].clone());
    }
    ids.sort_by_key(|v| v.as_u64());
    let mut want = vec![all.clone(), deletes.clone()];
    want.sort_by_key(|v| v.as_u64());
    assert_eq!(ids, want);
}

#[tokio::test]
async fn rules_decide_per_event_which_changes_a_socket_receives() {
    let t = server().await;
    let mut s = Phx::connect(&t.url, &key("u1", "user", 3600), "2.0.0").await;
    let (_, reply) =
        s.join("realtime:mine", config(json!([{"event": "*", "schema": "public", "table": "todos"}]))).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    t.create("todos", json!({"title": "not mine", "owner": "u2"})).await;
    t.create("todos", json!({"title": "mine", "owner": "u1"})).await;
    let f = s.recv_until(|f| f[3] == "postgres_changes").await;
    assert_eq!(f[4]["data"]["record"]["title"], "mine", "u2's row never reaches u1: {f}");
}

#[tokio::test]
async fn a_bad_binding_or_filter_is_refused_in_the_join_reply() {
    let t = server().await;
    let mut s = Phx::connect(&t.url, &t.admin_key, "2.0.0").await;
    let (_, reply) =
        s.join("realtime:a", config(json!([{"event": "*", "schema": "public", "table": "nope"}]))).await;
    assert_eq!(reply["status"], "error");
    assert!(reply["response"]["reason"].as_str().unwrap().contains("nope"), "{reply}");
    let (_, reply) = s
        .join(
            "realtime:b",
            config(json!([{"event": "*", "schema": "public", "table": "todos", "filter": "qty=hey.1"}])),
        )
        .await;
    assert_eq!(reply["status"], "error");
    assert!(reply["response"]["reason"].as_str().unwrap().contains("filter"), "{reply}");
    let (_, reply) = s
        .join(
            "realtime:c",
            config(json!([{"event": "*", "schema": "public", "table": "todos", "filter": "qty=gt.1"}])),
        )
        .await;
    assert_eq!(reply["status"], "ok", "the socket is still usable: {reply}");
}

#[tokio::test]
async fn heartbeats_are_answered_and_malformed_frames_get_an_error_reply_on_a_socket_that_stays_usable() {
    let t = server().await;
    let mut s = Phx::connect(&t.url, &t.admin_key, "2.0.0").await;
    s.send(None, "1", "phoenix", "heartbeat", json!({})).await;
    let f = s.recv().await;
    assert_eq!(f, json!([null, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]));

    let bad: Vec<Message> = vec![
        Message::Text("[".into()),
        Message::Text(r#"[null,"2","phoenix"]"#.into()),
        Message::Text(r#"{"topic":"phoenix","event":"heartbeat"}"#.into()),
        Message::Text(r#"[null,"3","realtime:x","phx_join",[1,2]]"#.into()),
        Message::Binary(vec![4u8, 0, 0, 0, 0].into()),
        Message::Binary(vec![3u8, 9, 9, 9, 9, 9, 1].into()),
        Message::Text(
            format!(r#"[null,"4","realtime:x","broadcast",{{"x":"{}"}}]"#, "y".repeat(70_000)).into(),
        ),
    ];
    for m in bad {
        s.raw(m).await;
        let f = s.recv().await;
        assert_eq!(f[3], "phx_reply", "{f}");
        assert_eq!(f[4]["status"], "error", "{f}");
        assert!(f[4]["response"]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{f}");
    }
    s.send(
        None,
        "5",
        "realtime:not-joined",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {}}),
    )
    .await;
    let f = s.recv().await;
    assert_eq!(
        f,
        json!([null, "5", "realtime:not-joined", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    s.send(None, "6", "phoenix", "heartbeat", json!({})).await;
    assert_eq!(s.recv().await[1], "6", "the socket still answers");
}

#[tokio::test]
async fn binary_broadcasts_reach_the_other_members_not_the_sender_and_are_acked_when_asked() {
    let t = server().await;
    let k = key("u1", "authenticated", 3600);
    let (mut a, mut b) = (Phx::connect(&t.url, &k, "2.0.0").await, Phx::connect(&t.url, &k, "2.0.0").await);
    let cfg =
        json!({"broadcast": {"ack": true, "self": false}, "presence": {"key": ""}, "postgres_changes": []});
    let (ja, reply) = a.join("realtime:room1", cfg.clone()).await;
    assert_eq!(reply, json!({"status": "ok", "response": {"postgres_changes": []}}));
    b.join("realtime:room1", cfg).await;
    // channel.send({type:'broadcast', event:'cursor-pos', payload:{x:1}}) under vsn 2.0.0.
    let topic = "realtime:room1";
    let mut frame = vec![3u8, ja.len() as u8, 2, topic.len() as u8, 10, 0, 1];
    frame.extend_from_slice(format!("{ja}77{topic}cursor-pos{{\"x\":1}}").as_bytes());
    a.raw(Message::Binary(frame.into())).await;
    let ack = a.recv_until(|f| f[3] == "phx_reply").await;
    assert_eq!((ack[1].clone(), ack[4]["status"].clone()), (json!("77"), json!("ok")));
    let got = b.recv_until(|f| f[3] == "broadcast").await;
    assert_eq!(
        got,
        json!([null, null, topic, "broadcast", {"type": "broadcast", "event": "cursor-pos", "payload": {"x": 1}}])
    );
    // A text broadcast with self: the sender receives its own too.
    let (mut c, _) = (Phx::connect(&t.url, &k, "2.0.0").await, ());
    c.join("realtime:room2", json!({"broadcast": {"self": true}})).await;
    c.send(
        Some("1"),
        "9",
        "realtime:room2",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {"n": 1}}),
    )
    .await;
    let own = c.recv_until(|f| f[3] == "broadcast").await;
    assert_eq!(own[4]["payload"], json!({"n": 1}));
    assert!(
        a.quiet_for(Duration::from_millis(300)).await.is_none(),
        "self: false keeps the sender's own broadcast away"
    );
}

#[tokio::test]
async fn raw_binary_broadcasts_arrive_as_bytes_under_2_0_0() {
    let t = server().await;
    let k = key("u1", "authenticated", 3600);
    let (mut a, mut b) = (Phx::connect(&t.url, &k, "2.0.0").await, Phx::connect(&t.url, &k, "2.0.0").await);
    let (ja, _) = a.join("realtime:bin", json!({})).await;
    b.join("realtime:bin", json!({})).await;
    let topic = "realtime:bin";
    let mut frame = vec![3u8, ja.len() as u8, 0, topic.len() as u8, 3, 0, 0];
    frame.extend_from_slice(format!("{ja}{topic}raw").as_bytes());
    frame.extend_from_slice(&[0, 1, 2, 255]);
    a.raw(Message::Binary(frame.into())).await;
    let got = b.recv_binary().await;
    let mut want = vec![4u8, topic.len() as u8, 3, 0, 0];
    want.extend_from_slice(format!("{topic}raw").as_bytes());
    want.extend_from_slice(&[0, 1, 2, 255]);
    assert_eq!(got, want);
}

#[tokio::test]
async fn presence_joins_reach_every_member_and_a_dropped_socket_leaves() {
    let t = server().await;
    let k = key("u1", "authenticated", 3600);
    let mut watcher = Phx::connect(&t.url, &k, "2.0.0").await;
    let (_, reply) = watcher.join("realtime:lobby", json!({"presence": {"key": "watcher"}})).await;
    assert_eq!(reply["status"], "ok");
    let state = watcher.recv_until(|f| f[3] == "presence_state").await;
    assert_eq!(state[4], json!({}));

    let mut alice = Phx::connect(&t.url, &k, "2.0.0").await;
    let (ja, _) = alice.join("realtime:lobby", json!({"presence": {"key": "alice"}})).await;
    alice
        .send(
            Some(&ja),
            "50",
            "realtime:lobby",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"user": "alice"}}),
        )
        .await;
    let ok = alice.recv_until(|f| f[3] == "phx_reply" && f[1] == "50").await;
    assert_eq!(ok[4]["status"], "ok");
    let diff = watcher.recv_until(|f| f[3] == "presence_diff").await;
    let metas = &diff[4]["joins"]["alice"]["metas"];
    assert_eq!(metas[0]["user"], "alice", "{diff}");
    assert!(metas[0]["phx_ref"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(diff[4]["leaves"], json!({}));

    // Late joiners get the state first.
    let mut late = Phx::connect(&t.url, &k, "1.0.0").await;
    late.join("realtime:lobby", json!({})).await;
    let state = late.recv_until(|f| f[3] == "presence_state").await;
    assert_eq!(state[4]["alice"]["metas"][0]["user"], "alice");

    drop(alice);
    let diff = watcher.recv_until(|f| f[3] == "presence_diff").await;
    assert_eq!(diff[4]["leaves"]["alice"]["metas"][0]["user"], "alice", "{diff}");
}

#[tokio::test]
async fn leave_replies_ok_then_closes_and_a_second_join_replaces_the_first() {
    let t = server().await;
    let mut s = Phx::connect(&t.url, &t.admin_key, "2.0.0").await;
    let (j1, _) = s.join("realtime:r", json!({})).await;
    let (j2, reply) = s.join("realtime:r", json!({})).await;
    assert_eq!(reply["status"], "ok");
    // The first channel was closed before the second joined.
    let _ = j1;
    s.send(Some(&j2), "90", "realtime:r", "phx_leave", json!({})).await;
    let ok = s.recv_until(|f| f[1] == "90").await;
    assert_eq!((ok[3].clone(), ok[4]["status"].clone()), (json!("phx_reply"), json!("ok")));
    let close = s.recv().await;
    assert_eq!(close, json!([j2, j2, "realtime:r", "phx_close", {}]));
    s.send(
        Some(&j2),
        "91",
        "realtime:r",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {}}),
    )
    .await;
    assert_eq!(s.recv().await[4]["response"]["reason"], "unmatched topic");
}

#[tokio::test]
async fn a_rejoin_closes_the_earlier_channel_with_its_join_ref() {
    let t = server().await;
    let mut s = Phx::connect(&t.url, &t.admin_key, "2.0.0").await;
    s.send(Some("1"), "1", "realtime:r", "phx_join", json!({"config": {}})).await;
    s.recv_until(|f| f[1] == "1" && f[3] == "phx_reply").await;
    s.send(Some("2"), "2", "realtime:r", "phx_join", json!({"config": {}})).await;
    let close = s.recv_until(|f| f[3] == "phx_close").await;
    assert_eq!(close, json!(["1", "1", "realtime:r", "phx_close", {}]));
    let reply = s.recv_until(|f| f[3] == "phx_reply").await;
    assert_eq!(
        (reply[0].clone(), reply[1].clone(), reply[4]["status"].clone()),
        (json!("2"), json!("2"), json!("ok"))
    );
}

#[tokio::test]
async fn vsn_1_speaks_json_objects_and_a_missing_vsn_means_1() {
    let t = server().await;
    let url =
        format!("{}/realtime/v1/websocket?apikey={}", t.url.replacen("http://", "ws://", 1), t.admin_key);
    let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("connects");
    let mut s = Phx { stream, vsn: "1.0.0", next: 0 };
    let (_, reply) =
        s.join("realtime:v1", config(json!([{"event": "*", "schema": "public", "table": "todos"}]))).await;
    assert_eq!(reply["status"], "ok");
    t.create("todos", json!({"title": "x"})).await;
    let f = s.recv_until(|f| f[3] == "postgres_changes").await;
    assert_eq!(f[4]["data"]["record"]["title"], "x");
    // Binary frames do not exist in 1.0.0.
    s.raw(Message::Binary(vec![3u8, 0, 0, 1, 1, 0, 1, b't', b'e', b'{', b'}'].into())).await;
    assert_eq!(s.recv().await[4]["status"], "error");
}

#[tokio::test]
async fn missing_or_bad_keys_are_refused_before_the_upgrade_with_401() {
    let t = server().await;
    let ws = t.url.replacen("http://", "ws://", 1);
    for q in [
        "vsn=2.0.0",
        "apikey=not-a-jwt&vsn=2.0.0",
        &format!("apikey={}&vsn=2.0.0", sign("wrong", "u", "anon", 60, Map::new()).unwrap()),
    ] {
        let e = tokio_tungstenite::connect_async(format!("{ws}/realtime/v1/websocket?{q}"))
            .await
            .expect_err("refused");
        match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 401, "{q}"),
            other => panic!("expected an HTTP refusal, got {other}"),
        }
    }
    let e = tokio_tungstenite::connect_async(format!(
        "{ws}/realtime/v1/websocket?apikey={}&vsn=3.0.0",
        t.admin_key
    ))
    .await
    .expect_err("refused");
    assert!(matches!(e, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400));
}

#[tokio::test]
async fn an_expired_or_invalid_access_token_closes_the_channel_with_a_system_message() {
    let t = server().await;
    let mut s = Phx::connect(&t.url, &key("u1", "authenticated", 3600), "2.0.0").await;
    let (j, _) = s.join("realtime:t", json!({})).await;
    s.send(Some(&j), "5", "realtime:t", "access_token", json!({"access_token": "garbage"})).await;
    let sys = s.recv_until(|f| f[3] == "system").await;
    assert_eq!(sys[4]["status"], "error");
    let close = s.recv().await;
    assert_eq!(close, json!([j, j, "realtime:t", "phx_close", {}]));

    // A token that expires while joined: the channel is closed within seconds.
    let short = key("u1", "authenticated", 2);
    let (j, reply) = {
        let r = s.make_ref();
        s.send(Some(&r), &r, "realtime:t2", "phx_join", json!({"config": {}, "access_token": short})).await;
        (r.clone(), s.recv_until(|f| f[3] == "phx_reply" && f[1] == json!(r)).await)
    };
    assert_eq!(reply[4]["status"], "ok");
    let sys = s.recv_until(|f| f[3] == "system").await;
    assert!(sys[4]["message"].as_str().unwrap().contains("expired"), "{sys}");
    assert_eq!(s.recv().await, json!([j, j, "realtime:t2", "phx_close", {}]));
}

#[tokio::test]
async fn rest_broadcasts_reach_the_channel_members() {
    let t = server().await;
    let k = key("u1", "authenticated", 3600);
    let mut s = Phx::connect(&t.url, &k, "2.0.0").await;
    s.join("realtime:news", json!({})).await;
    let r = t
        .http
        .post(format!("{}/realtime/v1/api/broadcast", t.url))
        .header("apikey", &k)
        .json(&json!({"messages": [{"topic": "news", "event": "headline", "payload": {"t": "hi"}}]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let f = s.recv_until(|f| f[3] == "broadcast").await;
    assert_eq!(f[4], json!({"type": "broadcast", "event": "headline", "payload": {"t": "hi"}}));
    let r = t
        .http
        .post(format!("{}/realtime/v1/api/broadcast/news/events/flash", t.url))
        .bearer_auth(&k)
        .json(&json!({"n": 2}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let f = s.recv_until(|f| f[3] == "broadcast").await;
    assert_eq!(f[4]["event"], "flash");
    let r = t
        .http
        .post(format!("{}/realtime/v1/api/broadcast", t.url))
        .json(&json!({"messages": []}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    let r = t
        .http
        .post(format!("{}/realtime/v1/api/broadcast", t.url))
        .header("apikey", &k)
        .json(&json!({"messages": [{"topic": "news"}]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 422);
}

#[tokio::test]
async fn public_channels_admit_the_anon_key_and_private_ones_follow_the_channel_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let schema = dir.path().join("schema.json");
    let rules = json!({"channels": [{"pattern": "staff-*", "rule": "auth.role == \"staff\""}]});
    std::fs::write(&schema, rules.to_string()).expect("schema file");
    let t = TestServer::start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.schema = Some(schema.clone());
    })
    .await;
    let anon = key("", "anon", 3600);
    let mut s = Phx::connect(&t.url, &anon, "2.0.0").await;
    let (_, reply) = s.join("realtime:staff-room", json!({"private": false})).await;
    assert_eq!(reply["status"], "ok", "a public channel is open to the anon key: {reply}");
    let (_, reply) = s.join("realtime:staff-room2", json!({"private": true})).await;
    assert_eq!(reply["status"], "error", "{reply}");
    assert!(reply["response"]["reason"].as_str().unwrap().starts_with("Unauthorized"), "{reply}");
    let (_, reply) = s.join("realtime:no-rule", json!({"private": true})).await;
    assert_eq!(
        reply["status"], "error",
        "a private channel without a rule admits no anonymous caller: {reply}"
    );

    let mut staff = Phx::connect(&t.url, &key("s1", "staff", 3600), "2.0.0").await;
    let (_, reply) = staff.join("realtime:staff-room2", json!({"private": true})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let mut user = Phx::connect(&t.url, &key("u1", "authenticated", 3600), "2.0.0").await;
    let (_, reply) = user.join("realtime:staff-room2", json!({"private": true})).await;
    assert_eq!(reply["status"], "error", "{reply}");
}
