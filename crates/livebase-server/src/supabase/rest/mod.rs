//! The PostgREST subset at `/rest/v1/{collection}` that `@supabase/supabase-js` produces:
//! reads with `select`, filters, `order`, `limit`/`offset`/`Range` and counts; inserts (one or
//! many), upserts, updates and deletes "where …"; single-object responses; PostgREST's error
//! shape. Every operation is a [`Service`](crate::service::Service) call as the caller, so the
//! collection rules apply exactly as on the native API.
//!
//! - `query.rs`: the query string, `Prefer`, `Accept`, `Range`.
//! - `errors.rs`: PostgREST's error shape and codes.
//! - `write.rs`: inserts, upserts, updates and deletes.
//!
//! A write is one store request, so one transaction: an update or delete of many rows is one
//! batch of per-row ops. Those rows are read first; inside the transaction each must still
//! match the filter (and exist), else nothing is applied and the request reads and tries again
//! (a few times, then `40001`). Updates are plain last-write-wins patches: PostgREST has no
//! versions, and none are sent.

mod errors;
mod query;
mod write;

pub use errors::PgError;

use crate::app::App;
use crate::auth::Principal;
use crate::supabase::keys;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use livebase_core::query::{ListQuery, MAX_LIMIT};
use livebase_core::schema::Collection;
use livebase_core::Record;
use query::{Media, Params, Prefer, Return};
use serde_json::Value;
use std::net::SocketAddr;

/// Most rows one request reads or writes (Supabase's default `max_rows` is the same): a read
/// returns at most this many, a write that would touch more is refused (`54000`).
pub const MAX_ROWS: usize = MAX_LIMIT;

/// How often a write "where …" is read and tried again when its rows changed meanwhile.
const ATTEMPTS: usize = 5;

const JSON: &str = "application/json; charset=utf-8";
const OBJECT: &str = "application/vnd.pgrst.object+json; charset=utf-8";

pub fn routes(_app: App) -> Router<App> {
    Router::new()
        .route(
            "/rest/v1/{collection}",
            get(read).post(write::insert).patch(write::update).delete(write::remove).options(preflight),
        )
        .route("/rest/v1/rpc/{function}", any(rpc))
        .layer(axum::middleware::from_fn(cors))
}

// ---------- the request ----------

struct Req {
    who: Principal,
    c: Collection,
    params: Params,
    prefer: Prefer,
    media: Media,
}

fn pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// The caller, its rate limit, the schema profile, the collection and the parameters.
fn prepare(
    app: &App,
    addr: SocketAddr,
    name: &str,
    q: &Option<String>,
    headers: &HeaderMap,
    writing: bool,
) -> Result<Req, PgError> {
    let pairs = pairs(q);
    let apikey = pairs.iter().find(|(k, _)| k == "apikey").map(|(_, v)| v.as_str());
    let who = keys::principal(app, headers, apikey)?;
    rate_limit(app, &who, addr)?;
    let profile = if writing { "content-profile" } else { "accept-profile" };
    if let Some(p) = headers.get(profile) {
        if p.to_str().ok().map(str::trim) != Some("public") {
            return Err(PgError::new(
                StatusCode::NOT_ACCEPTABLE,
                "PGRST106",
                "The schema must be one of the following: public",
            ));
        }
    }
    let c = app.service.schema().get(name).cloned().ok_or_else(|| PgError::no_table(name))?;
    let params = query::parse(&pairs, &c)?;
    let media = query::media(headers)?;
    Ok(Req { who, c, params, prefer: query::prefer(headers), media })
}

/// The REST token buckets, keyed as on the native API: by subject, by address when the
/// caller has none (the anon key is shared by every browser); the service credential is free.
fn rate_limit(app: &App, who: &Principal, addr: SocketAddr) -> Result<(), PgError> {
    let key = match who {
        Principal::Admin => return Ok(()),
        Principal::User(i) if i.sub().is_some() => who.scope(),
        _ => format!("ip:{}", addr.ip()),
    };
    app.rest_limiter.check(&key).map_err(|wait| {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = PgError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {secs} s"),
        );
        e.retry_after = Some(secs);
        e
    })
}

/// The rows `[offset, offset + limit)` asked for by `offset`/`limit` and the `Range` header
/// together (their intersection, as PostgREST takes it).
fn window(p: &Params, headers: &HeaderMap) -> (usize, Option<usize>) {
    let (mut lower, mut end) = (p.offset.unwrap_or(0), p.limit.map(|l| p.offset.unwrap_or(0) + l));
    if let Some((start, last)) = query::range(headers) {
        lower = lower.max(start);
        if let Some(last) = last {
            end = Some(end.map_or(last + 1, |e| e.min(last + 1)));
        }
    }
    (lower, end.map(|e| e.saturating_sub(lower)))
}

async fn read_body(app: &App, body: Body) -> Result<Value, PgError> {
    let bytes: Bytes = axum::body::to_bytes(body, app.config.max_body).await.map_err(|_| {
        PgError::limit(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {} bytes", app.config.max_body),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| PgError::body("Empty or invalid json").details(e.to_string()))
}

// ---------- responses ----------

fn shape(req: &Req, r: &Record) -> Value {
    let mut v = query::project(&req.params.select, &r.0);
    if req.media.strip_nulls {
        if let Value::Object(m) = &mut v {
            m.retain(|_, v| !v.is_null());
        }
    }
    v
}

/// A JSON response of `rows` (or the one row, for a single-object request).
fn rows_response(req: &Req, status: StatusCode, rows: Vec<Value>, range: String) -> Response {
    let (ctype, body) = if req.media.single {
        if rows.len() != 1 {
            return PgError::not_single(rows.len()).into_response();
        }
        (OBJECT, rows.into_iter().next().unwrap_or(Value::Null))
    } else {
        (JSON, Value::Array(rows))
    };
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&range) {
        h.insert(header::CONTENT_RANGE, v);
    }
    resp
}

/// The answer to a write: the rows (`return=representation`) or nothing.
fn write_response(req: &Req, app: &App, created: bool, records: &[Record]) -> Response {
    let access = app.service.access();
    let visible: Vec<&Record> =
        records.iter().filter(|r| access.row_visible(&req.who, &req.c.name, r)).collect();
    let total = req.prefer.count.then_some(records.len() as u64);
    let range = query::content_range(0, records.len(), total);
    let ok = if created { StatusCode::CREATED } else { StatusCode::OK };
    match req.prefer.ret {
        Return::Representation => {
            let rows = visible.iter().map(|r| shape(req, r)).collect();
            rows_response(req, ok, rows, range)
        }
        Return::Minimal => {
            let status = if created { StatusCode::CREATED } else { StatusCode::NO_CONTENT };
            let mut resp = status.into_response();
            if let Ok(v) = HeaderValue::from_str(&range) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            resp
        }
    }
}

fn fail(e: PgError) -> Response {
    e.into_response()
}

// ---------- reads ----------

/// `GET` (and `HEAD`, whose body the server drops).
async fn read(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let req = match prepare(&app, addr, &name, &q, &headers, false) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let (offset, limit) = window(&req.params, &headers);
    let lq = ListQuery {
        filter: req.params.filter.clone(),
        order: req.params.order.clone(),
        limit: Some(limit.unwrap_or(MAX_ROWS).min(MAX_ROWS)),
        offset: Some(offset),
        count: req.prefer.count,
        ..Default::default()
    };
    let page = match app.service.list(&req.who, &req.c.name, lq).await {
        Ok(p) => p,
        Err(e) => return fail(PgError::from_service(e, &req.c.name, &req.who)),
    };
    let n = page.items.len();
    if let Some(total) = page.total {
        if offset as u64 > total {
            return fail(
                PgError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "PGRST103",
                    "Requested range not satisfiable",
                )
                .details(format!("An offset of {offset} was requested, but there are only {total} rows.")),
            );
        }
    }
    let status = match page.total {
        Some(t) if (n as u64) < t => StatusCode::PARTIAL_CONTENT,
        _ => StatusCode::OK,
    };
    let rows = page.items.iter().map(|r| shape(&req, r)).collect();
    rows_response(&req, status, rows, query::content_range(offset, n, page.total))
}

// ---------- the rest ----------

/// `/rest/v1/rpc/{function}`: Livebase has no database functions.
async fn rpc(Path(function): Path<String>) -> Response {
    PgError::new(
        StatusCode::NOT_FOUND,
        "PGRST202",
        format!("Could not find the function public.{function} without parameters in the schema cache"),
    )
    .hint("Livebase does not run database functions (rpc)")
    .into_response()
}

/// A CORS preflight: browsers ask before sending `apikey`/`Authorization`/`Prefer`.
async fn preflight(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE, OPTIONS"),
    );
    let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned().unwrap_or_else(|| {
        HeaderValue::from_static(
            "apikey, authorization, content-type, prefer, range, range-unit, accept-profile, content-profile, x-client-info",
        )
    });
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    resp
}

/// Every `/rest/v1` answer may be read by a page of any origin: credentials travel in headers
/// (never cookies), so there is nothing ambient to protect.
async fn cors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let is_options = req.method() == Method::OPTIONS;
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    if !is_options {
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Range, Range-Unit, Content-Location, Preference-Applied"),
        );
    }
    resp
}
