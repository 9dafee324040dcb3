//! REST: collections (admin), records, batches and the change log — thin translations of
//! HTTP onto the [`Service`](crate::service::Service) calls, which decide access.

use crate::app::App;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::service::Viewer;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use livebase_core::query::ListQuery;
use livebase_core::schema::Collection;
use livebase_core::Record;
use livebase_store::{
    ChangeQuery, Idempotency, OpOutcome, OpsResult, SchemaChange, StoredResponse, WriteOp, WriteResult,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

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
    ("GET", "/api/collections/{name}/aggregate"),
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
        .route("/api/collections/{name}/aggregate", get(aggregate))
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
    let schema = app.service.collections(&who)?;
    let items: Vec<&Collection> = schema.collections.values().collect();
    Ok(Json(json!({ "items": items })).into_response())
}

async fn get_collection(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(app.service.collection(&who, &name)?).into_response())
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
    app.service.collections(&who)?;
    let (_, obj) = read_object(&app, body).await?;
    let c = parse_collection(Value::Object(obj))?;
    let schema = app.service.change_schema(&who, SchemaChange::Create(c.clone())).await?;
    Ok((StatusCode::CREATED, Json(schema.get(&c.name))).into_response())
}

async fn update_collection(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let current = app.service.collection(&who, &name)?;
    let (_, patch) = read_object(&app, body).await?;
    // PATCH replaces the top-level keys it names (e.g. the whole `fields` list).
    let mut merged = serde_json::to_value(&current).unwrap_or_default();
    for (k, v) in patch {
        merged[k] = v;
    }
    let c = parse_collection(merged)?;
    if c.name != name {
        return Err(ApiError::bad_request("rename_unsupported", "a collection cannot be renamed"));
    }
    let force = flag(&query_pairs(&q), "force");
    let schema = app.service.change_schema(&who, SchemaChange::Update { collection: c, force }).await?;
    Ok(Json(schema.get(&name)).into_response())
}

async fn drop_collection(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let force = flag(&query_pairs(&q), "force");
    app.service.change_schema(&who, SchemaChange::Drop { name, force }).await?;
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
    let page = app.service.list(&who, &name, query).await?;
    let mut body = json!({ "items": page.items, "next_cursor": page.next_cursor });
    if let Some(t) = page.total {
        body["total"] = json!(t);
    }
    Ok(Json(body).into_response())
}

/// `GET …/aggregate?{filter}&group=status&fn=count,sum(weight_kg)`: one object per group with
/// the group fields and one key per function as written, and the sequence it is current at.
async fn aggregate(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (mut group, mut fns) = (String::new(), None);
    let mut filter_pairs = Vec::new();
    for (k, v) in query_pairs(&q) {
        match k.as_str() {
            "group" => group = v,
            "fn" => fns = Some(v),
            "order" | "limit" | "offset" | "cursor" | "select" | "count" => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!("'{k}' does not apply to an aggregate"),
                ))
            }
            _ => filter_pairs.push((k, v)),
        }
    }
    let fns =
        fns.ok_or_else(|| ApiError::bad_request("bad_query", "name the functions: fn=count,sum(field),…"))?;
    let query =
        ListQuery::from_pairs(&filter_pairs).map_err(|e| ApiError::bad_request("bad_filter", e.message))?;
    let schema = app.service.schema();
    let c = schema.get(&name).ok_or_else(|| livebase_store::StoreError::NoCollection(name.clone()))?;
    let spec = livebase_core::aggregate::AggregateSpec::parse(&group, &fns, c)
        .map_err(crate::service::ServiceError::from)?;
    if let Some(f) = &query.filter {
        f.bind(c).map_err(|e| ApiError::bad_request("bad_filter", e.message))?;
    }
    let (state, seq) = app.service.aggregate(&who, &name, query.filter, std::sync::Arc::new(spec)).await?;
    Ok(Json(json!({"seq": seq, "groups": state.groups()})).into_response())
}

async fn get_record(
    State(app): State<App>,
    Extension(who): Extension<Principal>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let r = app.service.get(&who, &name, &id).await?;
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

/// The response of a single-record mutation.
fn single_response(r: &OpsResult, show: &Viewer) -> (StatusCode, Value) {
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

fn batch_response(r: &OpsResult, show: &Viewer) -> (StatusCode, Value) {
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
    respond: fn(&OpsResult, &Viewer) -> (StatusCode, Value),
) -> Result<Response, ApiError> {
    // One renderer for the live answer and (when an idempotency key asks) the stored one.
    let show = app.service.viewer(who, collection);
    let render_show = show.clone();
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
    match app.service.write(who, ops, idempotency).await? {
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
    let page = app.service.changes(&who, cq).await?;
    let epoch = app.hub.feed().epoch().as_str().to_string();
    Ok(Json(json!({"events": page.events, "head": page.head, "next_since": page.next_since, "epoch": epoch}))
        .into_response())
}
