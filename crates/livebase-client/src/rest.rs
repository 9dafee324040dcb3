//! REST helpers: records CRUD, batches, and a couple of admin calls.

use crate::error::{Error, Result};
use crate::realtime::{RealtimeConfig, RealtimeHandle};
use reqwest::header::{HeaderMap, HeaderValue, IF_MATCH};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A Livebase client: REST calls over a pooled HTTP client, and the factory of realtime
/// connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

/// One page of `GET /api/collections/{c}/records`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<Value>,
    /// Pass as `cursor=` to get the next page; `None` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// Present when the query asked for a count.
    #[serde(default)]
    pub total: Option<u64>,
}

/// The answer of `GET /api/collections/{c}/aggregate`: the values at `seq`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AggregateResult {
    /// The change the values are current at.
    pub seq: u64,
    /// One object per group: its group fields and one value per function, keyed as written
    /// (`"sum(weight_kg)"`); sorted by the group fields. Without grouping, exactly one.
    pub groups: Vec<Map<String, Value>>,
}

/// Options of a mutation: optimistic concurrency and idempotency.
///
/// ```
/// # use livebase_client::MutationOptions;
/// let opts = MutationOptions::new().if_version(3).idempotency_key("order-17-paid");
/// assert_eq!(opts.if_version, Some(3));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MutationOptions {
    /// Sent as `If-Match: <version>`: the write fails with [`Error::Conflict`] when the record
    /// has moved on.
    pub if_version: Option<i64>,
    /// Sent as `Idempotency-Key`: a retried request with the same key and body is answered
    /// with the stored response instead of being applied twice.
    pub idempotency_key: Option<String>,
}

impl MutationOptions {
    pub fn new() -> MutationOptions {
        MutationOptions::default()
    }

    pub fn if_version(mut self, version: i64) -> MutationOptions {
        self.if_version = Some(version);
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> MutationOptions {
        self.idempotency_key = Some(key.into());
        self
    }

    fn headers(&self) -> Result<HeaderMap> {
        let mut h = HeaderMap::new();
        if let Some(v) = self.if_version {
            h.insert(IF_MATCH, HeaderValue::from(v));
        }
        if let Some(k) = &self.idempotency_key {
            let v = HeaderValue::from_str(k)
                .map_err(|_| Error::Protocol(format!("invalid idempotency key {k:?}")))?;
            h.insert("idempotency-key", v);
        }
        Ok(h)
    }
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for the server at `base_url`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base_url: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_string(),
            token: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` on REST calls and `?token=` on realtime
    /// connections (a JWT or the admin key).
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// Uses the given HTTP client (connection pool, timeouts).
    pub fn with_http_client(mut self, http: reqwest::Client) -> Client {
        self.http = http;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Opens a realtime connection with default settings. Must be called inside a Tokio
    /// runtime: the connection runs as a background task.
    pub fn realtime(&self) -> RealtimeHandle {
        self.realtime_with(RealtimeConfig::default())
    }

    /// Opens a realtime connection with the given settings.
    pub fn realtime_with(&self, config: RealtimeConfig) -> RealtimeHandle {
        RealtimeHandle::connect(&self.base_url, self.token.clone(), config)
    }

    /// Sends a request to `path` (starting with `/`) and returns the JSON body (`Null` when
    /// empty). Non-2xx answers become [`Error::Api`] / [`Error::Conflict`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: HeaderMap,
    ) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{}", self.base_url, path)).headers(headers);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(Error::from_response(status.as_u16(), &text));
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| Error::Protocol(format!("response body is not JSON: {e}")))
    }

    fn records_path(collection: &str) -> String {
        format!("/api/collections/{}/records", encode_segment(collection))
    }

    fn record_path(collection: &str, id: &str) -> String {
        format!("/api/collections/{}/records/{}", encode_segment(collection), encode_segment(id))
    }

    /// Creates a record; the server assigns the id. Returns the stored record.
    pub async fn create(&self, collection: &str, data: Value) -> Result<Value> {
        self.create_with(collection, data, &MutationOptions::default()).await
    }

    /// Creates a record with a client-chosen id (offline-first creates).
    pub async fn create_with_id(&self, collection: &str, id: &str, data: Value) -> Result<Value> {
        let mut data = data;
        match data.as_object_mut() {
            Some(m) => {
                m.insert("id".into(), Value::String(id.to_string()));
            }
            None => data = json!({ "id": id }),
        }
        self.create(collection, data).await
    }

    /// Creates a record with options (only `idempotency_key` applies to creates).
    pub async fn create_with(&self, collection: &str, data: Value, opts: &MutationOptions) -> Result<Value> {
        self.request(Method::POST, &Self::records_path(collection), Some(&data), opts.headers()?).await
    }

    /// Reads one record.
    pub async fn get(&self, collection: &str, id: &str) -> Result<Value> {
        self.request(Method::GET, &Self::record_path(collection, id), None, HeaderMap::new()).await
    }

    /// Lists records. `query` is the raw query string of the REST API, e.g.
    /// `"qty=gt.5&order=qty.desc&limit=20"` (empty for everything, first page).
    pub async fn list(&self, collection: &str, query: &str) -> Result<Page> {
        let query = query.trim_start_matches('?');
        let mut path = Self::records_path(collection);
        if !query.is_empty() {
            path.push('?');
            path.push_str(query);
        }
        let v = self.request(Method::GET, &path, None, HeaderMap::new()).await?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("list response: {e}")))
    }

    /// Computes an aggregate once (`GET /api/collections/{c}/aggregate`): `fns` (`count`,
    /// `sum(f)`, `avg(f)`, `min(f)`, `max(f)`) over the records matching `filter` (the raw
    /// filter query string of lists, e.g. `"eta=lt.2026-04-01"`, empty for all), grouped by
    /// `group` (zero, one or two fields). A refused aggregate is [`Error::Api`] with code
    /// `invalid_aggregate`, its `details.field` naming the field.
    pub async fn aggregate(
        &self,
        collection: &str,
        filter: &str,
        group: &[&str],
        fns: &[&str],
    ) -> Result<AggregateResult> {
        let join = |xs: &[&str]| {
            xs.iter().map(|x| x.split_whitespace().collect::<String>()).collect::<Vec<_>>().join(",")
        };
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !group.is_empty() {
            q.append_pair("group", &join(group));
        }
        q.append_pair("fn", &join(fns));
        let mut path = format!("/api/collections/{}/aggregate?", encode_segment(collection));
        let filter = filter.trim_start_matches('?');
        if !filter.is_empty() {
            path.push_str(filter);
            path.push('&');
        }
        path.push_str(&q.finish());
        let v = self.request(Method::GET, &path, None, HeaderMap::new()).await?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("aggregate response: {e}")))
    }

    /// Lists every record matching `query`, following `next_cursor` page by page.
    pub async fn list_all(&self, collection: &str, query: &str) -> Result<Vec<Value>> {
        let query = query.trim_start_matches('?');
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = query.to_string();
            if let Some(c) = &cursor {
                if !q.is_empty() {
                    q.push('&');
                }
                q.push_str("cursor=");
                q.extend(form_urlencoded::byte_serialize(c.as_bytes()));
            }
            let page = self.list(collection, &q).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) if Some(&c) != cursor.as_ref() => cursor = Some(c),
                _ => return Ok(out),
            }
        }
    }

    /// Partially updates a record (`PATCH`): only the named fields change. With `if_version`
    /// the update fails with [`Error::Conflict`] when the record is no longer at that version.
    pub async fn update(
        &self,
        collection: &str,
        id: &str,
        patch: Value,
        if_version: Option<i64>,
    ) -> Result<Value> {
        let opts = MutationOptions { if_version, idempotency_key: None };
        self.update_with(collection, id, patch, &opts).await
    }

    pub async fn update_with(
        &self,
        collection: &str,
        id: &str,
        patch: Value,
        opts: &MutationOptions,
    ) -> Result<Value> {
        self.request(Method::PATCH, &Self::record_path(collection, id), Some(&patch), opts.headers()?).await
    }

    /// Deletes a record; returns it as it was.
    pub async fn delete(&self, collection: &str, id: &str, if_version: Option<i64>) -> Result<Value> {
        let opts = MutationOptions { if_version, idempotency_key: None };
        self.delete_with(collection, id, &opts).await
    }

    pub async fn delete_with(&self, collection: &str, id: &str, opts: &MutationOptions) -> Result<Value> {
        self.request(Method::DELETE, &Self::record_path(collection, id), None, opts.headers()?).await
    }

    /// Applies ops atomically: `ops` is the array of
    /// `{"op": "create"|"update"|"delete", "id"?, "data"?, "if_version"?}` (or the whole
    /// `{"ops": [...]}` body). Returns the `results` array (`{"op", "record"}` per op).
    pub async fn batch(&self, collection: &str, ops: Value) -> Result<Vec<Value>> {
        self.batch_with(collection, ops, &MutationOptions::default()).await
    }

    pub async fn batch_with(
        &self,
        collection: &str,
        ops: Value,
        opts: &MutationOptions,
    ) -> Result<Vec<Value>> {
        let body = if ops.is_array() { json!({ "ops": ops }) } else { ops };
        let path = format!("/api/collections/{}/batch", encode_segment(collection));
        let mut v = self.request(Method::POST, &path, Some(&body), opts.headers()?).await?;
        match v.get_mut("results").map(Value::take) {
            Some(Value::Array(results)) => Ok(results),
            _ => Err(Error::Protocol("batch response has no results array".into())),
        }
    }

    /// Creates a collection (admin key needed). Returns the stored definition.
    pub async fn create_collection(&self, definition: Value) -> Result<Value> {
        self.request(Method::POST, "/api/collections", Some(&definition), HeaderMap::new()).await
    }

    /// Reads the change log after `since` (admin key needed): `{"events", "head", "next_since"}`.
    pub async fn changes(&self, since: u64, limit: usize) -> Result<Value> {
        self.request(
            Method::GET,
            &format!("/api/changes?since={since}&limit={limit}"),
            None,
            HeaderMap::new(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("01jd-x_y.z~"), "01jd-x_y.z~");
        assert_eq!(encode_segment("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn mutation_options_become_headers() {
        let h = MutationOptions::new().if_version(7).idempotency_key("k-1").headers().expect("valid headers");
        assert_eq!(h.get(IF_MATCH).and_then(|v| v.to_str().ok()), Some("7"));
        assert_eq!(h.get("idempotency-key").and_then(|v| v.to_str().ok()), Some("k-1"));
        assert!(MutationOptions::new().idempotency_key("bad\nkey").headers().is_err());
    }

    #[test]
    fn pages_parse_with_and_without_total() {
        let p: Page = serde_json::from_value(json!({"items": [{"id": "a"}], "next_cursor": null})).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.next_cursor, None);
        assert_eq!(p.total, None);
        let p: Page = serde_json::from_value(json!({"items": [], "next_cursor": "c1", "total": 9})).unwrap();
        assert_eq!(p.next_cursor.as_deref(), Some("c1"));
        assert_eq!(p.total, Some(9));
    }

    #[test]
    fn base_url_loses_its_trailing_slash() {
        let c = Client::new("http://h:1/").with_token("t");
        assert_eq!(c.base_url(), "http://h:1");
        assert_eq!(c.token(), Some("t"));
    }
}
