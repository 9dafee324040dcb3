//! The error shape of every HTTP response: `{"error": {"code", "message", "details"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use livebase_store::{OpError, StoreError};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), details: None }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn body(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.details {
            e["details"] = d.clone();
        }
        json!({ "error": e })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<crate::service::ServiceError> for ApiError {
    fn from(e: crate::service::ServiceError) -> ApiError {
        match e {
            crate::service::ServiceError::Store(e) => e.into(),
            crate::service::ServiceError::AdminOnly(m) => ApiError::unauthorized(m),
            crate::service::ServiceError::Aggregate(e) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_aggregate", e.message)
                    .with_details(json!({ "field": e.field }))
            }
            e @ crate::service::ServiceError::TooManyRows(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "aggregate_too_large", e.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            StoreError::NoCollection(_) => ApiError::new(S::NOT_FOUND, "collection_not_found", msg),
            StoreError::NotFound { .. } => ApiError::new(S::NOT_FOUND, "not_found", msg),
            StoreError::AlreadyExists { .. } => ApiError::new(S::CONFLICT, "already_exists", msg),
            StoreError::Validation(errors) => {
                let names: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                ApiError::new(
                    S::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    format!("invalid fields: {}", names.join(", ")),
                )
                .with_details(json!({ "fields": errors }))
            }
            StoreError::Conflict { current, fields } => ApiError::new(S::CONFLICT, "version_conflict", msg)
                .with_details(json!({"current": current, "fields": fields})),
            StoreError::Unique { field } => {
                ApiError::new(S::CONFLICT, "unique_violation", msg).with_details(json!({ "fields": [field] }))
            }
            StoreError::MissingRelation { field, .. } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_relation", msg)
                    .with_details(json!({ "fields": [field] }))
            }
            StoreError::Referenced { .. } => ApiError::new(S::CONFLICT, "still_referenced", msg),
            StoreError::IdempotencyMismatch => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "idempotency_key_reused", msg)
            }
            StoreError::BadQuery(_) => ApiError::new(S::BAD_REQUEST, "bad_filter", msg),
            StoreError::Schema(e) => ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_schema", msg)
                .with_details(json!({ "path": e.path })),
            StoreError::CollectionExists(_) => ApiError::new(S::CONFLICT, "collection_exists", msg),
            StoreError::Destructive(_) => ApiError::new(S::CONFLICT, "destructive_change", msg),
            StoreError::Trimmed { since, oldest } => ApiError::new(S::GONE, "log_trimmed", msg)
                .with_details(json!({"since": since, "oldest": oldest})),
            StoreError::Forbidden(_) => ApiError::new(S::FORBIDDEN, "forbidden", msg),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                ApiError::new(S::SERVICE_UNAVAILABLE, "database_unavailable", msg)
            }
            StoreError::Internal(m) => {
                tracing::error!(error = %m, "storage failure");
                ApiError::new(S::INTERNAL_SERVER_ERROR, "internal", "storage failure")
            }
        }
    }
}

impl From<OpError> for ApiError {
    /// A failed op of a batch: the op's own error, with its index in `details.index`.
    fn from(e: OpError) -> ApiError {
        let mut a = ApiError::from(e.error);
        let mut d = a.details.take().unwrap_or_else(|| json!({}));
        d["index"] = json!(e.index);
        a.message = format!("op {}: {}", e.index, a.message);
        a.with_details(d)
    }
}
