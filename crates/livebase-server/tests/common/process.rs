//! The real `livebase` binary as a child process, for crash tests.

use reqwest::StatusCode;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "k";

/// A `livebase serve` child process, killed (SIGKILL) and reaped when dropped, so a failing
/// test never leaves a server behind.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// `kill -9`: `Child::kill` sends SIGKILL on Unix.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client")
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Starts the binary on `data` and waits (at most 10 s) until `GET /health` answers.
pub async fn spawn_server(data: &Path, log: &Path, extra: &[&str]) -> ServerProcess {
    let port = free_port();
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("server log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_livebase"));
    // Settings from the environment (retention, schema file, ...) must not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("LIVEBASE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .args(["--admin-key", ADMIN_KEY, "--log", "warn"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(stderr.try_clone().expect("log file"))
        .stderr(stderr);
    let child = cmd.spawn().expect("spawn livebase");
    let mut p = ServerProcess { child, url: format!("http://127.0.0.1:{port}") };
    let http = http_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = p.child.try_wait().expect("poll child") {
            panic!(
                "livebase exited during startup ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(r) = http.get(format!("{}/health", p.url)).send().await {
            if r.status() == StatusCode::OK {
                return p;
            }
        }
        if Instant::now() > deadline {
            p.kill_9();
            panic!(
                "livebase not healthy within 10 s; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        // Polling process startup: there is no event to await.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
