//! `GET /api/_status` (admin key only): the live figures the dashboard charts — counters,
//! gauges and latency histograms from [`Metrics`](crate::metrics::Metrics), the log head, and
//! every open channel with its member and presence counts.

use crate::app::App;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub fn routes() -> Router<App> {
    Router::new().route("/api/_status", get(status))
}

async fn status(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.require_admin(&headers)?;
    let channels: Vec<_> = app
        .hub
        .channel_counts()
        .into_iter()
        .map(|(name, members, presence)| json!({"name": name, "members": members, "presence": presence}))
        .collect();
    let body = json!({
        "server_time": livebase_core::record::now_timestamp(),
        "head": app.hub.feed().head(),
        "metrics": app.metrics.figures(),
        "channels": channels,
    });
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
