//! The server under test: a child process, an in-process server, or one given by `--url`;
//! and what the bench reads about it from `/proc`.

use super::BenchOptions;
use anyhow::Context;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

pub(crate) struct Target {
    /// Where the server listens (always a loopback address).
    pub addr: SocketAddr,
    pub admin_key: String,
    kind: Kind,
}

enum Kind {
    Child { child: tokio::process::Child, pid: u32, _dir: tempfile::TempDir },
    InProcess { server: livebase_server::Server, _dir: tempfile::TempDir },
    External,
}

/// The HS256 secret of servers the bench starts itself (user tokens for `--rule`).
pub const JWT_SECRET: &str = "livebase-bench-secret";

impl Target {
    pub async fn start(opts: &BenchOptions) -> anyhow::Result<Target> {
        let key = || format!("lb_bench_{}", hex::encode(rand::random::<[u8; 16]>()));
        if let Some(url) = &opts.url {
            let addr = loopback_addr(url).await?;
            let admin_key = opts.admin_key.clone().context("--url needs --admin-key")?;
            return Ok(Target { addr, admin_key, kind: Kind::External });
        }
        let dir = tempfile::Builder::new().prefix("livebase-bench-").tempdir()?;
        let admin_key = key();
        if let Some(exe) = &opts.server_exe {
            let mut cmd = tokio::process::Command::new(exe);
            cmd.arg("serve")
                .arg("--addr")
                .arg("127.0.0.1:0")
                .arg("--data")
                .arg(dir.path())
                .arg("--admin-key")
                .arg(&admin_key)
                .arg("--jwt-secret")
                .arg(JWT_SECRET)
                .arg("--rate-limit")
                .arg("0")
                .arg("--ws-rate-limit")
                .arg("0")
                .arg("--log")
                .arg("warn")
                .args(opts.database.iter().flat_map(|d| ["--database", d.as_str()]))
                .env_remove("LIVEBASE_SCHEMA")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = cmd.spawn().with_context(|| format!("cannot run {}", exe.display()))?;
            let pid = child.id().context("the server exited at once")?;
            let stdout = child.stdout.take().context("no stdout")?;
            let mut lines = BufReader::new(stdout).lines();
            let url = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(line) = lines.next_line().await? {
                    if let Some(url) = line.strip_prefix("livebase listening on ") {
                        return Ok(url.trim().to_string());
                    }
                    eprintln!("{line}");
                }
                anyhow::bail!("the server exited before listening")
            })
            .await
            .context("the server did not start listening within 60 s")??;
            // The server logs to stdout: pass its lines on to our stderr.
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("server: {line}");
                }
            });
            let addr = loopback_addr(&url).await?;
            return Ok(Target { addr, admin_key, kind: Kind::Child { child, pid, _dir: dir } });
        }
        let mut config = livebase_server::Config::for_dir(dir.path().to_path_buf());
        config.admin_key = Some(admin_key.clone());
        config.jwt_secret = Some(JWT_SECRET.into());
        config.rate_limit = 0.0;
        config.ws_rate_limit = 0.0;
        config.database = opts.database.clone();
        let server = livebase_server::start(config).await?;
        Ok(Target { addr: server.addr, admin_key, kind: Kind::InProcess { server, _dir: dir } })
    }

    pub fn mode(&self) -> &'static str {
        match self.kind {
            Kind::Child { .. } => "child",
            Kind::InProcess { .. } => "in_process",
            Kind::External => "external",
        }
    }

    pub fn is_in_process(&self) -> bool {
        matches!(self.kind, Kind::InProcess { .. })
    }

    /// The process whose memory is the server's (ours when in-process).
    fn pid(&self) -> Option<u32> {
        match self.kind {
            Kind::Child { pid, .. } => Some(pid),
            Kind::InProcess { .. } => Some(std::process::id()),
            Kind::External => None,
        }
    }

    /// The server's resident memory, from `/proc/<pid>/status` (`VmRSS`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// User + system CPU seconds of a child server.
    pub fn child_cpu_seconds(&self) -> Option<f64> {
        let Kind::Child { pid, .. } = self.kind else { return None };
        cpu_seconds(&pid.to_string())
    }

    /// Stops a server the bench started: SIGINT (the server shuts down gracefully), then
    /// SIGKILL after 10 s.
    pub async fn stop(self) {
        match self.kind {
            Kind::Child { mut child, pid, _dir } => {
                if let Ok(pid) = i32::try_from(pid) {
                    // SAFETY: signalling our own child process by its id.
                    unsafe {
                        libc::kill(pid, libc::SIGINT);
                    }
                }
                if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
            Kind::InProcess { server, _dir } => {
                let _ = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
            }
            Kind::External => {}
        }
    }
}

/// User + system CPU seconds of a process (`self` or a pid), from `/proc/<pid>/stat`.
pub(crate) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`;
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// The loopback socket address of `url` (`http://host:port[/...]`); any other address is
/// refused: the bench sends traffic to this machine only.
pub(crate) async fn loopback_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .with_context(|| format!("'{url}' is not an http:// URL"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&hostport)
        .await
        .with_context(|| format!("cannot resolve '{hostport}'"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() && a.ip().is_loopback())
        .or_else(|| addrs.iter().find(|a| a.ip().is_loopback()))
        .copied()
        .with_context(|| {
            format!("'{url}' is not a loopback address: the bench only drives servers on this machine")
        })
}

/// Raises this process's open-file limit to its hard limit (a child server inherits it) and
/// returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
    }
    r.rlim_cur
}
