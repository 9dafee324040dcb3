//! Permissions on every path: a warehouse clerk never receives a finance record — not by
//! list, get, batch results, subscription events, live query snapshots, resume history or the
//! audit log — and bad tokens never get in.

mod common;

use common::ws::Ws;
use common::TestServer;
use livebase_server::auth::sign;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

const SECRET: &str = "leak-suite-secret";

fn token(sub: &str, role: &str, dept: &str, ttl: u64) -> String {
    let mut extra = Map::new();
    extra.insert("dept".into(), json!(dept));
    sign(SECRET, sub, role, ttl, extra).unwrap()
}

fn ledger() -> Value {
    json!({"name": "ledger", "fields": [
        {"name": "dept", "type": "select", "values": ["finance", "warehouse"], "required": true},
        {"name": "owner", "type": "text"},
        {"name": "title", "type": "text"},
        {"name": "amount", "type": "integer"}],
      "rules": {
        "list": "auth.role != \"anon\"",
        "view": "record.dept == auth.dept || auth.role == \"manager\"",
        "create": "data.dept == auth.dept",
        "update": "record.owner == auth.sub",
        "delete": "record.owner == auth.sub"}})
}

struct Fixture {
    t: TestServer,
    clerk: String,
    accountant: String,
}

impl Fixture {
    async fn start() -> Fixture {
        let t = TestServer::start_with(|c| c.jwt_secret = Some(SECRET.into())).await;
        t.create_collection(ledger()).await;
        Fixture {
            t,
            clerk: token("c1", "clerk", "warehouse", 3600),
            accountant: token("a1", "clerk", "finance", 3600),
        }
    }

    async fn as_user(
        &self,
        tok: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.t.http.request(method, format!("{}{}", self.t.url, path)).bearer_auth(tok);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn create_as(&self, tok: &str, data: Value) -> Value {
        let (s, b) = self.as_user(tok, Method::POST, "/api/collections/ledger/records", Some(data)).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b
    }
}

fn contains_finance(v: &Value) -> bool {
    v.to_string().contains("finance")
}

#[tokio::test]
async fn a_private_row_is_never_returned_by_any_path() {
    let f = Fixture::start().await;
    let mine = f.create_as(&f.clerk, json!({"dept": "warehouse", "owner": "c1", "title": "pallets"})).await;
    let secret = f
        .create_as(&f.accountant, json!({"dept": "finance", "owner": "a1", "title": "payroll", "amount": 9}))
        .await;
    let sid = secret["id"].as_str().unwrap();

    // list, with and without filters, counting, paging
    for q in [
        "",
        "?amount=eq.9",
        "?title=like.*pay*",
        "?count=exact",
        "?order=amount.desc&limit=1",
        "?or=(dept.eq.finance,amount.gt.0)",
    ] {
        let (s, b) =
            f.as_user(&f.clerk, Method::GET, &format!("/api/collections/ledger/records{q}"), None).await;
        assert_eq!(s, StatusCode::OK, "{q}: {b}");
        assert!(!contains_finance(&b) && !b.to_string().contains(sid), "list {q} leaked: {b}");
    }
    let (_, b) = f.as_user(&f.clerk, Method::GET, "/api/collections/ledger/records?count=exact", None).await;
    assert_eq!(b["total"], 1);
    assert_eq!(b["items"][0]["id"], mine["id"]);

    // get: 404, as if it did not exist
    let (s, b) =
        f.as_user(&f.clerk, Method::GET, &format!("/api/collections/ledger/records/{sid}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert!(!contains_finance(&b));

    // update, delete and batch results: 404, nothing applied, nothing shown
    let (s, b) = f
        .as_user(
            &f.clerk,
            Method::PATCH,
            &format!("/api/collections/ledger/records/{sid}"),
            Some(json!({"amount": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!contains_finance(&b));
    let (s, b) = f
        .as_user(
            &f.clerk,
            Method::PATCH,
            &format!("/api/collections/ledger/records/{sid}"),
            Some(json!({"amount": 1, "expected_version": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a stale version must not reveal the current record: {b}");
    let ops =
        json!({"ops": [{"op": "update", "id": sid, "data": {"title": "x"}}, {"op": "delete", "id": sid}]});
    let (s, b) = f.as_user(&f.clerk, Method::POST, "/api/collections/ledger/batch", Some(ops)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!contains_finance(&b), "{b}");
    let (_, still) = f.t.get(&format!("/api/collections/ledger/records/{sid}")).await;
    assert_eq!(still["version"], 1, "nothing applied");

    // subscription events, live query snapshot and resume history
    let mut live = Ws::connect(&f.t.url, Some(&f.clerk)).await;
    let (_, _) = live.subscribe("ledger", None, json!({})).await;
    let mut snap = Ws::connect(&f.t.url, Some(&f.clerk)).await;
    snap.subscribe("ledger", None, json!({"snapshot": true})).await;
    let (s, _) = snap.recv_until(|v| v["type"] == "snapshot").await;
    assert_eq!(s["rows"].as_array().unwrap().len(), 1);
    assert!(!contains_finance(&s));
    let mut resumed = Ws::connect(&f.t.url, Some(&f.clerk)).await;
    resumed.subscribe("ledger", None, json!({"since": 0})).await;
    f.create_as(&f.accountant, json!({"dept": "finance", "owner": "a1", "title": "bonus"})).await;
    let marker = f.create_as(&f.clerk, json!({"dept": "warehouse", "owner": "c1", "title": "marker"})).await;
    for ws in [&mut live, &mut snap] {
        let c = ws.next_change().await;
        assert_eq!(c["id"], marker["id"], "the finance insert before it was not delivered: {c}");
    }
    let first = resumed.next_change().await;
    assert_eq!(first["id"], mine["id"], "history skips the finance insert");
    let second = resumed.next_change().await;
    assert_eq!(second["id"], marker["id"]);

    // the audit log
    let (s, b) = f.as_user(&f.clerk, Method::GET, "/api/changes?since=0", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!contains_finance(&b["events"]), "{b}");
    assert_eq!(b["events"].as_array().unwrap().len(), 2);
    let (_, b) =
        f.as_user(&f.clerk, Method::GET, &format!("/api/changes?since=0&record_id={sid}"), None).await;
    assert_eq!(b["events"], json!([]));
    // ...while the admin sees everything, with actors.
    let all = f.t.changes(0).await;
    assert_eq!(all.len(), 4);
    assert_eq!(all[1]["actor"], "a1");
}

#[tokio::test]
async fn a_row_moved_out_of_view_arrives_as_a_removal_without_its_new_values() {
    let f = Fixture::start().await;
    let r = f.create_as(&f.clerk, json!({"dept": "warehouse", "owner": "c1", "title": "crate"})).await;
    let id = r["id"].as_str().unwrap();
    let mut ws = Ws::connect(&f.t.url, Some(&f.clerk)).await;
    ws.subscribe("ledger", None, json!({"snapshot": true})).await;
    // The admin moves the row to finance.
    let (s, _) =
        f.t.patch(&format!("/api/collections/ledger/records/{id}"), json!({"dept": "finance", "amount": 77}))
            .await;
    assert_eq!(s, StatusCode::OK);
    let c = ws.next_change().await;
    assert_eq!((&c["op"], &c["view"]), (&json!("update"), &json!("remove")));
    assert_eq!(c["new"], Value::Null, "the clerk may not see the new values");
    assert_eq!(c["old"]["title"], "crate");
    // And back: it arrives as an addition, without the hidden old values.
    f.t.patch(&format!("/api/collections/ledger/records/{id}"), json!({"dept": "warehouse"})).await;
    let c = ws.next_change().await;
    assert_eq!(c["view"], "add");
    assert_eq!(c["old"], Value::Null);
    assert_eq!(c["new"]["amount"], 77);
}

#[tokio::test]
async fn write_rules_decide_create_update_and_delete() {
    let f = Fixture::start().await;
    let (s, e) = f
        .as_user(&f.clerk, Method::POST, "/api/collections/ledger/records", Some(json!({"dept": "finance"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(e["error"]["code"], "forbidden");
    let other = f
        .create_as(&f.t.admin_key, json!({"dept": "warehouse", "owner": "someone", "title": "theirs"}))
        .await;
    let path = format!("/api/collections/ledger/records/{}", other["id"].as_str().unwrap());
    let (s, _) = f.as_user(&f.clerk, Method::PATCH, &path, Some(json!({"title": "mine now"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "visible but not the owner");
    let (s, _) = f.as_user(&f.clerk, Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let own = f.create_as(&f.clerk, json!({"dept": "warehouse", "owner": "c1"})).await;
    let path = format!("/api/collections/ledger/records/{}", own["id"].as_str().unwrap());
    let (s, b) = f.as_user(&f.clerk, Method::PATCH, &path, Some(json!({"title": "ok"}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = f.as_user(&f.clerk, Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::OK);
    // Anonymous callers may not even list.
    let r = f.t.http.get(format!("{}/api/collections/ledger/records", f.t.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A collection without rules is admin-only.
    f.t.create_collection(json!({"name": "secrets", "fields": [{"name": "x", "type": "text"}]})).await;
    let (s, _) = f.as_user(&f.clerk, Method::GET, "/api/collections/secrets/records", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut ws = Ws::connect(&f.t.url, Some(&f.clerk)).await;
    let e = ws.request(json!({"type": "subscribe", "collection": "secrets"})).await;
    assert_eq!(e["code"], "forbidden");
}

#[tokio::test]
async fn forged_expired_wrong_algorithm_and_unsigned_tokens_are_refused() {
    let f = Fixture::start().await;
    let forged = sign("not-the-secret", "c1", "manager", 3600, Map::new()).unwrap();
    let expired = {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("c1"));
        claims.insert("exp".into(), json!(jsonwebtoken::get_current_timestamp() - 30));
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let hs384 = {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("c1"));
        claims.insert("exp".into(), json!(jsonwebtoken::get_current_timestamp() + 300));
        let h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384);
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    };
    // alg confusion: an RS256 header over an HMAC signature made with the shared secret.
    let confused = {
        let good = token("c1", "manager", "finance", 300);
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        parts[0] = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9".into(); // {"typ":"JWT","alg":"RS256"}
        parts.join(".")
    };
    let none =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJjMSIsInJvbGUiOiJtYW5hZ2VyIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    for (name, tok, code) in [
        ("forged", forged.as_str(), "invalid_token"),
        ("expired", expired.as_str(), "token_expired"),
        ("HS384", hs384.as_str(), "invalid_token"),
        ("alg confusion", confused.as_str(), "invalid_token"),
        ("alg none", none, "invalid_token"),
        ("garbage", "abc.def", "invalid_token"),
    ] {
        let (s, e) = f.as_user(tok, Method::GET, "/api/collections/ledger/records", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{name}: {e}");
        assert_eq!(e["error"]["code"], code, "{name}");
        // The socket says why and closes with 4003 (browsers cannot read an HTTP refusal).
        let url = format!("{}/api/realtime?token={tok}", f.t.url.replacen("http", "ws", 1));
        let (mut stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        use futures_util::StreamExt;
        let first = stream.next().await.unwrap().unwrap();
        let e: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some(code)), "{name}");
        match stream.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(c)))) => {
                assert_eq!(u16::from(c.code), 4003)
            }
            other => panic!("{name}: expected close 4003, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_expired_token_stops_deliveries_until_a_fresh_one_resumes_them_without_loss() {
    let f = Fixture::start().await;
    let short = token("c1", "clerk", "warehouse", 2);
    let mut ws = Ws::connect(&f.t.url, Some(&short)).await;
    ws.subscribe("ledger", None, json!({})).await;
    let (e, _) = ws.recv_until(|v| v["type"] == "error").await;
    assert_eq!(e["code"], "token_expired");
    // Missed while expired:
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            f.create_as(&f.clerk, json!({"dept": "warehouse", "title": format!("m{i}")})).await["id"].clone(),
        );
    }
    let ok = ws.request(json!({"type": "auth", "token": f.clerk})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    ids.push(f.create_as(&f.clerk, json!({"dept": "warehouse", "title": "after"})).await["id"].clone());
    for id in ids {
        assert_eq!(ws.next_change().await["id"], id, "every missed event once, in order");
    }
}

#[tokio::test]
async fn rate_limited_callers_get_429_with_retry_after_and_then_recover() {
    let t = TestServer::start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.rate_limit = 20.0;
        c.rate_burst = 5.0;
    })
    .await;
    t.create_collection(ledger()).await;
    let tok = token("c1", "clerk", "warehouse", 300);
    let get = || t.http.get(format!("{}/api/collections/ledger/records", t.url)).bearer_auth(&tok).send();
    let mut limited = None;
    for _ in 0..50 {
        let r = get().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the burst runs out");
    assert!(r.headers().get("retry-after").is_some());
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limited");
    let wait = e["error"]["details"]["retry_after_ms"].as_u64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(wait + 20)).await; // the server said how long
    assert_eq!(get().await.unwrap().status(), StatusCode::OK, "recovered");
    // The admin key is never limited.
    for _ in 0..20 {
        assert_eq!(t.get("/api/collections/ledger/records").await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn websocket_messages_are_rate_limited_per_connection() {
    let t = TestServer::start_with(|c| {
        c.ws_rate_limit = 5.0;
        c.ws_rate_burst = 3.0;
    })
    .await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    for i in 0..10 {
        ws.send(json!({"type": "ping", "ref": i})).await;
    }
    let (e, _) = ws.recv_until(|v| v["type"] == "error").await;
    assert_eq!(e["code"], "rate_limited");
    assert!(e["ref"].is_number(), "the refused request's ref is echoed: {e}");
}

#[tokio::test]
async fn private_channels_follow_channel_rules() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        json!({"channels": [{"pattern": "finance:*", "rule": "auth.dept == \"finance\""},
                            {"pattern": "staff:*", "rule": "auth.role != \"anon\""},
                            {"pattern": "public:*", "rule": "true"}]})
        .to_string(),
    )
    .unwrap();
    let t = TestServer::start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.schema = Some(schema.clone());
    })
    .await;
    let clerk = token("c1", "clerk", "warehouse", 300);
    let acct = token("a1", "clerk", "finance", 300);
    let mut c = Ws::connect(&t.url, Some(&clerk)).await;
    let mut a = Ws::connect(&t.url, Some(&acct)).await;
    let mut anon = Ws::connect(&t.url, None).await;
    assert_eq!(c.request(json!({"type": "join", "channel": "finance:q4"})).await["code"], "forbidden");
    assert_eq!(a.request(json!({"type": "join", "channel": "finance:q4"})).await["type"], "ok");
    assert_eq!(anon.request(json!({"type": "join", "channel": "staff:all"})).await["code"], "forbidden");
    assert_eq!(c.request(json!({"type": "join", "channel": "staff:all"})).await["type"], "ok");
    assert_eq!(
        anon.request(json!({"type": "join", "channel": "lobby"})).await["code"],
        "forbidden",
        "channels no rule covers are closed to anonymous callers"
    );
    assert_eq!(
        c.request(json!({"type": "join", "channel": "lobby"})).await["type"],
        "ok",
        "channels no rule covers admit authenticated callers"
    );
    assert_eq!(
        anon.request(json!({"type": "join", "channel": "public:hall"})).await["type"],
        "ok",
        "a rule opens a channel to anonymous callers explicitly"
    );
    let e =
        c.request(json!({"type": "broadcast", "channel": "finance:q4", "event": "x", "payload": 1})).await;
    assert_eq!(e["code"], "not_joined");
}

#[tokio::test]
async fn rule_syntax_errors_are_reported_when_the_collection_is_saved() {
    let t = TestServer::start().await;
    let mut c = ledger();
    c["rules"]["view"] = json!("record.dept == ");
    let (s, e) = t.post("/api/collections", c).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["details"]["path"], "ledger.rules.view");
    assert!(e["error"]["message"].as_str().unwrap().contains("column"), "{e}");
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let t = TestServer::start_with(|c| c.max_subscriptions = 2).await;
    t.create_collection(ledger()).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.subscribe("ledger", Some("amount=eq.1"), json!({})).await;
    ws.subscribe("ledger", Some("amount=eq.2"), json!({})).await;
    let e = ws.request(json!({"type": "subscribe", "collection": "ledger", "filter": "amount=eq.3"})).await;
    assert_eq!(e["code"], "too_many_subscriptions");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn signed(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, kid: Option<&str>) -> String {
    let mut claims = Map::new();
    claims.insert("sub".into(), json!("u-asym"));
    claims.insert("role".into(), json!("clerk"));
    claims.insert("dept".into(), json!("warehouse"));
    claims.insert("exp".into(), json!(jsonwebtoken::get_current_timestamp() + 300));
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_configured_public_keys() {
    let rsa =
        jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(fixture("test_rsa_private.pem")).unwrap())
            .unwrap();
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(fixture("test_ec_private.pem")).unwrap())
        .unwrap();
    let rs_token = signed(jsonwebtoken::Algorithm::RS256, &rsa, None);
    let es_token = signed(jsonwebtoken::Algorithm::ES256, &ec, Some("k1"));
    let list = |t: &TestServer, tok: String| {
        let req = t.http.get(format!("{}/api/collections/ledger/records", t.url)).bearer_auth(tok);
        async move { req.send().await.unwrap().status() }
    };

    // An RSA public key in PEM: RS256 tokens work; others are refused.
    let t = TestServer::start_with(|c| c.jwt_public_key = Some(fixture("test_rsa_public.pem"))).await;
    t.create_collection(ledger()).await;
    assert_eq!(list(&t, rs_token.clone()).await, StatusCode::OK);
    assert_eq!(list(&t, es_token.clone()).await, StatusCode::UNAUTHORIZED, "no EC key configured");
    assert_eq!(
        list(&t, token("c1", "clerk", "warehouse", 60)).await,
        StatusCode::UNAUTHORIZED,
        "no HS256 secret"
    );

    // A JWKS file with the EC key (kid k1): ES256 tokens work.
    let t = TestServer::start_with(|c| c.jwks = Some(fixture("test_jwks.json"))).await;
    t.create_collection(ledger()).await;
    assert_eq!(list(&t, es_token).await, StatusCode::OK);
    assert_eq!(list(&t, rs_token).await, StatusCode::UNAUTHORIZED);
    let r = f_actor(&t).await;
    assert_eq!(r, "u-asym", "the token's sub is the actor");
}

/// Creates a record with an ES256 user token and returns the actor the change log recorded.
async fn f_actor(t: &TestServer) -> String {
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(fixture("test_ec_private.pem")).unwrap())
        .unwrap();
    let tok = signed(jsonwebtoken::Algorithm::ES256, &ec, Some("k1"));
    let r = t
        .http
        .post(format!("{}/api/collections/ledger/records", t.url))
        .bearer_auth(tok)
        .json(&json!({"dept": "warehouse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    t.changes(0).await.last().unwrap()["actor"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_audit_log_filters_by_collection_record_actor_and_time() {
    let f = Fixture::start().await;
    let a = f.create_as(&f.clerk, json!({"dept": "warehouse", "owner": "c1", "title": "a"})).await;
    let aid = a["id"].as_str().unwrap();
    f.as_user(
        &f.clerk,
        Method::PATCH,
        &format!("/api/collections/ledger/records/{aid}"),
        Some(json!({"title": "a2"})),
    )
    .await;
    f.create_as(&f.accountant, json!({"dept": "finance", "owner": "a1"})).await;
    let mid = f.t.changes(0).await[1]["committed_at"].as_str().unwrap().to_string();
    f.create_as(&f.t.admin_key, json!({"dept": "warehouse", "owner": "x"})).await;

    let events = |q: String| {
        let t = &f.t;
        async move {
            let (s, b) = t.get(&format!("/api/changes?since=0&{q}")).await;
            assert_eq!(s, StatusCode::OK, "{q}: {b}");
            b["events"].as_array().unwrap().clone()
        }
    };
    let by_record = events(format!("record_id={aid}")).await;
    assert_eq!(by_record.iter().map(|e| e["op"].as_str().unwrap()).collect::<Vec<_>>(), ["insert", "update"]);
    assert_eq!(by_record[1]["old"]["title"], "a");
    assert_eq!(by_record[1]["new"]["title"], "a2");
    assert_eq!(events("actor=a1".into()).await.len(), 1);
    assert_eq!(events("actor=admin&collection=ledger".into()).await.len(), 1);
    let from: Vec<u64> =
        events(format!("from={mid}")).await.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(from, [2, 3, 4]);
    let to: Vec<u64> = events(format!("to={mid}")).await.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(to, [1, 2]);
    let (s, e) = f.t.get("/api/changes?since=0&from=yesterday").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
}
