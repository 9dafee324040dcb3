//! `writes`: concurrent keep-alive HTTP clients creating records as fast as they are answered.

use super::http::{record_body, HttpConn};
use super::{stats, CpuMeter, Ctx};
use hyper::{Method, StatusCode, Uri};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counters {
    creates: AtomicU64,
    errors: AtomicU64,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Map<String, Value>> {
    let opts = &ctx.opts;
    let addr = ctx.target.addr;
    let key = ctx.target.admin_key.clone();
    let collection = ctx.name("writes");
    let mut admin = HttpConn::connect(addr, &key).await?;
    admin.create_bench_collection(&collection).await?;
    let uri: Uri = format!("/api/collections/{collection}/records").parse()?;

    ctx.progress.phase("connecting clients", opts.clients as u64);
    let mut conns = Vec::with_capacity(opts.clients);
    for _ in 0..opts.clients {
        conns.push(HttpConn::connect(addr, &key).await?);
        ctx.progress.inc();
    }

    let counters = Arc::new(Counters::default());
    let first_error = Arc::new(parking_lot::Mutex::new(None::<String>));
    let duration = opts.duration();
    let cpu = CpuMeter::start(&ctx.target);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, mut conn) in conns.into_iter().enumerate() {
        let counters = counters.clone();
        let first_error = first_error.clone();
        let uri = uri.clone();
        let key = key.clone();
        // One pre-serialized body per client, cloned (a reference count) for every request.
        let body = record_body(i as u64, 0);
        tasks.push(tokio::spawn(async move {
            let mut hist = stats::histogram(3);
            let mut last = Instant::now();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match conn.send(Method::POST, &uri, body.clone()).await {
                    Ok((StatusCode::CREATED, _)) => {
                        last = Instant::now();
                        stats::record_ns(&mut hist, (last - t0).as_nanos() as u64);
                        counters.creates.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .get_or_insert_with(|| format!("{status} {}", String::from_utf8_lossy(&body)));
                    }
                    Err(e) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().get_or_insert_with(|| format!("{e:#}"));
                        // The connection is gone: open a new one, or give up this client.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        match HttpConn::connect(addr, &key).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            (hist, last)
        }));
    }
    let c = counters.clone();
    ctx.progress
        .timed(
            "writes",
            duration,
            || {
                format!(
                    "{} creates, {} errors",
                    c.creates.load(Ordering::Relaxed),
                    c.errors.load(Ordering::Relaxed)
                )
            },
            || false,
        )
        .await;
    let mut hist = stats::histogram(3);
    let mut end = start;
    for t in tasks {
        let (h, last) = t.await?;
        stats::merge(&mut hist, &h);
        end = end.max(last);
    }
    let elapsed = end.duration_since(start).as_secs_f64().max(1e-9);
    let mut out = Map::new();
    cpu.finish(&ctx.target, &mut out);
    let creates = counters.creates.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let records = admin.count(&collection).await?;
    if ctx.target.mode() == "external" {
        admin.drop_collection(&collection).await;
    }
    let mut figures = Map::new();
    figures.insert("duration_s".into(), json!(super::round3(elapsed)));
    figures.insert("clients".into(), json!(opts.clients));
    figures.insert("creates".into(), json!(creates));
    figures.insert("creates_per_s".into(), json!((creates as f64 / elapsed).round()));
    figures.insert("errors".into(), json!(errors));
    if let Some(e) = first_error.lock().take() {
        figures.insert("first_error".into(), json!(e));
    }
    figures.insert("latency_ms".into(), stats::latency_json(&hist));
    figures.insert("records".into(), json!(records));
    figures.extend(out);
    Ok(figures)
}
