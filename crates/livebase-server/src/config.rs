//! Server configuration: command-line flags with environment fallbacks.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LIVEBASE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Data directory (SQLite database, admin key).
    #[arg(long, env = "LIVEBASE_DATA", default_value = "./livebase_data")]
    pub data: PathBuf,
    /// Load the example logistics schema and generated records (only into empty collections).
    #[arg(long)]
    pub demo: bool,
    /// A schema file (JSON or TOML) whose collections are created or migrated at start.
    #[arg(long, env = "LIVEBASE_SCHEMA")]
    pub schema: Option<PathBuf>,
    /// The service credential; generated and stored in the data dir when not given.
    #[arg(long, env = "LIVEBASE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "LIVEBASE_MAX_BODY", default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Keep at most this many change events (0: no count limit).
    #[arg(long, env = "LIVEBASE_RETAIN_EVENTS", default_value_t = 1_000_000)]
    pub retain_events: u64,
    /// Drop change events older than this many seconds (0: no age limit).
    #[arg(long, env = "LIVEBASE_RETAIN_SECS", default_value_t = 0)]
    pub retain_secs: u64,
    /// How long a stored idempotent response is replayed, in seconds.
    #[arg(long, env = "LIVEBASE_IDEMPOTENCY_SECS", default_value_t = 86_400)]
    pub idempotency_secs: u64,
    /// Log filter, e.g. `info`, `livebase=debug`.
    #[arg(long, env = "LIVEBASE_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// Defaults for tests and embedding: loopback, a random port, the given data dir.
    pub fn for_dir(data: PathBuf) -> Config {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data,
            demo: false,
            schema: None,
            admin_key: None,
            max_body: 1 << 20,
            retain_events: 1_000_000,
            retain_secs: 0,
            idempotency_secs: 86_400,
            log: "warn".into(),
        }
    }
}
