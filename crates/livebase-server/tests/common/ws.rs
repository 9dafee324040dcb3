//! A raw WebSocket test client speaking docs/protocol.md frame by frame.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

pub type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Upper bound on waiting for one expected frame; a test that hits it fails.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct Ws {
    pub stream: Stream,
    pub conn_id: String,
    pub welcome: Value,
    next_ref: u64,
}

impl Ws {
    pub async fn connect(http_url: &str, token: Option<&str>) -> Ws {
        let mut url = format!("{}/api/realtime", http_url.replacen("http://", "ws://", 1));
        if let Some(t) = token {
            url.push_str(&format!("?token={t}"));
        }
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        let mut ws = Ws { stream, conn_id: String::new(), welcome: Value::Null, next_ref: 0 };
        let welcome = ws.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        ws.conn_id = welcome["conn_id"].as_str().unwrap_or_default().to_string();
        ws.welcome = welcome;
        ws
    }

    /// A client over an already upgraded stream (e.g. one with custom socket options or
    /// query parameters); returns it and its `welcome`.
    pub async fn from_stream(stream: Stream) -> (Ws, Value) {
        let mut ws = Ws { stream, conn_id: String::new(), welcome: Value::Null, next_ref: 0 };
        let welcome = ws.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        ws.conn_id = welcome["conn_id"].as_str().unwrap_or_default().to_string();
        ws.welcome = welcome.clone();
        (ws, welcome)
    }

    pub async fn send(&mut self, v: Value) {
        self.stream.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, text: String) {
        self.stream.send(Message::Text(text.into())).await.expect("send");
    }

    /// The next text frame, as JSON.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame arrives in time")
            {
                Some(Ok(m)) => m,
                // The peer vanished without a close frame (e.g. a reset).
                None | Some(Err(_)) => return json!({"type": "__closed", "code": null}),
            };
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("server frames are JSON"),
                Message::Close(c) => return json!({"type": "__closed", "code": c.map(|c| u16::from(c.code))}),
                _ => continue,
            }
        }
    }

    /// Frames until one satisfies `pred` (returned); the skipped ones are returned too.
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return (v, skipped);
            }
            assert_ne!(v["type"], "__closed", "connection closed while waiting; saw {skipped:?}");
            skipped.push(v);
        }
    }

    /// Sends a request with a fresh `ref` and returns the reply echoing it.
    pub async fn request(&mut self, mut v: Value) -> Value {
        self.next_ref += 1;
        let r = self.next_ref;
        v["ref"] = json!(r);
        self.send(v).await;
        let (reply, _) = self.recv_until(|f| f["ref"] == json!(r)).await;
        reply
    }

    pub async fn subscribe(&mut self, collection: &str, filter: Option<&str>, extra: Value) -> (u64, u64) {
        let mut req = json!({"type": "subscribe", "collection": collection});
        if let Some(f) = filter {
            req["filter"] = json!(f);
        }
        if let Value::Object(m) = extra {
            for (k, v) in m {
                req[k] = v;
            }
        }
        let reply = self.request(req).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        (reply["sub_id"].as_u64().unwrap(), reply["seq"].as_u64().unwrap())
    }

    /// The next `change` frame (other frame types are skipped).
    pub async fn next_change(&mut self) -> Value {
        self.recv_until(|f| f["type"] == "change").await.0
    }
}
