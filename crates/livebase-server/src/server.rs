//! Starting and stopping a server: store, router, listener.

use crate::access::AccessCache;
use crate::app::{App, AppInner};
use crate::auth::Verifier;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::realtime::bus::{MemoryBus, NodeId};
use crate::realtime::hub::{Hub, HubParts};
use crate::service::Service;
use crate::{demo, rest, schema_file};
use anyhow::Context;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use livebase_store::postgres::{redact, PgOptions, PgStore};
use livebase_store::sqlite::{SqliteOptions, SqliteStore};
use livebase_store::{Retention, Store};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `--metrics-addr` is set (else on `addr`).
    pub metrics_addr: Option<SocketAddr>,
    pub admin_key: String,
    pub app: App,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every WebSocket (code 1001, so clients reconnect elsewhere and resume), stops
    /// accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(mut self) {
        self.app.hub.close_all(1001, "server_shutdown");
        // No new connections from here on (a client told 1001 reconnects at once).
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Each connection gives its close frame a bounded time to leave, then ends.
        let until = tokio::time::Instant::now() + crate::realtime::upgrade::CLOSE_DEADLINE * 2;
        while self.app.hub.connection_count() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.app.hub.leave_cluster().await;
        let _ = self.task.await;
        if let Some(log) = &self.app.shared_log {
            log.stop().await;
        }
        self.app.store.close().await;
    }

    /// Runs until the task ends (Ctrl-C handling is the caller's).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The admin key: from config, else from `<data>/admin.key`, else generated, stored and
/// printed once.
fn admin_key(config: &Config) -> anyhow::Result<String> {
    if let Some(k) = &config.admin_key {
        return Ok(k.clone());
    }
    let path = config.data.join("admin.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_string());
    }
    let key = format!("lb_admin_{}", hex::encode(rand::random::<[u8; 24]>()));
    std::fs::create_dir_all(&config.data)?;
    std::fs::write(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    eprintln!("Generated admin key (shown once, stored in {}):\n  {key}", path.display());
    Ok(key)
}

pub fn router(app: App) -> Router {
    let mut r = Router::new()
        .merge(rest::routes(app.clone()))
        .merge(crate::supabase::rest::routes(app.clone()))
        .merge(crate::status::routes())
        .merge(crate::openapi::routes())
        .merge(crate::dashboard::routes())
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready));
    // With a separate metrics address, the main port does not serve /metrics at all.
    if app.config.metrics_addr.is_none() {
        r = r.route("/metrics", get(metrics_text));
    }
    r.route("/api/realtime", get(crate::realtime::conn::upgrade))
        .route("/realtime/v1/websocket", get(crate::realtime::phoenix::upgrade))
        .route("/socket/websocket", get(crate::realtime::phoenix::upgrade))
        .merge(crate::realtime::phoenix::rest::routes())
        .layer(axum::middleware::from_fn_with_state(app.clone(), record_request))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn(crate::realtime::upgrade::peer_addr))
        .with_state(app)
}

/// The router of the separate metrics listener (`--metrics-addr`): `/metrics` only.
fn metrics_router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::not_found("this address serves /metrics only") })
        .with_state(app)
}

async fn metrics_text(
    axum::extract::State(app): axum::extract::State<App>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(want) = &app.config.metrics_token {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| {
            crate::auth::same(g.as_bytes(), want.as_bytes())
                || crate::auth::same(g.as_bytes(), app.admin_key.as_bytes())
        });
        if !ok {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "/metrics needs 'Authorization: Bearer <metrics token>'",
            )
            .into_response();
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], app.metrics.render()).into_response()
}

/// Records each HTTP request's latency by route template (not raw path), method and status.
async fn record_request(
    axum::extract::State(app): axum::extract::State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    app.metrics.http_request(
        &route,
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

async fn ready(axum::extract::State(app): axum::extract::State<App>) -> impl IntoResponse {
    if let Err(why) = app.hub.bus_available() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "cluster_unreachable", "error": why})),
        );
    }
    let feed = app.hub.feed();
    let q = livebase_store::ChangeQuery { since: feed.head(), limit: 1, ..Default::default() };
    match app.store.changes(q).await {
        Ok(p) if p.head == feed.head() => {
            (StatusCode::OK, Json(json!({"status": "ready", "head": p.head, "epoch": feed.epoch().as_str()})))
        }
        Ok(p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "catching_up", "head": p.head, "published": feed.head()})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store_unavailable", "error": e.to_string()})),
        ),
    }
}

pub async fn start(config: Config) -> anyhow::Result<Server> {
    // Bind first: a busy port fails before any data is touched.
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let metrics_listener = match config.metrics_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (metrics)"))?,
        ),
        None => None,
    };
    let admin_key = admin_key(&config)?;
    let metrics = Arc::new(Metrics::new());
    let observer = metrics.clone();
    let on_batch: livebase_store::queue::BatchObserver =
        Arc::new(move |n, took| observer.commit_batch(n, took.as_secs_f64()));
    let retention = Retention {
        max_events: (config.retain_events > 0).then_some(config.retain_events),
        max_age_secs: (config.retain_secs > 0).then_some(config.retain_secs),
        idempotency_secs: config.idempotency_secs,
    };
    let (store, postgres): (Arc<dyn Store>, Option<Arc<PgStore>>) = match &config.database {
        Some(url) => {
            let mut opts = PgOptions::new(url.clone());
            opts.retention = retention;
            // With NATS, several nodes share the database and one log (cluster::log).
            opts.cluster = config.nats.is_some();
            opts.on_batch = Some(on_batch);
            let pg = Arc::new(PgStore::open(opts).await.map_err(|e| match e {
                livebase_store::StoreError::Unavailable(m) => anyhow::anyhow!("{m}"),
                e => anyhow::anyhow!("cannot open PostgreSQL at {}: {e}", redact(url)),
            })?);
            (pg.clone(), Some(pg))
        }
        None => {
            let opts = SqliteOptions { on_batch: Some(on_batch), retention, ..Default::default() };
            let dir = config.data.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir, opts))
                .await?
                .with_context(|| format!("cannot open the store in {}", config.data.display()))?;
            (Arc::new(store), None)
        }
    };
    let node = match &config.node_id {
        Some(n)
            if !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            NodeId::new(n.as_str())
        }
        Some(n) => anyhow::bail!("--node-id must be 1 to 64 letters, digits or '_', got '{n}'"),
        None => NodeId::generate(),
    };
    // The cluster comes before any write of this node's own (schema file, demo data): on a
    // shared database, writes are answered once the cluster's log has them.
    let (bus, shared_log): (Arc<dyn crate::realtime::bus::ChannelBus>, _) = match &config.nats {
        Some(url) => {
            let bus = crate::cluster::nats::NatsBus::connect(url, node.clone()).await?;
            let log = match &postgres {
                Some(pg) => Some(Arc::new(
                    crate::cluster::log::SharedLog::start(
                        bus.client(),
                        pg.clone(),
                        node.clone(),
                        metrics.clone(),
                    )
                    .await?,
                )),
                None => None,
            };
            (bus, log)
        }
        // One node: channel events have no other node to reach.
        None => (MemoryBus::new().attach(node), None),
    };
    let mut channels = Vec::new();
    if let Some(path) = &config.schema {
        channels = schema_file::apply(store.as_ref(), path).await?;
    }
    let read = |p: &Option<std::path::PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
        p.as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
            .transpose()
    };
    let pem = read(&config.jwt_public_key)?;
    let jwks = read(&config.jwks)?.map(|b| String::from_utf8_lossy(&b).into_owned());
    let verifier = Verifier::new(
        admin_key.clone(),
        config.jwt_secret.as_deref(),
        pem.as_deref(),
        jwks.as_deref(),
        &config.anon_role,
    )?;
    let access = Arc::new(AccessCache::new(store.schema(), &channels)?);
    let rest_limiter = RateLimiter::new(config.rate_limit, config.rate_burst);
    if config.demo {
        demo::load(store.as_ref()).await?;
    }
    let addr = listener.local_addr()?;
    let hub = Hub::new(HubParts {
        store: store.clone(),
        feed: store.feed(),
        bus,
        limits: config.limits(),
        metrics: metrics.clone(),
        access: access.clone(),
    });
    let dispatcher = hub.spawn_dispatcher();
    let sampler = {
        let (hub, metrics, cluster) = (hub.clone(), metrics.clone(), shared_log.is_some());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                metrics.set_queue_depth(hub.queue_depth());
                metrics.set_writer_backlog(hub.writer_backlog());
                if let Some(pg) = &postgres {
                    let (connected, lag, captured) = pg.capture_status();
                    metrics.set_pg_capture(connected, lag, captured, pg.slot_retained_bytes().await.ok());
                    if cluster {
                        let q = livebase_store::ChangeQuery {
                            since: u64::MAX >> 1,
                            limit: 1,
                            ..Default::default()
                        };
                        if let Ok(p) = pg.changes(q).await {
                            metrics.set_cluster_feed_lag(p.head.saturating_sub(hub.feed().head()));
                        }
                    }
                }
            }
        })
    };
    let writers = crate::realtime::socket::Writers::start();
    hub.set_backlog(writers.clone());
    let app = App {
        inner: Arc::new(AppInner {
            service: Service::new(store.clone(), access.clone()).with_admission(Arc::new(hub.clone())),
            store,
            hub,
            writers,
            metrics,
            config,
            admin_key: admin_key.clone(),
            verifier,
            access,
            rest_limiter,
            shared_log,
        }),
    };
    let router = router(app.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let metrics_task = metrics_listener.map(|l| {
        let router = metrics_router(app.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, router).await {
                tracing::error!(error = %e, "metrics listener stopped with an error");
            }
        })
    });
    let task = tokio::spawn(async move {
        let listener = crate::realtime::upgrade::SharedListener(listener);
        let r = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<crate::realtime::upgrade::Peer>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "server stopped with an error");
        }
        dispatcher.abort();
        sampler.abort();
        if let Some(t) = metrics_task {
            t.abort();
        }
    });
    tracing::info!(%addr, ?metrics_addr, "livebase listening");
    Ok(Server { addr, metrics_addr, admin_key, app, stop: Some(stop), task })
}
