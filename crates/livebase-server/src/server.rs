//! Starting and stopping a server: store, router, listener.

use crate::access::AccessCache;
use crate::app::{App, AppInner};
use crate::auth::Verifier;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::realtime::hub::Hub;
use crate::{demo, rest, schema_file};
use anyhow::Context;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
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
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
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
    Router::new()
        .merge(rest::routes(app.clone()))
        .merge(crate::status::routes())
        .merge(crate::openapi::routes())
        .merge(crate::dashboard::routes())
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/api/realtime", get(crate::realtime::conn::upgrade))
        .layer(axum::middleware::from_fn_with_state(app.clone(), record_request))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(app)
}

async fn metrics_text(axum::extract::State(app): axum::extract::State<App>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], app.metrics.render())
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
    let q = livebase_store::ChangeQuery { since: app.store.tail().head(), limit: 1, ..Default::default() };
    match app.store.changes(q).await {
        Ok(p) if p.head == app.store.tail().head() => {
            (StatusCode::OK, Json(json!({"status": "ready", "head": p.head})))
        }
        Ok(p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "catching_up", "head": p.head, "published": app.store.tail().head()})),
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
    let admin_key = admin_key(&config)?;
    let metrics = Arc::new(Metrics::new());
    let observer = metrics.clone();
    let opts = SqliteOptions {
        on_batch: Some(Arc::new(move |n, took| observer.commit_batch(n, took.as_secs_f64()))),
        retention: Retention {
            max_events: (config.retain_events > 0).then_some(config.retain_events),
            max_age_secs: (config.retain_secs > 0).then_some(config.retain_secs),
            idempotency_secs: config.idempotency_secs,
        },
        ..Default::default()
    };
    let dir = config.data.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir, opts))
        .await?
        .with_context(|| format!("cannot open the store in {}", config.data.display()))?;
    let store: Arc<dyn Store> = Arc::new(store);
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
    let hub = Hub::new(store.clone(), config.limits(), metrics.clone(), access.clone());
    let dispatcher = hub.spawn_dispatcher();
    let sampler = {
        let (hub, metrics) = (hub.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                metrics.set_queue_depth(hub.queue_depth());
            }
        })
    };
    let app = App {
        inner: Arc::new(AppInner {
            store,
            hub,
            metrics,
            config,
            admin_key: admin_key.clone(),
            verifier,
            access,
            rest_limiter,
        }),
    };
    let router = router(app.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Small frames must leave at once: Nagle's algorithm would hold them for the peer's
        // delayed ACK (tens of milliseconds).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let r = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "server stopped with an error");
        }
        dispatcher.abort();
        sampler.abort();
    });
    tracing::info!(%addr, "livebase listening");
    Ok(Server { addr, admin_key, app, stop: Some(stop), task })
}
