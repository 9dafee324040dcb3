//! Several nodes, one deployment: broadcast and presence reach the members on every node
//! through NATS, a node that dies leaves everyone's presence within the stated bound, and a
//! NATS restart is survived. Each node is a separate process of the real binary; the tests
//! start their own `nats-server` (see `common/nats.rs`).

mod common;

use common::nats::{self, Nats};
use common::process::{spawn_server, ServerProcess, ADMIN_KEY};
use common::ws::Ws;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Node {
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

async fn node(nats: &Nats, id: &str) -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("server.log");
    let process = spawn_server(dir.path(), &log, &["--nats", &nats.url, "--node-id", id]).await;
    Node { process, _dir: dir }
}

async fn member(n: &Node, channel: &str) -> Ws {
    let mut ws = Ws::connect(&n.process.url, Some(ADMIN_KEY)).await;
    let r = ws.request(json!({"type": "join", "channel": channel})).await;
    assert_eq!(r["type"], "ok", "{r}");
    ws
}

/// Waits until `ws` has a presence diff satisfying `pred`.
async fn diff(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Value {
    ws.recv_until(|f| f["type"] == "presence_diff" && pred(f)).await.0
}

#[tokio::test]
async fn a_broadcast_on_one_node_reaches_the_members_on_every_other_node() {
    let Some(nats) = nats::require() else { return };
    let (a, b, c) = (node(&nats, "a").await, node(&nats, "b").await, node(&nats, "c").await);
    let (mut at_a, mut at_b, mut at_c) =
        (member(&a, "room").await, member(&b, "room").await, member(&c, "room").await);
    let mut elsewhere = member(&c, "other").await;
    // Channels are joined on every node as soon as `ok` came; the bus is NATS core, so a
    // message sent before another node subscribed would be lost: send until one arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let first = loop {
        n += 1;
        let r = at_a
            .request(
                json!({"type": "broadcast", "channel": "room", "event": "warmup", "payload": n, "ack": true}),
            )
            .await;
        assert_eq!(r["type"], "ok", "ack: {r}");
        match tokio::time::timeout(Duration::from_millis(300), at_b.recv_until(|f| f["type"] == "broadcast"))
            .await
        {
            Ok((f, _)) => break f,
            Err(_) => assert!(Instant::now() < deadline, "no broadcast crossed nodes within 10 s"),
        }
    };
    assert_eq!(first["type"], "broadcast", "{first}");
    at_a.send(json!({"type": "broadcast", "channel": "room", "event": "cursor", "payload": {"x": 1}})).await;
    for ws in [&mut at_b, &mut at_c] {
        let (f, _) = ws.recv_until(|f| f["type"] == "broadcast" && f["event"] == "cursor").await;
        assert_eq!(f["payload"], json!({"x": 1}));
        assert_eq!(f["channel"], "room");
        assert!(f["from"].as_str().is_some_and(|from| from.starts_with("a-")), "from names node a: {f}");
    }
    // self: false keeps it away from the sender, on its own node as on the others.
    let quiet =
        tokio::time::timeout(Duration::from_millis(300), at_a.recv_until(|f| f["event"] == "cursor")).await;
    assert!(quiet.is_err(), "the sender does not receive its own broadcast without self");
    let stray =
        tokio::time::timeout(Duration::from_millis(300), elsewhere.recv_until(|f| f["type"] == "broadcast"))
            .await;
    assert!(stray.is_err(), "members of other channels receive nothing");
}

#[tokio::test]
async fn presence_is_cluster_wide_a_late_node_learns_it_and_a_killed_node_leaves_within_the_bound() {
    let Some(nats) = nats::require() else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut watcher = member(&b, "doc").await;
    let mut alice = member(&a, "doc").await;
    // Track until b's watcher sees it (a's first events may precede b's subscription).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        alice
            .request(json!({"type": "presence_track", "channel": "doc", "key": "alice", "meta": {"n": 1}}))
            .await;
        if tokio::time::timeout(
            Duration::from_millis(500),
            diff(&mut watcher, |d| d["joins"].get("alice").is_some()),
        )
        .await
        .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "presence did not cross nodes within 10 s");
    }

    // A node started later learns the presence the others hold.
    let c = node(&nats, "c").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut late = Ws::connect(&c.process.url, Some(ADMIN_KEY)).await;
        late.send(json!({"type": "join", "channel": "doc", "ref": 1})).await;
        let (state, _) = late.recv_until(|v| v["type"] == "presence_state").await;
        if state["state"].get("alice").is_some() {
            assert_eq!(state["state"]["alice"][0]["meta"]["n"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "the late node never learned alice's presence: {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kill -9 node a: alice leaves b's presence within the bound (6 s + slack).
    let mut a = a;
    let killed = Instant::now();
    a.process.kill_9();
    let d = diff(&mut watcher, |d| d["leaves"].get("alice").is_some()).await;
    assert_eq!(d["joins"], json!({}));
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "a dead node's members leave within 10 s, took {took:?}");
}

#[tokio::test]
async fn a_nats_restart_is_survived_and_presence_is_repaired() {
    let Some(mut nats) = nats::require() else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut at_a = member(&a, "ops").await;
    let mut at_b = member(&b, "ops").await;
    let cross =
        |payload: i64| json!({"type": "broadcast", "channel": "ops", "event": "tick", "payload": payload});
    // Until one crosses (see the first test).
    async fn until_crossed(from: &mut Ws, to: &mut Ws, msg: &dyn Fn(i64) -> Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            n += 1;
            from.send(msg(n)).await;
            if tokio::time::timeout(Duration::from_millis(300), to.recv_until(|f| f["type"] == "broadcast"))
                .await
                .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "broadcasts did not cross within 20 s");
        }
    }
    until_crossed(&mut at_a, &mut at_b, &cross).await;
    at_b.request(json!({"type": "presence_track", "channel": "ops", "key": "bob", "meta": {}})).await;

    nats.stop();
    // Meanwhile each node still serves its own members; /ready says the cluster is away.
    let http = common::process::http_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(format!("{}/ready", a.process.url)).send().await.expect("ready");
        if r.status() == 503 {
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["status"], "cluster_unreachable", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/ready kept saying ready without NATS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.start_again();
    until_crossed(&mut at_a, &mut at_b, &cross).await;
    // Presence tracked before the outage is still (or again) known on the other node.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut probe = Ws::connect(&a.process.url, Some(ADMIN_KEY)).await;
        probe.send(json!({"type": "join", "channel": "ops", "ref": 1})).await;
        let (state, _) = probe.recv_until(|v| v["type"] == "presence_state").await;
        if state["state"].get("bob").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "bob's presence was not repaired after the restart: {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
