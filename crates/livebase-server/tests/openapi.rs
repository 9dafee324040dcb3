//! The OpenAPI document and the router agree: every route the router serves (the route lists
//! `rest::ROUTES` and `openapi::SERVER_ROUTES`) is documented, every documented operation
//! answers (never the fallback `no such endpoint`), and a method a path does not document is
//! refused with 405. Also: the dashboard's headers and the admin status endpoint.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn concrete(path: &str, id: &str) -> String {
    path.replace("{name}", "items").replace("{id}", id).replace("{path}", "some/view")
}

#[tokio::test]
async fn document_and_router_agree() {
    let s = TestServer::start().await;
    s.create_collection(common::items_collection()).await;
    let rec = s.create("items", json!({"title": "a"})).await;
    let id = rec["id"].as_str().expect("id").to_string();
    let (st, doc) = s.get("/api/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");

    // Every route the router serves is documented.
    for (method, path) in livebase_server::openapi::all_routes() {
        let op =
            &paths.get(path).unwrap_or_else(|| panic!("{path} is not documented"))[method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
    }
    // Per-collection schemas and paths for the admin.
    assert!(
        doc["components"]["schemas"]["Items"]["properties"]["title"].is_object(),
        "{}",
        doc["components"]
    );
    assert!(paths.contains_key("/api/collections/items/records"));

    // Every documented operation answers; undocumented methods are 405.
    let all = ["get", "post", "patch", "delete", "put"];
    for (path, ops) in paths {
        let url = format!("{}{}", s.url, concrete(path, &id));
        for m in all {
            let documented = ops.get(m).is_some();
            if m == "delete" && documented {
                // Deleting is checked on a throwaway record / collection below.
                continue;
            }
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).expect("method");
            let mut req = s.http.request(method, &url).bearer_auth(&s.admin_key);
            if m == "post" || m == "patch" {
                req = req.json(&json!({}));
            }
            let resp = req.send().await.expect("request");
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if documented {
                assert!(
                    !(status == StatusCode::NOT_FOUND && body.contains("no such endpoint")),
                    "{m} {path} is documented but the router does not serve it"
                );
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path} is served but not documented");
            }
        }
    }
    let (st, _) = s.delete(&format!("/api/collections/items/records/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.delete("/api/collections/items?force=true").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn anonymous_callers_get_the_document_without_collection_schemas() {
    let s = TestServer::start().await;
    s.create_collection(common::items_collection()).await;
    let doc: Value =
        s.http.get(format!("{}/api/openapi.json", s.url)).send().await.unwrap().json().await.unwrap();
    assert!(doc["components"]["schemas"]["Items"].is_null());
    assert!(doc["paths"]["/api/collections/{name}/records"]["get"].is_object());
}

#[tokio::test]
async fn dashboard_is_served_with_caching_and_csp() {
    let s = TestServer::start().await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let root = http.get(format!("{}/", s.url)).send().await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/_/");
    for path in ["/_/", "/_/c/shipments", "/_/schema/new"] {
        let r = http.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
        let html = r.text().await.unwrap();
        // Every asset the page names is served, hashed and immutable.
        for src in html.split("/_/assets/").skip(1) {
            let name: String = src.chars().take_while(|c| *c != '"').collect();
            let a = http.get(format!("{}/_/assets/{name}", s.url)).send().await.unwrap();
            assert_eq!(a.status(), StatusCode::OK, "{name}");
            assert!(a.headers()["cache-control"].to_str().unwrap().contains("immutable"));
        }
    }
    let missing = http.get(format!("{}/_/assets/missing-0000.js", s.url)).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn status_is_for_the_admin_and_names_channels() {
    let s = TestServer::start().await;
    let anon = s.http.get(format!("{}/api/_status", s.url)).send().await.unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let (st, body) = s.get("/api/_status").await;
    assert_eq!(st, StatusCode::OK);
    assert!(body["metrics"]["events_committed"].is_u64(), "{body}");
    assert!(body["metrics"]["commit_seconds"]["counts"].is_array());
    assert!(body["channels"].is_array());
}
