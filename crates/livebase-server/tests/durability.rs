//! Durability of the real binary: a write the server acknowledged survives `kill -9`, and the
//! change log stays gap-free and complete across the crash.

mod common;

use common::items_collection;
use common::process::{http_client, spawn_server, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const WRITERS: usize = 8;
const OPS_PER_WRITER: usize = 60;
/// The server is killed once this many writes have been acknowledged (of 480 planned).
const KILL_AFTER_ACKS: usize = 150;

/// A record's state as its writer knows it: (version, qty), or None once deleted.
type State = Option<(i64, i64)>;

#[derive(Debug, Clone)]
enum Mutation {
    Create { id: String },
    Update { id: String, qty: i64 },
    Delete { id: String },
}

impl Mutation {
    fn id(&self) -> &str {
        match self {
            Mutation::Create { id } | Mutation::Update { id, .. } | Mutation::Delete { id } => id,
        }
    }

    /// The state after this mutation, from the state before it.
    fn apply(&self, before: State) -> State {
        match self {
            Mutation::Create { .. } => Some((1, 0)),
            Mutation::Update { qty, .. } => before.map(|(v, _)| (v + 1, *qty)),
            Mutation::Delete { .. } => None,
        }
    }

    /// The change event (op, id, version) this mutation commits, from the state before it.
    fn event(&self, before: State) -> (String, String, i64) {
        let (op, version) = match self {
            Mutation::Create { .. } => ("insert", 1),
            Mutation::Update { .. } => ("update", before.map_or(0, |(v, _)| v + 1)),
            Mutation::Delete { .. } => ("delete", before.map_or(0, |(v, _)| v)),
        };
        (op.to_string(), self.id().to_string(), version)
    }
}

/// What one writer saw. Every writer owns its records (ids `w{w}-{i}`) and issues its ops one
/// at a time, so the acknowledged state of each of its records is exact, and at most one op
/// (the one in flight at the kill) has an unknown outcome.
#[derive(Debug, Default)]
struct WriterLog {
    /// Acknowledged states, and the change event each acknowledged op must have produced.
    acked: BTreeMap<String, State>,
    acked_events: Vec<(String, String, i64)>,
    /// The op that got no acknowledgement, with the state of its record before it.
    in_flight: Option<(Mutation, State)>,
    /// Answers that are neither a 2xx nor a lost connection: always a failure.
    unexpected: Vec<String>,
}

async fn writer(
    w: usize,
    http: reqwest::Client,
    url: String,
    acks: Arc<AtomicUsize>,
    kill_now: Arc<Notify>,
) -> WriterLog {
    let mut log = WriterLog::default();
    let mut live: Vec<String> = Vec::new();
    let records = format!("{url}/api/collections/items/records");
    for i in 0..OPS_PER_WRITER {
        let m = match i % 6 {
            _ if live.is_empty() => Mutation::Create { id: format!("w{w}-{i}") },
            0 | 1 | 3 => Mutation::Create { id: format!("w{w}-{i}") },
            2 | 4 => Mutation::Update { id: live[i % live.len()].clone(), qty: i as i64 },
            _ => Mutation::Delete { id: live[(i / 6) % live.len()].clone() },
        };
        let before = log.acked.get(m.id()).copied().flatten();
        let req = match &m {
            Mutation::Create { id } => http.post(&records).json(&json!({"id": id, "title": id, "qty": 0})),
            Mutation::Update { id, qty } => http.patch(format!("{records}/{id}")).json(&json!({"qty": qty})),
            Mutation::Delete { id } => http.delete(format!("{records}/{id}")),
        };
        let resp = match req.bearer_auth(ADMIN_KEY).send().await {
            Ok(r) => r,
            Err(_) => {
                // No answer: the server died with this op in flight; it may or may not
                // have committed.
                log.in_flight = Some((m, before));
                return log;
            }
        };
        let status = resp.status();
        if !status.is_success() {
            log.unexpected.push(format!("{m:?} answered {status}: {:?}", resp.text().await));
            return log;
        }
        // A 2xx status is sent only after the commit: the op is acknowledged even if the
        // body is cut off by the kill. When the body did arrive, it must agree.
        let after = m.apply(before);
        if let Ok(body) = resp.json::<Value>().await {
            let expect_version = match after {
                Some((v, _)) => v,
                None => before.map_or(0, |(v, _)| v),
            };
            if body["id"] != m.id() || body["version"] != expect_version {
                log.unexpected.push(format!("{m:?} from {before:?} returned {body}"));
            }
        }
        log.acked_events.push(m.event(before));
        log.acked.insert(m.id().to_string(), after);
        match &m {
            Mutation::Create { id } => live.push(id.clone()),
            Mutation::Delete { id } => live.retain(|x| x != id),
            Mutation::Update { .. } => {}
        }
        if acks.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACKS {
            kill_now.notify_one();
        }
    }
    log
}

/// Every change event after `since`, paged 100 at a time.
async fn all_changes(http: &reqwest::Client, url: &str) -> (Vec<Value>, u64) {
    let mut events = Vec::new();
    let mut since = 0u64;
    let mut head = 0;
    for _ in 0..1000 {
        let r = http
            .get(format!("{url}/api/changes?since={since}&limit=100"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("changes");
        assert_eq!(r.status(), StatusCode::OK);
        let b: Value = r.json().await.expect("changes body");
        head = b["head"].as_u64().expect("head");
        let page = b["events"].as_array().cloned().unwrap_or_default();
        let Some(last) = page.last() else {
            return (events, head);
        };
        since = last["seq"].as_u64().expect("seq");
        events.extend(page);
    }
    panic!("change log paging did not end (since={since}, head={head})");
}

async fn all_records(http: &reqwest::Client, url: &str) -> BTreeMap<String, Value> {
    let r = http
        .get(format!("{url}/api/collections/items/records?limit=1000"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = r.json().await.expect("list body");
    assert!(b["next_cursor"].is_null(), "fits one page");
    b["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| (r["id"].as_str().expect("id").to_string(), r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_the_change_log_stays_gap_free() {
    tokio::time::timeout(Duration::from_secs(120), kill_9_scenario())
        .await
        .expect("the kill -9 scenario finishes within 120 s");
}

async fn kill_9_scenario() {
    let data = tempfile::tempdir().expect("data dir");
    let logs = tempfile::tempdir().expect("log dir");
    let log = logs.path().join("server.log");
    let http = http_client();

    let mut server = spawn_server(data.path(), &log, &[]).await;
    let r = http
        .post(format!("{}/api/collections", server.url))
        .bearer_auth(ADMIN_KEY)
        .json(&items_collection())
        .send()
        .await
        .expect("create collection");
    assert_eq!(r.status(), StatusCode::CREATED);

    // 8 writers race; the server is killed mid-stream, after 150 acknowledged writes.
    let acks = Arc::new(AtomicUsize::new(0));
    let kill_now = Arc::new(Notify::new());
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(w, http.clone(), server.url.clone(), acks.clone(), kill_now.clone())))
        .collect();
    tokio::time::timeout(Duration::from_secs(60), kill_now.notified())
        .await
        .expect("150 writes acknowledged within 60 s");
    server.kill_9();
    let mut logs_by_writer = Vec::new();
    for t in tasks {
        logs_by_writer.push(t.await.expect("writer task"));
    }
    let acked_ops: usize = logs_by_writer.iter().map(|l| l.acked_events.len()).sum();
    let cut_off = logs_by_writer.iter().filter(|l| l.in_flight.is_some()).count();
    for l in &logs_by_writer {
        assert!(l.unexpected.is_empty(), "unexpected answers: {:?}", l.unexpected);
    }
    assert!(
        (KILL_AFTER_ACKS..WRITERS * OPS_PER_WRITER).contains(&acked_ops),
        "the kill landed mid-stream: {acked_ops} acknowledged"
    );
    assert!(cut_off > 0, "some writer had an op in flight at the kill");

    // Restart on the same data dir (new port).
    let server = spawn_server(data.path(), &log, &[]).await;
    let stored = all_records(&http, &server.url).await;
    let (events, head) = all_changes(&http, &server.url).await;

    // The log is gap-free from 1 to head.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "gap-free 1..=head");
    let logged: Vec<(String, String, i64)> = events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
                e["version"].as_i64().unwrap(),
            )
        })
        .collect();
    let logged_set: BTreeSet<_> = logged.iter().cloned().collect();
    assert_eq!(logged_set.len(), logged.len(), "no event is logged twice");

    let mut expected_ids = BTreeSet::new();
    let mut in_flight_committed = 0;
    for (w, l) in logs_by_writer.iter().enumerate() {
        // Every acknowledged mutation has its event.
        for e in &l.acked_events {
            assert!(logged_set.contains(e), "writer {w}: acknowledged {e:?} is logged");
        }
        // Every acknowledged state is stored, except where the op in flight moved it on.
        let state_of = |id: &str| -> State {
            stored.get(id).map(|r| (r["version"].as_i64().unwrap(), r["qty"].as_i64().unwrap()))
        };
        for (id, acked) in &l.acked {
            expected_ids.insert(id.clone());
            let now = state_of(id);
            match &l.in_flight {
                Some((m, before)) if m.id() == id => {
                    assert!(
                        now == *acked || now == m.apply(*before),
                        "writer {w}: {id} is {now:?}; acknowledged {acked:?}, in flight {m:?}"
                    );
                }
                _ => assert_eq!(now, *acked, "writer {w}: {id} as acknowledged"),
            }
            if let (Some((acked_v, _)), Some((v, _))) = (acked, now) {
                assert!(*acked_v <= v, "writer {w}: {id} version went back");
            }
        }
        // The op in flight committed entirely (state and event) or not at all.
        if let Some((m, before)) = &l.in_flight {
            expected_ids.insert(m.id().to_string());
            let applied = state_of(m.id()) == m.apply(*before) && state_of(m.id()) != *before;
            let has_event = logged_set.contains(&m.event(*before));
            assert_eq!(
                applied, has_event,
                "writer {w}: in-flight {m:?} is atomic (state applied: {applied}, logged: {has_event})"
            );
            if has_event {
                in_flight_committed += 1;
            }
        }
    }
    assert_eq!(
        logged.len(),
        acked_ops + in_flight_committed,
        "one event per committed mutation, and nothing else"
    );
    eprintln!(
        "killed after {acked_ops} acknowledged writes ({cut_off} in flight, \
         {in_flight_committed} of those committed); {} events, {} records after restart",
        logged.len(),
        stored.len()
    );
    let unknown: Vec<&String> = stored.keys().filter(|id| !expected_ids.contains(*id)).collect();
    assert!(unknown.is_empty(), "records nobody wrote: {unknown:?}");

    // Replaying the log reproduces the stored records exactly.
    let mut replayed: BTreeMap<String, Value> = BTreeMap::new();
    for e in &events {
        let id = e["id"].as_str().unwrap().to_string();
        match e["op"].as_str().unwrap() {
            "delete" => {
                replayed.remove(&id);
            }
            _ => {
                replayed.insert(id, e["new"].clone());
            }
        }
    }
    assert_eq!(replayed, stored, "the log replays to the stored records");

    // The restarted server keeps working, continuing the sequence.
    let r = http
        .post(format!("{}/api/collections/items/records", server.url))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"title": "after the crash"}))
        .send()
        .await
        .expect("write after restart");
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.expect("created body");
    let r = http
        .get(format!("{}/api/changes?since={head}", server.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("changes after restart");
    let b: Value = r.json().await.expect("changes body");
    assert_eq!(b["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(b["events"][0]["seq"], head + 1, "the next seq");
    assert_eq!(b["events"][0]["id"], created["id"]);
    assert_eq!(b["head"], head + 1);
    drop(server);
}

/// Service managers stop a server with SIGTERM: the binary takes the same clean path as
/// Ctrl-C (sockets closed with 1001 so clients reconnect at once, then a zero exit).
#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("server.log");
    let mut server = spawn_server(&dir.path().join("data"), &log, &[]).await;
    let mut ws = common::ws::Ws::connect(&server.url, Some(ADMIN_KEY)).await;
    let pid = server.child.id().to_string();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(sent.success());
    let (closed, _) = ws.recv_until(|v| v["type"] == "__closed").await;
    assert_eq!(closed["code"], 1001, "log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("poll child") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not exit within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
}
