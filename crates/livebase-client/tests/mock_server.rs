//! The realtime client against a scripted fake server: reconnect on close codes 4001/4002,
//! resume with `since`, sub_id remapping, idle detection, URL switching, token passing.

use futures_util::{SinkExt, StreamExt};
use livebase_client::{Backoff, Client, RealtimeConfig, RealtimeHandle, Status, SubEvent};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);

struct FakeServer {
    url: String,
    conns: mpsc::UnboundedReceiver<FakeConn>,
}

struct FakeConn {
    ws: WebSocketStream<TcpStream>,
    uri: String,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let uri = Arc::new(Mutex::new(String::new()));
                let seen = uri.clone();
                // The callback's signature is tungstenite's, large error type included.
                #[allow(clippy::result_large_err)]
                let cb = move |req: &Request, resp: Response| {
                    *seen.lock().unwrap() = req.uri().to_string();
                    Ok(resp)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                    continue;
                };
                let uri = uri.lock().unwrap().clone();
                if tx.send(FakeConn { ws, uri }).is_err() {
                    return;
                }
            }
        });
        FakeServer { url, conns }
    }

    async fn accept(&mut self) -> FakeConn {
        timeout(WAIT, self.conns.recv()).await.expect("a connection in time").expect("listener alive")
    }
}

impl FakeConn {
    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    async fn welcome(&mut self, conn_id: &str) {
        self.send(json!({"type": "welcome", "conn_id": conn_id,
            "server_time": "2026-01-01T00:00:00.000000Z", "heartbeat_ms": 15000, "timeout_ms": 45000}))
            .await;
    }

    /// The next text frame from the client, as JSON.
    async fn recv(&mut self) -> Value {
        loop {
            let msg = timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("frame");
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).expect("client sends JSON");
            }
        }
    }

    async fn close_with(mut self, code: u16, reason: &str) {
        let _ = self.ws.close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() })).await;
        // Let the client's close reply arrive before the socket is dropped.
        let _ =
            timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = self.ws.next().await {} }).await;
    }
}

fn change(sub_id: u64, seq: u64, id: &str) -> Value {
    json!({"type": "change", "sub_id": sub_id, "seq": seq, "op": "update", "view": "update",
        "id": id, "version": seq, "actor": "admin", "committed_at": "2026-01-01T00:00:00.000000Z",
        "new": {"id": id, "version": seq}, "old": {"id": id, "version": seq - 1}})
}

fn fast() -> RealtimeConfig {
    RealtimeConfig {
        backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(50)),
        ..RealtimeConfig::default()
    }
}

async fn next_change(sub: &mut livebase_client::Subscription) -> u64 {
    match timeout(WAIT, sub.next()).await.expect("an event in time") {
        Some(SubEvent::Change(c)) => c.seq,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// Subscribes while the fake server answers the first `subscribe` on `conn`.
async fn subscribe(
    rt: &RealtimeHandle,
    conn: &mut FakeConn,
    sub_id: u64,
    seq: u64,
) -> livebase_client::Subscription {
    let rt2 = rt.clone();
    let pending = tokio::spawn(async move { rt2.subscribe("items", Some("qty=gt.5")).await });
    let req = conn.recv().await;
    assert_eq!(req["type"], "subscribe");
    assert_eq!(req["collection"], "items");
    assert_eq!(req["filter"], "qty=gt.5");
    conn.send(json!({"type": "subscribed", "ref": req["ref"], "sub_id": sub_id, "seq": seq})).await;
    pending.await.expect("task").expect("subscribe succeeds")
}

#[tokio::test]
async fn close_codes_4001_and_4002_trigger_reconnect_and_gapless_resume() {
    let mut server = FakeServer::start().await;
    let rt = Client::new(&server.url).realtime_with(fast());
    let mut status = rt.status();

    let mut c1 = server.accept().await;
    assert_eq!(c1.uri, "/api/realtime");
    c1.welcome("c1").await;
    rt.wait_connected().await.expect("connected");
    assert_eq!(rt.conn_id().as_deref(), Some("c1"));
    let mut sub = subscribe(&rt, &mut c1, 12, 100).await;
    c1.send(change(12, 101, "a")).await;
    c1.send(change(12, 102, "a")).await;
    assert_eq!(next_change(&mut sub).await, 101);
    assert_eq!(next_change(&mut sub).await, 102);
    c1.close_with(4001, "slow_consumer").await;

    let mut c2 = server.accept().await;
    c2.welcome("c2").await;
    let req = c2.recv().await;
    assert_eq!(req["type"], "subscribe");
    assert_eq!(req["since"], 102, "resumes from the last seq: {req}");
    assert_eq!(req.get("snapshot"), None);
    // The new connection names the query differently.
    c2.send(json!({"type": "subscribed", "ref": req["ref"], "sub_id": 3, "seq": 102})).await;
    c2.send(change(3, 102, "a")).await; // a duplicate at the seam is dropped
    c2.send(change(3, 103, "a")).await;
    c2.send(change(12, 104, "x")).await; // the old id means nothing now
    assert_eq!(next_change(&mut sub).await, 103);
    assert_eq!(sub.seq(), Some(103));
    c2.close_with(4002, "heartbeat_timeout").await;

    let mut c3 = server.accept().await;
    c3.welcome("c3").await;
    let req = c3.recv().await;
    assert_eq!(req["since"], 103);
    c3.send(json!({"type": "subscribed", "ref": req["ref"], "sub_id": 3, "seq": 103})).await;
    c3.send(change(3, 104, "a")).await;
    assert_eq!(next_change(&mut sub).await, 104);
    assert!(sub.try_next().is_none(), "nothing else was delivered");

    // The status went through Reconnecting and back to Connected.
    assert_eq!(*status.borrow_and_update(), Status::Connected);
    rt.close().await;
    assert_eq!(*status.borrow_and_update(), Status::Disconnected);
    assert!(timeout(WAIT, sub.next()).await.expect("ends").is_none());
}

#[tokio::test]
async fn status_reports_reconnect_attempts_while_the_server_is_down() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let rt = Client::new(&url).realtime_with(fast());
    let mut status = rt.status();
    let mut attempts = Vec::new();
    while attempts.len() < 4 {
        timeout(WAIT, status.changed()).await.expect("status changes").expect("task alive");
        if let Status::Reconnecting { attempt } = *status.borrow_and_update() {
            attempts.push(attempt);
        }
    }
    assert!(attempts.windows(2).all(|w| w[0] < w[1]), "{attempts:?}");
    // Requests that need a socket fail fast meanwhile.
    assert!(matches!(rt.ping().await, Err(livebase_client::Error::NotConnected)));
    rt.close().await;
}

#[tokio::test]
async fn a_silent_connection_is_replaced() {
    let mut server = FakeServer::start().await;
    let config = RealtimeConfig { idle_timeout: Some(Duration::from_millis(300)), ..fast() };
    let rt = Client::new(&server.url).realtime_with(config);
    let mut c1 = server.accept().await;
    c1.welcome("c1").await;
    rt.wait_connected().await.expect("connected");
    // Say nothing: the client gives up on this socket and dials again.
    let mut c2 = server.accept().await;
    c2.welcome("c2").await;
    rt.wait_connected().await.expect("connected again");
    drop(c1);
    rt.close().await;
}

#[tokio::test]
async fn ping_auth_token_and_url_switch() {
    let mut a = FakeServer::start().await;
    let mut b = FakeServer::start().await;
    let client = Client::new(&a.url).with_token("s3cret&x");
    let rt = client.realtime_with(fast());
    let mut c1 = a.accept().await;
    assert_eq!(c1.uri, "/api/realtime?token=s3cret%26x");
    c1.welcome("c1").await;
    rt.wait_connected().await.expect("connected");

    let rt2 = rt.clone();
    let ping = tokio::spawn(async move { rt2.ping().await });
    let req = c1.recv().await;
    assert_eq!(req["type"], "ping");
    tokio::time::sleep(Duration::from_millis(30)).await;
    c1.send(json!({"type": "pong", "ref": req["ref"], "server_time": "t"})).await;
    let rtt = ping.await.expect("task").expect("pong");
    assert!(rtt >= Duration::from_millis(30), "{rtt:?}");

    let rt2 = rt.clone();
    let auth = tokio::spawn(async move { rt2.auth("new-token").await });
    let req = c1.recv().await;
    assert_eq!(req["type"], "auth");
    assert_eq!(req["token"], "new-token");
    c1.send(json!({"type": "error", "ref": req["ref"], "code": "unauthorized", "message": "bad"})).await;
    let e = auth.await.expect("task").expect_err("refused");
    assert_eq!(e.code(), Some("unauthorized"));

    rt.set_url(&b.url);
    rt.reconnect();
    let mut c2 = b.accept().await;
    assert_eq!(c2.uri, "/api/realtime?token=new-token");
    c2.welcome("c2").await;
    rt.wait_connected().await.expect("connected to b");
    assert_eq!(rt.conn_id().as_deref(), Some("c2"));
    drop(c1);
    rt.close().await;
}

#[tokio::test]
async fn live_query_reloads_when_the_log_was_trimmed() {
    let mut server = FakeServer::start().await;
    let rt = Client::new(&server.url).realtime_with(fast());
    let mut c1 = server.accept().await;
    c1.welcome("c1").await;
    let rt2 = rt.clone();
    let lq = tokio::spawn(async move { rt2.live_query("items", None).await });
    let req = c1.recv().await;
    assert_eq!(req["snapshot"], true);
    c1.send(json!({"type": "subscribed", "ref": req["ref"], "sub_id": 1, "seq": 10})).await;
    c1.send(json!({"type": "snapshot", "sub_id": 1, "seq": 10, "rows": [{"id": "a"}], "done": false})).await;
    c1.send(json!({"type": "snapshot", "sub_id": 1, "seq": 10, "rows": [{"id": "b"}], "done": true})).await;
    let mut lq = lq.await.expect("task").expect("live query");
    assert_eq!(lq.seq(), 10);
    assert_eq!(lq.rows().keys().collect::<Vec<_>>(), vec!["a", "b"]);
    c1.send(json!({"type": "change", "sub_id": 1, "seq": 11, "op": "delete", "view": "remove",
        "id": "a", "version": 1, "actor": null, "committed_at": "t", "new": null, "old": {"id": "a"}}))
        .await;
    timeout(WAIT, lq.wait_for_seq(11)).await.expect("in time").expect("applied");
    assert_eq!(lq.rows().keys().collect::<Vec<_>>(), vec!["b"]);
    c1.close_with(1001, "shutting down").await;

    let mut c2 = server.accept().await;
    c2.welcome("c2").await;
    let req = c2.recv().await;
    assert_eq!(req["since"], 11);
    c2.send(json!({"type": "resync_required", "ref": req["ref"], "sub_id": 1, "reason": "log_trimmed"}))
        .await;
    let req = c2.recv().await;
    assert_eq!(req["snapshot"], true, "{req}");
    c2.send(json!({"type": "subscribed", "ref": req["ref"], "sub_id": 2, "seq": 500})).await;
    c2.send(json!({"type": "snapshot", "sub_id": 2, "seq": 500, "rows": [{"id": "z"}], "done": true})).await;
    timeout(WAIT, lq.wait_for_seq(500)).await.expect("in time").expect("reloaded");
    assert_eq!(lq.rows().keys().collect::<Vec<_>>(), vec!["z"]);
    rt.close().await;
}
