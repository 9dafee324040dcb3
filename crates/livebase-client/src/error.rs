//! The error type of every client call.

use serde_json::Value;

/// A client result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a REST call or a realtime request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered a REST call with an error (`{"error": {"code", "message", "details"}}`).
    #[error("HTTP {status} {code}: {message}")]
    Api { status: u16, code: String, message: String, details: Option<Value> },
    /// `409 version_conflict`: the base version was stale. `current` is the record as stored,
    /// `fields` the overlapping fields (merge strategy) or empty.
    #[error("version conflict: the record is at version {}", current.get("version").unwrap_or(&Value::Null))]
    Conflict { current: Value, fields: Vec<String> },
    /// The server answered a realtime request with an `error` frame (or the client refused the
    /// request locally, e.g. `already_subscribed`, `already_joined`).
    #[error("realtime request failed: {code}: {message}")]
    Request { code: String, message: String },
    /// Transport failure of a REST call.
    #[error("HTTP transport: {0}")]
    Http(#[from] reqwest::Error),
    /// A response or frame that does not have the documented shape.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// The request needs a live connection and there is none right now (e.g. `ping`,
    /// `broadcast` while reconnecting), or the connection dropped before the reply came.
    #[error("not connected")]
    NotConnected,
    /// The realtime connection was closed for good ([`crate::RealtimeHandle::close`]) or its
    /// task ended; or a subscription or channel has ended.
    #[error("realtime connection closed")]
    Closed,
    /// A base URL that cannot be turned into a WebSocket URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
}

impl Error {
    /// The machine-readable error code, when the server (or the realtime layer) gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } | Error::Request { code, .. } => Some(code),
            Error::Conflict { .. } => Some("version_conflict"),
            _ => None,
        }
    }

    /// The HTTP status of a REST error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::Conflict { .. } => Some(409),
            Error::Http(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// Builds the error for a non-success REST response from its status and body text.
    pub(crate) fn from_response(status: u16, body: &str) -> Error {
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let Some(err) = err.filter(|e| e.is_object()) else {
            return Error::Api {
                status,
                code: format!("http_{status}"),
                message: body.chars().take(500).collect(),
                details: None,
            };
        };
        let code = err.get("code").and_then(Value::as_str).unwrap_or("unknown").to_string();
        let message = err.get("message").and_then(Value::as_str).unwrap_or_default().to_string();
        let details = err.get("details").cloned().filter(|d| !d.is_null());
        if status == 409 && code == "version_conflict" {
            let current = details.as_ref().and_then(|d| d.get("current")).cloned().unwrap_or(Value::Null);
            let fields = details
                .as_ref()
                .and_then(|d| d.get("fields"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            return Error::Conflict { current, fields };
        }
        Error::Api { status, code, message, details }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_server_error_shape() {
        let body = json!({"error": {"code": "validation_failed", "message": "invalid fields: qty",
            "details": {"fields": [{"field": "qty"}]}}});
        match Error::from_response(422, &body.to_string()) {
            Error::Api { status, code, message, details } => {
                assert_eq!(status, 422);
                assert_eq!(code, "validation_failed");
                assert_eq!(message, "invalid fields: qty");
                assert_eq!(details, Some(json!({"fields": [{"field": "qty"}]})));
            }
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn version_conflicts_carry_the_current_record() {
        let body = json!({"error": {"code": "version_conflict", "message": "stale",
            "details": {"current": {"id": "a", "version": 3}, "fields": ["qty"]}}});
        let e = Error::from_response(409, &body.to_string());
        assert_eq!(e.code(), Some("version_conflict"));
        assert_eq!(e.status(), Some(409));
        match e {
            Error::Conflict { current, fields } => {
                assert_eq!(current["version"], 3);
                assert_eq!(fields, vec!["qty".to_string()]);
            }
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn non_json_errors_keep_the_status() {
        let e = Error::from_response(502, "Bad Gateway");
        assert_eq!(e.code(), Some("http_502"));
        assert_eq!(e.status(), Some(502));
    }
}
