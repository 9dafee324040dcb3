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
    /// A PostgreSQL database to keep everything in instead of the embedded SQLite file:
    /// `postgres://user[:password]@host[:port]/db`. It needs `wal_level = logical` and a role
    /// with the REPLICATION attribute (changes by any writer are captured from the WAL).
    #[arg(long = "database", env = "LIVEBASE_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// Load the example logistics schema and generated records (only into empty collections).
    #[arg(long)]
    pub demo: bool,
    /// A schema file (JSON or TOML) whose collections are created or migrated at start.
    #[arg(long, env = "LIVEBASE_SCHEMA")]
    pub schema: Option<PathBuf>,
    /// The service credential; generated and stored in the data dir when not given.
    #[arg(long, env = "LIVEBASE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// HS256 secret for user tokens.
    #[arg(long, env = "LIVEBASE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A PEM public key (RSA or EC) for RS256/ES256 user tokens.
    #[arg(long, env = "LIVEBASE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// A JWKS file with public keys for RS256/ES256 user tokens.
    #[arg(long, env = "LIVEBASE_JWKS")]
    pub jwks: Option<PathBuf>,
    /// The role of requests without a token.
    #[arg(long, env = "LIVEBASE_ANON_ROLE", default_value = "anon")]
    pub anon_role: String,
    /// REST requests per second per caller (token subject, or address when anonymous); 0: off.
    #[arg(long, env = "LIVEBASE_RATE_LIMIT", default_value_t = 200.0)]
    pub rate_limit: f64,
    /// Requests a caller may burst above the rate.
    #[arg(long, env = "LIVEBASE_RATE_BURST", default_value_t = 400.0)]
    pub rate_burst: f64,
    /// WebSocket messages per second per connection; 0: off.
    #[arg(long, env = "LIVEBASE_WS_RATE_LIMIT", default_value_t = 100.0)]
    pub ws_rate_limit: f64,
    /// WebSocket messages a connection may burst above the rate.
    #[arg(long, env = "LIVEBASE_WS_RATE_BURST", default_value_t = 200.0)]
    pub ws_rate_burst: f64,
    /// Most concurrent WebSocket connections.
    #[arg(long, env = "LIVEBASE_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Most subscriptions per WebSocket connection.
    #[arg(long, env = "LIVEBASE_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,
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
    /// Frames queued per WebSocket before the connection counts as a slow consumer.
    #[arg(long, env = "LIVEBASE_WS_QUEUE", default_value_t = 4096)]
    pub ws_queue: usize,
    /// How often the server pings each WebSocket, in milliseconds.
    #[arg(long, env = "LIVEBASE_HEARTBEAT_MS", default_value_t = 15_000)]
    pub heartbeat_ms: u64,
    /// A WebSocket silent for this long is closed and its presence removed, in milliseconds.
    #[arg(long, env = "LIVEBASE_HEARTBEAT_TIMEOUT_MS", default_value_t = 45_000)]
    pub heartbeat_timeout_ms: u64,
    /// Most rows a live query's snapshot may return.
    #[arg(long, env = "LIVEBASE_MAX_SNAPSHOT_ROWS", default_value_t = 10_000)]
    pub max_snapshot_rows: usize,
    /// Serve `/metrics` on this address only (not on `--addr`), e.g. `127.0.0.1:9090`.
    #[arg(long, env = "LIVEBASE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Require `Authorization: Bearer <token>` (this token or the admin key) for `/metrics`.
    #[arg(long, env = "LIVEBASE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Log filter, e.g. `info`, `livebase=debug`.
    #[arg(long, env = "LIVEBASE_LOG", default_value = "info")]
    pub log: String,
    /// This node's name, part of every connection id (generated when absent).
    #[arg(long, env = "LIVEBASE_NODE_ID")]
    pub node_id: Option<String>,
    /// A NATS server (`nats://host:4222`) that joins this node to the others using it:
    /// broadcast and presence reach every node's members, and a node that dies leaves
    /// everyone's presence within 6 s.
    #[arg(long = "nats", env = "LIVEBASE_NATS_URL")]
    pub nats: Option<String>,
}

impl Config {
    /// Defaults for tests and embedding: loopback, a random port, the given data dir.
    pub fn for_dir(data: PathBuf) -> Config {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data,
            database: None,
            demo: false,
            schema: None,
            admin_key: None,
            jwt_secret: None,
            jwt_public_key: None,
            jwks: None,
            anon_role: "anon".into(),
            rate_limit: 200.0,
            rate_burst: 400.0,
            ws_rate_limit: 100.0,
            ws_rate_burst: 200.0,
            max_connections: 100_000,
            max_subscriptions: 100,
            max_body: 1 << 20,
            retain_events: 1_000_000,
            retain_secs: 0,
            idempotency_secs: 86_400,
            ws_queue: 4096,
            heartbeat_ms: 15_000,
            heartbeat_timeout_ms: 45_000,
            max_snapshot_rows: 10_000,
            metrics_addr: None,
            metrics_token: None,
            log: "warn".into(),
            node_id: None,
            nats: None,
        }
    }
}

impl Config {
    pub fn limits(&self) -> crate::realtime::Limits {
        crate::realtime::Limits {
            queue_frames: self.ws_queue.max(1),
            heartbeat_interval: std::time::Duration::from_millis(self.heartbeat_ms.max(10)),
            heartbeat_timeout: std::time::Duration::from_millis(self.heartbeat_timeout_ms.max(10)),
            max_snapshot_rows: self.max_snapshot_rows,
            max_subscriptions: self.max_subscriptions,
            max_connections: self.max_connections,
            ws_rate: self.ws_rate_limit,
            ws_burst: self.ws_rate_burst,
            ..Default::default()
        }
    }
}
