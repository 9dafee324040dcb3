//! A throwaway NATS server with JetStream for the cluster tests: `nats-server -js` on a free
//! loopback port with its store in a temp dir, killed when dropped. Without the
//! `nats-server` binary the tests are skipped, except under `CI=true`, where that fails.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
}

fn binary() -> Option<&'static str> {
    ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"].into_iter().find(|b| {
        Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    })
}

/// A server, or None (skip) when the binary is missing outside CI.
pub fn require() -> Option<Nats> {
    if binary().is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is not installed (scripts/test installs it); under CI=true that is a failure"
        );
        eprintln!("skipped: nats-server is not installed");
        return None;
    }
    let port = super::process::free_port();
    let mut n = Nats {
        child: None,
        port,
        url: format!("nats://127.0.0.1:{port}"),
        dir: tempfile::tempdir().expect("temp dir"),
    };
    n.start_again();
    Some(n)
}

impl Nats {
    /// Starts the server (again) on the same port and store; waits until it accepts.
    pub fn start_again(&mut self) {
        let bin = binary().expect("nats-server");
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
