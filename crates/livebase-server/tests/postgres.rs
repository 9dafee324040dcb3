//! The PostgreSQL backend's own promises: every writer's changes are captured from the WAL,
//! in commit order, exactly once (also across `kill -9` and a PostgreSQL restart), and bad
//! configuration gets a clear answer. The behaviour both backends share is specified by the
//! other suites, which `scripts/test` also runs with `LIVEBASE_TEST_BACKEND=postgres`.
//!
//! Each test gets its own database of a throwaway cluster the tests start (`livebase-pgtest`);
//! without PostgreSQL's server binaries they are skipped, except under `CI=true`.

mod common;

use common::process::{http_client, spawn_server, ADMIN_KEY};
use common::ws::Ws;
use common::{config, items_collection, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn pg_server(url: String) -> TestServer {
    TestServer::start_with(|c| c.database = Some(url)).await
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[tokio::test]
async fn a_psql_transaction_reaches_subscribers_as_contiguous_events_in_order_with_old_values() {
    let Some(cluster) = livebase_pgtest::require() else { return };
    let url = cluster.create_database();
    let t = pg_server(url.clone()).await;
    t.create_collection(items_collection()).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.subscribe("items", None, json!({})).await;
    let mine = t.create("items", json!({"title": "from livebase", "qty": 1})).await;
    let first = ws.next_change().await;
    assert_eq!((first["actor"].clone(), first["new"]["id"].clone()), (json!("admin"), mine["id"].clone()));

    let db = sql(&url).await;
    db.batch_execute(
        "BEGIN; \
         INSERT INTO items (id, title, qty, done) VALUES ('ext1', 'from psql', 1, false); \
         UPDATE items SET qty = 2, status = 'late' WHERE id = 'ext1'; \
         DELETE FROM items WHERE id = 'ext1'; \
         COMMIT;",
    )
    .await
    .expect("psql transaction");
    let (ins, upd, del) = (ws.next_change().await, ws.next_change().await, ws.next_change().await);
    let seq = first["seq"].as_u64().expect("seq");
    for (i, (e, op)) in [(&ins, "insert"), (&upd, "update"), (&del, "delete")].into_iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(seq + 1 + i as u64), "contiguous, in commit order: {e}");
        assert_eq!(e["op"], op);
        assert_eq!(e["actor"], Value::Null, "an external write has no actor: {e}");
        assert_eq!(e["committed_at"], ins["committed_at"], "one transaction, one commit time");
    }
    assert_eq!(ins["new"]["version"], 1, "the trigger numbers external inserts: {ins}");
    assert_eq!(ins["new"]["done"], false);
    assert!(ins["new"]["created_at"].as_str().is_some_and(|s| s.ends_with('Z')), "{ins}");
    assert_eq!((upd["old"]["qty"].clone(), upd["new"]["qty"].clone()), (json!(1), json!(2)));
    assert_eq!(upd["new"]["version"], 2, "the trigger bumps version for any writer: {upd}");
    assert_eq!(upd["new"]["status"], "late");
    assert_eq!((del["old"]["qty"].clone(), del["old"]["version"].clone()), (json!(2), json!(2)));
    assert_eq!(del["new"], Value::Null);

    // Optimistic concurrency holds against psql writers: the version psql bumped is current.
    let id = mine["id"].as_str().expect("id");
    db.execute("UPDATE items SET qty = 7 WHERE id = $1", &[&id]).await.expect("external update");
    let bumped = ws.next_change().await;
    assert_eq!(bumped["new"]["version"], 2);
    let (s, e) = t
        .req(
            reqwest::Method::PATCH,
            &format!("/api/collections/items/records/{id}"),
            Some(json!({"qty": 3})),
            &[("If-Match", "1")],
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["details"]["current"]["qty"], 7, "{e}");
}

#[tokio::test]
async fn wrong_wal_level_is_refused_naming_the_setting_and_the_fix() {
    let Some(_) = livebase_pgtest::require() else { return };
    let cluster = livebase_pgtest::Cluster::start_with(&[("wal_level", "replica")]).expect("cluster");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = config(dir.path().to_path_buf());
    c.database = Some(cluster.create_database());
    let err = livebase_server::start(c).await.err().expect("refused").to_string();
    assert!(err.contains("wal_level = replica") && err.contains("wal_level = logical"), "{err}");
    assert!(err.contains("ALTER SYSTEM SET wal_level = logical"), "{err}");
}

#[tokio::test]
async fn unreachable_postgres_is_refused_naming_the_url_and_the_cause() {
    let port = common::process::free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = config(dir.path().to_path_buf());
    c.database = Some(format!("postgres://livebase:secret@127.0.0.1:{port}/app"));
    let err = livebase_server::start(c).await.err().expect("refused").to_string();
    assert!(err.contains(&format!("postgres://livebase:***@127.0.0.1:{port}/app")), "{err}");
    assert!(!err.contains("secret"), "the password is never printed: {err}");
    assert!(err.to_lowercase().contains("refused"), "the cause is named: {err}");
}

/// Repeats a request until it succeeds (PostgreSQL coming back); bounded.
/// PostgreSQL decodes a commit from the WAL a moment before the committed rows are visible to
/// other sessions; a write is answered only once both hold, so any read that follows sees it.
#[tokio::test]
async fn an_answered_write_is_seen_by_every_read_that_follows() {
    let Some(cluster) = livebase_pgtest::require() else { return };
    let t = std::sync::Arc::new(pg_server(cluster.create_database()).await);
    t.create_collection(items_collection()).await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let t = t.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let r = t.create("items", json!({"title": format!("w{w}-{i}")})).await;
                    let path = format!("/api/collections/items/records/{}", r["id"].as_str().expect("id"));
                    let (s, got) = t.get(&path).await;
                    assert_eq!(
                        (s, got["version"].clone()),
                        (StatusCode::OK, json!(1)),
                        "created then read: {got}"
                    );
                    let (s, _) = t.patch(&path, json!({"qty": i})).await;
                    assert_eq!(s, StatusCode::OK);
                    let (_, got) = t.get(&path).await;
                    assert_eq!(got["version"], 2, "updated then read: {got}");
                    let (s, _) = t.delete(&path).await;
                    assert_eq!(s, StatusCode::OK);
                    let (s, got) = t.get(&path).await;
                    assert_eq!(s, StatusCode::NOT_FOUND, "deleted then read: {got}");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
}

async fn until_created(t: &TestServer, title: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, b) = t.post("/api/collections/items/records", json!({"title": title})).await;
        if s == StatusCode::CREATED {
            return b;
        }
        assert!(Instant::now() < deadline, "writes did not recover: {s} {b}");
        // Waiting for an outside process to come back: there is no event to await.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn postgres_restarting_gives_503_meanwhile_and_the_capture_continues_with_nothing_lost() {
    let Some(_) = livebase_pgtest::require() else { return };
    let cluster = std::sync::Arc::new(livebase_pgtest::Cluster::start().expect("own cluster"));
    let url = cluster.create_database();
    let t = pg_server(url.clone()).await;
    t.create_collection(items_collection()).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.subscribe("items", None, json!({})).await;
    t.create("items", json!({"title": "before"})).await;
    let before = ws.next_change().await;

    // Off the runtime's thread: a stopping server waits for Livebase's capture to confirm
    // the end of its WAL, and the capture runs on this runtime.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.expect("join").expect("stop PostgreSQL");
    let (s, e) = t.post("/api/collections/items/records", json!({"title": "while down"})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert_eq!(e["error"]["code"], "database_unavailable");
    let (s, _) = t.get("/api/collections/items/records").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .expect("join")
        .expect("start PostgreSQL again");
    until_created(&t, "after").await;
    sql(&url)
        .await
        .execute("INSERT INTO items (title) VALUES ('external after')", &[])
        .await
        .expect("insert");
    let a = ws.next_change().await;
    let b = ws.next_change().await;
    let s0 = before["seq"].as_u64().expect("seq");
    assert_eq!((a["seq"].as_u64(), a["new"]["title"].clone()), (Some(s0 + 1), json!("after")));
    assert_eq!((b["seq"].as_u64(), b["new"]["title"].clone()), (Some(s0 + 2), json!("external after")));
    let (_, log) = t.get("/api/changes?since=0").await;
    let titles: Vec<Value> =
        log["events"].as_array().expect("events").iter().map(|e| e["new"]["title"].clone()).collect();
    assert_eq!(
        titles,
        vec![json!("before"), json!("after"), json!("external after")],
        "nothing lost, nothing twice"
    );
}

const EXTERNAL_WRITES: i64 = 300;
const KILL_AT: i64 = 100;

#[tokio::test]
async fn kill_9_while_external_writes_continue_loses_and_repeats_nothing() {
    let Some(cluster) = livebase_pgtest::require() else { return };
    let url = cluster.create_database();
    let data = tempfile::tempdir().expect("temp dir");
    let log = data.path().join("server.log");
    let args = ["--database", url.as_str()];
    let mut server = spawn_server(data.path(), &log, &args).await;
    let http = http_client();
    let r = http
        .post(format!("{}/api/collections", server.url))
        .bearer_auth(ADMIN_KEY)
        .json(&items_collection())
        .send()
        .await
        .expect("create collection");
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut ws = Ws::connect(&server.url, Some(ADMIN_KEY)).await;
    ws.subscribe("items", None, json!({})).await;

    // An external writer commits single-row transactions throughout; Livebase is killed a
    // third of the way in and restarted after the writer is done.
    let db = sql(&url).await;
    let mut seen: Vec<(u64, i64)> = Vec::new();
    for n in 0..EXTERNAL_WRITES {
        db.execute("INSERT INTO items (title, qty) VALUES ('ext', $1)", &[&n])
            .await
            .expect("external insert");
        if n == KILL_AT {
            // Take part of what was captured so far, then crash mid-stream.
            while seen.last().is_none_or(|s| s.1 < KILL_AT / 2) {
                let c = ws.next_change().await;
                seen.push((c["seq"].as_u64().expect("seq"), c["new"]["qty"].as_i64().expect("qty")));
            }
            server.kill_9();
        }
    }
    let server = spawn_server(data.path(), &log, &args).await;
    let since = seen.last().map(|s| s.0).expect("events before the crash");
    let mut ws = Ws::connect(&server.url, Some(ADMIN_KEY)).await;
    ws.subscribe("items", None, json!({"since": since})).await;
    while seen.last().map(|s| s.1) != Some(EXTERNAL_WRITES - 1) {
        let c = ws.next_change().await;
        seen.push((c["seq"].as_u64().expect("seq"), c["new"]["qty"].as_i64().expect("qty")));
    }
    let qtys: Vec<i64> = seen.iter().map(|s| s.1).collect();
    assert_eq!(qtys, (0..EXTERNAL_WRITES).collect::<Vec<_>>(), "every change once, in commit order");
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=EXTERNAL_WRITES as u64).collect::<Vec<_>>(), "gap-free sequence across the crash");
    let r = http
        .get(format!("{}/api/changes?since={}&limit=10", server.url, EXTERNAL_WRITES - 1))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("changes");
    let b: Value = r.json().await.expect("body");
    assert_eq!(b["head"], EXTERNAL_WRITES, "the durable log holds each change once: {b}");
}

#[tokio::test]
async fn metrics_show_capture_lag_and_slot_retention_and_drop_slot_decommissions() {
    let Some(cluster) = livebase_pgtest::require() else { return };
    let url = cluster.create_database();
    let mut t = pg_server(url.clone()).await;
    t.create_collection(items_collection()).await;
    t.create("items", json!({"title": "x"})).await;
    // The gauges are sampled once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text =
            t.http.get(format!("{}/metrics", t.url)).bearer_auth(&t.admin_key).send().await.expect("metrics");
        let text = text.text().await.expect("body");
        if text.contains("livebase_pg_capture_connected 1") {
            break text;
        }
        assert!(Instant::now() < deadline, "capture gauges never sampled:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("livebase_pg_replication_lag_bytes "), "{text}");
    assert!(text.contains("livebase_pg_slot_retained_bytes "), "{text}");

    let db = sql(&url).await;
    let count = "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()) \
                 + (SELECT count(*) FROM pg_publication)";
    let n: i64 = db.query_one(count, &[]).await.expect("count").get(0);
    assert_eq!(n, 2, "one slot and one publication while Livebase is deployed");
    let refused = livebase_store::postgres::drop_slot(&url, None).await;
    assert!(refused.is_err(), "a slot in use is not dropped: {refused:?}");
    if let Some(s) = t.server.take() {
        s.shutdown().await;
    }
    let dropped = livebase_store::postgres::drop_slot(&url, None).await.expect("drop");
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    let n: i64 = db.query_one(count, &[]).await.expect("count").get(0);
    assert_eq!(n, 0, "nothing left to retain WAL");
}

#[tokio::test]
async fn a_second_livebase_on_the_same_database_is_refused_naming_the_slot() {
    let Some(cluster) = livebase_pgtest::require() else { return };
    let url = cluster.create_database();
    let _first = pg_server(url.clone()).await;
    // Until the first one's capture holds the slot.
    let db = sql(&url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !db
        .query_one("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE database = current_database()", &[])
        .await
        .expect("slots")
        .get::<_, bool>(0)
    {
        assert!(Instant::now() < deadline, "the first Livebase never started capturing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = config(dir.path().to_path_buf());
    c.database = Some(url);
    let err = livebase_server::start(c).await.err().expect("refused").to_string();
    assert!(err.contains("replication slot livebase_") && err.contains("in use"), "{err}");
}
