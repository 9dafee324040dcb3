//! Several nodes on one PostgreSQL database share one change log through JetStream: every
//! subscriber, whichever node it is on, sees every change once, in one order, with the same
//! sequence numbers; a client resumes on another node; and when the capturing node is
//! killed, another takes over and nothing is lost or duplicated. Each node is a separate
//! process of the real binary; the tests start their own `nats-server` and PostgreSQL.

mod common;

use common::nats::{self, Nats};
use common::process::{http_client, spawn_server, ServerProcess, ADMIN_KEY};
use common::ws::Ws;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Node {
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

const JWT_SECRET: &str = "cluster-test-secret";

async fn node(nats: &Nats, db: &str, id: &str) -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("server.log");
    let args = ["--nats", &nats.url, "--database", db, "--node-id", id, "--jwt-secret", JWT_SECRET];
    let process = spawn_server(dir.path(), &log, &args).await;
    Node { process, _dir: dir }
}

async fn post(url: &str, path: &str, body: Value) -> (u16, Value) {
    let r = http_client()
        .post(format!("{url}{path}"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create_items(url: &str) {
    let (s, b) = post(
        url,
        "/api/collections",
        json!({"name": "items", "fields": [{"name": "title", "type": "text"}, {"name": "n", "type": "integer"}]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

/// Waits until some node leads (holds the capture lease); returns its index.
async fn leader(nodes: &[&Node]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            let Ok(r) = http_client().get(format!("{}/metrics", n.process.url)).send().await else {
                continue;
            };
            let text = r.text().await.unwrap_or_default();
            if text.lines().any(|l| l == "livebase_cluster_leader 1") {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no node took the capture lease within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Collects `count` change events of `items` from `ws`, as (seq, id, op).
async fn changes(ws: &mut Ws, count: usize) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    while out.len() < count {
        let f = tokio::time::timeout(Duration::from_secs(30), ws.next_change())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} changes arrived within 30 s", out.len()));
        out.push((
            f["seq"].as_u64().expect("seq"),
            f["new"]["id"].as_str().or(f["old"]["id"].as_str()).unwrap_or_default().to_string(),
            f["op"].as_str().unwrap_or_default().to_string(),
        ));
    }
    out
}

fn assert_gap_free(events: &[(u64, String, String)]) {
    for w in events.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "consecutive sequence numbers, each once: {:?} then {:?}", w[0], w[1]);
    }
}

#[tokio::test]
async fn every_node_delivers_every_change_in_one_order_and_a_client_resumes_on_another_node() {
    let Some(nats) = nats::require() else { return };
    let Some(pg) = livebase_pgtest::require() else { return };
    let db = pg.create_database();
    let a = node(&nats, &db, "a").await;
    let b = node(&nats, &db, "b").await;
    let c = node(&nats, &db, "c").await;
    leader(&[&a, &b, &c]).await;
    // A collection created on one node is known to the others (its definition travels in the log).
    create_items(&a.process.url).await;
    let mut subs = Vec::new();
    for n in [&a, &b, &c] {
        let (ws, r) = subscribe_items(&n.process.url).await;
        subs.push((ws, r["epoch"].as_str().unwrap_or_default().to_string()));
    }
    assert!(subs.iter().all(|(_, e)| e == &subs[0].1 && e.len() == 32), "one epoch on every node");

    // Writes through every node, and one from outside Livebase.
    for i in 0..30 {
        let n = [&a, &b, &c][i % 3];
        let (s, body) =
            post(&n.process.url, "/api/collections/items/records", json!({"title": "w", "n": i})).await;
        assert_eq!(s, 201, "{body}");
    }
    let (sql, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.expect("psql");
    tokio::spawn(conn);
    sql.batch_execute("INSERT INTO items (id, title, n) VALUES ('ext', 'psql', 99)")
        .await
        .expect("psql insert");

    let mut seen = Vec::new();
    for (ws, _) in subs.iter_mut() {
        seen.push(changes(ws, 31).await);
    }
    assert_gap_free(&seen[0]);
    assert!(seen.iter().all(|s| s == &seen[0]), "every node delivers the same events in the same order");
    assert!(seen[0].iter().any(|(_, id, _)| id == "ext"), "an external write is in the log too");

    // A client of node c goes away at a known position and resumes on node a.
    let (gone, epoch) = subs.pop().expect("c's subscriber");
    let at = seen[2][14].0;
    drop(gone);
    for i in 0..5 {
        let (s, body) =
            post(&b.process.url, "/api/collections/items/records", json!({"title": "later", "n": i})).await;
        assert_eq!(s, 201, "{body}");
    }
    let mut back = Ws::connect(&a.process.url, Some(ADMIN_KEY)).await;
    let r =
        back.request(json!({"type": "subscribe", "collection": "items", "since": at, "epoch": epoch})).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let resumed = changes(&mut back, 31 - 15 + 5).await;
    assert_eq!(resumed[0].0, at + 1, "resumes right after its last sequence");
    assert_eq!(&resumed[..16], &seen[0][15..], "the same events on the other node");
    assert_gap_free(&resumed);
}

#[tokio::test]
async fn killing_the_capturing_node_mid_stream_loses_and_duplicates_nothing_on_the_surviving_nodes() {
    let Some(nats) = nats::require() else { return };
    let Some(pg) = livebase_pgtest::require() else { return };
    let db = pg.create_database();
    let mut nodes = [node(&nats, &db, "a").await, node(&nats, &db, "b").await, node(&nats, &db, "c").await];
    let lead = leader(&nodes.iter().collect::<Vec<_>>()).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != lead).collect();
    create_items(&nodes[survivors[0]].process.url).await;
    let mut subs = Vec::new();
    for &i in &survivors {
        subs.push(subscribe_items(&nodes[i].process.url).await.0);
    }

    // A client of the capturing node: it will reconnect to another node and resume. (That node
    // too learns of the collection through the log, a moment after the node that created it.)
    let (mut on_dead, r) = subscribe_items(&nodes[lead].process.url).await;
    let epoch = r["epoch"].as_str().expect("epoch").to_string();

    // A stream of writes through the surviving nodes (REST, each retried until acknowledged,
    // with an idempotency key so a retry never writes twice) and from psql.
    const WRITES: usize = 120;
    let urls: Vec<String> = survivors.iter().map(|&i| nodes[i].process.url.clone()).collect();
    let writer = tokio::spawn(async move {
        let http = http_client();
        let (sql, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.expect("psql");
        tokio::spawn(conn);
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut ids = Vec::new();
        for i in 0..WRITES {
            if i % 10 == 9 {
                let id = format!("ext{i}");
                sql.batch_execute(&format!("INSERT INTO items (id, title, n) VALUES ('{id}', 'psql', {i})"))
                    .await
                    .expect("psql insert");
                ids.push(id);
                continue;
            }
            loop {
                assert!(Instant::now() < deadline, "writes were not acknowledged within 90 s");
                let r = http
                    .post(format!("{}/api/collections/items/records", urls[i % urls.len()]))
                    .bearer_auth(ADMIN_KEY)
                    .header("Idempotency-Key", format!("w{i}"))
                    .json(&json!({"title": "w", "n": i}))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status().as_u16() == 201 || r.status().as_u16() == 200 {
                        let v: Value = r.json().await.expect("json");
                        ids.push(v["id"].as_str().expect("id").to_string());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ids
    });
    // Kill -9 the capturer once the stream is under way.
    let first = changes(&mut subs[0], 20).await;
    let before_kill = changes(&mut on_dead, 10).await;
    nodes[lead].process.kill_9();
    let killed = Instant::now();
    leader(&survivors.iter().map(|&i| &nodes[i]).collect::<Vec<_>>()).await;
    let took_over = killed.elapsed();
    assert!(took_over < Duration::from_secs(10), "another node captures within 10 s, took {took_over:?}");
    let ids = writer.await.expect("writer");
    assert_eq!(ids.len(), WRITES);
    let rest = changes(&mut subs[0], WRITES - 20).await;
    let all: Vec<_> = first.into_iter().chain(rest).collect();
    let other = changes(&mut subs[1], WRITES).await;
    assert_eq!(all, other, "both surviving nodes deliver the same events in the same order");
    assert_gap_free(&all);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, id, _) in &all {
        *count.entry(id.as_str()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(count.get(id.as_str()), Some(&1), "write {id} delivered exactly once");
    }
    // The dead node's client resumes on a survivor from its last sequence: nothing missing.
    let mut resumed = Ws::connect(&nodes[survivors[1]].process.url, Some(ADMIN_KEY)).await;
    let since = before_kill.last().expect("ten changes").0;
    let r = resumed
        .request(json!({"type": "subscribe", "collection": "items", "since": since, "epoch": epoch}))
        .await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(before_kill[..], all[..10]);
    assert_eq!(
        changes(&mut resumed, WRITES - 10).await,
        all[10..],
        "resumed on another node with nothing missing"
    );
    // Nothing more arrives: no duplicate was queued behind.
    let extra = tokio::time::timeout(Duration::from_millis(500), subs[0].next_change()).await;
    assert!(extra.is_err(), "no event twice: {extra:?}");
}

#[tokio::test]
async fn the_shared_log_survives_a_nats_restart_and_delivers_what_was_written_meanwhile() {
    let Some(mut nats) = nats::require() else { return };
    let Some(pg) = livebase_pgtest::require() else { return };
    let db = pg.create_database();
    let a = node(&nats, &db, "a").await;
    let b = node(&nats, &db, "b").await;
    leader(&[&a, &b]).await;
    create_items(&a.process.url).await;
    let mut watcher = subscribe_items(&b.process.url).await.0;
    let (s, body) = post(&a.process.url, "/api/collections/items/records", json!({"title": "before"})).await;
    assert_eq!(s, 201, "{body}");
    let before = changes(&mut watcher, 1).await;

    nats.stop();
    // Committed while the log cannot be shared; answered once it is again (or 10 s after the
    // commit at the latest).
    let url = a.process.url.clone();
    let during = tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        let r = http
            .post(format!("{url}/api/collections/items/records"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"title": "during"}))
            .send()
            .await
            .expect("the write during the outage is answered");
        r.status().as_u16()
    });
    let (sql, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.expect("psql");
    tokio::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = sql
            .query_one("SELECT count(*) FROM items WHERE title = 'during'", &[])
            .await
            .and_then(|r| r.try_get(0))
            .expect("count");
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the write during the outage did not commit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nats.start_again();
    assert_eq!(during.await.expect("write task"), 201);
    for i in 0..5 {
        let (s, body) =
            post(&b.process.url, "/api/collections/items/records", json!({"title": "after", "n": i})).await;
        assert_eq!(s, 201, "{body}");
    }
    let after = changes(&mut watcher, 6).await;
    assert_eq!(after[0].0, before[0].0 + 1, "the write made during the outage comes first");
    assert_gap_free(&after);
}

#[tokio::test]
async fn rules_are_decided_on_the_node_that_holds_the_subscriber_whichever_node_wrote() {
    let Some(nats) = nats::require() else { return };
    let Some(pg) = livebase_pgtest::require() else { return };
    let db = pg.create_database();
    let a = node(&nats, &db, "a").await;
    let b = node(&nats, &db, "b").await;
    leader(&[&a, &b]).await;
    let (s, body) = post(
        &a.process.url,
        "/api/collections",
        json!({"name": "notes", "fields": [{"name": "owner", "type": "text"}, {"name": "text", "type": "text"}],
               "rules": {"list": "auth.role == \"user\"", "view": "record.owner == auth.sub"}}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let token =
        livebase_server::auth::sign(JWT_SECRET, "ann", "user", 3600, Default::default()).expect("token");
    let mut ann = loop {
        let mut ws = Ws::connect(&b.process.url, Some(&token)).await;
        let r = ws.request(json!({"type": "subscribe", "collection": "notes"})).await;
        if r["type"] == "subscribed" {
            break ws;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (owner, text) in [("bob", "not for ann"), ("ann", "for ann"), ("bob", "again not")] {
        let (s, body) =
            post(&a.process.url, "/api/collections/notes/records", json!({"owner": owner, "text": text}))
                .await;
        assert_eq!(s, 201, "{body}");
    }
    // A marker ann may see, written last: everything before it has been decided.
    let (s, body) =
        post(&a.process.url, "/api/collections/notes/records", json!({"owner": "ann", "text": "end"})).await;
    assert_eq!(s, 201, "{body}");
    let mut texts = Vec::new();
    loop {
        let f =
            tokio::time::timeout(Duration::from_secs(30), ann.next_change()).await.expect("ann's changes");
        let t = f["new"]["text"].as_str().unwrap_or_default().to_string();
        texts.push(t.clone());
        if t == "end" {
            break;
        }
    }
    assert_eq!(texts, ["for ann", "end"], "node b shows ann only her rows, written on node a");
    // A user's list through node b obeys the same rule.
    let r = http_client()
        .get(format!("{}/api/collections/notes/records", b.process.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list");
    let v: Value = r.json().await.expect("json");
    let owners: Vec<&str> =
        v["items"].as_array().expect("items").iter().filter_map(|r| r["owner"].as_str()).collect();
    assert_eq!(owners, ["ann", "ann"], "{v}");
}

/// A subscription to `items` on the node at `url`, once that node knows the collection (its
/// definition reaches the other nodes through the log): the socket and the `subscribed` reply.
async fn subscribe_items(url: &str) -> (Ws, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ws = Ws::connect(url, Some(ADMIN_KEY)).await;
        let r = ws.request(json!({"type": "subscribe", "collection": "items"})).await;
        if r["type"] == "subscribed" {
            return (ws, r);
        }
        assert!(Instant::now() < deadline, "node never learned the new collection: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
