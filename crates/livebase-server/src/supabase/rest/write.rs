//! Writes: inserts and upserts (`POST`), updates (`PATCH`) and deletes (`DELETE`) "where …".
//! Each request is one store request, so one transaction.

use super::errors::PgError;
use super::query::{self, Resolution};
use super::{fail, prepare, read_body, window, write_response, Req, ATTEMPTS, MAX_ROWS};
use crate::app::App;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use livebase_core::filter::{BoundFilter, Filter};
use livebase_core::query::ListQuery;
use livebase_core::record::normalize_timestamp;
use livebase_core::schema::FieldType;
use livebase_core::Record;
use livebase_store::{OpError, OpOutcome, StoreError, WriteOp, WriteResult};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

// ---------- inserts and upserts ----------

/// The objects of an insert body, reduced to `columns` when given (absent keys are null, or
/// left to the column default with `Prefer: missing=default`).
fn insert_rows(body: Value, req: &Req) -> Result<Vec<Map<String, Value>>, PgError> {
    let rows = match body {
        Value::Object(m) => vec![m],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Object(m) => Ok(m),
                _ => {
                    Err(PgError::body("Empty or invalid json").details("every element must be a JSON object"))
                }
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(
                PgError::body("Empty or invalid json").details("the body must be an object or an array")
            )
        }
    };
    if rows.len() > MAX_ROWS {
        return Err(PgError::limit(
            StatusCode::BAD_REQUEST,
            format!("an insert holds at most {MAX_ROWS} rows, this one {}", rows.len()),
        ));
    }
    let Some(cols) = &req.params.columns else { return Ok(rows) };
    Ok(rows
        .into_iter()
        .map(|mut r| {
            let mut out = Map::new();
            for c in cols {
                match r.remove(c) {
                    Some(v) => {
                        out.insert(c.clone(), v);
                    }
                    None if !req.prefer.missing_default => {
                        out.insert(c.clone(), Value::Null);
                    }
                    None => {}
                }
            }
            out
        })
        .collect())
}

/// A create op from one object: `id` (a string, or absent for a generated one) apart.
fn create_op(collection: &str, mut data: Map<String, Value>) -> Result<WriteOp, PgError> {
    let id = match data.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(PgError::new(
                StatusCode::BAD_REQUEST,
                "22P02",
                format!("invalid input syntax for type text: \"{other}\""),
            )
            .hint("Livebase record ids are strings"))
        }
    };
    Ok(WriteOp::Create { collection: collection.to_string(), id, data })
}

/// How one write attempt ended.
enum Attempt {
    Done(Vec<OpOutcome>),
    /// The rows it was chosen from changed meanwhile: read again. The refusal, as it would
    /// be answered if reading again cannot help.
    Again(PgError),
}

/// Runs ops (guarded: each stored row must still pass `still`); `data` names each op's input
/// for error messages; `again` says which refusals mean "read again".
async fn attempt(
    app: &App,
    req: &Req,
    ops: Vec<WriteOp>,
    still: Option<crate::service::RowGuard>,
    data: &[&Map<String, Value>],
    again: impl Fn(&StoreError) -> bool,
) -> Result<Attempt, PgError> {
    if ops.is_empty() {
        return Ok(Attempt::Done(Vec::new()));
    }
    let r = match still {
        Some(g) => app.service.write_where(&req.who, ops, g).await,
        None => app.service.write(&req.who, ops, None).await,
    };
    match r.map_err(|e| PgError::from_service(e, &req.c.name, &req.who))? {
        WriteResult::Applied(Ok(out)) => Ok(Attempt::Done(out)),
        WriteResult::Applied(Err(OpError { index, error })) if again(&error) => {
            Ok(Attempt::Again(PgError::from_store(error, &req.c.name, &req.who, data.get(index).copied())))
        }
        WriteResult::Applied(Err(OpError { index, error })) => {
            Err(PgError::from_store(error, &req.c.name, &req.who, data.get(index).copied()))
        }
        WriteResult::Replayed(_) => {
            Err(PgError::new(StatusCode::INTERNAL_SERVER_ERROR, "XX000", "unexpected replayed write"))
        }
    }
}

fn contention() -> PgError {
    PgError::new(StatusCode::CONFLICT, "40001", "could not serialize access due to concurrent update")
        .hint("the rows kept changing while the request ran; retry it")
}

pub(super) async fn insert(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = match prepare(&app, addr, &name, &q, &headers, true) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let rows = match read_body(&app, body).await.and_then(|b| insert_rows(b, &req)) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if req.media.single && rows.len() != 1 {
        return fail(PgError::not_single(rows.len()));
    }
    let result = match req.prefer.resolution {
        None => plain_insert(&app, &req, rows).await,
        Some(res) => upsert(&app, &req, rows, res).await,
    };
    match result {
        Ok(records) => write_response(&req, &app, true, &records),
        Err(e) => fail(e),
    }
}

async fn plain_insert(app: &App, req: &Req, rows: Vec<Map<String, Value>>) -> Result<Vec<Record>, PgError> {
    let ops = rows.iter().map(|r| create_op(&req.c.name, r.clone())).collect::<Result<Vec<_>, _>>()?;
    let data: Vec<&Map<String, Value>> = rows.iter().collect();
    match attempt(app, req, ops, None, &data, |_| false).await? {
        Attempt::Done(out) => Ok(out.into_iter().map(outcome_record).collect()),
        Attempt::Again(_) => Err(contention()),
    }
}

fn outcome_record(o: OpOutcome) -> Record {
    match o {
        OpOutcome::Created(r) | OpOutcome::Updated(r) | OpOutcome::Deleted(r) => r,
    }
}

/// A conflict key as text, in the form the store keeps it (so `5` and `5.0` of a number
/// column, or two spellings of one datetime, are one key); also a filter literal. None for
/// null.
fn key_of(ty: Option<FieldType>, v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if ty == Some(FieldType::Datetime) => {
            Some(normalize_timestamp(s).unwrap_or_else(|| s.clone()))
        }
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => (f as i64).to_string(),
            _ => n.to_string(),
        }),
        v => Some(v.to_string()),
    }
}

/// `POST` with `Prefer: resolution=…`: rows whose `on_conflict` column (default `id`; a
/// unique column) matches a stored row update it (merge) or are skipped (ignore); the others
/// are created. One transaction; stored rows are looked up first and must still hold their
/// key when written.
async fn upsert(
    app: &App,
    req: &Req,
    rows: Vec<Map<String, Value>>,
    resolution: Resolution,
) -> Result<Vec<Record>, PgError> {
    let c = &req.c;
    let col = match req.params.on_conflict.as_deref() {
        None => "id".to_string(),
        Some([one]) if one == "id" || c.field(one).is_some_and(|f| f.unique) => one.clone(),
        Some(_) => {
            return Err(PgError::new(
                StatusCode::BAD_REQUEST,
                "42P10",
                "there is no unique or exclusion constraint matching the ON CONFLICT specification",
            )
            .hint("on_conflict takes one column: id or a field declared unique"))
        }
    };
    let ty = query::column_type(c, &col);
    let keys: Vec<Option<String>> = rows.iter().map(|r| r.get(&col).and_then(|v| key_of(ty, v))).collect();
    let mut seen = std::collections::HashSet::new();
    if keys.iter().flatten().any(|k| !seen.insert(k.clone())) {
        return Err(PgError::new(
            StatusCode::BAD_REQUEST,
            "21000",
            "ON CONFLICT DO UPDATE command cannot affect row a second time",
        )
        .hint("Ensure that no rows proposed for insertion within the same command have duplicate constrained values."));
    }
    for attempt_no in 0..ATTEMPTS {
        // The stored rows holding these keys, as the caller sees them.
        let mut existing: HashMap<String, String> = HashMap::new();
        let wanted: Vec<String> = keys.iter().flatten().cloned().collect();
        for chunk in wanted.chunks(200) {
            let lq = ListQuery {
                filter: Some(Filter::In { field: col.clone(), values: chunk.to_vec() }),
                limit: Some(chunk.len()),
                ..Default::default()
            };
            let page = app
                .service
                .list(&req.who, &c.name, lq)
                .await
                .map_err(|e| PgError::from_service(e, &c.name, &req.who))?;
            for r in page.items {
                if let Some(k) = r.get(&col).and_then(|v| key_of(ty, v)) {
                    existing.insert(k, r.id().to_string());
                }
            }
        }
        let mut ops = Vec::new();
        let mut data = Vec::new();
        let mut expect: HashMap<String, String> = HashMap::new();
        for (row, key) in rows.iter().zip(&keys) {
            match key.as_ref().and_then(|k| existing.get(k).map(|id| (k, id))) {
                Some(_) if resolution == Resolution::Ignore => {}
                Some((key, id)) => {
                    let mut patch = row.clone();
                    if col != "id" {
                        patch.remove("id");
                        expect.insert(id.clone(), key.clone());
                    }
                    ops.push(WriteOp::Update {
                        collection: c.name.clone(),
                        id: id.clone(),
                        data: patch,
                        base_version: None,
                    });
                    data.push(row);
                }
                None => {
                    ops.push(create_op(&c.name, row.clone())?);
                    data.push(row);
                }
            }
        }
        let field = col.clone();
        let still: crate::service::RowGuard = Arc::new(move |r: &Record| match expect.get(r.id()) {
            Some(k) => r.get(&field).and_then(|v| key_of(ty, v)).as_ref() == Some(k),
            None => true,
        });
        let again = |e: &StoreError| match e {
            StoreError::NotFound { .. } | StoreError::AlreadyExists { .. } => true,
            StoreError::Unique { field } => *field == col,
            _ => false,
        };
        match attempt(app, req, ops, Some(still), &data, again).await? {
            Attempt::Done(out) => return Ok(out.into_iter().map(outcome_record).collect()),
            // A key that clashes again on a fresh read belongs to a row the caller cannot
            // see (or keeps being re-created): answer the clash itself.
            Attempt::Again(e) if e.code == "23505" && attempt_no > 0 => return Err(e),
            Attempt::Again(_) => continue,
        }
    }
    Err(contention())
}

// ---------- updates and deletes ----------

/// The rows a write "where …" applies to, as the caller sees them (at most [`MAX_ROWS`]).
async fn targets(app: &App, req: &Req, headers: &HeaderMap) -> Result<Vec<Record>, PgError> {
    let (offset, limit) = window(&req.params, headers);
    let lq = ListQuery {
        filter: req.params.filter.clone(),
        order: req.params.order.clone(),
        limit: Some(limit.unwrap_or(MAX_ROWS + 1).min(MAX_ROWS + 1)),
        offset: Some(offset),
        ..Default::default()
    };
    let page = app
        .service
        .list(&req.who, &req.c.name, lq)
        .await
        .map_err(|e| PgError::from_service(e, &req.c.name, &req.who))?;
    let n = page.items.len();
    if n > MAX_ROWS {
        return Err(PgError::limit(
            StatusCode::BAD_REQUEST,
            format!("the request would change more than {MAX_ROWS} rows of {}", req.c.name),
        )
        .hint("narrow the filter, or change the rows in several requests"));
    }
    if req.media.single && n != 1 {
        return Err(PgError::not_single(n));
    }
    if let Some(max) = req.prefer.max_affected.filter(|_| req.prefer.strict) {
        if n > max {
            return Err(PgError::new(
                StatusCode::BAD_REQUEST,
                "PGRST124",
                "Query result exceeds max-affected preference constraint",
            )
            .details(format!("The query affects {n} rows")));
        }
    }
    Ok(page.items)
}

/// Applies `op` to every row matching the request's filter, in one transaction.
async fn write_matching(
    app: &App,
    req: &Req,
    headers: &HeaderMap,
    data: Option<&Map<String, Value>>,
    op: impl Fn(&Record) -> WriteOp,
) -> Result<Vec<Record>, PgError> {
    for _ in 0..ATTEMPTS {
        let rows = targets(app, req, headers).await?;
        let ops: Vec<WriteOp> = rows.iter().map(&op).collect();
        let bound: Option<BoundFilter> = req.params.bound.clone();
        let still: crate::service::RowGuard =
            Arc::new(move |r: &Record| bound.as_ref().is_none_or(|b| b.matches(r)));
        let inputs: Vec<&Map<String, Value>> = data.into_iter().cycle().take(ops.len()).collect();
        let again = |e: &StoreError| matches!(e, StoreError::NotFound { .. });
        match attempt(app, req, ops, Some(still), &inputs, again).await? {
            Attempt::Done(out) => return Ok(out.into_iter().map(outcome_record).collect()),
            Attempt::Again(_) => continue,
        }
    }
    Err(contention())
}

pub(super) async fn update(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = match prepare(&app, addr, &name, &q, &headers, true) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let patch = match read_body(&app, body).await {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return fail(
                PgError::body("Empty or invalid json").details("an update body must be one JSON object"),
            )
        }
        Err(e) => return fail(e),
    };
    // An unknown column is refused whether or not any row matches, as PostgREST does.
    if let Some(k) = patch.keys().find(|k| query::column_type(&req.c, k).is_none()) {
        return fail(PgError::new(
            StatusCode::BAD_REQUEST,
            "PGRST204",
            format!("Could not find the '{k}' column of '{}' in the schema cache", req.c.name),
        ));
    }
    let collection = req.c.name.clone();
    let op = |r: &Record| WriteOp::Update {
        collection: collection.clone(),
        id: r.id().to_string(),
        data: patch.clone(),
        base_version: None,
    };
    match write_matching(&app, &req, &headers, Some(&patch), op).await {
        Ok(records) => write_response(&req, &app, false, &records),
        Err(e) => fail(e),
    }
}

pub(super) async fn remove(
    State(app): State<App>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let req = match prepare(&app, addr, &name, &q, &headers, true) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let collection = req.c.name.clone();
    let op = |r: &Record| WriteOp::Delete {
        collection: collection.clone(),
        id: r.id().to_string(),
        base_version: None,
    };
    match write_matching(&app, &req, &headers, None, op).await {
        Ok(records) => write_response(&req, &app, false, &records),
        Err(e) => fail(e),
    }
}
