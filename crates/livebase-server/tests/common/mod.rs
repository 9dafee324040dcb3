//! Test harness: real servers on free ports with temp data dirs, and a small HTTP client.
#![allow(dead_code)]

pub mod nats;
pub mod process;
pub mod ws;

use livebase_server::{Config, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub url: String,
    pub admin_key: String,
    /// The PostgreSQL database this server keeps its data in, when the suite runs on that
    /// backend.
    pub database: Option<String>,
}

/// The backend the spec suites run against: embedded SQLite, or PostgreSQL when
/// `LIVEBASE_TEST_BACKEND=postgres` (each server gets a fresh database of a throwaway
/// cluster the tests start themselves).
pub fn test_database() -> Option<String> {
    match std::env::var("LIVEBASE_TEST_BACKEND").as_deref() {
        Ok("postgres") => Some(
            livebase_pgtest::require()
                .expect("LIVEBASE_TEST_BACKEND=postgres needs the PostgreSQL server binaries")
                .create_database(),
        ),
        _ => None,
    }
}

pub fn config(dir: PathBuf) -> Config {
    let mut c = Config::for_dir(dir);
    c.admin_key = Some("test-admin-key".into());
    c
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = config(dir.path().to_path_buf());
        c.database = test_database();
        f(&mut c);
        let database = c.database.clone();
        let server = livebase_server::start(c).await.expect("server starts");
        TestServer {
            url: server.url(),
            admin_key: server.admin_key.clone(),
            server: Some(server),
            dir,
            http: reqwest::Client::new(),
            database,
        }
    }

    /// Stops the server and starts a new one on the same data dir (new port).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let mut c = config(self.dir.path().to_path_buf());
        c.database = self.database.clone();
        let server = livebase_server::start(c).await.expect("restart");
        self.url = server.url();
        self.server = Some(server);
    }

    pub async fn req(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{}", self.url, path)).bearer_auth(&self.admin_key);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.req(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::POST, path, Some(body), &[]).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::PATCH, path, Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.req(Method::DELETE, path, None, &[]).await
    }

    pub async fn create_collection(&self, def: Value) {
        let (s, b) = self.post("/api/collections", def).await;
        assert_eq!(s, StatusCode::CREATED, "create collection: {b}");
    }

    pub async fn create(&self, collection: &str, data: Value) -> Value {
        let (s, b) = self.post(&format!("/api/collections/{collection}/records"), data).await;
        assert_eq!(s, StatusCode::CREATED, "create: {b}");
        b
    }

    pub async fn list(&self, collection: &str, query: &str) -> Vec<Value> {
        let (s, b) = self.get(&format!("/api/collections/{collection}/records?{query}")).await;
        assert_eq!(s, StatusCode::OK, "list: {b}");
        b["items"].as_array().cloned().unwrap_or_default()
    }

    pub async fn changes(&self, since: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = since;
        loop {
            let (s, b) = self.get(&format!("/api/changes?since={since}&limit=1000")).await;
            assert_eq!(s, StatusCode::OK, "changes: {b}");
            let ev = b["events"].as_array().cloned().unwrap_or_default();
            if ev.is_empty() {
                return out;
            }
            since = ev.last().and_then(|e| e["seq"].as_u64()).unwrap_or(since);
            out.extend(ev);
        }
    }
}

/// The collection most tests use.
pub fn items_collection() -> Value {
    json!({"name": "items", "fields": [
        {"name": "title", "type": "text", "required": true, "max": 100},
        {"name": "qty", "type": "integer", "min": 0},
        {"name": "price", "type": "number"},
        {"name": "status", "type": "select", "values": ["open", "late", "done"]},
        {"name": "sku", "type": "text", "unique": true},
        {"name": "done", "type": "boolean"}],
        "conflict": "reject"})
}
