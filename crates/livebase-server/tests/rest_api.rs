//! REST behaviour users rely on: CRUD, validation, concurrency control, idempotency, batches,
//! and the change log.

mod common;

use common::{items_collection, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn record_round_trip_create_read_update_delete() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let r = t.create("items", json!({"title": "box", "qty": 3, "price": 2})).await;
    assert_eq!(r["version"], 1);
    assert_eq!(r["price"], json!(2.0), "numbers take one canonical form in every response");
    assert_eq!(r["title"], "box");
    assert!(r["created_at"].as_str().unwrap().ends_with('Z'));
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 26);

    let (s, got) = t.get(&format!("/api/collections/items/records/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got, r);

    let (s, up) = t.patch(&format!("/api/collections/items/records/{id}"), json!({"qty": 4})).await;
    assert_eq!(s, StatusCode::OK, "{up}");
    assert_eq!(up["version"], 2);
    assert_eq!(up["qty"], 4);
    assert_eq!(up["title"], "box", "PATCH is partial");

    let (s, del) = t.delete(&format!("/api/collections/items/records/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(del["version"], 2);
    let (s, e) = t.get(&format!("/api/collections/items/records/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["code"], "not_found");
}

#[tokio::test]
async fn client_supplied_ids_allow_offline_creates() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let r = t.create("items", json!({"id": "local-1", "title": "a"})).await;
    assert_eq!(r["id"], "local-1");
    let (s, e) = t.post("/api/collections/items/records", json!({"id": "local-1", "title": "b"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "already_exists");
    let (s, e) = t.post("/api/collections/items/records", json!({"id": "bad id!", "title": "b"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"]["details"]["fields"][0]["field"], "id");
}

#[tokio::test]
async fn validation_errors_name_every_failing_field() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let (s, e) = t
        .post(
            "/api/collections/items/records",
            json!({"qty": "5", "price": "cheap", "status": "lost", "done": "yes", "extra": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "validation_failed");
    let mut fields: Vec<String> = e["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect();
    fields.sort();
    assert_eq!(fields, ["done", "extra", "price", "qty", "status", "title"]);

    for (body, code) in [
        (json!({"title": "x", "qty": 1.5}), "invalid_type"),
        (json!({"title": "x", "qty": -1}), "too_small"),
        (json!({"title": "x".repeat(101)}), "too_long"),
        (json!({"title": "x", "status": "nope"}), "invalid_choice"),
        (json!({"title": null}), "required"),
    ] {
        let (s, e) = t.post("/api/collections/items/records", body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(e["error"]["details"]["fields"][0]["code"], code, "{body}");
    }
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_clear_errors() {
    let t = TestServer::start_with(|c| c.max_body = 1024).await;
    t.create_collection(items_collection()).await;
    let url = format!("{}/api/collections/items/records", t.url);
    let r = t.http.post(&url).bearer_auth(&t.admin_key).body("{\"title\": ").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "malformed_json");
    let r = t.http.post(&url).bearer_auth(&t.admin_key).body("[1,2]").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let big = json!({"title": "x".repeat(2000)});
    let r = t.http.post(&url).bearer_auth(&t.admin_key).json(&big).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "body_too_large");
    // The server and the data are intact.
    t.create("items", json!({"title": "still works"})).await;
}

#[tokio::test]
async fn unique_fields_refuse_duplicates() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    t.create("items", json!({"title": "a", "sku": "S1"})).await;
    let (s, e) = t.post("/api/collections/items/records", json!({"title": "b", "sku": "S1"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "unique_violation");
    assert_eq!(e["error"]["details"]["fields"][0], "sku");
}

#[tokio::test]
async fn stale_version_gets_409_with_the_current_record() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let r = t.create("items", json!({"title": "a", "qty": 1})).await;
    let path = format!("/api/collections/items/records/{}", r["id"].as_str().unwrap());
    let (s, _) = t.req(Method::PATCH, &path, Some(json!({"qty": 2})), &[("if-match", "1")]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = t.req(Method::PATCH, &path, Some(json!({"qty": 3})), &[("if-match", "\"1\"")]).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "version_conflict");
    assert_eq!(e["error"]["details"]["current"]["qty"], 2);
    assert_eq!(e["error"]["details"]["current"]["version"], 2);
    let (s, _) = t.patch(&path, json!({"qty": 3, "expected_version": 1})).await;
    assert_eq!(s, StatusCode::CONFLICT, "expected_version in the body works too");
    let (s, _) = t.req(Method::DELETE, &path, None, &[("if-match", "1")]).await;
    assert_eq!(s, StatusCode::CONFLICT, "stale delete refused");
    let (s, _) = t.patch(&path, json!({"qty": 3})).await;
    assert_eq!(s, StatusCode::OK, "without a base version, last write wins");
}

#[tokio::test]
async fn merge_strategy_applies_disjoint_patches_and_names_overlaps() {
    let t = TestServer::start().await;
    let mut def = items_collection();
    def["conflict"] = json!("merge");
    t.create_collection(def).await;
    let r = t.create("items", json!({"title": "a", "qty": 1, "price": 1.0})).await;
    let path = format!("/api/collections/items/records/{}", r["id"].as_str().unwrap());
    // Two editors start from version 1.
    let (s, _) = t.patch(&path, json!({"qty": 2, "expected_version": 1})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = t.patch(&path, json!({"price": 9.5, "expected_version": 1})).await;
    assert_eq!(s, StatusCode::OK, "disjoint fields merge: {b}");
    assert_eq!(b["qty"], 2);
    assert_eq!(b["price"], 9.5);
    assert_eq!(b["version"], 3);
    let (s, e) = t.patch(&path, json!({"qty": 7, "title": "z", "expected_version": 1})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"]["details"]["fields"], json!(["qty"]));
}

#[tokio::test]
async fn lww_strategy_applies_stale_writes() {
    let t = TestServer::start().await;
    let mut def = items_collection();
    def["conflict"] = json!("lww");
    t.create_collection(def).await;
    let r = t.create("items", json!({"title": "a", "qty": 1})).await;
    let path = format!("/api/collections/items/records/{}", r["id"].as_str().unwrap());
    t.patch(&path, json!({"qty": 2})).await;
    let (s, b) = t.patch(&path, json!({"qty": 5, "expected_version": 1})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["qty"], 5);
}

#[tokio::test]
async fn idempotent_retry_returns_the_same_response_and_applies_once_even_after_restart() {
    let mut t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let key = [("idempotency-key", "offline-42")];
    let body = json!({"title": "queued"});
    let (s1, b1) = t.req(Method::POST, "/api/collections/items/records", Some(body.clone()), &key).await;
    assert_eq!(s1, StatusCode::CREATED);
    let (s2, b2) = t.req(Method::POST, "/api/collections/items/records", Some(body.clone()), &key).await;
    assert_eq!((s2, &b2), (s1, &b1));
    t.restart().await;
    let (s3, b3) = t.req(Method::POST, "/api/collections/items/records", Some(body), &key).await;
    assert_eq!((s3, &b3), (s1, &b1));
    assert_eq!(t.list("items", "").await.len(), 1, "applied once");
    assert_eq!(t.changes(0).await.len(), 1, "one change event");
    let (s, e) =
        t.req(Method::POST, "/api/collections/items/records", Some(json!({"title": "other"})), &key).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"]["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn idempotent_failures_replay_the_same_error() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let key = [("idempotency-key", "k-err")];
    let (s1, b1) = t.req(Method::POST, "/api/collections/items/records", Some(json!({"qty": 1})), &key).await;
    assert_eq!(s1, StatusCode::UNPROCESSABLE_ENTITY);
    let (s2, b2) = t.req(Method::POST, "/api/collections/items/records", Some(json!({"qty": 1})), &key).await;
    assert_eq!((s1, b1), (s2, b2));
}

#[tokio::test]
async fn batch_is_all_or_nothing_and_reports_the_failing_op() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let a = t.create("items", json!({"title": "a", "qty": 1})).await;
    let aid = a["id"].as_str().unwrap();
    let (s, e) = t
        .post(
            "/api/collections/items/batch",
            json!({"ops": [
                {"op": "create", "data": {"title": "b"}},
                {"op": "update", "id": aid, "data": {"qty": 2}},
                {"op": "create", "data": {"qty": -5}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["details"]["index"], 2);
    assert_eq!(t.list("items", "").await.len(), 1, "nothing applied");
    assert_eq!(t.list("items", "").await[0]["qty"], 1);
    assert_eq!(t.changes(0).await.len(), 1);

    let (s, b) = t
        .post(
            "/api/collections/items/batch",
            json!({"ops": [
                {"op": "create", "data": {"title": "b"}},
                {"op": "update", "id": aid, "data": {"qty": 2}, "if_version": 1},
                {"op": "delete", "id": aid}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ops: Vec<&str> = b["results"].as_array().unwrap().iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "update", "delete"]);
    let ev = t.changes(1).await;
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4]);
    let (s, e) = t.post("/api/collections/items/batch", json!({"ops": [{"op": "upsert"}]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"]["details"]["index"], 0);
}

#[tokio::test]
async fn list_filters_sorts_projects_and_paginates() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    for (i, title) in ["apple box", "Banana box", "cherry", "date box", "elder"].iter().enumerate() {
        let status = if i % 2 == 0 { "open" } else { "late" };
        let qty = if i == 4 { Value::Null } else { json!(i * 10) };
        t.create("items", json!({"title": title, "qty": qty, "status": status})).await;
    }
    let titles =
        |v: Vec<Value>| v.iter().map(|r| r["title"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(titles(t.list("items", "qty=gt.10&order=qty.desc").await), ["date box", "cherry"]);
    assert_eq!(
        titles(t.list("items", "title=like.*box*&order=title").await),
        ["Banana box", "apple box", "date box"]
    );
    assert_eq!(titles(t.list("items", "title=ilike.b*&order=title").await), ["Banana box"]);
    assert_eq!(titles(t.list("items", "status=in.(late)&order=title").await), ["Banana box", "date box"]);
    assert_eq!(titles(t.list("items", "qty=is.null").await), ["elder"]);
    assert_eq!(
        titles(t.list("items", "or=(qty.eq.0,qty.is.null)&order=title").await),
        ["apple box", "elder"]
    );
    assert_eq!(titles(t.list("items", "qty=not.gt.10&order=title").await), ["Banana box", "apple box"]);
    assert_eq!(
        titles(t.list("items", "order=qty.asc").await).last().unwrap(),
        "elder",
        "nulls last ascending"
    );

    let sel = t.list("items", "select=title&limit=1").await;
    assert_eq!(sel[0].as_object().unwrap().keys().collect::<Vec<_>>(), ["id", "title"]);

    // Cursor pagination walks every record exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("order=qty.desc&limit=2&cursor={c}"),
            None => "order=qty.desc&limit=2&count=exact".to_string(),
        };
        let (s, b) = t.get(&format!("/api/collections/items/records?{q}")).await;
        assert_eq!(s, StatusCode::OK);
        if cursor.is_none() {
            assert_eq!(b["total"], 5);
        }
        seen.extend(titles(b["items"].as_array().unwrap().clone()));
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ["elder", "date box", "cherry", "Banana box", "apple box"]);

    for bad in ["qty=gtx.1", "qty=eq.abc", "nope=eq.1", "or=(qty.eq.1", "limit=-1", "order=nope"] {
        let (s, e) = t.get(&format!("/api/collections/items/records?{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_eq!(e["error"]["code"], "bad_filter");
    }
}

#[tokio::test]
async fn relations_keep_referential_integrity() {
    let t = TestServer::start().await;
    t.create_collection(json!({"name": "users", "fields": [{"name": "name", "type": "text"}]})).await;
    t.create_collection(json!({"name": "notes", "fields": [
        {"name": "owner", "type": "relation", "collection": "users", "on_delete": "cascade"},
        {"name": "editor", "type": "relation", "collection": "users", "on_delete": "set_null"}]}))
        .await;
    t.create_collection(json!({"name": "pins", "fields": [
        {"name": "user", "type": "relation", "collection": "users"}]}))
        .await;
    let (s, e) = t.post("/api/collections/notes/records", json!({"owner": "ghost"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"]["code"], "invalid_relation");
    let u1 = t.create("users", json!({"id": "u1", "name": "a"})).await;
    let u2 = t.create("users", json!({"id": "u2", "name": "b"})).await;
    t.create("notes", json!({"id": "n1", "owner": "u1", "editor": "u2"})).await;
    t.create("pins", json!({"id": "p1", "user": "u1"})).await;
    let (s, e) = t.delete("/api/collections/users/records/u1").await;
    assert_eq!(s, StatusCode::CONFLICT, "restrict: {e}");
    assert_eq!(e["error"]["code"], "still_referenced");
    t.delete("/api/collections/pins/records/p1").await;
    let before = t.changes(0).await.len();
    // set_null: deleting u2 clears the editor and bumps the note's version.
    let (s, _) = t.delete("/api/collections/users/records/u2").await;
    assert_eq!(s, StatusCode::OK);
    let (_, n) = t.get("/api/collections/notes/records/n1").await;
    assert_eq!(n["editor"], Value::Null);
    assert_eq!(n["version"], 2);
    // cascade: deleting u1 deletes the note, with its own change event.
    let (s, _) = t.delete("/api/collections/users/records/u1").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = t.get("/api/collections/notes/records/n1").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let ev = t.changes(0).await;
    let ops: Vec<(String, String)> = ev[before..]
        .iter()
        .map(|e| (e["collection"].as_str().unwrap().into(), e["op"].as_str().unwrap().into()))
        .collect();
    let expect = [("notes", "update"), ("users", "delete"), ("notes", "delete"), ("users", "delete")];
    assert_eq!(ops, expect.map(|(a, b)| (a.to_string(), b.to_string())));
    let _ = (u1, u2);
}

#[tokio::test]
async fn collections_migrate_additively_and_need_force_to_drop_data() {
    let mut t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    t.create("items", json!({"title": "a", "qty": 1})).await;
    let mut def = items_collection();
    def["fields"].as_array_mut().unwrap().push(json!({"name": "color", "type": "text", "default": "red"}));
    let (s, b) = t.patch("/api/collections/items", json!({"fields": def["fields"]})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(t.list("items", "").await[0]["color"], "red");
    // Dropping qty loses data: refused without force.
    let fields: Vec<Value> =
        def["fields"].as_array().unwrap().iter().filter(|f| f["name"] != "qty").cloned().collect();
    let (s, e) = t.patch("/api/collections/items", json!({"fields": fields})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "destructive_change");
    let (s, _) = t.patch("/api/collections/items?force=true", json!({"fields": fields})).await;
    assert_eq!(s, StatusCode::OK);
    t.restart().await;
    let (_, c) = t.get("/api/collections/items").await;
    assert!(c["fields"].as_array().unwrap().iter().all(|f| f["name"] != "qty"), "survives restart");
    assert!(t.list("items", "").await[0].get("qty").is_none());
    let (s, _) = t.delete("/api/collections/items").await;
    assert_eq!(s, StatusCode::CONFLICT, "holds records");
    let (s, _) = t.delete("/api/collections/items?force=true").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, e) = t.post("/api/collections", json!({"name": "Bad Name"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"]["code"], "invalid_schema");
}

#[tokio::test]
async fn admin_endpoints_require_the_admin_key() {
    let t = TestServer::start().await;
    let r = t.http.get(format!("{}/api/collections", t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = t.http.get(format!("{}/api/collections", t.url)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_token");
}

#[tokio::test]
async fn change_log_has_one_gap_free_event_per_commit_under_16_concurrent_writers() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let per_writer = 40;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (http, url, key) = (t.http.clone(), t.url.clone(), t.admin_key.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..per_writer {
                // Every fifth write is invalid: it must fail alone, leaving no event.
                let body = if i % 5 == 4 {
                    json!({"qty": -1})
                } else {
                    json!({"title": format!("w{w}-{i}"), "qty": i})
                };
                let r = http
                    .post(format!("{url}/api/collections/items/records"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                if r.status() == StatusCode::CREATED {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut created = 0;
    for task in tasks {
        created += task.await.unwrap();
    }
    assert_eq!(created, 16 * per_writer * 4 / 5);
    let ev = t.changes(0).await;
    assert_eq!(ev.len(), created);
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e["seq"].as_u64().unwrap(), i as u64 + 1, "gap-free, in order");
        assert_eq!(e["op"], "insert");
        assert_eq!(e["actor"], "admin");
    }
    let mut ids: Vec<&str> = ev.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), created, "one event per record");
}

#[tokio::test]
async fn change_log_reports_trimmed_ranges() {
    let t = TestServer::start_with(|c| c.retain_events = 3).await;
    t.create_collection(items_collection()).await;
    for i in 0..6 {
        t.create("items", json!({"title": format!("t{i}")})).await;
    }
    let (s, e) = t.get("/api/changes?since=0").await;
    assert_eq!(s, StatusCode::GONE, "{e}");
    assert_eq!(e["error"]["code"], "log_trimmed");
    let (s, b) = t.get("/api/changes?since=4&collection=items").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["events"][0]["seq"], 5);
    assert_eq!(b["events"][0]["new"]["title"], "t4");
    assert_eq!(b["head"], 6);
}
