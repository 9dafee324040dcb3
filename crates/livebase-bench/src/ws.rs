//! WebSocket clients for the bench: small buffers, source addresses spread over
//! `127.0.0.1`–`127.0.0.16`, and frame scanning without a full JSON parse.

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use livebase_protocol::{ClientFrame, ServerFrame};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Source addresses to spread connections over: each gives its own ~28k ephemeral ports.
const SOURCES: usize = 16;

/// Setup steps (connect, handshake, a reply) fail after this.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The wire protocol subscribers speak (`fanout --protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// docs/protocol.md at `/api/realtime`.
    Native,
    /// Supabase Realtime's Phoenix channels, serializer 2.0.0, at `/realtime/v1/websocket`.
    Phoenix,
    /// Half the subscribers each, in the same run (even: native, odd: Phoenix).
    Both,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Phoenix => "phoenix",
            Protocol::Both => "both",
        }
    }

    /// Whether subscriber `i` speaks Phoenix.
    pub fn phoenix(self, i: usize) -> bool {
        match self {
            Protocol::Native => false,
            Protocol::Phoenix => true,
            Protocol::Both => i % 2 == 1,
        }
    }
}

/// How to open a connection to the server's realtime endpoint.
#[derive(Clone)]
pub(crate) struct Connector {
    /// Connection `i` goes to node `i % nodes.len()`.
    nodes: Vec<Endpoint>,
}

#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    url: String,
    phoenix_url: String,
}

impl Connector {
    pub fn new(addr: SocketAddr, admin_key: &str) -> Connector {
        Connector::spread(&[addr], admin_key)
    }

    /// Connections spread over several nodes of a cluster, in turn.
    pub fn spread(addrs: &[SocketAddr], admin_key: &str) -> Connector {
        let nodes = addrs
            .iter()
            .map(|addr| Endpoint {
                addr: *addr,
                url: format!("ws://{addr}/api/realtime?token={admin_key}"),
                phoenix_url: format!("ws://{addr}/realtime/v1/websocket?apikey={admin_key}&vsn=2.0.0"),
            })
            .collect();
        Connector { nodes }
    }

    /// Opens connection number `i` and waits for the server's `welcome`.
    pub async fn connect(&self, i: usize) -> anyhow::Result<Ws> {
        self.open(i, false).await
    }

    /// Opens connection number `i`, speaking Phoenix or (waiting for the `welcome`) native.
    pub async fn open(&self, i: usize, phoenix: bool) -> anyhow::Result<Ws> {
        let node = &self.nodes[i % self.nodes.len()];
        tokio::time::timeout(SETUP_TIMEOUT, async {
            let socket = if node.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            if let IpAddr::V4(ip) = node.addr.ip() {
                if ip.is_loopback() {
                    let src = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES) as u8);
                    socket
                        .bind(SocketAddr::new(IpAddr::V4(src), 0))
                        .with_context(|| format!("cannot bind {src}"))?;
                }
            }
            let stream = socket
                .connect(node.addr)
                .await
                .with_context(|| format!("cannot connect to {}", node.addr))?;
            stream.set_nodelay(true)?;
            // Reads in 4 KiB steps, writes go straight to the socket: a few KiB per client.
            let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
            let url = if phoenix { node.phoenix_url.as_str() } else { node.url.as_str() };
            let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
            if phoenix {
                return Ok(ws);
            }
            let welcome = next_text(&mut ws).await?;
            anyhow::ensure!(frame_type(&welcome) == Some("welcome"), "expected welcome, got {welcome}");
            Ok(ws)
        })
        .await
        .context("connecting timed out")?
    }
}

/// The next text frame (control frames are skipped; tungstenite answers pings itself).
pub(crate) async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Close(f))) => anyhow::bail!("the server closed the connection: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the connection ended"),
        }
    }
}

/// Sends a request frame and waits for the reply with the same `ref` (other frames are
/// skipped). Returns the reply; an `error` reply is an error.
/// The subscribers a scenario opened: the sockets, how many could not subscribe, the first
/// error.
pub(crate) struct Subscribed {
    pub sockets: Vec<Ws>,
    /// Per socket: whether it speaks Phoenix.
    pub phoenix: Vec<bool>,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// How one subscriber subscribes.
pub(crate) enum Setup {
    /// A native request, answered by its reply.
    Native(ClientFrame),
    /// A Phoenix join of one channel with a `postgres_changes` binding on the collection.
    Phoenix { collection: String },
}

/// Joins `realtime:bench` with one binding on `collection` and waits for the ok reply.
async fn phoenix_join(ws: &mut Ws, collection: &str) -> anyhow::Result<()> {
    let join = serde_json::json!(["1", "1", "realtime:bench", "phx_join", {"config": {
        "broadcast": {"ack": false, "self": false}, "presence": {"key": ""}, "private": false,
        "postgres_changes": [{"event": "*", "schema": "public", "table": collection}]}}]);
    ws.send(Message::text(join.to_string())).await?;
    tokio::time::timeout(SETUP_TIMEOUT, async {
        loop {
            let text = next_text(ws).await?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("bad frame {text}"))?;
            if v[3] == "phx_reply" && v[1] == "1" {
                anyhow::ensure!(v[4]["status"] == "ok", "join refused: {text}");
                return Ok(());
            }
        }
    })
    .await
    .context("no join reply within 30 s")?
}

/// Opens `n` connections, 64 at a time, each sending the frame `frame(i)` and waiting for its
/// reply; ticks `progress` once per connection. Fails only when none subscribed.
pub(crate) async fn subscribe_all(
    connector: &Connector,
    n: usize,
    frame: impl Fn(usize) -> ClientFrame,
    progress: &crate::progress::Progress,
) -> anyhow::Result<Subscribed> {
    subscribe_all_with(connector, n, |i| Setup::Native(frame(i)), progress).await
}

/// [`subscribe_all`] where each subscriber may speak either protocol.
pub(crate) async fn subscribe_all_with(
    connector: &Connector,
    n: usize,
    setup: impl Fn(usize) -> Setup,
    progress: &crate::progress::Progress,
) -> anyhow::Result<Subscribed> {
    let mut out = Subscribed {
        sockets: Vec::with_capacity(n),
        phoenix: Vec::with_capacity(n),
        errors: 0,
        first_error: None,
    };
    let mut attempts = futures_util::stream::iter(0..n)
        .map(|i| {
            let connector = connector.clone();
            let setup = setup(i);
            async move {
                match setup {
                    Setup::Native(frame) => {
                        let mut ws = connector.open(i, false).await?;
                        request(&mut ws, &frame).await?;
                        anyhow::Ok((ws, false))
                    }
                    Setup::Phoenix { collection } => {
                        let mut ws = connector.open(i, true).await?;
                        phoenix_join(&mut ws, &collection).await?;
                        anyhow::Ok((ws, true))
                    }
                }
            }
        })
        .buffer_unordered(64);
    while let Some(r) = attempts.next().await {
        match r {
            Ok((ws, phoenix)) => {
                out.sockets.push(ws);
                out.phoenix.push(phoenix);
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        progress.inc();
    }
    drop(attempts);
    anyhow::ensure!(
        !out.sockets.is_empty(),
        "no subscriber could subscribe: {}",
        out.first_error.clone().unwrap_or_default()
    );
    Ok(out)
}

pub(crate) async fn request(ws: &mut Ws, frame: &ClientFrame) -> anyhow::Result<ServerFrame> {
    let text = frame.encode();
    ws.send(Message::text(text.as_str())).await?;
    let reference = frame.reference();
    tokio::time::timeout(SETUP_TIMEOUT, async {
        loop {
            let reply = next_text(ws).await?;
            let v = ServerFrame::parse(&reply).with_context(|| format!("bad frame {reply}"))?;
            let answers = match &v {
                ServerFrame::Subscribed { reference: r, .. }
                | ServerFrame::Ok { reference: r }
                | ServerFrame::Pong { reference: r, .. }
                | ServerFrame::ResyncRequired { reference: r, .. } => r == reference,
                ServerFrame::Error { reference: r, .. } => {
                    anyhow::ensure!(r != reference, "request {text} refused: {reply}");
                    false
                }
                _ => false,
            };
            if answers {
                return Ok(v);
            }
        }
    })
    .await
    .context("no reply within 30 s")?
}

/// The `type` of a frame, read without parsing it (`{"type":"change",...}`).
pub(crate) fn frame_type(s: &str) -> Option<&str> {
    let at = s.find("\"type\"")? + "\"type\"".len();
    let rest = s[at..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// The event of a Phoenix 2.0.0 frame (`[join_ref, ref, "topic", "event", …]`), read without
/// parsing it; topics with quotes or commas are not expected here.
pub(crate) fn phoenix_event(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let mut parts = rest.splitn(5, ',');
    let (_, _, _, event) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    event.trim().strip_prefix('"')?.strip_suffix('"')
}

/// The non-negative integer after `key` (e.g. `"t":`) in `s`.
pub(crate) fn scan_u64(s: &str, key: &str) -> Option<u64> {
    let at = s.find(key)? + key.len();
    let digits = s[at..].trim_start();
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_frames() {
        let row = serde_json::json!({"id": "x", "n": 12, "t": 345, "pad": "a"});
        let body = livebase_protocol::change_body(&livebase_protocol::ChangeBody {
            seq: 7,
            op: livebase_protocol::Op::Insert,
            id: "x",
            version: 1,
            actor: None,
            committed_at: "t",
            new: Some(&row),
            old: None,
        });
        let f = livebase_protocol::change_frame(&body, 1, livebase_protocol::View::Add);
        let f = f.as_str();
        assert_eq!(frame_type(f), Some("change"));
        assert_eq!(scan_u64(f, "\"n\":"), Some(12));
        assert_eq!(scan_u64(f, "\"t\":"), Some(345));
        assert_eq!(scan_u64(f, "\"seq\":"), Some(7));
        assert_eq!(frame_type(r#"{"type" : "welcome"}"#), Some("welcome"));
        let welcome = livebase_protocol::welcome("c1", "t", 1, 2, "e", None);
        assert_eq!(frame_type(&welcome), Some("welcome"));
        assert_eq!(scan_u64(f, "\"zz\":"), None);
        let p = r#"[null,null,"realtime:bench","postgres_changes",{"ids":[1],"data":{"record":{"n":3}}}]"#;
        assert_eq!(phoenix_event(p), Some("postgres_changes"));
        assert_eq!(phoenix_event(r#"["1","1","realtime:bench","phx_reply",{}]"#), Some("phx_reply"));
        assert_eq!(phoenix_event("{}"), None);
    }
}
