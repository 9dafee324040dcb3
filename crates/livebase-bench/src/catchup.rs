//! `catchup`: a subscriber goes away, misses K changes, comes back with `since` and is timed
//! until it has every one of them.

use super::http::{HttpConn, PAD};
use super::ws::{self, Connector};
use super::{CpuMeter, Ctx};
use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode, Uri};
use livebase_protocol::{client, ServerFrame, SubscribeMode};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Ops per batch request (the endpoint's limit).
const BATCH: u64 = 1000;

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Map<String, Value>> {
    let missed = ctx.opts.missed;
    let addr = ctx.target.addr;
    let key = &ctx.target.admin_key;
    let collection = ctx.name("catchup");
    let mut admin = HttpConn::connect(addr, key).await?;
    admin.create_bench_collection(&collection).await?;
    let connector = Connector::new(addr, key);

    // Subscribe once to learn where the log is, then go away.
    let mut ws = connector.connect(0).await?;
    let reply =
        ws::request(&mut ws, &client::subscribe(1, &collection, None, SubscribeMode::Plain, None)).await?;
    let ServerFrame::Subscribed { seq: since, epoch, .. } = reply else {
        anyhow::bail!("expected subscribed, got {}", reply.encode())
    };
    let _ = ws.close(None).await;
    drop(ws);

    ctx.progress.phase("writing the missed changes", missed);
    let uri: Uri = format!("/api/collections/{collection}/batch").parse()?;
    let write_start = Instant::now();
    let mut written = 0u64;
    while written < missed {
        let k = BATCH.min(missed - written);
        let ops: Vec<String> = (written..written + k)
            .map(|n| format!(r#"{{"op":"create","data":{{"n":{n},"t":0,"pad":"{PAD}"}}}}"#))
            .collect();
        let body = Bytes::from(format!(r#"{{"ops":[{}]}}"#, ops.join(",")));
        let (status, resp) = admin.send(Method::POST, &uri, body).await?;
        anyhow::ensure!(status == StatusCode::OK, "batch write: {status} {}", String::from_utf8_lossy(&resp));
        written += k;
        ctx.progress.set(written);
    }
    let write_s = write_start.elapsed().as_secs_f64();

    // Come back and resume.
    let deadline_after = ctx.opts.duration().max(Duration::from_secs(30));
    ctx.progress.phase("catching up", missed);
    let cpu = CpuMeter::start(&ctx.target);
    let start = Instant::now();
    let mut ws = connector.connect(1).await?;
    let resume = client::subscribe(2, &collection, None, SubscribeMode::Since(since), epoch.as_deref());
    ws.send(Message::text(resume.encode())).await?;
    let mut received = 0u64;
    let mut duplicates = 0u64;
    let mut out_of_order = 0u64;
    let mut last_seq = since;
    let mut finished = None;
    let outcome = tokio::time::timeout(deadline_after, async {
        while received < missed {
            let text = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => anyhow::bail!("the server closed the connection: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the connection ended"),
            };
            let text = text.as_str();
            match ws::frame_type(text) {
                Some("change") => {
                    let seq = ws::scan_u64(text, "\"seq\":").context("change without seq")?;
                    if seq > last_seq {
                        received += 1;
                        last_seq = seq;
                    } else if seq == last_seq {
                        duplicates += 1;
                    } else {
                        out_of_order += 1;
                    }
                    if received & 255 == 0 {
                        ctx.progress.set(received);
                    }
                }
                Some("resync_required") => anyhow::bail!("the server asked for a resync: {text}"),
                Some("error") => anyhow::bail!("resubscribe refused: {text}"),
                _ => {}
            }
        }
        finished = Some(start.elapsed());
        Ok(())
    })
    .await;
    let mut out = Map::new();
    cpu.finish(&ctx.target, &mut out);
    let _ = ws.close(None).await;
    if let Ok(Err(e)) = outcome {
        return Err(e);
    }
    if ctx.target.mode() == "external" {
        admin.drop_collection(&collection).await;
    }
    let elapsed = finished.unwrap_or_else(|| start.elapsed()).as_secs_f64();

    let mut figures = Map::new();
    figures.insert("duration_s".into(), json!(super::round3(elapsed)));
    figures.insert("missed".into(), json!(missed));
    figures.insert("received".into(), json!(received));
    figures.insert("lost".into(), json!(missed.saturating_sub(received)));
    figures.insert("duplicates".into(), json!(duplicates));
    figures.insert("out_of_order".into(), json!(out_of_order));
    figures.insert(
        "catchup_ms".into(),
        finished.map_or(Value::Null, |d| json!(super::round3(d.as_secs_f64() * 1e3))),
    );
    figures.insert("deliveries_per_s".into(), json!((received as f64 / elapsed.max(1e-9)).round()));
    figures.insert("write_s".into(), json!(super::round3(write_s)));
    figures.extend(out);
    Ok(figures)
}
