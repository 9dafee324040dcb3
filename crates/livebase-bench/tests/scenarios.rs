//! Every bench scenario runs end to end at a tiny size and reports consistent figures.
//! Only correctness is asserted (keys, counts, nothing lost) — never speed.

use livebase_bench::{self as bench, BenchOptions, Scenario};
use serde_json::Value;

fn opts(f: impl FnOnce(&mut BenchOptions)) -> BenchOptions {
    let mut o = BenchOptions { quiet: true, ..BenchOptions::default() };
    f(&mut o);
    o
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} is not a count in {v:#}"))
}

fn has_latency(v: &Value, key: &str) {
    let l = &v[key];
    for k in ["p50", "p99", "p999", "max", "mean"] {
        assert!(l[k].as_f64().is_some_and(|x| x >= 0.0), "{key}.{k} in {v:#}");
    }
    assert!(l["p50"].as_f64() <= l["p99"].as_f64() && l["p99"].as_f64() <= l["p999"].as_f64(), "{v:#}");
    assert!(u(l, "count") > 0, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_counts_every_created_record() {
    let v = bench::run(
        Scenario::Writes,
        opts(|o| {
            o.duration = 2.0;
            o.clients = 4;
        }),
    )
    .await
    .unwrap();
    assert_eq!(v["scenario"], "writes");
    assert_eq!(v["server"], "in_process");
    assert_eq!(u(&v, "clients"), 4);
    assert!(u(&v, "creates") > 0, "{v:#}");
    assert_eq!(u(&v, "errors"), 0, "{v:#}");
    assert_eq!(u(&v, "records"), u(&v, "creates"), "the server holds exactly the acknowledged records");
    assert!(v["creates_per_s"].as_f64().is_some_and(|x| x > 0.0));
    assert!(v["duration_s"].as_f64().is_some_and(|x| x > 0.0));
    has_latency(&v, "latency_ms");
    assert_eq!(u(&v["latency_ms"], "count"), u(&v, "creates"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_write_to_every_subscriber() {
    let v = bench::run(
        Scenario::Fanout,
        opts(|o| {
            o.duration = 2.0;
            o.subscribers = 10;
            o.rate = 50;
        }),
    )
    .await
    .unwrap();
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(u(&v, "subscribers"), 10);
    assert_eq!(u(&v, "write_errors"), 0, "{v:#}");
    let writes = u(&v, "writes");
    assert!(writes > 0);
    assert_eq!(u(&v, "expected_deliveries"), writes * 10);
    assert_eq!(u(&v, "deliveries"), writes * 10, "{v:#}");
    assert_eq!(u(&v, "lost"), 0, "{v:#}");
    assert_eq!(u(&v, "duplicates"), 0);
    assert_eq!(u(&v, "disconnects"), 0);
    assert_eq!(v["latency_from"], "writer_send");
    has_latency(&v, "latency_ms");
    assert_eq!(u(&v["latency_ms"], "count"), writes * 10);
    has_latency(&v, "last_subscriber_latency_ms");
    assert_eq!(u(&v["last_subscriber_latency_ms"], "count"), writes);
    assert!(v["deliveries_per_s"].as_f64().is_some_and(|x| x > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stay_open_and_answer() {
    let v = bench::run(
        Scenario::Connections,
        opts(|o| {
            o.duration = 1.0;
            o.connections = Some(50);
        }),
    )
    .await
    .unwrap();
    assert_eq!(v["scenario"], "connections");
    assert_eq!(u(&v, "connections"), 50);
    assert_eq!(u(&v, "open"), 50, "{v:#}");
    assert_eq!(u(&v, "connect_errors"), 0);
    assert_eq!(u(&v, "alive"), 50, "{v:#}");
    assert_eq!(u(&v, "lost"), 0);
    assert!(u(&v, "rss_before_bytes") > 0 && u(&v, "rss_after_bytes") > 0);
    assert!(v["bytes_per_connection"].is_number(), "{v:#}");
    assert_eq!(v["rss_includes_client"], true);
}

/// The `livebase` binary of this build (`target/<profile>/livebase`; the tests run from
/// `target/<profile>/deps/`). `cargo test --workspace` builds it with the server's tests.
fn livebase_exe() -> std::path::PathBuf {
    let me = std::env::current_exe().expect("test executable path");
    let exe = me
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(format!("livebase{}", std::env::consts::EXE_SUFFIX)))
        .expect("target directory");
    assert!(
        exe.is_file(),
        "{} is missing: run `cargo build -p livebase-server` (or `cargo test --workspace`) first",
        exe.display()
    );
    exe
}

/// The command's default: the server as a child process, measured on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_process_server_reports_its_own_memory_and_cpu() {
    let v = bench::run(
        Scenario::Connections,
        opts(|o| {
            o.duration = 1.0;
            o.connections = Some(20);
            o.server_exe = Some(livebase_exe());
        }),
    )
    .await
    .unwrap();
    assert_eq!(v["server"], "child");
    assert_eq!(u(&v, "alive"), 20, "{v:#}");
    assert_eq!(v["rss_includes_client"], false);
    assert!(u(&v, "server_rss_bytes") > 0);
    assert!(v["server_cpu_s"].as_f64().is_some_and(|x| x >= 0.0), "{v:#}");
    assert!(v["server_cpu_percent"].as_f64().is_some_and(|x| x >= 0.0), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_receives_every_missed_change_once() {
    let v = bench::run(Scenario::Catchup, opts(|o| o.missed = 500)).await.unwrap();
    assert_eq!(v["scenario"], "catchup");
    assert_eq!(u(&v, "missed"), 500);
    assert_eq!(u(&v, "received"), 500, "{v:#}");
    assert_eq!(u(&v, "lost"), 0);
    assert_eq!(u(&v, "duplicates"), 0);
    assert_eq!(u(&v, "out_of_order"), 0);
    assert!(v["catchup_ms"].as_f64().is_some_and(|x| x > 0.0), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_diffs_reach_every_other_member() {
    let v = bench::run(Scenario::Presence, opts(|o| o.connections = Some(10))).await.unwrap();
    assert_eq!(v["scenario"], "presence");
    assert_eq!(u(&v, "members"), 10);
    assert_eq!(u(&v, "expected_joins"), 90);
    assert_eq!(u(&v, "joins"), 90, "{v:#}");
    assert_eq!(u(&v, "expected_leaves"), 45);
    assert_eq!(u(&v, "leaves"), 45, "{v:#}");
    assert_eq!(u(&v, "lost"), 0);
    assert_eq!(u(&v, "frame_errors"), 0);
    has_latency(&v, "latency_ms");
    has_latency(&v, "leave_latency_ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ceiling_broadcaster_delivers_every_write_to_every_subscriber() {
    let v = bench::run(
        Scenario::Ceiling,
        opts(|o| {
            o.duration = 1.0;
            o.subscribers = 10;
            o.rate = 50;
            o.server_exe = Some(env!("CARGO_BIN_EXE_livebase-bench").into());
        }),
    )
    .await
    .unwrap();
    assert_eq!(v["scenario"], "ceiling");
    assert_eq!(v["server"], "child");
    assert_eq!(u(&v, "subscribers"), 10);
    assert_eq!(u(&v, "write_errors"), 0, "{v:#}");
    let writes = u(&v, "writes");
    assert!(writes > 0);
    assert_eq!(u(&v, "deliveries"), writes * 10, "{v:#}");
    assert_eq!(u(&v, "lost"), 0, "{v:#}");
    assert_eq!(u(&v, "duplicates"), 0);
    assert_eq!(u(&v, "disconnects"), 0);
    has_latency(&v, "latency_ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_moves_every_live_aggregate_for_every_subscriber() {
    let v = bench::run(
        Scenario::Aggregates,
        opts(|o| {
            o.subscribers = 6;
            o.aggregates = 3;
            o.rate = 20;
            o.duration = 1.0;
        }),
    )
    .await
    .unwrap();
    assert_eq!(v["scenario"], "aggregates");
    assert_eq!(u(&v, "aggregates"), 3);
    let writes = u(&v, "writes");
    assert!(writes > 0, "{v:#}");
    assert_eq!(u(&v, "expected_updates"), writes * 6);
    assert_eq!(u(&v, "updates"), writes * 6, "{v:#}");
    assert_eq!(u(&v, "lost"), 0);
    has_latency(&v, "latency_ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopback_servers_are_driven() {
    let err = bench::run(
        Scenario::Writes,
        opts(|o| {
            o.url = Some("http://192.0.2.1:8080".into());
            o.admin_key = Some("k".into());
        }),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("loopback"), "{err:#}");
    let err =
        bench::run(Scenario::Writes, opts(|o| o.url = Some("http://127.0.0.1:9".into()))).await.unwrap_err();
    assert!(format!("{err:#}").contains("admin-key"), "{err:#}");
}

#[test]
fn the_table_flattens_nested_figures() {
    let v = serde_json::json!({"scenario": "writes", "creates_per_s": 1234.0, "latency_ms": {"p50": 0.5}});
    let t = bench::render_table(&v);
    assert!(t.contains("scenario") && t.contains("writes"));
    assert!(t.contains("latency_ms.p50") && t.contains("0.500"), "{t}");
}
