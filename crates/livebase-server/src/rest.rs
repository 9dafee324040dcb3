//! REST: collections (admin), records, batches and the change log.

use crate::access::Access;
use crate::app::App;
use crate::auth::Principal;
use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use livebase_core::query::{effective_order, encode_cursor, ListQuery};
use livebase_core::schema::Collection;
use livebase_core::Record;
use livebase_store::{
    ChangeQuery, Idempotency, OpOutcome, OpsResult, SchemaChange, StoredResponse, WriteOp, WriteRequest,
    WriteResult,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Every (method, path) that [`routes`] serves. The OpenAPI document (`openapi.rs`) is built
/// from this list; a test checks that the router and the document agree.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/collections"),
    ("POST", "/api/collections"),
    ("GET", "/api/collections/{name}"),
    ("PATCH", "/api/collections/{name}"),
    ("DELETE", "/api/collections/{name}"),
    ("GET", "/api/collections/{name}/records"),
    ("POST", "/api/collections/{name}/records"),
    ("GET", "/api/collections/{name}/records/{id}"),
    ("PATCH", "/api/collections/{name}/records/{id}"),
    ("DELETE", "/api/collections/{name}/records/{id}"),
    ("POST", "/api/collections/{name}/batch"),
    ("GET", "/api/changes"),
];

pub fn routes(app: App) -> Router<App> {
    Router::new()
        .route("/api/collections", get(list_collections).post(create_collection))
        .route(
            "/api/collections/{name}",
            get(get_collection).patch(update_collection).delete(drop_collection),
        )
        .route("/api/collections/{name}/records", get(list_records).post(create_record))
        .route(
            "/api/collections/{name}/records/{id}",
            get(get_record).patch(update_record).delete(delete_record),
        )
        .route("/api/collections/{name}/batch", post(batch))
        .route("/api/changes", get(changes))
        .route_layer(axum::middleware::from_fn_with_state(app, authenticate))
}

/// Resolves the caller once per request (401 on a bad token), applies its rate limit (429
/// with Retry-After; the admin key is exempt) and hands the [`Principal`] to the handler.
async fn authenticate(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    let who = match app.principal(req.headers()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let key = match &who {
        Principal::Admin => None,
        Principal::User(_) => Some(who.scope()),
        Principal::Anonymous(_) => Some(format!("ip:{}", addr.ip())),
    };
    if let Some(key) = key {
        if let Err(wait) = app.rest_limiter.check(&key) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; retry in {secs} s"),
            )
            .with_details(json!({ "retry_after_ms": wait.as_millis() as u64 }))
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
            return resp;
        }
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

fn require_admin(who: &Principal) -> Result<(), ApiError> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(ApiError::unauthorized("this endpoint needs the admin key: Authorization: Bearer <admin key>"))
    }
}

/// Reads a body of at most `max_body` bytes and parses it as a JSON object.
pub async fn read_object(app: &App, body: Body) -> Result<(Bytes, Map<String, Value>), ApiError> {
    let bytes = axum::body::to_bytes(body, app.config.max_body).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {} bytes", app.config.max_body),
        )
    })?;
    if bytes.is_empty() {
        return Ok((bytes, Map::new()));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("malformed_json", format!("request body is not valid JSON: {e}"))
    })?;
    match v {
        Value::Object(m) => Ok((bytes, m)),
        _ => Err(ApiError::bad_request("malformed_json", "request body must be a JSON object")),
    }
}

fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn flag(pairs: &[(String, String)], name: &str) -> bool {
    pairs.iter().any(|(k, v)| k == name && (v == "true" || v == "1"))
}

// ---------- collections ----------

async fn list_collections(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    require_admin(&who)?;
    let schema = app.store.schema();
    let items: Vec<&Collection> = schema.collections.values().collect();
    Ok(Json(json!({ "items": items })).into_response())
}

async fn get_collection(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&who)?;
    let schema = app.store.schema();
    let c = schema.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "collection_not_found",
            format!("collection '{name}' does not exist"),
        )
    })?;
    Ok(Json(c).into_response())
}

fn parse_collection(v: Value) -> Result<Collection, ApiError> {
    serde_json::from_value(v).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_schema", format!("invalid collection: {e}"))
    })
}

async fn create_collection(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&who)?;
    let (_, obj) = read_object(&app, body).await?;
    let c = parse_collection(Value::Object(obj))?;
    let schema = app.store.change_schema(SchemaChange::Create(c.clone())).await?;
    Ok((StatusCode::CREATED, Json(schema.get(&c.name))).into_response())
}

async fn update_collection(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&who)?;
    let (_, patch) = read_object(&app, body).await?;
    let schema = app.store.schema();
    let current = schema.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "collection_not_found",
            format!("collection '{name}' does not exist"),
        )
    })?;
    // PATCH replaces the top-level keys it names (e.g. the whole `fields` list).
    let mut merged = serde_json::to_value(current).unwrap_or_default();
    for (k, v) in patch {
        merged[k] = v;
    }
    let c = parse_collection(merged)?;
    if c.name != name {
        return Err(ApiError::bad_request("rename_unsupported", "a collection cannot be renamed"));
    }
    let force = flag(&query_pairs(&q), "force");
    let schema = app.store.change_schema(SchemaChange::Update { collection: c, force }).await?;
    Ok(Json(schema.get(&name)).into_response())
}

async fn drop_collection(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    require_admin(&who)?;
    let force = flag(&query_pairs(&q), "force");
    app.store.change_schema(SchemaChange::Drop { name, force }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------- records ----------

async fn list_records(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&q);
    let query = ListQuery::from_pairs(&pairs).map_err(|e| ApiError::bad_request("bad_filter", e.message))?;
    let access = app.access();
    if app.store.schema().get(&name).is_some() && !access.can_list(&who, &name) {
        return Err(ApiError::forbidden(format!("not allowed to list '{name}'")));
    }
    let page = if access.open_rows(&who, &name) {
        app.store.list(&name, query).await?
    } else {
        visible_page(&app, &access, &who, &name, query).await?
    };
    let mut body = json!({ "items": page.items, "next_cursor": page.next_cursor });
    if let Some(t) = page.total {
        body["total"] = json!(t);
    }
    Ok(Json(body).into_response())
}

/// A page of the rows the caller may see. Rules are evaluated in memory, so the store is
/// read page by page (by cursor) until `limit` visible rows are found; `offset` and the
/// total count are applied to visible rows.
async fn visible_page(
    app: &App,
    access: &Access,
    who: &Principal,
    name: &str,
    q: ListQuery,
) -> Result<livebase_store::Page, ApiError> {
    let limit = q.effective_limit();
    let mut skip = q.offset.unwrap_or(0);
    let order = effective_order(&q.order);
    let mut scan = ListQuery {
        limit: Some(livebase_core::query::MAX_LIMIT),
        offset: None,
        count: false,
        select: None,
        ..q.clone()
    };
    let mut items = Vec::new();
    let mut total = 0u64;
    let mut next_cursor = None;
    loop {
        let page = app.store.list(name, scan.clone()).await?;
        for r in page.items {
            if !access.row_visible(who, name, &r) {
                continue;
            }
            total += 1;
            if skip > 0 {
                skip -= 1;
            } else if items.len() < limit {
                items.push(r);
            } else if next_cursor.is_none() {
                // One visible row past the page: there is a next page, after the last one kept.
                next_cursor = items.last().map(|l| encode_cursor(&order, l));
                if !q.count {
                    break;
                }
            }
        }
        let done = next_cursor.is_some() && !q.count;
        match page.next_cursor {
            Some(c) if !done => scan.cursor = Some(c),
            _ => break,
        }
    }
    if let Some(sel) = &q.select {
        items = items.iter().map(|r| r.project(sel)).collect();
    }
    Ok(livebase_store::Page { items, next_cursor, total: q.count.then_some(total) })
}

async fn get_record(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let r = app.store.get(&name, &id).await?;
    if !app.access().can_view(&who, &name, &r) {
        return Err(livebase_store::StoreError::NotFound { collection: name, id }.into());
    }
    let mut resp = Json(&r).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", r.version())) {
        resp.headers_mut().insert(axum::http::header::ETAG, v);
    }
    Ok(resp)
}

/// An optional JSON member: absent or null is `Some(None)`, a value `get` accepts is
/// `Some(Some(..))`, anything else `None` (the caller names the error).
fn optional<T>(v: Option<Value>, get: impl FnOnce(&Value) -> Option<T>) -> Option<Option<T>> {
    match v {
        None | Some(Value::Null) => Some(None),
        Some(v) => get(&v).map(Some),
    }
}

/// The base version a client sent: `If-Match: 3` / `If-Match: "3"` or `expected_version`.
fn base_version(headers: &HeaderMap, data: &mut Map<String, Value>) -> Result<Option<i64>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "bad_version",
            "If-Match / expected_version must be a record version (an integer)",
        )
    };
    let from_body = optional(data.remove("expected_version"), Value::as_i64).ok_or_else(bad)?;
    let from_header = match headers.get(axum::http::header::IF_MATCH) {
        None => None,
        Some(h) => {
            let s = h.to_str().map_err(|_| bad())?.trim().trim_start_matches("W/").trim_matches('"');
            Some(s.parse::<i64>().map_err(|_| bad())?)
        }
    };
    Ok(from_header.or(from_body))
}

async fn create_record(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (bytes, mut data) = read_object(&app, body).await?;
    let id = optional(data.remove("id"), |v| v.as_str().map(str::to_string)).ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "id must be a string")
    })?;
    let op = WriteOp::Create { collection: name.clone(), id, data };
    mutate(&app, &who, &headers, Method::POST, &name, &name, &bytes, vec![op], single_response).await
}

async fn update_record(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let (bytes, mut data) = read_object(&app, body).await?;
    let base_version = base_version(&headers, &mut data)?;
    let op = WriteOp::Update { collection: name.clone(), id: id.clone(), data, base_version };
    let path = format!("{name}/{id}");
    mutate(&app, &who, &headers, Method::PATCH, &name, &path, &bytes, vec![op], single_response).await
}

async fn delete_record(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let base_version = base_version(&headers, &mut Map::new())?;
    let op = WriteOp::Delete { collection: name.clone(), id: id.clone(), base_version };
    let path = format!("{name}/{id}");
    mutate(&app, &who, &headers, Method::DELETE, &name, &path, &[], vec![op], single_response).await
}

async fn batch(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (bytes, mut body) = read_object(&app, body).await?;
    let Some(Value::Array(raw)) = body.remove("ops") else {
        return Err(ApiError::bad_request("bad_batch", "body must be {\"ops\": [...]}"));
    };
    if raw.len() > 1000 {
        return Err(ApiError::bad_request("bad_batch", "a batch holds at most 1000 ops"));
    }
    let mut ops = Vec::with_capacity(raw.len());
    for (index, op) in raw.into_iter().enumerate() {
        ops.push(parse_batch_op(&name, op).map_err(|e| {
            let msg = format!("op {index}: {}", e.message);
            ApiError { message: msg, ..e }.with_details(json!({ "index": index }))
        })?);
    }
    mutate(&app, &who, &headers, Method::POST, &name, &format!("{name}/batch"), &bytes, ops, batch_response)
        .await
}

fn parse_batch_op(collection: &str, op: Value) -> Result<WriteOp, ApiError> {
    let Value::Object(mut m) = op else {
        return Err(ApiError::bad_request("bad_batch", "each op must be an object"));
    };
    let kind = m.remove("op").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let id = optional(m.remove("id"), |v| v.as_str().map(str::to_string))
        .ok_or_else(|| ApiError::bad_request("bad_batch", "id must be a string"))?;
    let base_version =
        optional(m.remove("if_version").or_else(|| m.remove("expected_version")), Value::as_i64)
            .ok_or_else(|| ApiError::bad_request("bad_version", "if_version must be an integer"))?;
    let data = match m.remove("data") {
        None => Map::new(),
        Some(Value::Object(d)) => d,
        Some(_) => return Err(ApiError::bad_request("bad_batch", "data must be an object")),
    };
    if let Some(k) = m.keys().next() {
        return Err(ApiError::bad_request("bad_batch", format!("unknown key '{k}'")));
    }
    let collection = collection.to_string();
    let need_id =
        || id.clone().ok_or_else(|| ApiError::bad_request("bad_batch", format!("{kind} needs an id")));
    match kind.as_str() {
        "create" => Ok(WriteOp::Create { collection, id, data }),
        "update" => Ok(WriteOp::Update { collection, id: need_id()?, data, base_version }),
        "delete" => Ok(WriteOp::Delete { collection, id: need_id()?, base_version }),
        other => Err(ApiError::bad_request(
            "bad_batch",
            format!("unknown op '{other}': use create, update or delete"),
        )),
    }
}

/// Renders records in mutation responses as the caller may see them: a record its rules
/// hide (e.g. created for someone else) shows only `id` and `version`.
struct Show {
    access: Arc<Access>,
    who: Principal,
    collection: String,
}

impl Show {
    fn record(&self, r: &Record) -> Value {
        if self.access.can_view(&self.who, &self.collection, r) {
            json!(r)
        } else {
            json!({"id": r.id(), "version": r.version()})
        }
    }
}

/// The response of a single-record mutation.
fn single_response(r: &OpsResult, show: &Show) -> (StatusCode, Value) {
    match r {
        Ok(outcomes) => match outcomes.first() {
            Some(OpOutcome::Created(rec)) => (StatusCode::CREATED, show.record(rec)),
            Some(o) => (StatusCode::OK, show.record(o.record())),
            None => (StatusCode::OK, Value::Null),
        },
        Err(e) => {
            let mut a = ApiError::from(e.error.clone());
            if let Some(d) = a.details.as_mut() {
                d.as_object_mut().map(|m| m.remove("index"));
            }
            (a.status, a.body())
        }
    }
}

fn batch_response(r: &OpsResult, show: &Show) -> (StatusCode, Value) {
    match r {
        Ok(outcomes) => {
            let results: Vec<Value> = outcomes
                .iter()
                .map(|o| {
                    let (op, rec): (&str, &Record) = match o {
                        OpOutcome::Created(r) => ("create", r),
                        OpOutcome::Updated(r) => ("update", r),
                        OpOutcome::Deleted(r) => ("delete", r),
                    };
                    json!({"op": op, "record": show.record(rec)})
                })
                .collect();
            (StatusCode::OK, json!({ "results": results }))
        }
        Err(e) => {
            let a = ApiError::from(e.clone());
            (a.status, a.body())
        }
    }
}

/// Applies ops as one request: idempotency key, actor, response rendering. `path` (with the
/// method and body) identifies the request for its idempotency fingerprint.
#[allow(clippy::too_many_arguments)]
async fn mutate(
    app: &App,
    who: &Principal,
    headers: &HeaderMap,
    method: Method,
    collection: &str,
    path: &str,
    body: &[u8],
    ops: Vec<WriteOp>,
    respond: fn(&OpsResult, &Show) -> (StatusCode, Value),
) -> Result<Response, ApiError> {
    let access = app.access();
    // One renderer for the live answer and (when an idempotency key asks) the stored one.
    let show =
        Arc::new(Show { access: access.clone(), who: who.clone(), collection: collection.to_string() });
    let render_show = show.clone();
    let authorize: Option<livebase_store::Authorize> = if who.is_admin() {
        None
    } else {
        let who = who.clone();
        Some(Arc::new(move |check: &livebase_store::AccessCheck<'_>| access.authorize(&who, check)))
    };
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(k) => {
            let k = k.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible characters",
                )
            })?;
            let mut h = Sha256::new();
            h.update(method.as_str());
            h.update([0]);
            h.update(path);
            h.update([0]);
            h.update(body);
            Some(Idempotency {
                key: format!("{}:{k}", who.scope()),
                fingerprint: hex::encode(h.finalize()),
                render: Box::new(move |r: &OpsResult| {
                    let (status, body) = respond(r, &render_show);
                    StoredResponse { status: status.as_u16(), body: body.to_string() }
                }),
            })
        }
    };
    let req = WriteRequest { ops, actor: who.actor(), idempotency, authorize };
    match app.store.write(req).await? {
        WriteResult::Applied(r) => {
            let (status, body) = respond(&r, &show);
            Ok((status, Json(body)).into_response())
        }
        WriteResult::Replayed(s) => {
            let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK);
            let mut resp = (status, s.body).into_response();
            let h = resp.headers_mut();
            h.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(resp)
        }
    }
}

// ---------- change log ----------

async fn changes(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&q);
    let mut cq = ChangeQuery { limit: 100, ..Default::default() };
    for (k, v) in pairs {
        let num = |v: &str| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request("bad_query", format!("{k} must be a non-negative integer"))
            })
        };
        let ts = |v: &str| {
            livebase_core::record::normalize_timestamp(v).ok_or_else(|| {
                ApiError::bad_request("bad_query", format!("{k} must be an RFC 3339 timestamp"))
            })
        };
        match k.as_str() {
            "since" => cq.since = num(&v)?,
            "limit" => cq.limit = num(&v)?.clamp(1, 10_000) as usize,
            "collection" => cq.collection = Some(v),
            "record_id" | "id" => cq.record_id = Some(v),
            "actor" => cq.actor = Some(v),
            "from" => cq.from = Some(ts(&v)?),
            "to" => cq.to = Some(ts(&v)?),
            _ => return Err(ApiError::bad_request("bad_query", format!("unknown parameter '{k}'"))),
        }
    }
    let page = app.store.changes(cq).await?;
    // Paging continues after the last event read, whether or not the caller may see it.
    let next = page.events.last().map(|e| e.seq);
    let events: Vec<_> = if who.is_admin() {
        page.events
    } else {
        // Others see the events of rows their rules let them see, with hidden sides blanked.
        let access = app.access();
        page.events
            .into_iter()
            .filter(|e| access.can_list(&who, &e.collection))
            .filter_map(|e| access.redact_event(&who, e))
            .collect()
    };
    Ok(Json(json!({"events": events, "head": page.head, "next_since": next})).into_response())
}
