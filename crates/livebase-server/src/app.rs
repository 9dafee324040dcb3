//! Shared server state and the identity of a caller.

use crate::config::Config;
use crate::error::ApiError;
use axum::http::HeaderMap;
use crate::metrics::Metrics;
use crate::realtime::hub::Hub;
use livebase_store::Store;
use std::sync::Arc;

/// Cheap to clone: one reference count.
#[derive(Clone)]
pub struct App {
    pub inner: Arc<AppInner>,
}

pub struct AppInner {
    pub store: Arc<dyn Store>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    pub admin_key: String,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// The service credential: bypasses rules.
    Admin,
    Anonymous,
}

impl Principal {
    /// The actor recorded on change events.
    pub fn actor(&self) -> Option<String> {
        match self {
            Principal::Admin => Some("admin".into()),
            Principal::Anonymous => None,
        }
    }

    /// A short stable scope for idempotency keys, so two callers' keys never collide.
    pub fn scope(&self) -> &str {
        match self {
            Principal::Admin => "admin",
            Principal::Anonymous => "anon",
        }
    }
}

/// Constant-time comparison for credentials.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl App {
    pub fn principal_from_token(&self, token: Option<&str>) -> Result<Principal, ApiError> {
        match token {
            None => Ok(Principal::Anonymous),
            Some(t) if same(t.as_bytes(), self.admin_key.as_bytes()) => Ok(Principal::Admin),
            Some(_) => Err(ApiError::unauthorized("invalid or expired token")),
        }
    }

    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let token = match headers.get(axum::http::header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| ApiError::unauthorized("Authorization header is not text"))?;
                let t = v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        ApiError::unauthorized("Authorization must be 'Bearer <token>'")
                    })?;
                Some(t.trim())
            }
        };
        self.principal_from_token(token)
    }

    pub fn require_admin(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        match self.principal(headers)? {
            Principal::Admin => Ok(Principal::Admin),
            Principal::Anonymous => Err(ApiError::unauthorized(
                "this endpoint needs the admin key: Authorization: Bearer <admin key>",
            )),
        }
    }
}
