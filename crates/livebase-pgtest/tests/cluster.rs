//! The throwaway cluster itself: settings, databases, stop/start, the watchdog.

use livebase_pgtest::{wait_until, Cluster};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().expect("url has a database")
}

#[test]
fn shared_cluster_has_logical_wal_level() {
    let Some(cluster) = livebase_pgtest::require() else {
        return;
    };
    let out = cluster.psql("postgres", "SHOW wal_level").expect("psql");
    assert_eq!(out, "logical");
    let slots = cluster.psql("postgres", "SHOW max_replication_slots").expect("psql");
    assert_eq!(slots, "64");
    assert_ne!(cluster.port(), 5432, "never the machine's own service");
}

#[test]
fn databases_are_distinct_and_work() {
    let Some(cluster) = livebase_pgtest::require() else {
        return;
    };
    let a = cluster.create_database();
    let b = cluster.create_database();
    assert_ne!(a, b);
    assert!(a.starts_with(&format!("postgres://postgres@127.0.0.1:{}/", cluster.port())));
    cluster.psql(db_name(&a), "CREATE TABLE t (x int); INSERT INTO t VALUES (1)").expect("create in a");
    assert_eq!(cluster.psql(db_name(&a), "SELECT x FROM t").expect("a"), "1");
    let err = cluster.psql(db_name(&b), "SELECT x FROM t").expect_err("b has no table t");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn settings_can_be_overridden_and_reserved_ones_refused() {
    if !livebase_pgtest::available() {
        let _ = livebase_pgtest::require();
        return;
    }
    let cluster = Cluster::start_with(&[("wal_level", "replica")]).expect("start");
    assert_eq!(cluster.psql("postgres", "SHOW wal_level").expect("psql"), "replica");
    let err = Cluster::start_with(&[("port", "5432")]).expect_err("port is reserved");
    assert!(err.contains("port"), "{err}");
    let dir = cluster.data_dir().parent().expect("parent").to_path_buf();
    drop(cluster);
    assert!(!dir.exists(), "drop removes {}", dir.display());
}

#[test]
fn stop_and_start_again_keep_data_and_port() {
    if !livebase_pgtest::available() {
        let _ = livebase_pgtest::require();
        return;
    }
    let cluster = Cluster::start().expect("start");
    let url = cluster.create_database();
    let db = db_name(&url);
    cluster.psql(db, "CREATE TABLE t (x text); INSERT INTO t VALUES ('kept')").expect("write");
    let port = cluster.port();
    cluster.stop().expect("stop");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "stopped server still listens");
    assert!(cluster.psql(db, "SELECT 1").is_err());
    cluster.start_again().expect("start again");
    assert_eq!(cluster.port(), port);
    assert_eq!(cluster.psql(db, "SELECT x FROM t").expect("read"), "kept");
    cluster.restart().expect("restart");
    assert_eq!(cluster.psql(db, "SELECT x FROM t").expect("read"), "kept");
}

const CHILD_ENV: &str = "LIVEBASE_PGTEST_WATCHDOG_CHILD";

/// Run by `watchdog_stops_postgres_when_owner_dies` in a child process: starts a cluster,
/// reports where it is, and waits to be killed.
#[test]
#[ignore = "helper process for watchdog_stops_postgres_when_owner_dies"]
fn watchdog_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let cluster = Cluster::start().expect("start");
    println!("CLUSTER {} {}", cluster.port(), cluster.data_dir().parent().expect("parent").display());
    // Killed by the parent long before this ends; bounded in case it is not.
    std::thread::sleep(Duration::from_secs(120));
    std::process::abort();
}

#[test]
fn watchdog_stops_postgres_when_owner_dies() {
    if !livebase_pgtest::available() {
        let _ = livebase_pgtest::require();
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "watchdog_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("CLUSTER ") {
                let _ = tx.send(rest.to_string());
                return;
            }
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            panic!("child never reported its cluster: {e}");
        }
    };
    let (port, dir) = line.split_once(' ').expect("port and dir");
    let port: u16 = port.parse().expect("port");
    let dir = PathBuf::from(dir);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok(), "child's postgres is up");
    let pid_file = dir.join("data/postmaster.pid");
    let postmaster: i32 = std::fs::read_to_string(&pid_file)
        .expect("postmaster.pid")
        .lines()
        .next()
        .expect("pid line")
        .trim()
        .parse()
        .expect("pid");

    child.kill().expect("kill child");
    child.wait().expect("reap child");

    let gone = wait_until(Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
            // SAFETY: signal 0 only checks that the process exists.
            && unsafe { libc::kill(postmaster, 0) } != 0
            && !dir.exists()
    });
    assert!(gone, "postgres (pid {postmaster}, port {port}) or {} survived its owner", dir.display());
}

const REQUIRE_ENV: &str = "LIVEBASE_PGTEST_REQUIRE_CHILD";

/// Run by `require_skips_outside_ci_and_fails_in_ci` with PostgreSQL hidden.
#[test]
#[ignore = "helper process for require_skips_outside_ci_and_fails_in_ci"]
fn require_child() {
    if std::env::var_os(REQUIRE_ENV).is_none() {
        return;
    }
    assert!(!livebase_pgtest::available());
    assert!(livebase_pgtest::require().is_none());
}

#[test]
fn require_skips_outside_ci_and_fails_in_ci() {
    let exe = std::env::current_exe().expect("test binary");
    let run = |ci: Option<&str>| {
        let mut cmd = Command::new(&exe);
        cmd.args(["--exact", "require_child", "--ignored", "--nocapture"])
            .env(REQUIRE_ENV, "1")
            .env("LIVEBASE_PG_BIN", "/nonexistent/livebase-pgtest")
            .env_remove("CI");
        if let Some(ci) = ci {
            cmd.env("CI", ci);
        }
        cmd.output().expect("run child")
    };
    let skipped = run(None);
    assert!(skipped.status.success(), "{skipped:?}");
    assert!(String::from_utf8_lossy(&skipped.stderr).contains("skipping"));
    let failed = run(Some("true"));
    assert!(!failed.status.success(), "CI=true must fail: {failed:?}");
    let output =
        format!("{}{}", String::from_utf8_lossy(&failed.stdout), String::from_utf8_lossy(&failed.stderr));
    assert!(output.contains("CI=true"), "{output}");
}
