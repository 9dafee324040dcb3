//! Shared server state.

use crate::access::{Access, AccessCache};
use crate::auth::{Principal, Verifier};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::realtime::hub::Hub;
use crate::service::Service;
use axum::http::HeaderMap;
use livebase_store::Store;
use std::sync::Arc;

/// Cheap to clone: one reference count.
#[derive(Clone)]
pub struct App {
    pub inner: Arc<AppInner>,
}

pub struct AppInner {
    pub store: Arc<dyn Store>,
    /// What every front end calls: access decided inside.
    pub service: Service,
    pub hub: Hub,
    /// The write side of realtime sockets.
    pub writers: Arc<crate::realtime::socket::Writers>,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    pub admin_key: String,
    pub verifier: Verifier,
    pub access: Arc<AccessCache>,
    pub rest_limiter: RateLimiter,
    /// A node of a cluster on PostgreSQL: the shared change log (leader or follower).
    pub shared_log: Option<Arc<crate::cluster::log::SharedLog>>,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

impl App {
    /// The rules of the current schema.
    pub fn access(&self) -> Arc<Access> {
        self.access.get(&self.store.schema())
    }

    pub fn principal_from_token(&self, token: Option<&str>) -> Result<Principal, ApiError> {
        self.verifier.principal(token).map_err(ApiError::from)
    }

    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let token = match headers.get(axum::http::header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v.to_str().map_err(|_| ApiError::unauthorized("Authorization header is not text"))?;
                let t = v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))?;
                Some(t.trim())
            }
        };
        self.principal_from_token(token)
    }

    pub fn require_admin(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        match self.principal(headers)? {
            Principal::Admin => Ok(Principal::Admin),
            _ => Err(ApiError::unauthorized(
                "this endpoint needs the admin key: Authorization: Bearer <admin key>",
            )),
        }
    }
}
