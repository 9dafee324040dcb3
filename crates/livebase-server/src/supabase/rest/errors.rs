//! Errors in PostgREST's shape: `{"code", "message", "details", "hint"}` with PostgREST's
//! codes (SQLSTATEs for what PostgreSQL would have refused, `PGRST…` for request errors) and
//! the HTTP statuses PostgREST gives them.

use super::super::keys::KeyError;
use crate::auth::Principal;
use crate::service::ServiceError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use livebase_core::validate::FieldError;
use livebase_store::StoreError;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone)]
pub struct PgError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
    /// `Retry-After` (seconds) of a rate-limited request.
    pub retry_after: Option<u64>,
}

impl PgError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> PgError {
        PgError { status, code, message: message.into(), details: None, hint: None, retry_after: None }
    }

    pub fn details(mut self, d: impl Into<String>) -> PgError {
        self.details = Some(d.into());
        self
    }

    pub fn hint(mut self, h: impl Into<String>) -> PgError {
        self.hint = Some(h.into());
        self
    }

    /// `PGRST100`: the query string cannot be read.
    pub fn syntax(message: impl Into<String>) -> PgError {
        PgError::new(StatusCode::BAD_REQUEST, "PGRST100", message)
    }

    /// `PGRST102`: the body is not the JSON this request needs.
    pub fn body(message: impl Into<String>) -> PgError {
        PgError::new(StatusCode::BAD_REQUEST, "PGRST102", message)
    }

    /// `42703`: a column the table does not have (query string).
    pub fn no_column(table: &str, column: &str) -> PgError {
        PgError::new(StatusCode::BAD_REQUEST, "42703", format!("column {table}.{column} does not exist"))
    }

    /// `42P01`: no such table (PostgREST 12; PostgREST 13 says `PGRST205`, see docs/supabase.md).
    pub fn no_table(table: &str) -> PgError {
        PgError::new(StatusCode::NOT_FOUND, "42P01", format!("relation \"public.{table}\" does not exist"))
    }

    /// `PGRST116`: a single object was asked for and `rows` rows matched.
    pub fn not_single(rows: usize) -> PgError {
        PgError::new(
            StatusCode::NOT_ACCEPTABLE,
            "PGRST116",
            "JSON object requested, multiple (or no) rows returned",
        )
        .details(format!("The result contains {rows} rows"))
    }

    /// `54000`: a Livebase bound (rows per request, body size) was exceeded.
    pub fn limit(status: StatusCode, message: impl Into<String>) -> PgError {
        PgError::new(status, "54000", message)
    }

    pub fn body_json(&self) -> Value {
        json!({"code": self.code, "message": self.message, "details": self.details, "hint": self.hint})
    }

    /// A store refusal of an op on `table`; `data` is the op's input, to quote values.
    pub fn from_store(
        e: StoreError,
        table: &str,
        who: &Principal,
        data: Option<&Map<String, Value>>,
    ) -> PgError {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            StoreError::NoCollection(name) => PgError::no_table(&name),
            StoreError::NotFound { .. } => PgError::new(
                S::CONFLICT,
                "40001",
                "could not serialize access due to concurrent update",
            )
            .details(msg)
            .hint("the rows changed while the request ran; retry it"),
            StoreError::AlreadyExists { id, .. } => PgError::new(
                S::CONFLICT,
                "23505",
                format!("duplicate key value violates unique constraint \"{table}_pkey\""),
            )
            .details(format!("Key (id)=({id}) already exists.")),
            StoreError::Unique { field } => {
                let key = match data.and_then(|d| d.get(&field)) {
                    Some(Value::String(s)) => format!("Key ({field})=({s}) already exists."),
                    Some(v) => format!("Key ({field})=({v}) already exists."),
                    None => format!("Key ({field}) already exists."),
                };
                PgError::new(
                    S::CONFLICT,
                    "23505",
                    format!("duplicate key value violates unique constraint \"{table}_{field}_key\""),
                )
                .details(key)
            }
            StoreError::MissingRelation { field, target, target_id } => PgError::new(
                S::CONFLICT,
                "23503",
                format!("insert or update on table \"{table}\" violates foreign key constraint \"{table}_{field}_fkey\""),
            )
            .details(format!("Key ({field})=({target_id}) is not present in table \"{target}\".")),
            StoreError::Referenced { collection, field, .. } => PgError::new(
                S::CONFLICT,
                "23503",
                format!(
                    "update or delete on table \"{table}\" violates foreign key constraint \"{collection}_{field}_fkey\" on table \"{collection}\""
                ),
            )
            .details(format!("Key is still referenced from table \"{collection}\".")),
            StoreError::Validation(errors) => validation(&errors, table, data),
            StoreError::Forbidden(m) => {
                // PostgREST answers 401 to the anonymous role, 403 to everyone else.
                let status = if matches!(who, Principal::Anonymous(_)) { S::UNAUTHORIZED } else { S::FORBIDDEN };
                let message = if m.contains("create") {
                    format!("new row violates row-level security policy for table \"{table}\"")
                } else {
                    format!("permission denied for table {table}")
                };
                PgError::new(status, "42501", message).details(m)
            }
            StoreError::BadQuery(e) => PgError::syntax(e.message),
            StoreError::Conflict { .. } => PgError::new(S::CONFLICT, "40001", msg),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                PgError::new(S::SERVICE_UNAVAILABLE, "PGRST000", "Could not connect with the database")
                    .details(msg)
            }
            StoreError::Internal(m) => {
                tracing::error!(error = %m, "storage failure");
                PgError::new(S::INTERNAL_SERVER_ERROR, "XX000", "storage failure")
            }
            other => PgError::new(S::INTERNAL_SERVER_ERROR, "XX000", other.to_string()),
        }
    }

    pub fn from_service(e: ServiceError, table: &str, who: &Principal) -> PgError {
        match e {
            ServiceError::Store(e) => PgError::from_store(e, table, who, None),
            other => PgError::new(StatusCode::INTERNAL_SERVER_ERROR, "XX000", other.to_string()),
        }
    }
}

/// The PostgreSQL error an invalid field value would have raised (the first failing field;
/// every failure is listed in `details`).
fn validation(errors: &[FieldError], table: &str, data: Option<&Map<String, Value>>) -> PgError {
    use StatusCode as S;
    let all = errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
    let Some(e) = errors.first() else {
        return PgError::new(S::BAD_REQUEST, "22023", "invalid record data");
    };
    let f = e.field.as_str();
    let given = data.and_then(|d| d.get(f)).map(|v| match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    });
    let quoted = given.unwrap_or_default();
    let out = match e.code {
        "unknown_field" => PgError::new(
            S::BAD_REQUEST,
            "PGRST204",
            format!("Could not find the '{f}' column of '{table}' in the schema cache"),
        ),
        "required" => PgError::new(
            S::BAD_REQUEST,
            "23502",
            format!("null value in column \"{f}\" of relation \"{table}\" violates not-null constraint"),
        ),
        "read_only" | "immutable" => {
            PgError::new(S::BAD_REQUEST, "428C9", format!("column \"{f}\" can only be updated to DEFAULT"))
        }
        "too_short" | "too_long" | "too_small" | "too_large" => PgError::new(
            S::BAD_REQUEST,
            "23514",
            format!("new row for relation \"{table}\" violates check constraint \"{table}_{f}_check\""),
        ),
        "invalid_choice" => PgError::new(
            S::BAD_REQUEST,
            "22P02",
            format!("invalid input value for enum {table}_{f}: \"{quoted}\""),
        ),
        _ if e.message.contains("datetime") => PgError::new(
            S::BAD_REQUEST,
            "22007",
            format!("invalid input syntax for type timestamp with time zone: \"{quoted}\""),
        ),
        _ => {
            let ty = if e.message.contains("an integer") {
                "integer"
            } else if e.message.contains("number") {
                "double precision"
            } else if e.message.contains("boolean") {
                "boolean"
            } else {
                "text"
            };
            PgError::new(S::BAD_REQUEST, "22P02", format!("invalid input syntax for type {ty}: \"{quoted}\""))
        }
    };
    out.details(all)
}

impl From<KeyError> for PgError {
    fn from(e: KeyError) -> PgError {
        let s = StatusCode::UNAUTHORIZED;
        match e {
            KeyError::Missing => PgError::new(s, "PGRST302", e.to_string())
                .hint("No `apikey` request header or url param was found."),
            KeyError::Malformed(_) | KeyError::Expired | KeyError::Invalid(_) => {
                PgError::new(s, "PGRST301", e.to_string())
            }
        }
    }
}

impl IntoResponse for PgError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED && self.code.starts_with("PGRST3");
        let mut resp = (self.status, axum::Json(self.body_json())).into_response();
        if let Some(v) = self.retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        if unauthorized {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
}
