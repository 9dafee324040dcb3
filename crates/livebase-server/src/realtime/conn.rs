//! One WebSocket connection: a task that reads client frames, answers them, sends heartbeats
//! and enforces the timeout. Frames to the client (the hub's deliveries and the answers) go
//! through the socket's queue and are written by its shard ([`super::socket`]): the task
//! wakes for what the client sends, not for what it receives.

use super::codec::{Codec, Delivery, Frame, NativeCodec};
use super::hub::{BroadcastReq, CloseSignal, ConnHandle, Hub, Outlet, Start, TrackReq};
use super::protocol::{self, ClientMsg, ProtoError};
use super::socket::Sock;
use super::upgrade::{WsConn, WsUpgrade};
use crate::app::App;
use crate::auth::Principal;
use crate::ratelimit::Bucket;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

pub async fn upgrade(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    ws: WsUpgrade,
) -> Response {
    let param = |name: &str| -> Option<String> {
        q.as_deref().and_then(|q| {
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
        })
    };
    let token = param("token");
    // The conn_id of the client's previous connection: its welcome says if that one was cut off.
    let resume_of = param("resume_of");
    let principal = match token {
        Some(t) => app.principal_from_token(Some(&t)),
        None => app.principal(&headers),
    };
    let (writers, cap) = (app.writers.clone(), app.hub.limits().queue_frames);
    // A node cut off from the others would serve channels that reach nobody: new
    // connections wait for it to reconnect (close 1013, "try again later"), with the reason.
    if let Err(why) = app.hub.bus_available() {
        tracing::warn!(%why, "refusing a realtime connection");
        return ws.on_upgrade(writers, cap, move |socket| async move {
            let e = ProtoError::new(&None, "cluster_unreachable", why);
            socket.send(Frame::text(&e.frame()));
            socket.sock.close_after(1013, "cluster_unreachable").await;
            socket.finish().await;
        });
    }
    match principal {
        Ok(p) => ws.on_upgrade(writers, cap, move |socket| run(app, socket, p, resume_of)),
        // Browsers cannot read an HTTP refusal of an upgrade (they see 1006, like a network
        // failure), so a bad token is refused inside the socket: an error frame naming the
        // reason, then close code 4003.
        Err(e) => ws.on_upgrade(writers, cap, move |socket| async move {
            let frame = ProtoError::new(&None, e.code, e.message).frame();
            socket.send(Frame::text(&frame));
            socket.sock.close_after(4003, e.code).await;
            socket.finish().await;
        }),
    }
}

async fn run(app: App, mut socket: WsConn, mut principal: Principal, resume_of: Option<String>) {
    let hub = app.hub.clone();
    let limits = hub.limits().clone();
    let out = socket.sock.clone();
    let close = Arc::new(CloseSignal::default());
    let codec = NativeCodec::shared();
    let conn_handle = ConnHandle { tx: out.clone(), close: close.clone(), codec: codec.clone() };
    let (conn, name) = match hub.connect(conn_handle, principal.clone()) {
        Ok(c) => c,
        Err(_) => {
            socket.sock.close_after(1013, "too_many_connections").await;
            return socket.finish().await;
        }
    };
    tracing::info!(conn = %name, who = %principal.scope(), "realtime connection opened");
    let cut_off = resume_of.as_deref().and_then(|old| hub.take_cut_off(old, &principal));
    let welcome = codec.encode(Delivery::Welcome {
        conn_id: &name,
        epoch: hub.feed().epoch(),
        cut_off: cut_off.as_ref(),
        heartbeat_ms: limits.heartbeat_interval.as_millis() as u64,
        timeout_ms: limits.heartbeat_timeout.as_millis() as u64,
    });
    let mut reason = "client_closed";
    reply(&out, welcome);
    let mut ticker =
        tokio::time::interval_at(Instant::now() + limits.heartbeat_interval, limits.heartbeat_interval);
    let mut last_seen = Instant::now();
    let mut bucket = Bucket::new(limits.ws_burst);
    let mut expired = false;
    // One timer for the token's expiry, reset only when the token changes (not per frame).
    let mut expiry = Box::pin(tokio::time::sleep(expires_in(&principal, expired)));
    let mut closing = Box::pin(close.notify.notified());
    loop {
        tokio::select! {
            biased;
            _ = &mut expiry => {
                // Deliveries stop until the client sends a fresh token with `auth`.
                expired = true;
                expiry.as_mut().reset(Instant::now() + expires_in(&principal, expired));
                hub.pause(conn);
                let e = ProtoError::new(&None, "token_expired", "the token has expired; send a fresh one with 'auth'");
                reply(&out, codec.encode(Delivery::Error(&e)));
            }
            _ = &mut closing => {
                reason = close_on_signal(&out, &close).await;
                break;
            }
            _ = out.failed() => { reason = "write_failed"; break }
            msg = socket.recv() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        reason = close_on_read_error(&out, &hub, &name, e).await;
                        break;
                    }
                    None => { reason = "client_gone"; break }
                };
                last_seen = Instant::now();
                match msg {
                    Message::Text(t) => {
                        if limits.ws_rate > 0.0 {
                            if let Err(wait) = bucket.take(limits.ws_rate, limits.ws_burst, std::time::Instant::now()) {
                                let e = ProtoError::new(&protocol::peek_ref(t.as_str()), "rate_limited", format!("too many messages; retry in {} ms", wait.as_millis().max(1)));
                                reply(&out, codec.encode(Delivery::Error(&e)));
                                continue;
                            }
                        }
                        if handle(&app, &hub, conn, &Reply { tx: &out, codec: &*codec }, &mut principal, t.as_str()) {
                            expired = false;
                            expiry.as_mut().reset(Instant::now() + expires_in(&principal, expired));
                        }
                    }
                    Message::Binary(_) => {
                        let e = ProtoError::new(&None, "bad_request", "frames must be JSON text");
                        reply(&out, codec.encode(Delivery::Error(&e)));
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    Message::Close(_) => break,
                }
            }
            _ = ticker.tick() => {
                if last_seen.elapsed() > limits.heartbeat_timeout {
                    reason = "heartbeat_timeout";
                    socket.sock.close(4002, "heartbeat_timeout").await;
                    break;
                }
                reply(&out, Some(Frame::ping()));
            }
        }
    }
    hub.disconnect(conn, reason);
    socket.finish().await;
    tracing::info!(conn = %name, reason, "realtime connection closed");
}

/// The hub asked this connection to close (slow consumer, shutdown): frames still queued are
/// dropped, so the close frame is next on the wire, and it is given
/// [`super::upgrade::CLOSE_DEADLINE`] to leave. (A slow consumer's socket may stay full; its
/// client learns the reason on its next connection, see [`super::cutoff`].) Returns the reason.
pub(crate) async fn close_on_signal(out: &Sock, close: &CloseSignal) -> &'static str {
    let (code, why) = (*close.reason.lock()).unwrap_or((1000, "closed"));
    out.close(code, why).await;
    why
}

/// What a read error means for the peer: the close code and reason the WebSocket standard
/// names for it, or None when the peer is simply gone (reset, EOF).
pub(crate) fn read_failure(e: &(dyn std::error::Error + 'static)) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(ws) = err.downcast_ref::<WsError>() {
            return match ws {
                // Over the codec's hard limit (a frame or a message over 1 MiB).
                WsError::Capacity(_) => Some((1009, "message_too_big")),
                WsError::Utf8(_) => Some((1007, "invalid_utf8")),
                // A peer that vanished (reset, EOF mid-frame) is gone, not misbehaving.
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
                WsError::Protocol(_) => Some((1002, "protocol_error")),
                _ => None,
            };
        }
        cur = err.source();
    }
    None
}

/// A read failed: close with the code the standard names for it (1009, 1007, 1002) and a
/// reason, log and count the real cause. Returns the reason for the close metric.
pub(crate) async fn close_on_read_error(out: &Sock, hub: &Hub, name: &str, e: WsError) -> &'static str {
    let Some((code, why)) = read_failure(&e) else {
        tracing::debug!(conn = %name, error = %e, "realtime connection lost");
        return "client_gone";
    };
    hub.metrics().frame_refused(why);
    tracing::warn!(conn = %name, error = %e, code, reason = why, "refused a client frame; closing");
    out.close(code, why).await;
    why
}

pub(crate) fn reply(out: &Sock, frame: Option<Frame>) {
    // A full queue means the hub is already closing this connection as a slow consumer.
    if let Some(f) = frame {
        let _ = out.try_send(f);
    }
}

/// Where the answers to a connection's requests go.
struct Reply<'a> {
    tx: &'a Sock,
    codec: &'a dyn Codec,
}

impl Reply<'_> {
    fn send(&self, d: Delivery<'_>) {
        reply(self.tx, self.codec.encode(d));
    }
}

/// Time until the connection's token expires (far away when it has none or already has).
fn expires_in(p: &Principal, expired: bool) -> std::time::Duration {
    const NEVER: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
    match p.expires_at() {
        Some(exp) if !expired => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            std::time::Duration::from_secs(exp.saturating_sub(now))
        }
        _ => NEVER,
    }
}

/// Handles one client frame. Returns true when it installed a fresh token.
fn handle(app: &App, hub: &Hub, conn: u64, out: &Reply<'_>, principal: &mut Principal, text: &str) -> bool {
    let max = hub.limits().max_frame_bytes;
    if text.len() > max {
        hub.metrics().frame_refused("frame_too_large");
        let e = ProtoError::new(&None, "frame_too_large", format!("frames are limited to {max} bytes"));
        out.send(Delivery::Error(&e));
        return false;
    }
    let msg = match protocol::parse(text) {
        Ok(m) => m,
        Err(e) => {
            out.send(Delivery::Error(&e));
            return false;
        }
    };
    let mut refreshed = false;
    let r = match msg {
        ClientMsg::Subscribe(s) => {
            let start = match (s.since, s.snapshot) {
                (Some(_), true) => Err(ProtoError::new(
                    &s.reference,
                    "bad_request",
                    "use either since or snapshot, not both",
                )),
                (Some(seq), false) => Ok(Start::Since { seq, epoch: s.epoch.clone() }),
                (None, true) => Ok(Start::Snapshot),
                (None, false) => Ok(Start::Now),
            };
            start.and_then(|start| match &s.aggregate {
                None => hub.subscribe(conn, s.reference.clone(), &s.collection, s.filter.as_deref(), start),
                Some(a) => hub.subscribe_aggregate(
                    conn,
                    s.reference.clone(),
                    &s.collection,
                    s.filter.as_deref(),
                    start,
                    &a.group,
                    &a.fns,
                ),
            })
        }
        ClientMsg::Unsubscribe(u) => hub
            .unsubscribe(conn, &u.reference, u.sub_id)
            .map(|_| out.send(Delivery::Ok { reference: &u.reference })),
        ClientMsg::Join(j) => hub.join(conn, &j.reference, &j.channel),
        ClientMsg::Leave(l) => hub
            .leave(conn, &l.reference, &l.channel)
            .map(|_| out.send(Delivery::Ok { reference: &l.reference })),
        ClientMsg::Broadcast(b) => hub.broadcast(
            conn,
            BroadcastReq {
                reference: &b.reference,
                channel: &b.channel,
                event: &b.event,
                payload: &b.payload,
                include_self: b.include_self,
                ack: b.ack,
            },
        ),
        ClientMsg::Track(t) => hub.track(
            conn,
            TrackReq { reference: &t.reference, channel: &t.channel, key: t.key.as_deref(), meta: &t.meta },
        ),
        ClientMsg::Untrack(u) => hub.untrack(conn, &u.reference, &u.channel),
        ClientMsg::Ping(p) => {
            out.send(Delivery::Pong { reference: &p.reference });
            Ok(())
        }
        ClientMsg::Auth(a) => match app.verifier.principal(Some(&a.token)) {
            Ok(p) => {
                *principal = p.clone();
                refreshed = true;
                out.send(Delivery::Ok { reference: &a.reference });
                hub.reauthorize(conn, p);
                Ok(())
            }
            Err(crate::auth::TokenError::Expired) => {
                Err(ProtoError::new(&a.reference, "token_expired", "that token has expired too"))
            }
            Err(crate::auth::TokenError::Invalid(m)) => {
                Err(ProtoError::new(&a.reference, "unauthorized", format!("invalid token: {m}")))
            }
        },
    };
    if let Err(e) = r {
        out.send(Delivery::Error(&e));
    }
    refreshed
}
