//! The PostgREST subset at `/rest/v1/{collection}` that `@supabase/supabase-js` speaks, at the
//! HTTP level: reads (select, filters, order, ranges, counts, single objects), writes (insert,
//! update and delete "where …", upsert), PostgREST's error shape and codes, and Supabase keys
//! and roles (`anon`, `authenticated`, `service_role`) under collection rules. Runs on SQLite,
//! and on PostgreSQL with `LIVEBASE_TEST_BACKEND=postgres`.

mod common;

use common::TestServer;
use livebase_server::auth::sign_role;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

const SECRET: &str = "postgrest-suite-secret";

struct Rest {
    t: TestServer,
    anon: String,
    service: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|_| panic!("not JSON ({}): {:?}", self.status, self.text))
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn titles(&self) -> Vec<String> {
        let v = self.json();
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|r| r["title"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The PostgREST error body: exactly code, message, details, hint.
    fn error(&self, status: StatusCode, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        let e = self.json();
        let mut keys: Vec<&str> = e.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["code", "details", "hint", "message"], "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        e
    }
}

fn user(sub: &str, role: &str) -> String {
    sign_role(SECRET, Some(sub), role, 3600, Map::new()).expect("token")
}

fn items() -> Value {
    json!({"name": "items", "fields": [
        {"name": "title", "type": "text", "required": true},
        {"name": "qty", "type": "integer", "min": 0},
        {"name": "price", "type": "number"},
        {"name": "status", "type": "select", "values": ["open", "late", "done"], "default": "open"},
        {"name": "sku", "type": "text", "unique": true},
        {"name": "done", "type": "boolean"},
        {"name": "owner", "type": "text"}],
      "rules": {"list": "true", "view": "true", "create": "true", "update": "true", "delete": "true"}})
}

impl Rest {
    async fn start() -> Rest {
        let t = TestServer::start_with(|c| c.jwt_secret = Some(SECRET.into())).await;
        t.create_collection(items()).await;
        Rest {
            t,
            anon: sign_role(SECRET, None, "anon", 3600, Map::new()).expect("anon"),
            service: sign_role(SECRET, None, "service_role", 3600, Map::new()).expect("service"),
        }
    }

    /// A request as supabase-js sends it: `apikey` and `Authorization: Bearer` with the key.
    async fn call(
        &self,
        method: Method,
        path_query: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        let mut r = self.t.http.request(method.clone(), format!("{}/rest/v1/{path_query}", self.t.url));
        if let Some(k) = key {
            r = r.header("apikey", k).bearer_auth(k);
        }
        let profile = if method == Method::GET || method == Method::HEAD {
            "Accept-Profile"
        } else {
            "Content-Profile"
        };
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(profile)) {
            r = r.header(profile, "public");
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body"),
        }
    }

    async fn get(&self, pq: &str) -> Answer {
        self.call(Method::GET, pq, Some(&self.anon), &[], None).await
    }

    async fn get_with(&self, pq: &str, headers: &[(&str, &str)]) -> Answer {
        self.call(Method::GET, pq, Some(&self.anon), headers, None).await
    }

    async fn send(&self, method: Method, pq: &str, headers: &[(&str, &str)], body: Option<Value>) -> Answer {
        self.call(method, pq, Some(&self.anon), headers, body).await
    }

    /// Inserts rows as the service role and returns them.
    async fn seed(&self, rows: Value) -> Vec<Value> {
        let a = self
            .call(
                Method::POST,
                "items?select=*",
                Some(&self.service),
                &[("Prefer", "return=representation")],
                Some(rows),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.json().as_array().cloned().expect("rows")
    }

    async fn five(&self) -> Vec<Value> {
        self.seed(json!([
            {"title": "apple", "qty": 5, "price": 1.5, "status": "open", "sku": "A", "done": false},
            {"title": "Banana", "qty": 2, "price": 0.5, "status": "late", "sku": "B", "done": true},
            {"title": "cherry", "qty": 9, "status": "open", "sku": "C", "done": false},
            {"title": "date", "qty": null, "price": 3.0, "status": "done", "sku": "D"},
            {"title": "elder, berry", "qty": 0, "price": 2.0, "status": "late", "sku": "E", "done": true}
        ]))
        .await
    }
}

#[tokio::test]
async fn select_returns_the_requested_columns_in_the_requested_order() {
    let r = Rest::start().await;
    r.five().await;
    let a = r.get("items?select=qty,title&title=eq.apple").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.header("content-type").starts_with("application/json"));
    assert_eq!(a.text, r#"[{"qty":5,"title":"apple"}]"#);
    let a = r.get("items?select=name:title,sku&sku=eq.B").await;
    assert_eq!(a.json(), json!([{"name": "Banana", "sku": "B"}]));
    let a = r.get("items?select=*&sku=eq.C").await;
    let row = &a.json()[0];
    for k in ["id", "version", "created_at", "updated_at", "title", "qty", "price", "status", "sku", "done"] {
        assert!(row.get(k).is_some(), "{k} missing in {row}");
    }
    r.get("items?select=title,nope").await.error(StatusCode::BAD_REQUEST, "42703");
    let e = r.get("items?select=title,owner_rel(*)").await.error(StatusCode::BAD_REQUEST, "PGRST200");
    assert!(e["hint"].as_str().unwrap_or_default().contains("embed"), "{e}");
    // Without select every column comes back.
    assert_eq!(r.get("items").await.json().as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn filters_cover_the_postgrest_operators() {
    let r = Rest::start().await;
    r.five().await;
    let t = |q: &'static str| {
        let r = &r;
        async move {
            let a = r.get(&format!("items?select=title&order=title.asc&{q}")).await;
            assert_eq!(a.status, StatusCode::OK, "{q}: {}", a.text);
            a.titles()
        }
    };
    assert_eq!(t("qty=eq.5").await, ["apple"]);
    assert_eq!(t("qty=neq.5").await, ["Banana", "cherry", "elder, berry"]);
    assert_eq!(t("qty=gt.2").await, ["apple", "cherry"]);
    assert_eq!(t("qty=gte.2").await, ["Banana", "apple", "cherry"]);
    assert_eq!(t("qty=lt.2").await, ["elder, berry"]);
    assert_eq!(t("qty=lte.2").await, ["Banana", "elder, berry"]);
    assert_eq!(t("title=like.*an*").await, ["Banana"]);
    assert_eq!(t("title=like.%25an%25").await, ["Banana"]);
    assert_eq!(t("title=ilike.b%25").await, ["Banana"]);
    assert_eq!(t("qty=is.null").await, ["date"]);
    assert_eq!(t("done=is.true").await, ["Banana", "elder, berry"]);
    assert_eq!(t("qty=not.is.null&qty=lt.3").await, ["Banana", "elder, berry"]);
    assert_eq!(t("qty=in.(2,9)").await, ["Banana", "cherry"]);
    assert_eq!(t("title=in.(%22elder,%20berry%22,apple)").await, ["apple", "elder, berry"]);
    assert_eq!(t("qty=not.in.(2,9)").await, ["apple", "elder, berry"]);
    assert_eq!(t("qty=not.gt.2").await, ["Banana", "elder, berry"]);
    assert_eq!(t("or=(qty.gt.8,title.eq.date)").await, ["cherry", "date"]);
    assert_eq!(t("and=(status.eq.open,qty.lt.9)").await, ["apple"]);
    assert_eq!(t("or=(status.eq.done,and(qty.gt.4,qty.lt.6))").await, ["apple", "date"]);
    assert_eq!(t("not.or=(status.eq.open,status.eq.late)").await, ["date"]);
    assert_eq!(t("status=eq.late&done=is.true&price=gte.1").await, ["elder, berry"]);
    assert_eq!(t("title=eq.elder,%20berry").await, ["elder, berry"]);
    assert_eq!(t("sku=in.()").await, Vec::<String>::new());
}

#[tokio::test]
async fn order_limit_offset_and_range_shape_the_page_and_content_range() {
    let r = Rest::start().await;
    r.five().await;
    let a = r.get("items?select=title&order=qty.desc.nullslast,title.asc").await;
    assert_eq!(a.titles(), ["cherry", "apple", "Banana", "elder, berry", "date"]);
    let a = r.get("items?select=title&order=qty.desc").await;
    assert_eq!(a.titles()[0], "date", "desc puts nulls first, as PostgreSQL");
    let a = r.get("items?select=title&order=qty.asc.nullsfirst").await;
    assert_eq!(a.titles(), ["date", "elder, berry", "Banana", "apple", "cherry"]);
    let a = r.get("items?select=title&order=price.desc,title").await;
    assert_eq!(a.titles()[0], "cherry", "null price first when descending");

    // .range(1, 3) → offset=1&limit=3
    let a = r.get("items?select=title&order=title&offset=1&limit=3").await;
    assert_eq!(a.titles(), ["apple", "cherry", "date"]);
    assert_eq!(a.header("content-range"), "1-3/*");
    // The Range header does the same.
    let a = r.get_with("items?select=title&order=title", &[("Range-Unit", "items"), ("Range", "1-3")]).await;
    assert_eq!(a.titles(), ["apple", "cherry", "date"]);
    assert_eq!(a.header("content-range"), "1-3/*");
    // Counts.
    let a = r.get_with("items?select=title", &[("Prefer", "count=exact")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-range"), "0-4/5");
    let a = r.get("items?select=title").await;
    assert_eq!(a.header("content-range"), "0-4/*");
    let a = r.get_with("items?select=title&limit=2", &[("Prefer", "count=exact")]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.header("content-range"), "0-1/5");
    let a = r.get_with("items?select=title&qty=gt.100", &[("Prefer", "count=exact")]).await;
    assert_eq!((a.status, a.header("content-range"), a.text.as_str()), (StatusCode::OK, "*/0", "[]"));
    let a = r.get("items?select=title&qty=gt.100").await;
    assert_eq!(a.header("content-range"), "*/*");
    let a = r.get_with("items?offset=9", &[("Prefer", "count=exact")]).await;
    a.error(StatusCode::RANGE_NOT_SATISFIABLE, "PGRST103");
    // HEAD with a count: no body, the total after the slash.
    let a = r
        .call(
            Method::HEAD,
            "items?select=*&status=eq.open",
            Some(&r.anon),
            &[("Prefer", "count=exact")],
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-range"), "0-1/2");
    assert!(a.text.is_empty());
    r.get("items?order=nope.asc").await.error(StatusCode::BAD_REQUEST, "42703");
    r.get("items?order=title.sideways").await.error(StatusCode::BAD_REQUEST, "PGRST100");
    r.get("items?limit=many").await.error(StatusCode::BAD_REQUEST, "PGRST100");
}

#[tokio::test]
async fn a_single_object_is_one_row_or_406() {
    let r = Rest::start().await;
    r.five().await;
    let single = [("Accept", "application/vnd.pgrst.object+json")];
    let a = r.get_with("items?select=title,qty&sku=eq.A", &single).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.header("content-type").starts_with("application/vnd.pgrst.object+json"));
    assert_eq!(a.json(), json!({"title": "apple", "qty": 5}));
    let a = r.get_with("items?sku=eq.nope", &single).await;
    assert_eq!(a.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(
        a.json(),
        json!({"code": "PGRST116", "details": "The result contains 0 rows", "hint": null,
               "message": "JSON object requested, multiple (or no) rows returned"})
    );
    let e = r.get_with("items?status=eq.open", &single).await.error(StatusCode::NOT_ACCEPTABLE, "PGRST116");
    assert_eq!(e["details"], "The result contains 2 rows");
    // An update that would touch two rows as a single object changes nothing.
    let a = r
        .send(
            Method::PATCH,
            "items?status=eq.open&select=*",
            &[("Accept", "application/vnd.pgrst.object+json"), ("Prefer", "return=representation")],
            Some(json!({"qty": 1})),
        )
        .await;
    a.error(StatusCode::NOT_ACCEPTABLE, "PGRST116");
    assert_eq!(r.get("items?select=title&qty=eq.1").await.titles(), Vec::<String>::new());
    // Nulls stripped on request.
    let a = r
        .get_with(
            "items?select=title,qty&sku=eq.D",
            &[("Accept", "application/vnd.pgrst.object+json;nulls=stripped")],
        )
        .await;
    assert_eq!(a.json(), json!({"title": "date"}));
    let a = r
        .get_with(
            "items?select=title,qty&sku=eq.D",
            &[("Accept", "application/vnd.pgrst.array+json;nulls=stripped")],
        )
        .await;
    assert_eq!(a.json(), json!([{"title": "date"}]));
    r.get_with("items", &[("Accept", "text/csv")]).await.error(StatusCode::NOT_ACCEPTABLE, "PGRST107");
}

#[tokio::test]
async fn inserts_one_or_many_rows_and_return_them_when_asked() {
    let r = Rest::start().await;
    let a = r.send(Method::POST, "items", &[], Some(json!({"title": "one", "qty": 1}))).await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::CREATED, ""), "return=minimal is the default");
    let a = r
        .send(
            Method::POST,
            "items?select=title,status",
            &[("Prefer", "return=representation")],
            Some(json!({"title": "two"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.json(), json!([{"title": "two", "status": "open"}]), "the column default applies");
    // A bulk insert as postgrest-js sends it: columns= lists every key; absent keys are null.
    let a = r
        .send(
            Method::POST,
            "items?columns=%22title%22,%22qty%22,%22status%22&select=title,qty,status",
            &[("Prefer", "return=representation")],
            Some(json!([{"title": "three", "qty": 3, "status": "late"}, {"title": "four"}])),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(
        a.json(),
        json!([{"title": "three", "qty": 3, "status": "late"}, {"title": "four", "qty": null, "status": null}])
    );
    // With missing=default, the default applies instead.
    let a = r
        .send(
            Method::POST,
            "items?columns=%22title%22,%22status%22&select=title,status",
            &[("Prefer", "return=representation,missing=default")],
            Some(json!([{"title": "five", "status": "done"}, {"title": "six"}])),
        )
        .await;
    assert_eq!(a.json(), json!([{"title": "five", "status": "done"}, {"title": "six", "status": "open"}]));
    // A chosen id is kept.
    let a = r
        .send(
            Method::POST,
            "items?select=id",
            &[("Prefer", "return=representation")],
            Some(json!({"id": "my-id", "title": "seven"})),
        )
        .await;
    assert_eq!(a.json(), json!([{"id": "my-id"}]));
    let a = r.send(Method::POST, "items", &[("Prefer", "return=representation")], Some(json!([]))).await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::CREATED, "[]"));
    assert_eq!(r.get("items?select=title").await.titles().len(), 7);
}

#[tokio::test]
async fn a_failing_row_rolls_back_the_whole_insert() {
    let r = Rest::start().await;
    let a = r
        .send(
            Method::POST,
            "items",
            &[],
            Some(json!([{"title": "a", "sku": "X"}, {"title": "b", "sku": "X"}])),
        )
        .await;
    let e = a.error(StatusCode::CONFLICT, "23505");
    assert_eq!(e["message"], "duplicate key value violates unique constraint \"items_sku_key\"");
    assert_eq!(e["details"], "Key (sku)=(X) already exists.");
    assert_eq!(r.get("items").await.text, "[]");
}

#[tokio::test]
async fn updates_and_deletes_apply_to_every_matching_row_in_one_transaction() {
    let r = Rest::start().await;
    let rows = r.five().await;
    let a = r.send(Method::PATCH, "items?status=eq.late", &[], Some(json!({"qty": 7}))).await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert_eq!(r.get("items?select=title&qty=eq.7&order=title").await.titles(), ["Banana", "elder, berry"]);
    let a = r
        .send(
            Method::PATCH,
            "items?status=eq.open&select=title,qty",
            &[("Prefer", "return=representation,count=exact")],
            Some(json!({"qty": 8})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.header("content-range"), "0-1/2");
    let mut got = a.json().as_array().cloned().expect("rows");
    got.sort_by_key(|v| v["title"].as_str().map(str::to_string));
    assert_eq!(got, [json!({"title": "apple", "qty": 8}), json!({"title": "cherry", "qty": 8})]);
    // Prefer: handling=strict, max-affected=1 (postgrest-js .maxAffected(1)) refuses two rows.
    let a = r
        .send(
            Method::PATCH,
            "items?status=eq.open",
            &[("Prefer", "handling=strict"), ("Prefer", "max-affected=1")],
            Some(json!({"qty": 3})),
        )
        .await;
    a.error(StatusCode::BAD_REQUEST, "PGRST124");
    assert_eq!(r.get("items?qty=eq.3").await.text, "[]");
    // No versions: a plain last-write patch, version bumped by one.
    let a = r.get(&format!("items?select=version&id=eq.{}", rows[0]["id"].as_str().expect("id"))).await;
    assert_eq!(a.json(), json!([{"version": 2}]));
    // All or nothing: making two rows share a unique sku fails for both.
    let a = r.send(Method::PATCH, "items?status=eq.late", &[], Some(json!({"sku": "same"}))).await;
    a.error(StatusCode::CONFLICT, "23505");
    assert_eq!(r.get("items?sku=eq.same").await.text, "[]");
    // Nothing matches: 204, or an empty array.
    let a = r
        .send(
            Method::PATCH,
            "items?qty=gt.100",
            &[("Prefer", "return=representation")],
            Some(json!({"qty": 1})),
        )
        .await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::OK, "[]"));
    // Delete with filters.
    let a = r.send(Method::DELETE, "items?status=eq.late", &[], None).await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::NO_CONTENT, ""));
    let a = r
        .send(Method::DELETE, "items?sku=eq.D&select=title", &[("Prefer", "return=representation")], None)
        .await;
    assert_eq!((a.status, a.json()), (StatusCode::OK, json!([{"title": "date"}])));
    assert_eq!(r.get("items?select=title&order=title").await.titles(), ["apple", "cherry"]);
    // One request, one transaction: the update of two rows is two events of one commit.
    let (_, changes) = r.t.get("/api/changes?since=0&limit=1000").await;
    let updates: Vec<&Value> = changes["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["op"] == "update" && e["new"]["qty"] == 8)
        .collect();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0]["committed_at"], updates[1]["committed_at"], "{updates:?}");
    // Bad bodies; an unknown column even when no row matches.
    r.send(Method::PATCH, "items?sku=eq.A", &[], Some(json!([1])))
        .await
        .error(StatusCode::BAD_REQUEST, "PGRST102");
    r.send(Method::PATCH, "items?sku=eq.none", &[], Some(json!({"colour": "red"})))
        .await
        .error(StatusCode::BAD_REQUEST, "PGRST204");
}

#[tokio::test]
async fn upsert_merges_or_ignores_duplicates_on_id_or_a_unique_column() {
    let r = Rest::start().await;
    let rows = r.five().await;
    let apple = rows[0]["id"].as_str().expect("id").to_string();
    let rep = [("Prefer", "resolution=merge-duplicates,return=representation")];
    // On id (the default): the existing row is updated, the new one created.
    let a = r
        .send(Method::POST, "items?select=title,qty&columns=%22id%22,%22title%22,%22qty%22", &rep,
              Some(json!([{"id": apple, "title": "apple", "qty": 50}, {"id": "fresh-1", "title": "fig", "qty": 1}])))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json(), json!([{"title": "apple", "qty": 50}, {"title": "fig", "qty": 1}]));
    assert_eq!(r.get("items?select=title").await.titles().len(), 6);
    // On a unique column.
    let a = r
        .send(
            Method::POST,
            "items?on_conflict=sku&select=title,sku",
            &rep,
            Some(json!([{"sku": "B", "title": "BANANA"}, {"sku": "Z", "title": "zucchini"}])),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json(), json!([{"title": "BANANA", "sku": "B"}, {"title": "zucchini", "sku": "Z"}]));
    assert_eq!(r.get("items?select=title&sku=eq.B").await.titles(), ["BANANA"]);
    // Ignore: existing rows stay as they are and are not returned.
    let a = r
        .send(
            Method::POST,
            "items?on_conflict=sku&select=title",
            &[("Prefer", "resolution=ignore-duplicates,return=representation")],
            Some(json!([{"sku": "C", "title": "CHERRY"}, {"sku": "Y", "title": "yam"}])),
        )
        .await;
    assert_eq!(a.json(), json!([{"title": "yam"}]));
    assert_eq!(r.get("items?select=title&sku=eq.C").await.titles(), ["cherry"]);
    // Without a resolution a duplicate id is a unique violation.
    let e = r
        .send(Method::POST, "items", &[], Some(json!({"id": apple, "title": "again"})))
        .await
        .error(StatusCode::CONFLICT, "23505");
    assert_eq!(e["message"], "duplicate key value violates unique constraint \"items_pkey\"");
    // A key is compared as stored: the same instant in another spelling is the same key.
    r.t.create_collection(json!({"name": "readings", "fields": [
        {"name": "at", "type": "datetime", "unique": true}, {"name": "value", "type": "number"}],
        "rules": {"list": "true", "view": "true", "create": "true", "update": "true", "delete": "true"}}))
        .await;
    let a =
        r.send(Method::POST, "readings", &[], Some(json!({"at": "2026-01-02T03:04:05Z", "value": 1}))).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = r
        .send(
            Method::POST,
            "readings?on_conflict=at&select=value",
            &rep,
            Some(json!({"at": "2026-01-02T04:04:05+01:00", "value": 2})),
        )
        .await;
    assert_eq!((a.status, a.json()), (StatusCode::CREATED, json!([{"value": 2.0}])), "{}", a.text);
    assert_eq!(r.get("readings?select=value").await.json(), json!([{"value": 2.0}]));
    // Only id or a unique column can be the conflict target.
    r.send(Method::POST, "items?on_conflict=title", &rep, Some(json!({"title": "x"})))
        .await
        .error(StatusCode::BAD_REQUEST, "42P10");
}

#[tokio::test]
async fn errors_carry_postgrest_codes_and_statuses() {
    let r = Rest::start().await;
    r.t.create_collection(json!({"name": "parts", "fields": [
        {"name": "item", "type": "relation", "collection": "items"}],
        "rules": {"list": "true", "view": "true", "create": "true", "update": "true", "delete": "true"}}))
        .await;
    let rows = r.five().await;
    let e = r.get("items?qty=eq.abc").await.error(StatusCode::BAD_REQUEST, "22P02");
    assert_eq!(e["message"], "invalid input syntax for type integer: \"abc\"");
    r.get("items?price=gt.cheap").await.error(StatusCode::BAD_REQUEST, "22P02");
    r.get("items?done=eq.maybe").await.error(StatusCode::BAD_REQUEST, "22P02");
    r.get("items?created_at=gt.yesterday").await.error(StatusCode::BAD_REQUEST, "22007");
    r.get("items?nope=eq.1").await.error(StatusCode::BAD_REQUEST, "42703");
    r.get("items?or=(qty.eq.1").await.error(StatusCode::BAD_REQUEST, "PGRST100");
    let e = r.get("items?title=fts.word").await.error(StatusCode::BAD_REQUEST, "PGRST100");
    assert!(e["hint"].as_str().unwrap_or_default().contains("ilike"), "{e}");
    r.get("items?parent.title=eq.x").await.error(StatusCode::BAD_REQUEST, "PGRST100");
    let e = r.get("nothing_here").await.error(StatusCode::NOT_FOUND, "42P01");
    assert_eq!(e["message"], "relation \"public.nothing_here\" does not exist");
    let e = r
        .send(Method::POST, "items", &[], Some(json!({"title": "x", "qty": "abc"})))
        .await
        .error(StatusCode::BAD_REQUEST, "22P02");
    assert_eq!(e["message"], "invalid input syntax for type integer: \"abc\"");
    r.send(Method::POST, "items", &[], Some(json!({"qty": 1}))).await.error(StatusCode::BAD_REQUEST, "23502");
    r.send(Method::POST, "items", &[], Some(json!({"title": "x", "qty": -1})))
        .await
        .error(StatusCode::BAD_REQUEST, "23514");
    r.send(Method::POST, "items", &[], Some(json!({"title": "x", "status": "lost"})))
        .await
        .error(StatusCode::BAD_REQUEST, "22P02");
    let e = r
        .send(Method::POST, "items", &[], Some(json!({"title": "x", "colour": "red"})))
        .await
        .error(StatusCode::BAD_REQUEST, "PGRST204");
    assert_eq!(e["message"], "Could not find the 'colour' column of 'items' in the schema cache");
    r.send(Method::POST, "items", &[], Some(json!({"title": "x", "version": 3})))
        .await
        .error(StatusCode::BAD_REQUEST, "428C9");
    let a =
        r.t.http
            .post(format!("{}/rest/v1/items", r.t.url))
            .header("apikey", &r.anon)
            .body("{not json")
            .send()
            .await
            .expect("post");
    assert_eq!(a.status(), StatusCode::BAD_REQUEST);
    assert_eq!(a.json::<Value>().await.expect("json")["code"], "PGRST102");
    // Foreign keys.
    let e = r
        .send(Method::POST, "parts", &[], Some(json!({"item": "no-such-item"})))
        .await
        .error(StatusCode::CONFLICT, "23503");
    assert!(e["details"].as_str().unwrap_or_default().contains("no-such-item"), "{e}");
    let apple = rows[0]["id"].as_str().expect("id");
    let a = r.send(Method::POST, "parts", &[], Some(json!({"item": apple}))).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    r.send(Method::DELETE, &format!("items?id=eq.{apple}"), &[], None)
        .await
        .error(StatusCode::CONFLICT, "23503");
    // Another schema than public.
    r.get_with("items", &[("Accept-Profile", "private")]).await.error(StatusCode::NOT_ACCEPTABLE, "PGRST106");
    r.send(Method::POST, "items", &[("Content-Profile", "private")], Some(json!({"title": "x"})))
        .await
        .error(StatusCode::NOT_ACCEPTABLE, "PGRST106");
    // rpc is not served.
    r.send(Method::POST, "rpc/do_things", &[], Some(json!({})))
        .await
        .error(StatusCode::NOT_FOUND, "PGRST202");
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_with_401() {
    let r = Rest::start().await;
    let e = r.call(Method::GET, "items", None, &[], None).await.error(StatusCode::UNAUTHORIZED, "PGRST302");
    assert_eq!(e["message"], "No API key found in request");
    let forged = sign_role("another-secret", None, "service_role", 3600, Map::new()).expect("forged");
    let a = r.call(Method::GET, "items", Some(&forged), &[], None).await;
    a.error(StatusCode::UNAUTHORIZED, "PGRST301");
    assert!(a.header("www-authenticate").starts_with("Bearer"));
    r.call(Method::GET, "items", Some("not-a-jwt"), &[], None)
        .await
        .error(StatusCode::UNAUTHORIZED, "PGRST301");
    let expired = sign_role(SECRET, Some("u1"), "authenticated", 0, Map::new()).expect("expired");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let e = r
        .call(Method::GET, "items", Some(&expired), &[], None)
        .await
        .error(StatusCode::UNAUTHORIZED, "PGRST301");
    assert_eq!(e["message"], "JWT expired");
    r.call(Method::POST, "items", Some("not-a-jwt"), &[], Some(json!({"title": "x"})))
        .await
        .error(StatusCode::UNAUTHORIZED, "PGRST301");
    assert_eq!(r.get("items").await.text, "[]", "nothing was written");
    // The key may come as the apikey header alone, or as a URL parameter.
    let a =
        r.t.http
            .get(format!("{}/rest/v1/items", r.t.url))
            .header("apikey", &r.anon)
            .send()
            .await
            .expect("get");
    assert_eq!(a.status(), StatusCode::OK);
    let a = r.t.http.get(format!("{}/rest/v1/items?apikey={}", r.t.url, r.anon)).send().await.expect("get");
    assert_eq!(a.status(), StatusCode::OK);
    // The admin key is the service credential too.
    let admin = r.t.admin_key.clone();
    let a = r.call(Method::GET, "items", Some(&admin), &[], None).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn roles_map_onto_collection_rules() {
    let r = Rest::start().await;
    r.t.create_collection(json!({"name": "notes", "fields": [
        {"name": "owner", "type": "text"}, {"name": "body", "type": "text"}],
      "rules": {"list": "auth.role == \"authenticated\"", "view": "record.owner == auth.sub",
                "create": "data.owner == auth.sub", "update": "record.owner == auth.sub",
                "delete": "record.owner == auth.sub"}}))
        .await;
    let (ann, bob) = (user("ann", "authenticated"), user("bob", "authenticated"));
    let as_ = |tok: &str, m: Method, pq: &str, prefer: &'static str, body: Option<Value>| {
        let (r, tok, pq) = (&r, tok.to_string(), pq.to_string());
        async move {
            let h: Vec<(&str, &str)> = if prefer.is_empty() { vec![] } else { vec![("Prefer", prefer)] };
            r.call(m, &pq, Some(&tok), &h, body).await
        }
    };
    for (who, body) in [(&ann, "ann's"), (&bob, "bob's")] {
        let owner = if body == "ann's" { "ann" } else { "bob" };
        let a = as_(who, Method::POST, "notes", "", Some(json!({"owner": owner, "body": body}))).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }
    // A user sees its own rows only; writes "where …" reach only what it sees.
    let a = as_(&ann, Method::GET, "notes?select=body", "", None).await;
    assert_eq!(a.json(), json!([{"body": "ann's"}]));
    let a = as_(
        &ann,
        Method::PATCH,
        "notes?select=body",
        "return=representation",
        Some(json!({"body": "edited"})),
    )
    .await;
    assert_eq!(a.json(), json!([{"body": "edited"}]));
    let a = as_(&bob, Method::GET, "notes?select=body", "", None).await;
    assert_eq!(a.json(), json!([{"body": "bob's"}]));
    // Creating for someone else is refused: 42501, 403 for a user.
    as_(&ann, Method::POST, "notes", "", Some(json!({"owner": "bob", "body": "x"})))
        .await
        .error(StatusCode::FORBIDDEN, "42501");
    // The anon key lists nothing here (rules see auth.role == "anon"); PostgREST says 401 to anon.
    as_(&r.anon, Method::GET, "notes", "", None).await.error(StatusCode::UNAUTHORIZED, "42501");
    as_(&r.anon, Method::POST, "notes", "", Some(json!({"owner": "ann", "body": "x"})))
        .await
        .error(StatusCode::UNAUTHORIZED, "42501");
    // An upsert onto a row the caller cannot see is a clash, not an update of it.
    let a = as_(&r.service, Method::GET, "notes?select=id&owner=eq.bob", "", None).await;
    let bobs = a.json()[0]["id"].as_str().expect("id").to_string();
    let a = as_(
        &ann,
        Method::POST,
        "notes",
        "resolution=merge-duplicates",
        Some(json!({"id": bobs, "owner": "ann", "body": "mine"})),
    )
    .await;
    a.error(StatusCode::CONFLICT, "23505");
    // service_role acts as the service credential: every row, no rules.
    let a = as_(&r.service, Method::GET, "notes?select=body&order=body", "", None).await;
    assert_eq!(a.json(), json!([{"body": "bob's"}, {"body": "edited"}]));
    let a = as_(&r.service, Method::DELETE, "notes", "count=exact", None).await;
    assert_eq!((a.status, a.header("content-range")), (StatusCode::NO_CONTENT, "0-1/2"));
}

#[tokio::test]
async fn writes_over_the_row_cap_are_refused_whole() {
    let r = Rest::start().await;
    let many: Vec<Value> = (0..1001).map(|i| json!({"title": format!("t{i}")})).collect();
    let e = r
        .send(Method::POST, "items", &[], Some(Value::Array(many[..1001].to_vec())))
        .await
        .error(StatusCode::BAD_REQUEST, "54000");
    assert!(e["message"].as_str().unwrap_or_default().contains("1000"), "{e}");
    let a = r.send(Method::POST, "items", &[], Some(Value::Array(many[..1000].to_vec()))).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = r.send(Method::POST, "items", &[], Some(json!({"title": "one more"}))).await;
    assert_eq!(a.status, StatusCode::CREATED);
    // A read returns at most 1000 rows (Supabase's default max rows); the count tells the rest.
    let a = r.get_with("items?select=title", &[("Prefer", "count=exact")]).await;
    assert_eq!(a.json().as_array().map(Vec::len), Some(1000));
    assert_eq!(a.header("content-range"), "0-999/1001");
    // An update of 1001 rows changes nothing.
    r.send(Method::PATCH, "items", &[], Some(json!({"qty": 1})))
        .await
        .error(StatusCode::BAD_REQUEST, "54000");
    let a = r.get_with("items?qty=eq.1&select=id", &[("Prefer", "count=exact")]).await;
    assert_eq!(a.header("content-range"), "*/0");
    let a = r
        .send(Method::PATCH, "items?title=like.t99*", &[("Prefer", "count=exact")], Some(json!({"qty": 1})))
        .await;
    assert_eq!((a.status, a.header("content-range")), (StatusCode::NO_CONTENT, "0-10/11"));
}

#[tokio::test]
async fn browsers_get_cors_answers() {
    let r = Rest::start().await;
    let a =
        r.t.http
            .request(Method::OPTIONS, format!("{}/rest/v1/items", r.t.url))
            .header("Origin", "http://app.example")
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "apikey,authorization,content-type,prefer")
            .send()
            .await
            .expect("preflight");
    assert_eq!(a.status(), StatusCode::OK);
    let h = a.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h["access-control-allow-methods"].to_str().unwrap_or_default().contains("PATCH"));
    assert!(h["access-control-allow-headers"].to_str().unwrap_or_default().contains("prefer"));
    let a = r.get("items").await;
    assert_eq!(a.header("access-control-allow-origin"), "*");
    assert!(a.header("access-control-expose-headers").contains("Content-Range"));
}

#[tokio::test]
async fn concurrent_updates_where_touch_each_matching_row_once() {
    let r = Rest::start().await;
    let rows: Vec<Value> = (0..30).map(|i| json!({"title": format!("r{i}"), "status": "open"})).collect();
    r.seed(Value::Array(rows)).await;
    // Two requests race for the open rows: whichever writes a row first takes it; the other
    // finds it no longer open (inside its transaction), reads again and leaves it alone.
    let (a, b) = tokio::join!(
        r.send(Method::PATCH, "items?status=eq.open", &[], Some(json!({"status": "late"}))),
        r.send(Method::PATCH, "items?status=eq.open", &[], Some(json!({"status": "done"}))),
    );
    assert_eq!(
        (a.status, b.status),
        (StatusCode::NO_CONTENT, StatusCode::NO_CONTENT),
        "{} {}",
        a.text,
        b.text
    );
    let (_, changes) = r.t.get("/api/changes?since=0&limit=1000").await;
    let mut per_row: std::collections::HashMap<String, usize> = Default::default();
    for e in changes["events"].as_array().expect("events").iter().filter(|e| e["op"] == "update") {
        *per_row.entry(e["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    assert_eq!(per_row.len(), 30, "every open row was updated");
    let twice = per_row.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} rows were updated by both requests");
    assert_eq!(r.get("items?status=eq.open").await.text, "[]");
}

#[tokio::test]
async fn a_write_where_applies_nothing_once_a_row_no_longer_matches() {
    let r = Rest::start().await;
    let rows = r.five().await;
    let ids: Vec<String> = rows.iter().map(|v| v["id"].as_str().expect("id").to_string()).collect();
    let service = &r.t.server.as_ref().expect("server").app.service;
    let ops: Vec<livebase_store::WriteOp> = ids
        .iter()
        .map(|id| livebase_store::WriteOp::Update {
            collection: "items".into(),
            id: id.clone(),
            data: json!({"qty": 42}).as_object().cloned().expect("object"),
            base_version: None,
        })
        .collect();
    // The guard refuses one row (as if it had changed since it was read): nothing applies.
    let refused = ids[3].clone();
    let guard: livebase_server::service::RowGuard = std::sync::Arc::new(move |rec| rec.id() != refused);
    let result =
        service.write_where(&livebase_server::auth::Principal::Admin, ops, guard).await.expect("write");
    match result {
        livebase_store::WriteResult::Applied(Err(e)) => {
            assert_eq!(e.index, 3);
            assert!(matches!(e.error, livebase_store::StoreError::NotFound { .. }), "{e:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(r.get("items?qty=eq.42").await.text, "[]");
}

#[tokio::test]
async fn callers_over_their_rate_are_told_when_to_retry_except_the_service_role() {
    let t = TestServer::start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.rate_limit = 0.5;
        c.rate_burst = 2.0;
    })
    .await;
    t.create_collection(items()).await;
    let r = Rest {
        t,
        anon: sign_role(SECRET, None, "anon", 3600, Map::new()).expect("anon"),
        service: sign_role(SECRET, None, "service_role", 3600, Map::new()).expect("service"),
    };
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(r.get("items").await);
    }
    let limited = statuses.iter().find(|a| a.status == StatusCode::TOO_MANY_REQUESTS).expect("a 429");
    limited.error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1), "{:?}", limited.headers);
    for _ in 0..5 {
        let a = r.call(Method::GET, "items", Some(&r.service), &[], None).await;
        assert_eq!(a.status, StatusCode::OK);
    }
}
