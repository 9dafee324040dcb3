//! The admin dashboard: a single-page app built from `clients/dashboard` (Vite + React) into
//! `dashboard-dist/`, embedded in the binary and served under `/_/`.
//!
//! - `/` and `/_` redirect to `/_/`.
//! - A file of the build answers with its content type; files under `assets/` carry a content
//!   hash in their name and are cached as immutable, everything else is `no-cache`.
//! - Any other path under `/_/` that is not an asset answers `index.html`, so deep links
//!   (`/_/c/shipments`) survive a reload; a missing asset is a 404.
//! - Every answer carries a Content-Security-Policy that allows only the binary's own origin.
//!
//! The build is committed, so `cargo build` needs no Node; `clients/dashboard/test.sh`
//! rebuilds it and fails when the committed files differ.

use crate::app::App;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use include_dir::{include_dir, Dir};

static DIST: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/dashboard-dist");

/// Scripts, styles, fonts, images and connections (REST and WebSocket) from this origin only;
/// never framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// The path the dashboard is served at.
pub const PREFIX: &str = "/_/";

pub fn routes() -> Router<App> {
    Router::new()
        .route("/", get(|| async { Redirect::to(PREFIX) }))
        .route("/_", get(|| async { Redirect::to(PREFIX) }))
        .route("/_/", get(|| async { asset("") }))
        .route("/_/{*path}", get(|Path(path): Path<String>| async move { asset(&path) }))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn asset(path: &str) -> Response {
    let path = path.trim_start_matches('/');
    let (name, file) = match DIST.get_file(path).filter(|_| !path.is_empty()) {
        Some(f) => (path, f),
        None if path.starts_with("assets/") => {
            return with_headers((StatusCode::NOT_FOUND, "no such asset").into_response(), "no-cache")
        }
        None => match DIST.get_file("index.html") {
            Some(f) => ("index.html", f),
            None => return (StatusCode::NOT_FOUND, "the dashboard was not built").into_response(),
        },
    };
    let cache = if name.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    let resp = ([(header::CONTENT_TYPE, content_type(name))], file.contents()).into_response();
    with_headers(resp, cache)
}

fn with_headers(mut resp: Response, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("assets/index-abc.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("assets/index-abc.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
    }

    #[test]
    fn unknown_paths_answer_index_but_missing_assets_do_not() {
        let deep = asset("c/shipments");
        assert_eq!(deep.status(), StatusCode::OK);
        assert_eq!(deep.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(asset("assets/nope-123.js").status(), StatusCode::NOT_FOUND);
    }
}
