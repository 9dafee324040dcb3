//! A bare HTTP/1.1 keep-alive connection (`hyper`'s client connection, no pool): the cheapest
//! way for the generator to send many requests while sharing the cores with the server.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// No single bench request may hang longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    auth: HeaderValue,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr, admin_key: &str) -> anyhow::Result<HttpConn> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .context("connect timed out")?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender,
            host: HeaderValue::from_str(&addr.to_string())?,
            auth: HeaderValue::from_str(&format!("Bearer {admin_key}"))?,
        })
    }

    /// Sends one request (a JSON body when `body` is not empty) and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        uri: &Uri,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            self.sender.ready().await?;
            let has_body = !body.is_empty();
            let mut req = Request::new(Full::new(body));
            *req.method_mut() = method;
            *req.uri_mut() = uri.clone();
            let h = req.headers_mut();
            h.insert(HOST, self.host.clone());
            h.insert(AUTHORIZATION, self.auth.clone());
            if has_body {
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            let resp = self.sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok((status, body))
        })
        .await
        .context("request timed out")?
    }

    /// A JSON request; the response body parsed (`Null` when empty or not JSON).
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let uri: Uri = path.parse()?;
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let (status, bytes) = self.send(method, &uri, body).await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// Creates a collection for a scenario: integer fields `t` (send time) and `n` (sequence
    /// number), text `pad`.
    pub async fn create_bench_collection(&mut self, name: &str) -> anyhow::Result<()> {
        self.create_collection_with_rules(name, serde_json::Value::Null).await
    }

    /// The bench collection with the given `rules` object (null: none, admin only).
    pub async fn create_collection_with_rules(
        &mut self,
        name: &str,
        rules: serde_json::Value,
    ) -> anyhow::Result<()> {
        let mut def = serde_json::json!({"name": name, "fields": [
            {"name": "t", "type": "integer"},
            {"name": "n", "type": "integer"},
            {"name": "pad", "type": "text"},
            {"name": "k", "type": "integer"}]});
        if !rules.is_null() {
            def["rules"] = rules;
        }
        let (status, body) = self.json(Method::POST, "/api/collections", Some(&def)).await?;
        anyhow::ensure!(status == StatusCode::CREATED, "creating collection {name}: {status} {body}");
        Ok(())
    }

    /// Drops a collection the bench created on an external server.
    pub async fn drop_collection(&mut self, name: &str) {
        let _ = self.json(Method::DELETE, &format!("/api/collections/{name}?force=true"), None).await;
    }

    /// Records in a collection, counted by the server.
    pub async fn count(&mut self, collection: &str) -> anyhow::Result<u64> {
        let (status, body) = self
            .json(Method::GET, &format!("/api/collections/{collection}/records?limit=1&count=exact"), None)
            .await?;
        anyhow::ensure!(status == StatusCode::OK, "counting {collection}: {status} {body}");
        body["total"].as_u64().context("no total in the list response")
    }
}

/// A record body with a 64-byte pad, so a change frame is a few hundred bytes.
pub(crate) fn record_body(n: u64, t: u64) -> Bytes {
    Bytes::from(format!("{{\"n\":{n},\"t\":{t},\"pad\":\"{PAD}\"}}"))
}

/// A record for query `k` of `fanout --queries`.
pub(crate) fn record_body_k(n: u64, t: u64, k: u64) -> Bytes {
    Bytes::from(format!("{{\"n\":{n},\"t\":{t},\"k\":{k},\"pad\":\"{PAD}\"}}"))
}

pub(crate) const PAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
