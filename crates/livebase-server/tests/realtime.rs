//! Realtime behaviour users rely on: every change reaches every matching subscriber once, in
//! order; live queries stay equal to the REST result; resume loses nothing; presence follows
//! connections; slow or misbehaving clients never hurt others.

mod common;

use common::ws::Ws;
use common::{items_collection, TestServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[tokio::test]
async fn subscriber_receives_each_rest_change_with_new_and_old() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let mut b = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let (sub, _) = b.subscribe("items", None, json!({})).await;

    let r = t.create("items", json!({"title": "a", "qty": 1})).await;
    let id = r["id"].as_str().unwrap();
    let c = b.next_change().await;
    assert_eq!((c["sub_id"].as_u64(), &c["op"], &c["view"]), (Some(sub), &json!("insert"), &json!("add")));
    assert_eq!(c["new"], r);
    assert_eq!(c["old"], Value::Null);
    assert_eq!(c["actor"], "admin");

    let (_, up) = t.patch(&format!("/api/collections/items/records/{id}"), json!({"qty": 2})).await;
    let c = b.next_change().await;
    assert_eq!((&c["op"], &c["view"]), (&json!("update"), &json!("update")));
    assert_eq!(c["new"], up);
    assert_eq!(c["old"], r);

    t.delete(&format!("/api/collections/items/records/{id}")).await;
    let c = b.next_change().await;
    assert_eq!((&c["op"], &c["view"]), (&json!("delete"), &json!("remove")));
    assert_eq!(c["new"], Value::Null);
    assert_eq!(c["old"], up);
    assert_eq!(c["version"], 2);
}

/// Filters covering every operator of the grammar.
const FILTERS: &[&str] = &[
    "qty=eq.3",
    "qty=neq.3",
    "qty=lt.4",
    "qty=lte.4",
    "qty=gt.5",
    "qty=gte.5",
    "status=in.(open,late)",
    "qty=is.null",
    "done=is.true",
    "title=like.*a*",
    "title=ilike.B*",
    "qty=not.gt.5",
    "or=(qty.lt.2,status.eq.late)",
    "and=(qty.gte.2,or(status.eq.open,done.is.false))",
    "not.and=(qty.gt.1,qty.lt.8)",
];

fn random_item(rng: &mut StdRng) -> Value {
    let titles = ["apple", "Banana", "cherry", "Bob", "kiwi", "date"];
    json!({
        "title": titles[rng.random_range(0..titles.len())],
        "qty": if rng.random_bool(0.2) { Value::Null } else { json!(rng.random_range(0..10)) },
        "status": (["open", "late", "done"][rng.random_range(0..3)]),
        "done": if rng.random_bool(0.2) { Value::Null } else { json!(rng.random_bool(0.5)) },
    })
}

/// Applies a change frame to a client cache the way docs/protocol.md says.
fn apply(cache: &mut BTreeMap<String, Value>, c: &Value) {
    let id = c["id"].as_str().unwrap().to_string();
    match c["view"].as_str().unwrap() {
        "add" | "update" => {
            cache.insert(id, c["new"].clone());
        }
        "remove" => {
            cache.remove(&id);
        }
        v => panic!("unknown view {v}"),
    }
}

#[tokio::test]
async fn live_queries_stay_equal_to_the_rest_list_for_every_filter_operator() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let mut rng = StdRng::seed_from_u64(0x11fe);
    let mut ids = Vec::new();
    for _ in 0..15 {
        ids.push(t.create("items", random_item(&mut rng)).await["id"].as_str().unwrap().to_string());
    }
    // One connection holds all the live queries: sub_id tells them apart.
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let mut caches: BTreeMap<u64, (String, BTreeMap<String, Value>)> = BTreeMap::new();
    for f in FILTERS {
        let (sub, _) = ws.subscribe("items", Some(f), json!({"snapshot": true})).await;
        let mut cache = BTreeMap::new();
        loop {
            let (s, _) = ws.recv_until(|v| v["type"] == "snapshot" && v["sub_id"] == json!(sub)).await;
            for r in s["rows"].as_array().unwrap() {
                cache.insert(r["id"].as_str().unwrap().to_string(), r.clone());
            }
            if s["done"] == true {
                break;
            }
        }
        caches.insert(sub, (f.to_string(), cache));
    }
    // Random writes that move rows in and out of every filter.
    let mut expected_seq = t.changes(0).await.len() as u64;
    for _ in 0..60 {
        let pick = ids[rng.random_range(0..ids.len())].clone();
        match rng.random_range(0..10) {
            0 => {
                ids.push(t.create("items", random_item(&mut rng)).await["id"].as_str().unwrap().to_string());
            }
            1 if ids.len() > 5 => {
                t.delete(&format!("/api/collections/items/records/{pick}")).await;
                ids.retain(|i| *i != pick);
            }
            _ => {
                let mut patch = random_item(&mut rng);
                patch.as_object_mut().unwrap().retain(|_, _| rng.random_bool(0.6));
                t.patch(&format!("/api/collections/items/records/{pick}"), patch).await;
            }
        }
    }
    let head = t.changes(0).await.last().unwrap()["seq"].as_u64().unwrap();
    // Read until some query has seen the last event, then a ping: its pong is queued after
    // every frame of that event; frames before the pong are still applied.
    let mut last_seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut pinged = false;
    loop {
        if !pinged && expected_seq >= head {
            ws.send(json!({"type": "ping", "ref": "drain"})).await;
            pinged = true;
        }
        let v = ws.recv().await;
        assert_ne!(v["type"], "__closed");
        if v["type"] == "pong" {
            break;
        }
        if v["type"] == "change" {
            let sub = v["sub_id"].as_u64().unwrap();
            let seq = v["seq"].as_u64().unwrap();
            let prev = last_seen.insert(sub, seq).unwrap_or(0);
            assert!(seq > prev, "in order, once");
            apply(&mut caches.get_mut(&sub).unwrap().1, &v);
            expected_seq = expected_seq.max(seq);
        }
    }
    for (sub, (filter, cache)) in &caches {
        let rest: BTreeMap<String, Value> = t
            .list("items", &format!("{filter}&limit=1000"))
            .await
            .into_iter()
            .map(|r| (r["id"].as_str().unwrap().to_string(), r))
            .collect();
        assert_eq!(cache, &rest, "live query {sub} `{filter}` equals the REST list");
    }
}

#[tokio::test]
async fn concurrent_writers_reach_every_subscriber_once_in_order() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let mut subs = Vec::new();
    for _ in 0..20 {
        let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
        ws.subscribe("items", None, json!({})).await;
        subs.push(ws);
    }
    let writers = 8;
    let per_writer = 500;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (http, url, key) = (t.http.clone(), t.url.clone(), t.admin_key.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let r = http
                    .post(format!("{url}/api/collections/items/records"))
                    .bearer_auth(&key)
                    .json(&json!({"title": format!("w{w}-{i}"), "qty": i}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        }));
    }
    let total = writers * per_writer;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut seqs = Vec::with_capacity(total);
                while seqs.len() < total {
                    let c = ws.next_change().await;
                    seqs.push(c["seq"].as_u64().unwrap());
                }
                seqs
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for r in readers {
        let seqs = r.await.unwrap();
        let expected: Vec<u64> = (1..=total as u64).collect();
        assert_eq!(seqs, expected, "every event once, in seq order");
    }
}

#[tokio::test]
async fn resumed_subscriber_receives_every_missed_event_once_in_order() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.subscribe("items", Some("qty=gte.0"), json!({})).await;
    for i in 0..5 {
        t.create("items", json!({"title": "x", "qty": i})).await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = ws.next_change().await["seq"].as_u64().unwrap();
    }
    // Connection killed mid-stream (no goodbye), writes continue meanwhile.
    drop(ws);
    for i in 5..40 {
        t.create("items", json!({"title": "y", "qty": i})).await;
    }
    t.create("items", json!({"title": "no qty"})).await; // does not match: never delivered
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let (_, start) = ws.subscribe("items", Some("qty=gte.0"), json!({"since": last})).await;
    assert_eq!(start, last);
    // Writes during and after the resume are stitched in too.
    let writer = {
        let (http, url, key) = (t.http.clone(), t.url.clone(), t.admin_key.clone());
        tokio::spawn(async move {
            for i in 40..60 {
                http.post(format!("{url}/api/collections/items/records"))
                    .bearer_auth(&key)
                    .json(&json!({"title": "z", "qty": i}))
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    let mut qtys = Vec::new();
    let mut prev = last;
    while qtys.len() < 57 {
        let c = ws.next_change().await;
        let seq = c["seq"].as_u64().unwrap();
        assert!(seq > prev, "no duplicate, in order ({seq} after {prev})");
        prev = seq;
        qtys.push(c["new"]["qty"].as_i64().unwrap());
    }
    writer.await.unwrap();
    assert_eq!(qtys, (3..60).collect::<Vec<i64>>(), "no gap");
}

#[tokio::test]
async fn subscriber_resumes_across_a_server_restart_with_nothing_lost() {
    let mut t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.subscribe("items", None, json!({})).await;
    t.create("items", json!({"title": "before"})).await;
    let last = ws.next_change().await["seq"].as_u64().unwrap();
    t.restart().await;
    for i in 0..10 {
        t.create("items", json!({"title": format!("after {i}")})).await;
    }
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.subscribe("items", None, json!({"since": last})).await;
    for i in 0..10 {
        let c = ws.next_change().await;
        assert_eq!(c["seq"].as_u64().unwrap(), last + 1 + i);
        assert_eq!(c["new"]["title"], format!("after {i}"));
    }
}

#[tokio::test]
async fn resume_from_a_trimmed_position_requires_a_resync() {
    let mut t = TestServer::start_with(|c| c.retain_events = 2).await;
    t.create_collection(items_collection()).await;
    for i in 0..6 {
        t.create("items", json!({"title": format!("{i}")})).await;
    }
    // After a restart only the durable log answers, and it no longer holds events 2..=3.
    t.restart().await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let reply = ws.request(json!({"type": "subscribe", "collection": "items", "since": 1})).await;
    assert_eq!(reply["type"], "resync_required", "{reply}");
    assert_eq!(reply["reason"], "log_trimmed");
    // The connection stays usable and a snapshot subscription works.
    let (_, seq) = ws.subscribe("items", None, json!({"snapshot": true})).await;
    assert_eq!(seq, 6);
}

#[tokio::test]
async fn a_log_keeps_its_epoch_across_restarts_and_names_it_in_subscribed() {
    let mut t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let welcome = ws.welcome.clone();
    let reply = ws.request(json!({"type": "subscribe", "collection": "items"})).await;
    let epoch = reply["epoch"].as_str().expect("subscribed carries the epoch").to_string();
    assert_eq!(epoch.len(), 32, "{reply}");
    assert_eq!(welcome["epoch"], epoch.as_str());
    t.create("items", json!({"title": "a"})).await;
    t.restart().await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let reply =
        ws.request(json!({"type": "subscribe", "collection": "items", "since": 0, "epoch": epoch})).await;
    assert_eq!((&reply["type"], &reply["epoch"]), (&json!("subscribed"), &json!(epoch)), "{reply}");
    assert_eq!(ws.next_change().await["new"]["title"], "a");
}

#[tokio::test]
async fn resume_with_another_logs_epoch_requires_a_resync() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    t.create("items", json!({"title": "a"})).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    // A position from a replaced data directory: same sequence numbers, another log.
    let reply = ws
        .request(json!({"type": "subscribe", "ref": 1, "collection": "items", "since": 0, "epoch": "0123456789abcdef0123456789abcdef"}))
        .await;
    assert_eq!(reply["type"], "resync_required", "{reply}");
    assert_eq!(reply["reason"], "epoch_changed");
    // Nothing of the refused subscription is delivered, and the connection stays usable.
    let (_, seq) = ws.subscribe("items", None, json!({"snapshot": true})).await;
    assert_eq!(seq, 1);
    t.create("items", json!({"title": "b"})).await;
    let c = ws.next_change().await;
    assert_eq!((c["seq"].as_u64(), &c["new"]["title"]), (Some(2), &json!("b")));
}

#[tokio::test]
async fn resume_from_a_position_the_log_never_reached_requires_a_resync() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    t.create("items", json!({"title": "a"})).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    // A client of a newer copy of this log (the directory was restored from a backup).
    let reply = ws.request(json!({"type": "subscribe", "ref": 1, "collection": "items", "since": 50})).await;
    assert_eq!(reply["type"], "resync_required", "{reply}");
    assert_eq!(reply["reason"], "ahead_of_log");
}

#[tokio::test]
async fn live_query_snapshot_and_changes_leave_no_gap() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    for i in 0..30 {
        t.create("items", json!({"title": "x", "qty": i % 10})).await;
    }
    // Writes race the snapshot.
    let writer = {
        let (http, url, key) = (t.http.clone(), t.url.clone(), t.admin_key.clone());
        tokio::spawn(async move {
            for i in 0..100 {
                http.post(format!("{url}/api/collections/items/records"))
                    .bearer_auth(&key)
                    .json(&json!({"title": "y", "qty": i % 10}))
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let (sub, seq) = ws.subscribe("items", Some("qty=lt.5"), json!({"snapshot": true})).await;
    let mut cache = BTreeMap::new();
    loop {
        let (s, _) = ws.recv_until(|v| v["type"] == "snapshot").await;
        assert_eq!(s["seq"].as_u64(), Some(seq));
        for r in s["rows"].as_array().unwrap() {
            cache.insert(r["id"].as_str().unwrap().to_string(), r.clone());
        }
        if s["done"] == true {
            break;
        }
    }
    writer.await.unwrap();
    let head = t.changes(0).await.len() as u64;
    let mut prev = seq;
    while prev < head {
        // Only matching events arrive, so track the log position through them and stop once
        // the newest matching event is in.
        let c = ws.next_change().await;
        assert_eq!(c["sub_id"].as_u64(), Some(sub));
        let s = c["seq"].as_u64().unwrap();
        assert!(s > prev);
        prev = s;
        apply(&mut cache, &c);
        if cache.len() == t.list("items", "qty=lt.5&limit=1000").await.len() {
            break;
        }
    }
    let rest: BTreeMap<String, Value> = t
        .list("items", "qty=lt.5&limit=1000")
        .await
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().into(), r))
        .collect();
    assert_eq!(cache, rest);
}

#[tokio::test]
async fn identical_queries_share_one_sub_id_across_connections() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let mut a = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let mut b = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let (sa, _) = a.subscribe("items", Some("qty=gt.1"), json!({})).await;
    let (sb, _) = b.subscribe("items", Some("qty=gt.1"), json!({})).await;
    assert_eq!(sa, sb);
    let again = a.request(json!({"type": "subscribe", "collection": "items", "filter": "qty=gt.1"})).await;
    assert_eq!(again["code"], "already_subscribed");
    assert_eq!(again["sub_id"].as_u64(), Some(sa));
    let un = a.request(json!({"type": "unsubscribe", "sub_id": sa})).await;
    assert_eq!(un["type"], "ok");
    t.create("items", json!({"title": "x", "qty": 5})).await;
    assert_eq!(b.next_change().await["sub_id"].as_u64(), Some(sb));
    let pong = a.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "a received no change after unsubscribing");
}

#[tokio::test]
async fn broadcast_reaches_channel_members_but_not_the_sender_unless_asked() {
    let t = TestServer::start().await;
    let mut a = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let mut b = Ws::connect(&t.url, Some(&t.admin_key)).await;
    for ws in [&mut a, &mut b] {
        let r = ws.request(json!({"type": "join", "channel": "room:1"})).await;
        assert_eq!(r["type"], "ok");
    }
    let ack = a
        .request(json!({"type": "broadcast", "channel": "room:1", "event": "cursor", "payload": {"x": 1}, "ack": true}))
        .await;
    assert_eq!(ack["type"], "ok");
    let (m, _) = b.recv_until(|v| v["type"] == "broadcast").await;
    assert_eq!(
        (&m["event"], &m["payload"]["x"], &m["from"]),
        (&json!("cursor"), &json!(1), &json!(a.conn_id))
    );
    a.send(json!({"type": "broadcast", "channel": "room:1", "event": "e", "payload": 2, "self": true})).await;
    let (m, _) = a.recv_until(|v| v["type"] == "broadcast").await;
    assert_eq!(m["payload"], 2, "self: true echoes to the sender");
    let e = b.request(json!({"type": "broadcast", "channel": "room:2", "event": "e", "payload": 1})).await;
    assert_eq!(e["code"], "not_joined");
}

#[tokio::test]
async fn presence_follows_tracks_and_vanishes_on_abrupt_disconnect() {
    let t = TestServer::start().await;
    let mut a = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let mut b = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let mut b2 = Ws::connect(&t.url, Some(&t.admin_key)).await; // the same user in a second tab
    a.request(json!({"type": "join", "channel": "doc:9"})).await;
    for ws in [&mut b, &mut b2] {
        ws.request(json!({"type": "join", "channel": "doc:9"})).await;
        let r = ws
            .request(json!({"type": "presence_track", "channel": "doc:9", "key": "bob", "meta": {"tab": 1}}))
            .await;
        assert_eq!(r["type"], "ok");
    }
    let (d1, _) = a.recv_until(|v| v["type"] == "presence_diff").await;
    assert_eq!(d1["joins"]["bob"][0]["meta"]["tab"], 1);
    a.recv_until(|v| v["type"] == "presence_diff").await;
    // A late joiner sees both entries in presence_state.
    let mut c = Ws::connect(&t.url, Some(&t.admin_key)).await;
    c.send(json!({"type": "join", "channel": "doc:9", "ref": 1})).await;
    let (state, _) = c.recv_until(|v| v["type"] == "presence_state").await;
    assert_eq!(state["state"]["bob"].as_array().unwrap().len(), 2);
    // Abrupt disconnect: no untrack, no close frame.
    drop(b);
    let (d, _) = a.recv_until(|v| v["type"] == "presence_diff").await;
    assert_eq!(d["leaves"]["bob"].as_array().unwrap().len(), 1);
    assert_eq!(d["joins"], json!({}));
    b2.request(json!({"type": "presence_untrack", "channel": "doc:9"})).await;
    let (d, _) = a.recv_until(|v| v["type"] == "presence_diff").await;
    assert_eq!(d["leaves"]["bob"][0]["conn_id"], json!(b2.conn_id));
}

#[tokio::test]
async fn presence_entry_of_a_silent_connection_expires_after_the_heartbeat_timeout() {
    let t = TestServer::start_with(|c| {
        c.heartbeat_ms = 100;
        c.heartbeat_timeout_ms = 400;
    })
    .await;
    let mut a = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let mut silent = Ws::connect(&t.url, Some(&t.admin_key)).await;
    a.request(json!({"type": "join", "channel": "c"})).await;
    silent.request(json!({"type": "join", "channel": "c"})).await;
    silent.request(json!({"type": "presence_track", "channel": "c", "key": "ghost", "meta": {}})).await;
    a.recv_until(|v| v["type"] == "presence_diff" && v["joins"].get("ghost").is_some()).await;
    // `silent` stops reading (so it never answers pings); `a` keeps reading and answering.
    let (d, _) = a.recv_until(|v| v["type"] == "presence_diff" && v["leaves"].get("ghost").is_some()).await;
    assert_eq!(d["leaves"]["ghost"][0]["conn_id"], json!(silent.conn_id));
    drop(silent);
}

#[tokio::test]
async fn slow_consumer_is_cut_off_while_others_keep_receiving() {
    let t = TestServer::start_with(|c| c.ws_queue = 1024).await;
    t.create_collection(json!({"name": "logs", "fields": [{"name": "line", "type": "text"}]})).await;
    let mut slow = Ws::connect(&t.url, Some(&t.admin_key)).await;
    slow.subscribe("logs", None, json!({})).await;
    let mut normal = Ws::connect(&t.url, Some(&t.admin_key)).await;
    normal.subscribe("logs", None, json!({})).await;
    // ~8 MB of events: more than the socket buffers plus the queue of a client that never
    // reads can absorb, while a reading client keeps up.
    let pad = "p".repeat(1000);
    let (total, batch) = (6000, 200);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            let c = normal.next_change().await;
            n += 1;
            assert_eq!(c["seq"].as_u64(), Some(n as u64));
        }
        n
    });
    for b in 0..total / batch {
        let ops: Vec<Value> =
            (0..batch).map(|i| json!({"op": "create", "data": {"line": format!("{b}-{i}-{pad}")}})).collect();
        let (s, _) = t.post("/api/collections/logs/batch", json!({ "ops": ops })).await;
        assert_eq!(s, 200);
    }
    assert_eq!(reader.await.unwrap(), total, "the normal subscriber got every event");
    // The slow client's stream ends after what was buffered: with close code 4001 when the
    // close frame still fit in its socket buffer, else with a reset.
    let (closed, before) = slow.recv_until(|v| v["type"] == "__closed").await;
    assert!(closed["code"] == 4001 || closed["code"].is_null(), "{closed}");
    // What it did receive is a gap-free prefix, so resuming from its last seq loses nothing.
    let seqs: Vec<u64> =
        before.iter().filter(|v| v["type"] == "change").map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(!seqs.is_empty() && seqs.len() < total);
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let (_, m) = t.get("/metrics").await;
    assert!(m.as_str().unwrap().contains("livebase_slow_consumers_dropped_total 1"), "{m}");
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_usable() {
    let t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    ws.send_raw("{not json".into()).await;
    assert_eq!(ws.recv().await["code"], "malformed_json");
    ws.send(json!({"type": "teleport", "ref": 7})).await;
    let e = ws.recv().await;
    assert_eq!((e["code"].as_str(), e["ref"].as_i64()), (Some("unknown_type"), Some(7)));
    ws.send_raw(format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(70_000))).await;
    assert_eq!(ws.recv().await["code"], "frame_too_large");
    let e = ws.request(json!({"type": "subscribe", "collection": "items", "filter": "qty=gtx.1"})).await;
    assert_eq!(e["code"], "bad_filter");
    let e = ws.request(json!({"type": "subscribe", "collection": "nope"})).await;
    assert_eq!(e["code"], "collection_not_found");
    let e = ws.request(json!({"type": "subscribe"})).await;
    assert_eq!(e["code"], "bad_request");
    let e = ws.request(json!({"type": "unsubscribe", "sub_id": 999})).await;
    assert_eq!(e["code"], "not_subscribed");
    // Still usable.
    let pong = ws.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    ws.subscribe("items", None, json!({})).await;
    t.create("items", json!({"title": "ok"})).await;
    assert_eq!(ws.next_change().await["new"]["title"], "ok");
}

#[tokio::test]
async fn server_shutdown_closes_sockets_with_1001_so_clients_reconnect() {
    let mut t = TestServer::start().await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    if let Some(s) = t.server.take() {
        s.shutdown().await;
    }
    let (closed, _) = ws.recv_until(|v| v["type"] == "__closed").await;
    assert_eq!(closed["code"], 1001);
}
