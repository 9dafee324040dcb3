//! The Phoenix channels protocol of Supabase Realtime, so an unmodified supabase-js can
//! subscribe to Livebase: `GET /realtime/v1/websocket?apikey=…&vsn=…` (also
//! `/socket/websocket`), and the REST broadcast endpoints.
//!
//! It is an adapter on the same hub as the native protocol, not a second fan-out: each
//! joined Phoenix channel is one hub connection whose codec is the topic's shared
//! [`codec::PhoenixCodec`]; all channels of a socket share its queue and its close signal, so
//! the slow-consumer policy, matching and rules are the hub's. A channel's
//! `postgres_changes` bindings become hub subscriptions made together
//! ([`Hub::subscribe_set`]); the binding ids in the join reply are the hub's query ids, which
//! is what each change push names in `ids`.
//!
//! - [`wire`]: frames of serializers 1.0.0 and 2.0.0 (text and binary).
//! - [`codec`]: deliveries as Phoenix frames.
//! - [`rest`]: `POST /realtime/v1/api/broadcast` and the per-event form.

pub mod codec;
pub mod rest;
pub mod wire;

use super::codec::{Codec, Frame};
use super::conn::{close_on_read_error, close_on_signal, reply};
use super::hub::{BroadcastReq, CloseSignal, ConnHandle, ConnId, Hub, Ops, SetSpec, TrackReq};
use super::socket::Sock;
use super::upgrade::{WsConn, WsUpgrade};
use crate::app::App;
use crate::auth::Principal;
use crate::ratelimit::Bucket;
use crate::supabase::keys::{self, KeyError};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use codec::PhoenixCodec;
use livebase_core::filter::Filter;
use livebase_core::ChangeOp;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use wire::{Msg, Vsn, WireError};

/// How often a socket checks its channels' token expiry and its idle time.
const TICK: Duration = Duration::from_secs(1);

fn refused(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

fn param(q: &Option<String>, name: &str) -> Option<String> {
    q.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    })
}

pub async fn upgrade(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    ws: WsUpgrade,
) -> Response {
    let vsn = match Vsn::parse(param(&q, "vsn").as_deref()) {
        Ok(v) => v,
        Err(e) => return refused(StatusCode::BAD_REQUEST, &e),
    };
    // Browsers cannot set headers on a WebSocket: the key is the `apikey` parameter (a
    // gateway may pass `x-api-key`, a server-side client `apikey` or a bearer token).
    let param_key = param(&q, "apikey");
    let gateway = headers.get("x-api-key").and_then(|v| v.to_str().ok()).filter(|k| !k.trim().is_empty());
    let found = match gateway {
        Some(k) => keys::principal_for_token(&app, k.trim()),
        None => keys::principal(&app, &headers, param_key.as_deref()),
    };
    let principal = match found {
        Ok(p) => p,
        Err(KeyError::Missing) => return refused(StatusCode::UNAUTHORIZED, "API key is missing"),
        Err(KeyError::Expired) => return refused(StatusCode::UNAUTHORIZED, "Token has expired"),
        Err(e) => return refused(StatusCode::UNAUTHORIZED, &format!("The token provided is not valid: {e}")),
    };
    if let Err(why) = app.hub.bus_available() {
        return refused(StatusCode::SERVICE_UNAVAILABLE, &why);
    }
    let (writers, cap) = (app.writers.clone(), app.hub.limits().queue_frames);
    ws.on_upgrade(writers, cap, move |socket| {
        let out = socket.sock.clone();
        Socket::new(app, vsn, principal, out).run(socket)
    })
}

/// A joined channel.
struct Channel {
    join_ref: Value,
    conn: ConnId,
    /// The hub channel: the topic without `realtime:`.
    name: String,
    codec: Arc<PhoenixCodec>,
    who: Principal,
    broadcast_self: bool,
    broadcast_ack: bool,
    presence_key: Option<String>,
}

struct Socket {
    app: App,
    hub: Hub,
    vsn: Vsn,
    /// Who the `apikey` of the URL stands for: channels joined without a token act as it.
    principal: Principal,
    tx: Arc<Sock>,
    close: Arc<CloseSignal>,
    channels: HashMap<String, Channel>,
}

impl Socket {
    fn new(app: App, vsn: Vsn, principal: Principal, tx: Arc<Sock>) -> Socket {
        let hub = app.hub.clone();
        Socket {
            app,
            hub,
            vsn,
            principal,
            tx,
            close: Arc::new(CloseSignal::default()),
            channels: HashMap::new(),
        }
    }

    fn send_text(&self, text: String) {
        reply(&self.tx, Some(Frame::text(&text)));
    }

    fn reply(&self, m: &Msg, ok: bool, response: Value) {
        self.send_text(wire::reply(self.vsn, &m.join_ref, &m.reference, &m.topic, ok, &response));
    }

    fn error(&self, join_ref: &Value, reference: &Value, topic: &str, reason: &str) {
        self.send_text(wire::error_reply(self.vsn, join_ref, reference, topic, reason));
    }

    async fn run(mut self, mut socket: WsConn) {
        let out = self.tx.clone();
        let limits = self.hub.limits().clone();
        tracing::info!(who = %self.principal.scope(), vsn = ?self.vsn, "phoenix socket opened");
        let mut ticker = tokio::time::interval_at(Instant::now() + TICK, TICK);
        let mut last_seen = Instant::now();
        let mut bucket = Bucket::new(limits.ws_burst);
        let mut reason = "client_closed";
        let close = self.close.clone();
        let mut closing = Box::pin(close.notify.notified());
        loop {
            tokio::select! {
                biased;
                _ = &mut closing => {
                    reason = close_on_signal(&out, &close).await;
                    break;
                }
                _ = out.failed() => { reason = "write_failed"; break }
                msg = socket.recv() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            reason = close_on_read_error(&out, &self.hub, "phoenix", e).await;
                            break;
                        }
                        None => { reason = "client_gone"; break }
                    };
                    last_seen = Instant::now();
                    let parsed = match &msg {
                        Message::Text(t) if t.len() > limits.max_frame_bytes => Err(too_large(limits.max_frame_bytes)),
                        Message::Binary(b) if b.len() > limits.max_frame_bytes => Err(too_large(limits.max_frame_bytes)),
                        Message::Text(t) => wire::decode_text(self.vsn, t.as_str()),
                        Message::Binary(b) => wire::decode_binary(self.vsn, b),
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                        Message::Close(_) => break,
                    };
                    let m = match parsed {
                        Ok(m) => m,
                        Err(e) => {
                            self.hub.metrics().frame_refused("bad_frame");
                            self.error(&Value::Null, &e.reference, &e.topic, &e.reason);
                            continue;
                        }
                    };
                    if limits.ws_rate > 0.0 {
                        if let Err(wait) = bucket.take(limits.ws_rate, limits.ws_burst, std::time::Instant::now()) {
                            let why = format!("Too many messages per second; retry in {} ms", wait.as_millis().max(1));
                            self.error(&m.join_ref, &m.reference, &m.topic, &why);
                            continue;
                        }
                    }
                    self.handle(m);
                }
                _ = ticker.tick() => {
                    if last_seen.elapsed() > limits.heartbeat_timeout {
                        reason = "heartbeat_timeout";
                        socket.sock.close(1000, "heartbeat timeout").await;
                        break;
                    }
                    self.expire_tokens();
                }
            }
        }
        for (_, c) in self.channels.drain() {
            self.hub.disconnect(c.conn, reason);
        }
        socket.finish().await;
        tracing::info!(reason, "phoenix socket closed");
    }

    fn handle(&mut self, m: Msg) {
        if m.topic == "phoenix" {
            match m.event.as_str() {
                "heartbeat" => self.reply(&m, true, json!({})),
                other => self.error(
                    &m.join_ref,
                    &m.reference,
                    &m.topic,
                    &format!("unknown event '{other}' on topic phoenix"),
                ),
            }
            return;
        }
        if m.event == "phx_join" {
            return self.join(m);
        }
        let Some(c) = self.channels.get(&m.topic) else {
            return self.error(&Value::Null, &m.reference, &m.topic, "unmatched topic");
        };
        let reference =
            |ack: bool| -> super::protocol::Ref { ack.then(|| Box::new(json!([c.join_ref, m.reference]))) };
        match m.event.as_str() {
            "phx_leave" => {
                let c = self.leave(&m.topic, "left");
                self.reply(&m, true, json!({}));
                if let Some(c) = c {
                    self.send_text(wire::frame(
                        self.vsn,
                        &c.join_ref,
                        &c.join_ref,
                        &m.topic,
                        "phx_close",
                        "{}",
                    ));
                }
            }
            "broadcast" => {
                let (Some(event), Some(payload)) =
                    (m.payload.get("event").and_then(Value::as_str), m.payload.get("payload"))
                else {
                    return self.error(
                        &c.join_ref,
                        &m.reference,
                        &m.topic,
                        "a broadcast needs event and payload",
                    );
                };
                let r = reference(c.broadcast_ack);
                let req = BroadcastReq {
                    reference: &r,
                    channel: &c.name,
                    event,
                    payload,
                    include_self: c.broadcast_self,
                    ack: c.broadcast_ack,
                };
                if let Err(e) = self.hub.broadcast(c.conn, req) {
                    self.error(&c.join_ref, &m.reference, &m.topic, &e.message);
                }
            }
            "presence" => {
                let r = reference(true);
                let result = match m.payload.get("event").and_then(Value::as_str) {
                    Some("track") => match m.payload.get("payload") {
                        Some(meta @ Value::Object(_)) => self.hub.track(
                            c.conn,
                            TrackReq {
                                reference: &r,
                                channel: &c.name,
                                key: c.presence_key.as_deref(),
                                meta,
                            },
                        ),
                        _ => {
                            return self.error(
                                &c.join_ref,
                                &m.reference,
                                &m.topic,
                                "Presence track payload must be a map",
                            )
                        }
                    },
                    Some("untrack") => self.hub.untrack(c.conn, &r, &c.name),
                    _ => {
                        return self.error(
                            &c.join_ref,
                            &m.reference,
                            &m.topic,
                            "presence event must be track or untrack",
                        )
                    }
                };
                if let Err(e) = result {
                    self.error(&c.join_ref, &m.reference, &m.topic, &e.message);
                }
            }
            "access_token" => self.access_token(&m),
            other => {
                let why = format!(
                    "unknown event '{other}': expected broadcast, presence, access_token or phx_leave"
                );
                self.error(&c.join_ref, &m.reference, &m.topic, &why)
            }
        }
    }

    /// The token for a channel: the join's `access_token` (`user_token` for old clients),
    /// else the socket's key. `sb_…` keys are not tokens and mean the socket's key.
    fn channel_principal(&self, payload: &Value) -> Result<Principal, String> {
        let token = ["access_token", "user_token"]
            .iter()
            .find_map(|k| payload.get(*k).and_then(Value::as_str))
            .filter(|t| !t.is_empty() && !t.starts_with("sb_"));
        match token {
            None => Ok(self.principal.clone()),
            Some(t) => keys::principal_for_token(&self.app, t).map_err(|e| match e {
                KeyError::Expired => "InvalidJWTToken: Token has expired".to_string(),
                e => format!("InvalidJWTToken: {e}"),
            }),
        }
    }

    fn join(&mut self, m: Msg) {
        let join_ref = if m.join_ref.is_null() { m.reference.clone() } else { m.join_ref.clone() };
        if let Some(old) = self.leave(&m.topic, "rejoined") {
            self.send_text(wire::frame(self.vsn, &old.join_ref, &old.join_ref, &m.topic, "phx_close", "{}"));
        }
        let fail = |s: &Socket, why: &str| s.error(&join_ref, &m.reference, &m.topic, why);
        let who = match self.channel_principal(&m.payload) {
            Ok(p) => p,
            Err(why) => return fail(self, &why),
        };
        let sub_topic = m.topic.strip_prefix("realtime:").unwrap_or(&m.topic).to_string();
        if sub_topic.is_empty() {
            return fail(self, "TopicNameRequired: You must provide a topic name");
        }
        let config = m.payload.get("config").cloned().unwrap_or_else(|| json!({}));
        let private = match config.get("private") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let name = hub_channel(&sub_topic, private);
        if !self.hub.may_join(&who, &name) {
            let why = format!(
                "Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic}"
            );
            return fail(self, &why);
        }
        let bindings = match config.get("postgres_changes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return fail(self, "postgres_changes must be a list of bindings"),
        };
        let mut specs = Vec::with_capacity(bindings.len());
        for b in &bindings {
            match binding_spec(b) {
                Ok(s) => specs.push(s),
                Err(why) => return fail(self, &why),
            }
        }
        let flag = |section: &str, key: &str| match config.get(section).and_then(|s| s.get(key)) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let presence_key = config
            .get("presence")
            .and_then(|p| p.get("key"))
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        let codec = PhoenixCodec::shared(self.vsn, &m.topic);
        let as_codec: Arc<dyn Codec> = codec.clone();
        let handle = ConnHandle { tx: self.tx.clone(), close: self.close.clone(), codec: as_codec };
        let conn = match self.hub.connect(handle, who.clone()) {
            Ok((conn, _)) => conn,
            Err(_) => return fail(self, "ChannelRateLimitReached: Too many channels"),
        };
        let reference: super::protocol::Ref = Some(Box::new(json!([join_ref, m.reference, bindings])));
        if let Err(e) = self.hub.subscribe_set(conn, &reference, &specs) {
            self.hub.disconnect(conn, "join_refused");
            return fail(self, &e.message);
        }
        if let Err(e) = self.hub.join(conn, &None, &name) {
            self.hub.disconnect(conn, "join_refused");
            reply(&self.tx, Some(codec.system("system", false, &e.message)));
            self.send_text(wire::frame(self.vsn, &join_ref, &join_ref, &m.topic, "phx_close", "{}"));
            return;
        }
        if !specs.is_empty() {
            reply(&self.tx, Some(codec.system("postgres_changes", true, "Subscribed to PostgreSQL")));
        }
        let channel = Channel {
            join_ref,
            conn,
            name,
            codec,
            who,
            broadcast_self: flag("broadcast", "self"),
            broadcast_ack: flag("broadcast", "ack"),
            presence_key,
        };
        self.channels.insert(m.topic, channel);
    }

    /// Takes a channel out of the socket and the hub (its presence leaves for everyone).
    fn leave(&mut self, topic: &str, why: &str) -> Option<Channel> {
        let c = self.channels.remove(topic)?;
        self.hub.disconnect(c.conn, why);
        Some(c)
    }

    /// Closes a channel from the server's side: a `system` error naming why, then `phx_close`.
    fn shut(&mut self, topic: &str, why: &str) {
        if let Some(c) = self.leave(topic, "server_closed") {
            reply(&self.tx, Some(c.codec.system("system", false, why)));
            self.send_text(wire::frame(self.vsn, &c.join_ref, &c.join_ref, topic, "phx_close", "{}"));
        }
    }

    /// A fresh token for a channel: no reply; a bad one closes the channel.
    fn access_token(&mut self, m: &Msg) {
        let Some(token) = m.payload.get("access_token").and_then(Value::as_str) else { return };
        if token.is_empty() || token.starts_with("sb_") {
            return;
        }
        match keys::principal_for_token(&self.app, token) {
            Ok(p) => {
                let Some(c) = self.channels.get_mut(&m.topic) else { return };
                if c.who == p {
                    return;
                }
                if !self.hub.may_join(&p, &c.name) {
                    let why =
                        format!("You no longer have permission to read from this Channel topic: {}", c.name);
                    return self.shut(&m.topic, &why);
                }
                c.who = p.clone();
                self.hub.reauthorize(c.conn, p);
            }
            Err(KeyError::Expired) => self.shut(&m.topic, "Token has expired"),
            Err(e) => self.shut(&m.topic, &format!("The token provided is not valid: {e}")),
        }
    }

    /// Channels whose token expired are closed ("Token has expired N seconds ago").
    fn expire_tokens(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let expired: Vec<(String, u64)> = self
            .channels
            .iter()
            .filter_map(|(t, c)| {
                c.who.expires_at().filter(|exp| *exp <= now).map(|exp| (t.clone(), now - exp))
            })
            .collect();
        for (topic, ago) in expired {
            self.shut(&topic, &format!("Token has expired {ago} seconds ago"));
        }
    }
}

/// The hub channel of a Phoenix topic: a private channel is the channel of that name, which
/// channel rules govern (and native clients share); a public one is `public:<name>`, open to
/// every holder of a valid key ([`crate::access::PUBLIC_CHANNELS`]).
pub fn hub_channel(sub_topic: &str, private: bool) -> String {
    if private {
        sub_topic.to_string()
    } else {
        format!("public:{sub_topic}")
    }
}

fn too_large(max: usize) -> WireError {
    WireError {
        reference: Value::Null,
        topic: "phoenix".into(),
        reason: format!("frames are limited to {max} bytes"),
    }
}

/// A `postgres_changes` binding as a hub subscription: the collection, the filter in query
/// form, and the operation named by `event` (all for `*`).
fn binding_spec(b: &Value) -> Result<SetSpec, String> {
    let Some(o) = b.as_object() else { return Err("a postgres_changes binding is an object".into()) };
    let s = |k: &str| o.get(k).and_then(Value::as_str);
    let ops = match s("event").map(str::to_ascii_uppercase).as_deref() {
        None | Some("*") => Ops::ALL,
        Some("INSERT") => Ops::only(ChangeOp::Insert),
        Some("UPDATE") => Ops::only(ChangeOp::Update),
        Some("DELETE") => Ops::only(ChangeOp::Delete),
        Some(_) => {
            let e = s("event").unwrap_or_default();
            return Err(format!("Error parsing event '{e}': use *, INSERT, UPDATE or DELETE"));
        }
    };
    match s("schema") {
        None | Some("public") => {}
        Some(other) => {
            return Err(format!("Unknown schema '{other}': Livebase collections are in schema public"))
        }
    }
    let table = match s("table") {
        Some(t) if !t.is_empty() && t != "*" => t.to_string(),
        _ => {
            return Err(
                "a postgres_changes binding names its table (one collection; '*' is not supported)".into()
            )
        }
    };
    let filter = match s("filter").map(str::trim).filter(|f| !f.is_empty()) {
        None => None,
        Some(f) => Some(query_filter(f)?),
    };
    Ok(SetSpec { collection: table, filter, ops })
}

/// Supabase's filter (`col=op.value`, conditions joined by commas outside quotes and
/// parentheses) in Livebase's query form.
fn query_filter(f: &str) -> Result<String, String> {
    let mut pairs = Vec::new();
    for part in split_top_level(f) {
        let part = part.trim();
        let Some((k, v)) = part.split_once('=').filter(|(k, v)| !k.is_empty() && !v.is_empty()) else {
            return Err(format!("Error parsing `filter` params: '{part}' is not column=op.value"));
        };
        pairs.push((k.trim().to_string(), unquote_value(v)));
    }
    match Filter::from_pairs(&pairs) {
        Ok(Some(filter)) => Ok(filter.to_string()),
        Ok(None) => Err("Error parsing `filter` params: empty filter".into()),
        Err(e) => Err(format!("Error parsing `filter` params: {}", e.message)),
    }
}

/// `eq."Doe, Jane"` → `eq.Doe, Jane`: a quoted scalar value (quotes let it hold commas) is
/// unquoted, `\"` and `\\` unescaped; lists (`in.(…)`) keep their own quoting.
fn unquote_value(v: &str) -> String {
    let (not, rest) = match v.strip_prefix("not.") {
        Some(r) => ("not.", r),
        None => ("", v),
    };
    let Some((op, value)) = rest.split_once('.') else { return v.to_string() };
    let quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
    if op == "in" || !quoted {
        return v.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value[1..value.len() - 1].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    format!("{not}{op}.{out}")
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0);
    let mut parts = Vec::new();
    for (i, ch) in s.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supabase_filters_become_query_filters() {
        assert_eq!(query_filter("id=eq.1").unwrap(), Filter::parse("id=eq.1").unwrap().unwrap().to_string());
        let two = query_filter("qty=gt.5,status=in.(a,b)").unwrap();
        assert_eq!(two, Filter::parse("qty=gt.5&status=in.(a,b)").unwrap().unwrap().to_string());
        let quoted = query_filter("name=eq.\"Doe, Jane\"").unwrap();
        assert_eq!(
            quoted,
            Filter::from_pairs(&[("name".into(), "eq.Doe, Jane".into())]).unwrap().unwrap().to_string()
        );
        assert_eq!(unquote_value(r#"not.eq."a \"b\"""#), r#"not.eq.a "b""#);
        assert_eq!(unquote_value("in.(\"a,b\",c)"), "in.(\"a,b\",c)");
        assert!(query_filter("foo").unwrap_err().starts_with("Error parsing `filter` params"));
        assert!(query_filter("qty=hey.5").is_err());
    }

    #[test]
    fn bindings_name_one_collection_in_public() {
        let ok = binding_spec(&json!({"event": "INSERT", "schema": "public", "table": "todos"})).unwrap();
        assert_eq!(
            ok,
            SetSpec { collection: "todos".into(), filter: None, ops: Ops::only(ChangeOp::Insert) }
        );
        assert_eq!(binding_spec(&json!({"event": "*", "table": "todos"})).unwrap().ops, Ops::ALL);
        assert!(binding_spec(&json!({"event": "*", "schema": "other", "table": "t"})).is_err());
        assert!(binding_spec(&json!({"event": "*", "schema": "public", "table": "*"})).is_err());
        assert!(binding_spec(&json!({"event": "TRUNCATE", "table": "t"})).is_err());
    }
}
