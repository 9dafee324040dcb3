//! The client against a real in-process server: REST helpers, subscriptions, live queries,
//! resume after dropped sockets and server restarts, presence and broadcast, live aggregates.

use livebase_client::{
    Backoff, ChannelMessage, Client, Error, LiveAggregate, LiveQuery, MutationOptions, Op, RealtimeConfig,
    RealtimeHandle, Status, SubEvent, Subscription, View,
};
use livebase_server::{Config, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(15);
const ADMIN: &str = "test-admin-key";

async fn start_in(dir: &Path, f: impl FnOnce(&mut Config)) -> Server {
    let mut c = Config::for_dir(dir.to_path_buf());
    c.admin_key = Some(ADMIN.into());
    f(&mut c);
    livebase_server::start(c).await.expect("server starts")
}

fn items() -> Value {
    json!({"name": "items", "fields": [
        {"name": "title", "type": "text", "required": true, "max": 100},
        {"name": "qty", "type": "integer", "min": 0},
        {"name": "status", "type": "select", "values": ["open", "late", "done"]}],
        "conflict": "reject"})
}

fn fast() -> RealtimeConfig {
    RealtimeConfig {
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(200)),
        ..RealtimeConfig::default()
    }
}

async fn setup() -> (tempfile::TempDir, Server, Client) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_in(dir.path(), |_| {}).await;
    let client = Client::new(&server.url()).with_token(ADMIN);
    client.create_collection(items()).await.expect("create collection");
    (dir, server, client)
}

async fn next_event(sub: &mut Subscription) -> SubEvent {
    timeout(WAIT, sub.next()).await.expect("an event in time").expect("subscription open")
}

async fn next_change(sub: &mut Subscription) -> livebase_client::Change {
    match next_event(sub).await {
        SubEvent::Change(c) => c,
        other => panic!("expected a change, got {other:?}"),
    }
}

async fn next_message(ch: &mut livebase_client::Channel) -> ChannelMessage {
    timeout(WAIT, ch.next()).await.expect("a channel message in time").expect("channel open")
}

/// The head of the change log.
async fn head(client: &Client) -> u64 {
    let v = client.changes(0, 1).await.expect("changes");
    v["head"].as_u64().expect("head")
}

fn id_of(r: &Value) -> String {
    r["id"].as_str().expect("record id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_helpers_cover_crud_concurrency_idempotency_and_errors() {
    let (_dir, server, client) = setup().await;
    let a = client.create("items", json!({"title": "a", "qty": 3})).await.expect("create");
    assert_eq!(a["version"], 1);
    let id = id_of(&a);
    assert_eq!(client.get("items", &id).await.expect("get"), a);

    let b = client
        .create_with_id("items", "local-1", json!({"title": "b", "qty": 9}))
        .await
        .expect("create with id");
    assert_eq!(b["id"], "local-1");

    let up =
        client.update("items", &id, json!({"qty": 4}), Some(1)).await.expect("update at the right version");
    assert_eq!((up["version"].as_i64(), up["qty"].as_i64()), (Some(2), Some(4)));
    match client.update("items", &id, json!({"qty": 5}), Some(1)).await {
        Err(Error::Conflict { current, .. }) => assert_eq!(current["version"], 2),
        other => panic!("expected a conflict, got {other:?}"),
    }

    let page = client.list("items", "qty=gt.3&order=qty.desc").await.expect("list");
    let ids: Vec<String> = page.items.iter().map(id_of).collect();
    assert_eq!(ids, vec!["local-1".to_string(), id.clone()]);

    // Idempotency: the retry is answered with the first response, not applied again.
    let opts = MutationOptions::new().idempotency_key("create-c");
    let c1 = client.create_with("items", json!({"title": "c"}), &opts).await.expect("first");
    let c2 = client.create_with("items", json!({"title": "c"}), &opts).await.expect("replay");
    assert_eq!(c1, c2);
    assert_eq!(client.list_all("items", "title=eq.c").await.expect("list").len(), 1);

    let results = client
        .batch(
            "items",
            json!([
                {"op": "create", "data": {"title": "d"}},
                {"op": "update", "id": "local-1", "data": {"qty": 10}, "if_version": 1},
            ]),
        )
        .await
        .expect("batch");
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["record"]["qty"], 10);

    match client.create("items", json!({"qty": -1})).await {
        Err(e @ Error::Api { .. }) => {
            assert_eq!(e.status(), Some(422));
            assert_eq!(e.code(), Some("validation_failed"));
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    match client.get("items", "nope").await {
        Err(e) => assert_eq!((e.status(), e.code()), (Some(404), Some("not_found"))),
        Ok(v) => panic!("found {v}"),
    }
    let deleted = client.delete("items", &id, Some(2)).await.expect("delete");
    assert_eq!(deleted["id"], id.as_str());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_receives_rest_writes_with_new_and_old() {
    let (_dir, server, client) = setup().await;
    let rt = client.realtime_with(fast());
    let mut sub = rt.subscribe("items", None).await.expect("subscribe");
    assert_eq!(*rt.status().borrow(), Status::Connected);
    assert!(rt.conn_id().is_some());

    let r = client.create("items", json!({"title": "a", "qty": 1})).await.expect("create");
    let id = id_of(&r);
    let c = next_change(&mut sub).await;
    assert_eq!((c.op, c.view), (Op::Insert, View::Add));
    assert_eq!(c.id, id);
    assert_eq!(c.new.as_ref(), Some(&r));
    assert_eq!(c.old, None);
    assert_eq!(c.actor.as_deref(), Some("admin"));
    assert_eq!(c.version, 1);
    assert_eq!(sub.seq(), Some(c.seq));

    let up = client.update("items", &id, json!({"qty": 2}), None).await.expect("update");
    let c2 = next_change(&mut sub).await;
    assert_eq!((c2.op, c2.view), (Op::Update, View::Update));
    assert_eq!(c2.new.as_ref(), Some(&up));
    assert_eq!(c2.old.as_ref(), Some(&r));
    assert!(c2.seq > c.seq);

    client.delete("items", &id, None).await.expect("delete");
    let c3 = next_change(&mut sub).await;
    assert_eq!((c3.op, c3.view), (Op::Delete, View::Remove));
    assert_eq!(c3.new, None);
    assert_eq!(c3.old.as_ref(), Some(&up));

    // A filtered subscription sees moves in and out of the filter as add / remove.
    let mut big = rt.subscribe("items", Some("qty=gt.5")).await.expect("filtered");
    let r = client.create("items", json!({"title": "m", "qty": 1})).await.expect("create");
    let id = id_of(&r);
    client.update("items", &id, json!({"qty": 7}), None).await.expect("in");
    client.update("items", &id, json!({"qty": 8}), None).await.expect("still in");
    client.update("items", &id, json!({"qty": 2}), None).await.expect("out");
    let views: Vec<View> =
        [next_change(&mut big).await, next_change(&mut big).await, next_change(&mut big).await]
            .iter()
            .map(|c| c.view)
            .collect();
    assert_eq!(views, vec![View::Add, View::Update, View::Remove]);

    // Requests the server refuses fail with its code; the connection stays usable.
    let e = rt.subscribe("nope", None).await.expect_err("unknown collection");
    assert_eq!(e.code(), Some("collection_not_found"));
    let e = rt.subscribe("items", Some("qty=gtx.5")).await.expect_err("bad filter");
    assert_eq!(e.code(), Some("bad_filter"));
    let e = rt.subscribe("items", Some("qty=gt.5")).await.expect_err("same query twice");
    assert_eq!(e.code(), Some("already_subscribed"));
    let rtt = rt.ping().await.expect("ping");
    assert!(rtt < WAIT);

    // Unsubscribing frees the query for a new subscription.
    big.unsubscribe().await.expect("unsubscribe");
    let _again = rt.subscribe("items", Some("qty=gt.5")).await.expect("subscribe again");
    rt.close().await;
    assert_eq!(*rt.status().borrow(), Status::Disconnected);
    // Queued events are still readable, then the stream ends.
    let queued = timeout(WAIT, async {
        let mut n = 0;
        while sub.next().await.is_some() {
            n += 1;
        }
        n
    })
    .await
    .expect("the stream ends");
    assert_eq!(queued, 4, "the filtered writes also reached the unfiltered subscription");
    server.shutdown().await;
}

/// Random writes that move rows in and out of `qty=gt.5`.
async fn random_writes(client: &Client, rng: &mut StdRng, n: usize, live: &mut Vec<(String, i64)>) {
    for _ in 0..n {
        let roll = rng.random_range(0..10);
        if live.is_empty() || roll < 4 {
            let qty = rng.random_range(0..10);
            let r = client.create("items", json!({"title": "r", "qty": qty})).await.expect("create");
            live.push((id_of(&r), 1));
        } else if roll < 8 {
            let i = rng.random_range(0..live.len());
            let qty = rng.random_range(0..10);
            let r = client
                .update("items", &live[i].0, json!({"qty": qty}), Some(live[i].1))
                .await
                .expect("update");
            live[i].1 = r["version"].as_i64().expect("version");
        } else {
            let i = rng.random_range(0..live.len());
            let (id, v) = live.swap_remove(i);
            client.delete("items", &id, Some(v)).await.expect("delete");
        }
    }
}

/// Writes a row matching the filter and waits until the live query holds it: every earlier
/// change has then been applied.
async fn settle(client: &Client, lq: &mut LiveQuery) -> String {
    let r = client.create("items", json!({"title": "sentinel", "qty": 100})).await.expect("sentinel");
    let id = id_of(&r);
    timeout(WAIT, async {
        while !lq.rows().contains_key(&id) {
            lq.changed().await.expect("live query open");
        }
    })
    .await
    .expect("the sentinel arrives");
    id
}

async fn assert_equal_to_rest(client: &Client, lq: &LiveQuery, filter: &str) {
    let rest: BTreeMap<String, Value> =
        client.list_all("items", filter).await.expect("list").into_iter().map(|r| (id_of(&r), r)).collect();
    assert_eq!(lq.rows(), &rest, "live query differs from the REST list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_query_stays_equal_to_the_rest_list() {
    let (_dir, server, client) = setup().await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut live = Vec::new();
    random_writes(&client, &mut rng, 40, &mut live).await;

    let rt = client.realtime_with(fast());
    let mut lq = rt.live_query("items", Some("qty=gt.5")).await.expect("live query");
    assert_equal_to_rest(&client, &lq, "qty=gt.5").await;

    random_writes(&client, &mut rng, 150, &mut live).await;
    settle(&client, &mut lq).await;
    assert_equal_to_rest(&client, &lq, "qty=gt.5").await;

    // Dropped sockets in the middle of writes: the cache still converges.
    for _ in 0..3 {
        rt.reconnect();
        random_writes(&client, &mut rng, 30, &mut live).await;
    }
    settle(&client, &mut lq).await;
    assert_equal_to_rest(&client, &lq, "qty=gt.5").await;
    rt.close().await;
    server.shutdown().await;
}

/// Collects changes until one with `seq >= until`.
async fn collect_until(sub: &mut Subscription, until: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    timeout(WAIT, async {
        while seqs.last().is_none_or(|s| *s < until) {
            match sub.next().await.expect("subscription open") {
                SubEvent::Change(c) => seqs.push(c.seq),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("every change arrives");
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_dropped_sockets_has_no_gap_and_no_duplicate() {
    let (_dir, server, client) = setup().await;
    let rt = client.realtime_with(fast());
    let mut sub = rt.subscribe("items", None).await.expect("subscribe");
    let start = head(&client).await;

    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..120 {
                client
                    .create("items", json!({"title": format!("w{i}"), "qty": i % 10}))
                    .await
                    .expect("create");
            }
        })
    };
    // Drop the socket repeatedly while writes flow.
    let kicker = {
        let rt = rt.clone();
        tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                rt.reconnect();
            }
        })
    };
    writer.await.expect("writer");
    kicker.await.expect("kicker");
    let end = head(&client).await;
    let seqs = collect_until(&mut sub, end).await;
    let expected: Vec<u64> = (start + 1..=end).collect();
    assert_eq!(seqs, expected, "every change once, in order");
    assert!(sub.try_next().is_none());
    rt.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_a_server_restart_on_a_new_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = start_in(dir.path(), |_| {}).await;
    let client = Client::new(&a.url()).with_token(ADMIN);
    client.create_collection(items()).await.expect("collection");
    let rt = client.realtime_with(fast());
    let mut sub = rt.subscribe("items", None).await.expect("subscribe");
    let mut lq = rt.live_query("items", Some("qty=gt.5")).await.expect("live query");
    let start = head(&client).await;
    let mut rng = StdRng::seed_from_u64(5);
    let mut live = Vec::new();
    random_writes(&client, &mut rng, 30, &mut live).await;

    // Stop A; write on B (same data, new port) while the client is still away.
    a.shutdown().await;
    let b = start_in(dir.path(), |_| {}).await;
    let client = Client::new(&b.url()).with_token(ADMIN);
    random_writes(&client, &mut rng, 30, &mut live).await;
    rt.set_url(&b.url());
    // `Server::shutdown` leaves upgraded WebSockets open (no 1001 close), so the client may
    // still hold a socket to A: drop it.
    rt.reconnect();
    timeout(WAIT, rt.wait_connected()).await.expect("reconnects in time").expect("connected to B");
    random_writes(&client, &mut rng, 30, &mut live).await;

    let end = head(&client).await;
    let seqs = collect_until(&mut sub, end).await;
    assert_eq!(seqs, (start + 1..=end).collect::<Vec<u64>>());
    settle(&client, &mut lq).await;
    assert_equal_to_rest(&client, &lq, "qty=gt.5").await;
    rt.close().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_log_means_resync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = start_in(dir.path(), |c| c.retain_events = 5).await;
    let client = Client::new(&a.url()).with_token(ADMIN);
    client.create_collection(items()).await.expect("collection");
    for i in 0..40 {
        client.create("items", json!({"title": format!("t{i}"), "qty": 7})).await.expect("create");
    }
    // A fresh server has nothing in memory: the resume point must come from the log.
    a.shutdown().await;
    let b = start_in(dir.path(), |c| c.retain_events = 5).await;
    let client = Client::new(&b.url()).with_token(ADMIN);
    let rt = client.realtime_with(fast());
    let mut sub = rt.subscribe_since("items", None, 1).await.expect("subscribe");
    match next_event(&mut sub).await {
        SubEvent::ResyncRequired { reason } => assert_eq!(reason, "log_trimmed"),
        other => panic!("expected resync_required, got {other:?}"),
    }
    // It continues live.
    let r = client.create("items", json!({"title": "after", "qty": 1})).await.expect("create");
    assert_eq!(next_change(&mut sub).await.id, id_of(&r));
    rt.close().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_broadcast_between_two_clients() {
    let (_dir, server, client) = setup().await;
    let ada = client.realtime_with(fast());
    let bob = client.realtime_with(fast());
    let mut ada_room = ada.join("room:1").await.expect("ada joins");
    let mut bob_room = bob.join("room:1").await.expect("bob joins");
    assert!(matches!(next_message(&mut ada_room).await, ChannelMessage::PresenceState(_)));
    assert!(matches!(next_message(&mut bob_room).await, ChannelMessage::PresenceState(_)));
    let e = ada.join("room:1").await.expect_err("joined twice");
    assert_eq!(e.code(), Some("already_joined"));

    ada_room.track(Some("u1"), json!({"name": "Ada"})).await.expect("track");
    let ada_conn = ada.conn_id().expect("ada connected");
    timeout(WAIT, async {
        while bob_room.presence().get("u1").is_none() {
            next_message(&mut bob_room).await;
        }
    })
    .await
    .expect("bob sees ada");
    let entries = bob_room.presence().get("u1").expect("u1 present");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].conn_id, ada_conn);
    assert_eq!(entries[0].meta, json!({"name": "Ada"}));

    bob.broadcast("room:1", "cursor", json!({"x": 10}), false).await.expect("broadcast");
    let bob_conn = bob.conn_id().expect("bob connected");
    timeout(WAIT, async {
        loop {
            if let ChannelMessage::Broadcast { event, payload, from } = next_message(&mut ada_room).await {
                assert_eq!(event, "cursor");
                assert_eq!(payload, json!({"x": 10}));
                assert_eq!(from.as_deref(), Some(bob_conn.as_str()));
                return;
            }
        }
    })
    .await
    .expect("ada receives the broadcast");
    bob.broadcast_ack("room:1", "echo", json!(1), true).await.expect("acknowledged");
    timeout(WAIT, async {
        loop {
            if let ChannelMessage::Broadcast { event, .. } = next_message(&mut bob_room).await {
                assert_eq!(event, "echo", "bob only gets his own broadcast with self");
                return;
            }
        }
    })
    .await
    .expect("bob receives his own broadcast");

    // Ada's socket drops: she rejoins and re-tracks under a new connection id.
    ada.reconnect();
    timeout(WAIT, async {
        loop {
            let now = ada.conn_id();
            let entries = bob_room.presence().get("u1").map(<[_]>::to_vec);
            if let (Some(now), Some(entries)) = (now, entries) {
                if now != ada_conn && entries.len() == 1 && entries[0].conn_id == now {
                    return;
                }
            }
            next_message(&mut bob_room).await;
        }
    })
    .await
    .expect("ada's presence comes back on her new connection");

    // Ada leaves: her entry vanishes.
    ada_room.leave().await.expect("leave");
    timeout(WAIT, async {
        while bob_room.presence().get("u1").is_some() {
            next_message(&mut bob_room).await;
        }
    })
    .await
    .expect("ada's presence goes away");
    let e = ada.broadcast_ack("room:1", "x", json!(null), false).await.expect_err("not joined any more");
    assert_eq!(e.code(), Some("not_joined"));
    ada.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_made_while_the_server_is_down_start_when_it_is_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = start_in(dir.path(), |_| {}).await;
    let client = Client::new(&a.url()).with_token(ADMIN);
    client.create_collection(items()).await.expect("collection");
    let rt: RealtimeHandle = client.realtime_with(fast());
    rt.wait_connected().await.expect("connected");
    a.shutdown().await;
    rt.reconnect();
    let mut status = rt.status();
    timeout(WAIT, status.wait_for(|s| matches!(s, Status::Reconnecting { .. })))
        .await
        .expect("reconnecting in time")
        .expect("status");
    let b = start_in(dir.path(), |_| {}).await;
    let pending = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.subscribe("items", Some("qty=eq.1")).await })
    };
    rt.set_url(&b.url());
    let mut sub =
        timeout(WAIT, pending).await.expect("subscribed in time").expect("task").expect("subscribe");
    let client = Client::new(&b.url()).with_token(ADMIN);
    let r = client.create("items", json!({"title": "x", "qty": 1})).await.expect("create");
    assert_eq!(next_change(&mut sub).await.id, id_of(&r));
    rt.close().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_close_is_followed_by_a_lossless_resume() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A tiny outbound queue: a burst of changes overflows it and the server closes with 4001.
    let server = start_in(dir.path(), |c| c.ws_queue = 4).await;
    let client = Client::new(&server.url()).with_token(ADMIN);
    client.create_collection(items()).await.expect("collection");
    let rt = client.realtime_with(fast());
    let mut sub = rt.subscribe("items", None).await.expect("subscribe");
    let statuses = {
        let mut status = rt.status();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while status.changed().await.is_ok() {
                let s = *status.borrow_and_update();
                seen.push(s);
                if s == Status::Disconnected {
                    break;
                }
            }
            seen
        })
    };
    let start = head(&client).await;
    for round in 0..3 {
        let ops: Vec<Value> = (0..300)
            .map(|i| json!({"op": "create", "data": {"title": format!("b{round}-{i}"), "qty": i % 10}}))
            .collect();
        client.batch("items", json!(ops)).await.expect("batch");
    }
    let end = head(&client).await;
    let seqs = collect_until(&mut sub, end).await;
    assert_eq!(seqs, (start + 1..=end).collect::<Vec<u64>>());
    rt.close().await;
    let seen = statuses.await.expect("status task");
    assert!(
        seen.iter().any(|s| matches!(s, Status::Reconnecting { .. })),
        "the server closed the slow connection at least once: {seen:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_many_subscriptions_stays_under_the_server_rate_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_in(dir.path(), |c| {
        c.ws_rate_limit = 40.0;
        c.ws_rate_burst = 20.0;
    })
    .await;
    let client = Client::new(&server.url()).with_token(ADMIN);
    client.create_collection(items()).await.expect("collection");
    let config = RealtimeConfig { max_send_rate: 30.0, send_burst: 15.0, ..fast() };
    let rt = client.realtime_with(config);
    let mut notices = rt.notices();
    // 40 queries: more than the server's burst, sent at once on every (re)connect.
    let mut subs = Vec::new();
    for i in 0..40 {
        let rt = rt.clone();
        subs.push(tokio::spawn(async move { rt.subscribe("items", Some(&format!("qty=gte.{i}"))).await }));
    }
    let mut subs: Vec<Subscription> = futures_util::future::join_all(subs)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("subscribe"))
        .collect();
    rt.reconnect();
    let r = client.create("items", json!({"title": "all", "qty": 50})).await.expect("create");
    for sub in &mut subs {
        assert_eq!(next_change(sub).await.id, id_of(&r), "{:?} resumed", sub.filter());
    }
    assert!(notices.try_recv().is_err(), "nothing was refused");
    rt.close().await;

    // A refused token (error frame, then close 4003) is reported as a notice while the client
    // keeps trying.
    let bad = Client::new(&server.url()).with_token("wrong").realtime_with(fast());
    let mut notices = bad.notices();
    let n = timeout(WAIT, notices.recv()).await.expect("a notice in time").expect("open");
    assert_eq!(n.code, "invalid_token", "{n:?}");
    assert!(matches!(*bad.status().borrow(), Status::Connecting | Status::Reconnecting { .. }));
    bad.close().await;
    server.shutdown().await;
}

/// The live values as owned maps, sorted by group key.
fn values_of(a: &LiveAggregate) -> Vec<serde_json::Map<String, Value>> {
    a.groups().into_iter().cloned().collect()
}

/// Applies aggregate frames until the values are current at the REST aggregate's seq; then
/// both say the same.
async fn assert_aggregate_equals_rest(client: &Client, a: &mut LiveAggregate, filter: &str) {
    let rest =
        client.aggregate("items", filter, &["status"], &["count", "sum(qty)"]).await.expect("rest aggregate");
    timeout(WAIT, a.wait_for_seq(rest.seq)).await.expect("live values in time").expect("aggregate open");
    assert_eq!(a.seq(), rest.seq);
    assert_eq!(values_of(a), rest.groups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_aggregate_follows_creates_moves_between_groups_and_deletes_like_rest() {
    let (_dir, server, client) = setup().await;
    let rt = client.realtime_with(fast());
    let mut kpi = rt.aggregate("items", None, &["status"], &["count", "sum(qty)"]).await.expect("aggregate");
    assert!(kpi.groups().is_empty(), "grouped, no rows: no groups");

    let a = client.create("items", json!({"title": "a", "qty": 2, "status": "late"})).await.expect("create");
    client.create("items", json!({"title": "b", "qty": 3, "status": "late"})).await.expect("create");
    client.create("items", json!({"title": "c", "qty": 1, "status": "open"})).await.expect("create");
    timeout(WAIT, kpi.wait_for_seq(head(&client).await)).await.expect("in time").expect("open");
    assert_eq!(
        values_of(&kpi),
        vec![
            json!({"status": "late", "count": 2, "sum(qty)": 5}).as_object().unwrap().clone(),
            json!({"status": "open", "count": 1, "sum(qty)": 1}).as_object().unwrap().clone(),
        ]
    );

    // A row moves from late to open: one frame moves both groups.
    client.update("items", &id_of(&a), json!({"status": "open"}), None).await.expect("move");
    match timeout(WAIT, kpi.changed()).await.expect("in time").expect("open") {
        SubEvent::Aggregate { full, groups, .. } => {
            assert!(!full);
            assert_eq!(groups.len(), 2, "both sides of the move: {groups:?}");
        }
        other => panic!("expected an aggregate, got {other:?}"),
    }
    assert_eq!(kpi.group(&[json!("late")]).unwrap()["count"], 1);
    assert_eq!(kpi.group(&[json!("open")]).unwrap()["sum(qty)"], 3);

    // Deleting the last late row removes its group.
    let late = client.list("items", "status=eq.late").await.expect("list");
    client.delete("items", &id_of(&late.items[0]), None).await.expect("delete");
    match timeout(WAIT, kpi.changed()).await.expect("in time").expect("open") {
        SubEvent::Aggregate { removed, .. } => {
            assert_eq!(removed, vec![json!({"status": "late"}).as_object().unwrap().clone()])
        }
        other => panic!("expected an aggregate, got {other:?}"),
    }
    assert!(kpi.group(&[json!("late")]).is_none());
    assert_aggregate_equals_rest(&client, &mut kpi, "").await;

    // Without group, one group; the filter applies as for lists.
    let mut heavy =
        rt.aggregate("items", Some("qty=gt.1"), &[], &["count", "max(qty)"]).await.expect("aggregate");
    assert_eq!(heavy.groups(), vec![json!({"count": 1, "max(qty)": 2}).as_object().unwrap()]);
    client.create("items", json!({"title": "d", "qty": 9, "status": "done"})).await.expect("create");
    timeout(WAIT, heavy.wait_for_seq(head(&client).await)).await.expect("in time").expect("open");
    assert_eq!(heavy.group(&[]).unwrap()["max(qty)"], 9);
    heavy.unsubscribe().await.expect("unsubscribe");

    // Refusals name the field, live and over REST.
    match rt.aggregate("items", None, &[], &["sum(title)"]).await {
        Err(e) => assert_eq!(e.code(), Some("invalid_aggregate")),
        Ok(_) => panic!("sum over a text field is refused"),
    }
    match client.aggregate("items", "", &[], &["sum(title)"]).await {
        Err(Error::Api { status, code, details, .. }) => {
            assert_eq!((status, code.as_str()), (422, "invalid_aggregate"));
            assert_eq!(details.unwrap()["field"], "title");
        }
        other => panic!("expected a 422, got {other:?}"),
    }
    rt.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_aggregate_resubscribes_after_a_server_restart_and_takes_the_fresh_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = start_in(dir.path(), |_| {}).await;
    let client = Client::new(&a.url()).with_token(ADMIN);
    client.create_collection(items()).await.expect("collection");
    client.create("items", json!({"title": "x", "qty": 4, "status": "late"})).await.expect("create");
    let rt = client.realtime_with(fast());
    let mut kpi = rt.aggregate("items", None, &["status"], &["count", "sum(qty)"]).await.expect("aggregate");
    assert_eq!(
        values_of(&kpi),
        vec![json!({"status": "late", "count": 1, "sum(qty)": 4}).as_object().unwrap().clone()]
    );

    // Stop A; on B (same data, new port) the late row goes and two open rows come, while the
    // client is away.
    a.shutdown().await;
    let b = start_in(dir.path(), |_| {}).await;
    let client = Client::new(&b.url()).with_token(ADMIN);
    let late = client.list("items", "status=eq.late").await.expect("list");
    client.delete("items", &id_of(&late.items[0]), None).await.expect("delete");
    client.create("items", json!({"title": "y", "qty": 1, "status": "open"})).await.expect("create");
    client.create("items", json!({"title": "z", "status": "open"})).await.expect("create");
    rt.set_url(&b.url());
    rt.reconnect();
    // The next full frame replaces the values held.
    loop {
        match timeout(WAIT, kpi.changed()).await.expect("fresh values in time").expect("open") {
            SubEvent::Aggregate { full: true, .. } => break,
            _ => continue,
        }
    }
    assert_eq!(
        values_of(&kpi),
        vec![json!({"status": "open", "count": 2, "sum(qty)": 1}).as_object().unwrap().clone()]
    );
    assert_aggregate_equals_rest(&client, &mut kpi, "").await;
    // And it stays live on the new connection.
    client.create("items", json!({"title": "w", "qty": 5, "status": "done"})).await.expect("create");
    assert_aggregate_equals_rest(&client, &mut kpi, "").await;
    assert_eq!(kpi.group(&[json!("done")]).unwrap()["count"], 1);
    rt.close().await;
    b.shutdown().await;
}
