//! Issue #15: what a fault-injection run found. Each test names the behaviour it requires.

mod common;

use common::ws::{Ws, WAIT};
use common::{items_collection, TestServer};
use futures_util::{SinkExt, StreamExt};
use livebase_server::auth::sign;
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "hardening-secret-0123456789abcdef";

/// The next close frame (code, reason), skipping other frames; None when the TCP connection
/// ended without one.
async fn close_of(ws: &mut Ws) -> Option<(u16, String)> {
    for _ in 0..10_000 {
        match tokio::time::timeout(WAIT, ws.stream.next()).await.expect("the server closes in time") {
            Some(Ok(Message::Close(c))) => {
                return c.map(|c| (u16::from(c.code), c.reason.as_str().to_string()));
            }
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return None,
        }
    }
    panic!("no close after 10000 frames");
}

async fn metrics(t: &TestServer) -> String {
    t.http.get(format!("{}/metrics", t.url)).send().await.unwrap().text().await.unwrap()
}

/// The value of one sample line of the metrics text, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok())).unwrap_or(0.0)
}

// ---------- 1. frames over the hard limit, invalid UTF-8 ----------

#[tokio::test]
async fn a_text_frame_over_the_hard_limit_is_closed_with_1009_and_counted() {
    let t = TestServer::start().await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.send_raw(format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat((1 << 20) + 10))).await;
    assert_eq!(close_of(&mut ws).await, Some((1009, "message_too_big".into())));
    let m = metrics(&t).await;
    assert_eq!(sample(&m, "livebase_ws_frames_refused_total{reason=\"message_too_big\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_is_closed_with_1007_and_counted() {
    let t = TestServer::start().await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.stream.send(Message::Frame(bad)).await.expect("send");
    assert_eq!(close_of(&mut ws).await, Some((1007, "invalid_utf8".into())));
    let m = metrics(&t).await;
    assert_eq!(sample(&m, "livebase_ws_frames_refused_total{reason=\"invalid_utf8\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn a_frame_between_the_soft_and_the_hard_limit_gets_an_error_and_the_connection_stays_open() {
    let t = TestServer::start().await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.send_raw(format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(512 * 1024))).await;
    assert_eq!(ws.recv().await["code"], "frame_too_large");
    assert_eq!(ws.request(json!({"type": "ping"})).await["type"], "pong");
    let m = metrics(&t).await;
    assert_eq!(sample(&m, "livebase_ws_frames_refused_total{reason=\"frame_too_large\"}"), 1.0, "{m}");
}

// ---------- 2. slow consumers learn why they were cut off ----------

/// A raw socket that stops reading with a tiny receive buffer, a queue of 4 frames: it is
/// cut off, and whatever reached it on the old socket, its next connection with
/// `?resume_of=<old conn_id>` says so in `welcome`.
#[tokio::test]
async fn a_cut_off_slow_consumer_is_told_the_reason_on_its_next_connection() {
    let t = TestServer::start_with(|c| c.ws_queue = 4).await;
    t.create_collection(json!({"name": "blobs", "fields": [{"name": "body", "type": "text"}]})).await;
    let addr: std::net::SocketAddr = t.url.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/api/realtime?token={}", t.admin_key);
    let (stream, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
        .expect("upgrade");
    let (mut slow, _) = Ws::from_stream(stream).await;
    let old = slow.conn_id.clone();
    slow.subscribe("blobs", None, json!({})).await;
    // From here on `slow` reads nothing. Write until the hub has cut it off (bounded).
    let body = "x".repeat(16 * 1024);
    let mut cut = false;
    for round in 0..400 {
        let ops: Vec<Value> = (0..40).map(|_| json!({"op": "create", "data": {"body": body}})).collect();
        let (s, b) = t.post("/api/collections/blobs/batch", json!({ "ops": ops })).await;
        assert_eq!(s, StatusCode::OK, "round {round}: {b}");
        if sample(&metrics(&t).await, "livebase_slow_consumers_dropped_total") >= 1.0 {
            cut = true;
            break;
        }
    }
    assert!(cut, "the consumer that stopped reading was never cut off");
    // The old socket ends, by 4001 or without a close frame: both are allowed.
    let end = close_of(&mut slow).await;
    assert!(end.is_none() || end.as_ref().map(|e| e.0) == Some(4001), "{end:?}");
    drop(slow);
    let url =
        format!("{}/api/realtime?token={}&resume_of={old}", t.url.replacen("http", "ws", 1), t.admin_key);
    let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("reconnects");
    let (_again, w) = Ws::from_stream(stream).await;
    assert_eq!(w["cut_off"]["reason"], "slow_consumer", "{w}");
    assert!(w["cut_off"]["at_seq"].as_u64().is_some_and(|s| s > 0), "{w}");
    // Reported once, and never to someone else's connection.
    let url =
        format!("{}/api/realtime?token={}&resume_of={old}", t.url.replacen("http", "ws", 1), t.admin_key);
    let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (_third, w) = Ws::from_stream(stream).await;
    assert!(w.get("cut_off").is_none(), "reported once: {w}");
}

// ---------- 3. system fields in bodies ----------

#[tokio::test]
async fn system_fields_in_record_bodies_are_refused_by_name() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let (s, e) =
        t.post("/api/collections/items/records", json!({"title": "a", "version": 99, "created_at": 5})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "validation_failed");
    let text = e.to_string();
    assert!(text.contains("\"version\"") && text.contains("\"created_at\""), "names both fields: {e}");
    // id stays accepted on create.
    let r = t.create("items", json!({"id": "own-id-1", "title": "a"})).await;
    assert_eq!((r["id"].as_str(), r["version"].as_i64()), (Some("own-id-1"), Some(1)));
    let (s, e) =
        t.patch("/api/collections/items/records/own-id-1", json!({"title": "b", "updated_at": "x"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e.to_string().contains("updated_at"), "{e}");
    let (s, b) =
        t.patch("/api/collections/items/records/own-id-1", json!({"id": "own-id-1", "title": "b"})).await;
    assert_eq!(s, StatusCode::OK, "repeating its own id is fine: {b}");
    let (s, e) = t
        .post(
            "/api/collections/items/batch",
            json!({"ops": [{"op": "create", "data": {"title": "c"}},
                           {"op": "update", "id": "own-id-1", "data": {"version": 7}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e.to_string().contains("version"), "{e}");
    assert_eq!(t.list("items", "").await.len(), 1, "the batch applied nothing");
    assert_eq!(t.get("/api/collections/items/records/own-id-1").await.1["version"], 2);
}

// ---------- 4. secure defaults ----------

#[tokio::test]
async fn channels_no_rule_covers_are_closed_to_anonymous_sockets() {
    let t = TestServer::start_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    let mut anon = Ws::connect(&t.url, None).await;
    let r = anon.request(json!({"type": "join", "channel": "admin:room"})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r =
        anon.request(json!({"type": "broadcast", "channel": "admin:room", "event": "e", "payload": 1})).await;
    assert_eq!(r["code"], "not_joined");
    let user = sign(SECRET, "u1", "member", 300, Map::new()).unwrap();
    let mut u = Ws::connect(&t.url, Some(&user)).await;
    assert_eq!(u.request(json!({"type": "join", "channel": "admin:room"})).await["type"], "ok");
    let mut a = Ws::connect(&t.url, Some(&t.admin_key)).await;
    assert_eq!(a.request(json!({"type": "join", "channel": "admin:room"})).await["type"], "ok");
}

#[tokio::test]
async fn metrics_served_only_on_the_metrics_address_when_one_is_set() {
    let t = TestServer::start_with(|c| c.metrics_addr = Some(([127, 0, 0, 1], 0).into())).await;
    let maddr = t.server.as_ref().unwrap().metrics_addr.expect("a metrics address");
    let main = t.http.get(format!("{}/metrics", t.url)).send().await.unwrap();
    assert_eq!(main.status(), StatusCode::NOT_FOUND, "not on the main port");
    let r = t.http.get(format!("http://{maddr}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("livebase_connections"));
    let r = t.http.get(format!("http://{maddr}/api/collections")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the metrics address serves nothing else");
}

#[tokio::test]
async fn metrics_need_the_bearer_token_when_one_is_set() {
    let t = TestServer::start_with(|c| c.metrics_token = Some("scrape-me".into())).await;
    let url = format!("{}/metrics", t.url);
    assert_eq!(t.http.get(&url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let r = t.http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = t.http.get(&url).bearer_auth("scrape-me").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("# EOF"));
}
