//! Supabase Realtime's REST broadcast: `POST /realtime/v1/api/broadcast` (a batch, what
//! supabase-js falls back to when a channel is not joined) and
//! `POST /realtime/v1/api/broadcast/{topic}/events/{event}` (one message, `httpSend`).
//! Messages go through [`Hub::broadcast_as`](crate::realtime::hub::Hub::broadcast_as): the
//! channel rules decide, and members on every node receive them.

use crate::app::App;
use crate::auth::Principal;
use crate::supabase::keys;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// At most this many messages in one batch.
const MAX_BATCH: usize = 100;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/realtime/v1/api/broadcast", post(batch))
        .route("/realtime/v1/api/broadcast/{topic}/events/{event}", post(one))
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "message": message.into() }))).into_response()
}

/// `Authorization: Bearer` first, then the `apikey` header (the `apikey` and `vsn`
/// parameters `httpSend` adds are not credentials here).
fn caller(app: &App, headers: &HeaderMap) -> Result<Principal, (StatusCode, String)> {
    keys::principal(app, headers, None).map_err(|e| (StatusCode::UNAUTHORIZED, format!("Unauthorized: {e}")))
}

fn channel(t: &str, private: bool) -> String {
    super::hub_channel(t.strip_prefix("realtime:").unwrap_or(t), private)
}

async fn batch(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match caller(&app, &headers) {
        Ok(w) => w,
        Err((status, why)) => return refuse(status, why),
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::UNPROCESSABLE_ENTITY, format!("the body is not JSON: {e}")),
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body is {\"messages\": [{topic, event, payload}]}",
        );
    };
    if messages.len() > MAX_BATCH {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many messages to broadcast, please reduce the batch size (at most {MAX_BATCH})"),
        );
    }
    let mut checked = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let t = m.get("topic").and_then(Value::as_str).filter(|t| !t.is_empty());
        let e = m.get("event").and_then(Value::as_str).filter(|e| !e.is_empty());
        let (Some(t), Some(e), Some(p @ Value::Object(_))) = (t, e, m.get("payload")) else {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("messages[{i}] needs a topic, an event and a payload object"),
            );
        };
        let private = m.get("private").and_then(Value::as_bool).unwrap_or(false);
        checked.push((channel(t, private), e, p));
    }
    for (c, e, p) in checked {
        // As Supabase does, a message the caller may not send is dropped, the rest still go.
        if app.hub.broadcast_as(&who, &c, e, p).is_err() {
            tracing::debug!(channel = c, "REST broadcast refused by the channel rules");
        }
    }
    StatusCode::ACCEPTED.into_response()
}

async fn one(
    State(app): State<App>,
    headers: HeaderMap,
    Path((t, event)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let private = super::param(&q, "private").is_some_and(|p| p == "true");
    let who = match caller(&app, &headers) {
        Ok(w) => w,
        Err((status, why)) => return refuse(status, why),
    };
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, format!("the payload must be JSON: {e}"));
        }
    };
    match app.hub.broadcast_as(&who, &channel(&t, private), &event, &payload) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => refuse(StatusCode::FORBIDDEN, e.message),
    }
}
