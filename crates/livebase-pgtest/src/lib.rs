//! Throwaway PostgreSQL clusters for Livebase's tests.
//!
//! A [`Cluster`] is a private PostgreSQL server: `initdb` into a fresh temporary directory,
//! configured for logical replication, listening on `127.0.0.1` on a free port, with its unix
//! socket inside that directory. The machine's own PostgreSQL service is never touched.
//!
//! # API
//! - [`available`]: whether PostgreSQL server binaries were found.
//! - [`require`]: the process-wide [`Cluster::shared`] cluster, or `None` (with a skip note on
//!   stderr) when the binaries are missing. Under `CI=true` a missing PostgreSQL is a failure:
//!   it panics instead.
//! - [`Cluster::start`] / [`Cluster::start_with`]: a new cluster with the default settings
//!   (`wal_level=logical`, `max_replication_slots=64`, `max_wal_senders=64`, `fsync=off`,
//!   `synchronous_commit=off`, small `shared_buffers`), optionally overriding some, e.g.
//!   `[("wal_level", "replica")]`. `port`, `listen_addresses` and `unix_socket_directories`
//!   are always chosen by this crate.
//! - [`Cluster::shared`]: one cluster per test process, started on first use.
//! - [`Cluster::create_database`]: a fresh, uniquely named database; returns its URL
//!   `postgres://postgres@127.0.0.1:<port>/<db>`. [`Cluster::url`], [`Cluster::port`].
//!   Databases are per test; replication slots are cluster-wide, so name them after the
//!   database.
//! - [`Cluster::psql`]: runs SQL through `psql` and returns its unaligned, tuples-only output.
//! - [`Cluster::stop`] (fast shutdown), [`Cluster::start_again`] (same port and data
//!   directory), [`Cluster::restart`] (both): for "PostgreSQL restarts while Livebase runs".
//! - Dropping a cluster stops it (`pg_ctl stop -m immediate`) and removes its directory.
//!
//! # Clean-up when the test process dies
//! A `static` is never dropped and a test process can be killed, so every cluster also has a
//! watchdog: a small `sh` loop in its own process group that polls the test process with
//! `kill -0` and, once it is gone, stops the server (`-m immediate`) and removes the
//! directory. No postgres outlives the test process by more than about a second.
//!
//! # Finding PostgreSQL
//! `LIVEBASE_PG_BIN` (a directory holding `initdb`, `pg_ctl`, `postgres`, `psql`, `createdb`)
//! if set, else the highest version of `/usr/lib/postgresql/<version>/bin` (Debian's layout).
//!
//! # Running as root
//! `initdb` refuses to run as root. When the effective uid is 0 the server binaries (`initdb`,
//! `pg_ctl`) run as the `postgres` OS user through `runuser -u postgres --`, and the temporary
//! directory is handed to that user. The client binaries (`psql`, `createdb`) connect over TCP
//! with trust authentication and run as the caller.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The settings every cluster starts with, before overrides.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("wal_level", "logical"),
    ("max_replication_slots", "64"),
    ("max_wal_senders", "64"),
    ("max_connections", "200"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "16MB"),
    ("log_min_messages", "warning"),
];

/// Settings the crate owns; overriding them is refused.
const RESERVED: &[&str] = &["port", "listen_addresses", "unix_socket_directories"];

const BINARIES: &[&str] = &["initdb", "pg_ctl", "postgres", "psql", "createdb"];

/// The directory holding the PostgreSQL binaries, if there is a complete one.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LIVEBASE_PG_BIN") {
        let dir = PathBuf::from(dir);
        return has_binaries(&dir).then_some(dir);
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) =
            name.split('.').map(|part| part.parse::<u32>().ok()).collect::<Option<Vec<u32>>>()
        else {
            continue;
        };
        let dir = entry.path().join("bin");
        if has_binaries(&dir) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, dir));
        }
    }
    best.map(|(_, dir)| dir)
}

fn has_binaries(dir: &Path) -> bool {
    BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// Whether PostgreSQL server binaries are present.
pub fn available() -> bool {
    bin_dir().is_some()
}

/// The shared cluster, or `None` when PostgreSQL is not installed (a note goes to stderr).
///
/// # Panics
/// When PostgreSQL is missing and `CI=true` (a missing component is a failure in CI), and when
/// the binaries exist but the cluster does not start.
pub fn require() -> Option<&'static Cluster> {
    if !available() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "PostgreSQL binaries not found (looked for {} in LIVEBASE_PG_BIN or \
                 /usr/lib/postgresql/*/bin); CI=true, so this is a failure. Install the \
                 `postgresql` package (scripts/test does this).",
                BINARIES.join(", ")
            );
        }
        eprintln!(
            "note: skipping: PostgreSQL binaries not found in /usr/lib/postgresql/*/bin \
             (install `postgresql` or set LIVEBASE_PG_BIN)"
        );
        return None;
    }
    Some(Cluster::shared())
}

/// A private PostgreSQL server in a temporary directory. See the crate docs.
pub struct Cluster {
    bin: PathBuf,
    /// Removed on drop. `None` only while dropping.
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    as_postgres: bool,
    next_db: AtomicU64,
    /// Serialises stop/start.
    lifecycle: Mutex<()>,
    watchdog: Mutex<Option<Child>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("data", &self.data).field("port", &self.port).finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

impl Cluster {
    /// Starts a cluster with the default settings.
    pub fn start() -> Result<Cluster, String> {
        Cluster::start_with(&[])
    }

    /// Starts a cluster with the default settings, `settings` overriding or adding to them.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Cluster, String> {
        let bin = bin_dir().ok_or("PostgreSQL binaries not found")?;
        for (key, _) in settings {
            if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(key)) {
                return Err(format!("setting {key} is chosen by livebase-pgtest"));
            }
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("livebase-pg-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(dir.path()))?;
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let mut cluster = Cluster {
            bin,
            data,
            log,
            port: 0,
            as_postgres,
            next_db: AtomicU64::new(0),
            lifecycle: Mutex::new(()),
            watchdog: Mutex::new(None),
            dir: Some(dir),
        };
        cluster.spawn_watchdog()?;
        run(cluster
            .server_cmd("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync"))?;

        let mut merged: Vec<(String, String)> =
            DEFAULT_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (key, value) in settings {
            match merged.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
                Some(slot) => slot.1 = value.to_string(),
                None => merged.push((key.to_string(), value.to_string())),
            }
        }
        let socket_dir = cluster.dir_path().to_path_buf();
        merged.push(("listen_addresses".into(), "127.0.0.1".into()));
        merged.push(("unix_socket_directories".into(), socket_dir.to_string_lossy().into_owned()));

        // A free port can be taken between probing and binding: try a few.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut conf = merged.clone();
            conf.push(("port".into(), port.to_string()));
            cluster.write_conf(&conf)?;
            cluster.port = port;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// One cluster per test process, started on first use (default settings).
    ///
    /// # Panics
    /// When the cluster cannot be started.
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| match Cluster::start() {
            Ok(c) => c,
            Err(e) => panic!("starting the shared PostgreSQL test cluster: {e}"),
        })
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db)
    }

    /// Creates a fresh, uniquely named database and returns its URL.
    ///
    /// # Panics
    /// When `createdb` fails (this is test support: a broken cluster fails the test).
    pub fn create_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("lb_{}_{n}", std::process::id());
        if let Err(e) = run(self
            .client_cmd("createdb")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(&name))
        {
            panic!("createdb {name}: {e}");
        }
        self.url(&name)
    }

    /// Runs `sql` in database `db` with `psql` (stops at the first error) and returns the
    /// unaligned, tuples-only output with the trailing newline removed.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = run(self
            .client_cmd("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql]))?;
        Ok(out.trim_end_matches('\n').to_string())
    }

    /// Stops the server (fast shutdown: sessions are disconnected). The data directory stays.
    pub fn stop(&self) -> Result<(), String> {
        let _guard = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        self.pg_ctl_stop("fast")
    }

    /// Starts a stopped server again on the same port and data directory.
    pub fn start_again(&self) -> Result<(), String> {
        let _guard = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        self.pg_ctl_start()
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub fn restart(&self) -> Result<(), String> {
        self.stop()?;
        self.start_again()
    }

    fn dir_path(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => self.data.parent().unwrap_or(Path::new("/")),
        }
    }

    fn server_cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    fn client_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.stdin(Stdio::null()).env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    fn write_conf(&self, settings: &[(String, String)]) -> Result<(), String> {
        let path = self.data.join("postgresql.auto.conf");
        let mut text = String::from("# written by livebase-pgtest\n");
        for (k, v) in settings {
            text.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let mut f = std::fs::File::create(&path).map_err(|e| format!("writing {}: {e}", path.display()))?;
        f.write_all(text.as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()))?;
        drop(f);
        if self.as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&path))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let res = run(self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"]));
        res.map(drop).map_err(|e| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{e}\nserver log tail:\n{}", tail.join("\n"))
        })
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        run(self.server_cmd("pg_ctl").arg("-D").arg(&self.data).args(["-m", mode, "-w", "-t", "60", "stop"]))
            .map(drop)
    }

    /// A shell loop that outlives a killed test process just long enough to clean up.
    fn spawn_watchdog(&self) -> Result<(), String> {
        let pg_ctl = self.bin.join("pg_ctl");
        let runuser = if self.as_postgres { "runuser -u postgres -- " } else { "" };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             if [ -f {data}/postmaster.pid ]; then \
               {runuser}{pg_ctl} -D {data} -m immediate -w -t 30 stop >/dev/null 2>&1; \
             fi; \
             rm -rf {dir}",
            pid = std::process::id(),
            data = shell_quote(&self.data),
            pg_ctl = shell_quote(&pg_ctl),
            dir = shell_quote(self.dir_path()),
        );
        use std::os::unix::process::CommandExt;
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C aimed at the test's group leaves it running.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawning the watchdog: {e}"))?;
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self.pg_ctl_stop("immediate");
        }
        let watchdog = self.watchdog.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                eprintln!("livebase-pgtest: removing the cluster directory: {e}");
            }
        }
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free port: {e}"))
}

/// Runs a command to completion; returns its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{shown}: output is not UTF-8: {e}"))
}

/// Waits until `f` holds, polling every 100 ms, for at most `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
