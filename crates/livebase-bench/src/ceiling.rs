//! `ceiling`: the reference fan-out figures are read against. The same subscribers, writers
//! and latency measurement as `fanout`, against a minimal broadcaster run as the child
//! process instead of `livebase` ([`serve`]): HTTP on hyper, WebSockets on the same runtime,
//! and per created record one change frame (the bytes Livebase would send, WebSocket header
//! included) encoded once and written to every subscribed socket. No store, no log, no
//! fsync, no hub, no rules: what is left is the cost of parsing a request and of the kernel's
//! loopback sends.
//!
//! Writes go straight into each socket with a non-blocking `try_write` while it has nothing
//! queued; only a socket whose buffer is full gets a queue, drained by its own task with
//! vectored writes when the socket is writable again. A socket queuing more than 8 MiB is
//! dropped (a slow consumer).

use crate::ws::frame_type;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use livebase_protocol::{change_body, change_frame, peek_ref, ChangeBody, Op, View};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A socket with more than this queued is a slow consumer and is dropped.
const MAX_QUEUED: usize = 8 << 20;
/// Client frames larger than this close the connection (the bench sends small ones).
const MAX_CLIENT_FRAME: usize = 1 << 20;
const EPOCH: &str = "ceiling";

/// `livebase-bench serve --addr 127.0.0.1:0 …`: the broadcaster, as `bench ceiling` starts it
/// (the flags meant for `livebase serve` other than `--addr` are ignored). Prints the line the
/// bench waits for, then serves until killed.
pub fn serve_main(args: &[String]) -> anyhow::Result<()> {
    let addr = args
        .windows(2)
        .find(|w| w[0] == "--addr")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let addr: SocketAddr = addr.parse()?;
    anyhow::ensure!(addr.ip().is_loopback(), "the ceiling broadcaster listens on loopback only");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("livebase listening on http://{}", listener.local_addr()?);
        serve(listener).await
    })
}

/// Serves HTTP requests and WebSocket subscribers on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let hub = Arc::new(Broadcaster::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            if is_upgrade(&stream).await {
                let _ = websocket(stream, hub).await;
            } else {
                let service = hyper::service::service_fn(move |req| handle(req, hub.clone()));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            }
        });
    }
}

/// Whether the connection starts with a realtime upgrade (`GET /api/realtime`).
async fn is_upgrade(stream: &TcpStream) -> bool {
    const PREFIX: &[u8] = b"GET /api/realtime";
    let mut buf = [0u8; 32];
    for _ in 0..100 {
        match stream.peek(&mut buf).await {
            Ok(n) if n >= PREFIX.len() || buf[..n].contains(&b'\n') => return buf[..n].starts_with(PREFIX),
            Ok(0) | Err(_) => return false,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    false
}

#[derive(Default)]
struct Broadcaster {
    /// Subscribed sockets; held while an event is written to all of them, so every socket
    /// gets the events in sequence order.
    sockets: Mutex<Vec<Arc<Sock>>>,
    seq: AtomicU64,
    conns: AtomicU64,
}

impl Broadcaster {
    fn publish(&self, row: &serde_json::Value) -> u64 {
        let mut sockets = self.sockets.lock();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = seq.to_string();
        let body = change_body(&ChangeBody {
            seq,
            op: Op::Insert,
            id: &id,
            version: 1,
            actor: None,
            committed_at: "2026-01-01T00:00:00.000000Z",
            new: Some(row),
            old: None,
        });
        let frame = ws_frame(0x1, change_frame(&body, 1, View::Add).as_bytes());
        sockets.retain(|s| s.send(&frame));
        seq
    }
}

/// One subscriber's write side.
struct Sock {
    out: OwnedWriteHalf,
    state: Mutex<Queue>,
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// The flusher owns the socket: new frames queue behind what it is writing.
    busy: bool,
    dead: bool,
}

impl Sock {
    /// Writes or queues `frame`; false when the socket is gone (or was too slow).
    fn send(&self, frame: &Bytes) -> bool {
        let mut q = self.state.lock();
        if q.dead {
            return false;
        }
        if !q.busy {
            let rest = match self.out.try_write(frame) {
                Ok(n) if n == frame.len() => return true,
                Ok(n) => frame.slice(n..),
                Err(e) if e.kind() == ErrorKind::WouldBlock => frame.clone(),
                Err(_) => {
                    q.dead = true;
                    return false;
                }
            };
            q.busy = true;
            q.bytes += rest.len();
            q.frames.push_back(rest);
            drop(q);
            self.wake.notify_one();
            return true;
        }
        q.bytes += frame.len();
        if q.bytes > MAX_QUEUED {
            q.dead = true;
            q.frames.clear();
            drop(q);
            self.wake.notify_one();
            return false;
        }
        q.frames.push_back(frame.clone());
        true
    }

    /// Drains the queue whenever `send` handed it over, until the socket is gone.
    async fn flush(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                let batch: Vec<Bytes> = {
                    let mut q = self.state.lock();
                    if q.dead {
                        return;
                    }
                    if q.frames.is_empty() {
                        q.busy = false;
                        break;
                    }
                    let n = q.frames.len().min(64);
                    q.frames.drain(..n).collect()
                };
                let mut written = 0usize;
                let total: usize = batch.iter().map(|b| b.len()).sum();
                while written < total {
                    if self.out.writable().await.is_err() {
                        self.state.lock().dead = true;
                        return;
                    }
                    let slices = remaining(&batch, written);
                    match self.out.try_write_vectored(&slices) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => {
                            self.state.lock().dead = true;
                            return;
                        }
                    }
                }
                self.state.lock().bytes -= total;
            }
        }
    }
}

/// The parts of `batch` after its first `skip` bytes.
fn remaining(batch: &[Bytes], mut skip: usize) -> Vec<IoSlice<'_>> {
    let mut out = Vec::with_capacity(batch.len());
    for b in batch {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        out.push(IoSlice::new(&b[skip..]));
        skip = 0;
    }
    out
}

/// An unmasked server frame: FIN, `opcode`, the length, the payload.
fn ws_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= u16::MAX as usize => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    Bytes::from(f)
}

/// The handshake, a `welcome`, then client frames until the connection ends: a `subscribe`
/// is answered `subscribed` and adds the socket to the broadcast.
async fn websocket(mut stream: TcpStream, hub: Arc<Broadcaster>) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0 && head.len() + n <= 16 * 1024, "bad handshake");
        head.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_string())
        })
        .ok_or_else(|| anyhow::anyhow!("no Sec-WebSocket-Key"))?;
    let accept = derive_accept_key(key.as_bytes());
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(reply.as_bytes()).await?;
    let n = hub.conns.fetch_add(1, Ordering::Relaxed) + 1;
    let (read, out) = stream.into_split();
    let sock = Arc::new(Sock { out, state: Mutex::default(), wake: Notify::new() });
    tokio::spawn(sock.clone().flush());
    let welcome = livebase_protocol::welcome(&format!("c{n}"), "", 30_000, 60_000, EPOCH, None);
    sock.send(&ws_frame(0x1, welcome.as_bytes()));
    let r = read_frames(read, &sock, &hub).await;
    {
        let mut q = sock.state.lock();
        q.dead = true;
        q.frames.clear();
    }
    sock.wake.notify_one();
    hub.sockets.lock().retain(|s| !Arc::ptr_eq(s, &sock));
    r
}

async fn read_frames(mut read: OwnedReadHalf, sock: &Arc<Sock>, hub: &Broadcaster) -> anyhow::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some((opcode, payload)) = next_client_frame(&mut buf)? {
            match opcode {
                0x1 => {
                    let text = std::str::from_utf8(&payload)?;
                    if frame_type(text) == Some("subscribe") {
                        // Subscribed under the broadcast lock: the reply goes before any change.
                        let mut sockets = hub.sockets.lock();
                        let seq = hub.seq.load(Ordering::Relaxed);
                        let reply = livebase_protocol::subscribed(&peek_ref(text), 1, seq, EPOCH);
                        sock.send(&ws_frame(0x1, reply.as_bytes()));
                        if !sockets.iter().any(|s| Arc::ptr_eq(s, sock)) {
                            sockets.push(sock.clone());
                        }
                    }
                }
                0x8 => {
                    sock.send(&ws_frame(0x8, &payload[..payload.len().min(2)]));
                    return Ok(());
                }
                0x9 => {
                    sock.send(&ws_frame(0xA, &payload));
                }
                _ => {}
            }
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// The next complete client frame in `buf` (masked, as clients send them), unmasked.
fn next_client_frame(buf: &mut BytesMut) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX), 10)
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    anyhow::ensure!(len <= MAX_CLIENT_FRAME, "client frame too large");
    let mask_len = if masked { 4 } else { 0 };
    if buf.len() < at + mask_len + len {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    if masked {
        mask.copy_from_slice(&buf[at..at + 4]);
        at += 4;
    }
    let mut payload = buf[at..at + len].to_vec();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    buf.advance(at + len);
    Ok(Some((opcode, payload)))
}

/// The bench's HTTP calls: create a collection (201), create a record (201, published),
/// drop a collection (200); anything else 404.
async fn handle(
    req: Request<Incoming>,
    hub: Arc<Broadcaster>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let body = req.into_body().collect().await?.to_bytes();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let reply = |status: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        Ok(r)
    };
    match (method, parts.as_slice()) {
        (Method::POST, ["api", "collections"]) => reply(StatusCode::CREATED, Bytes::from_static(b"{}")),
        (Method::POST, ["api", "collections", _, "records"]) => {
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(row) => {
                    hub.publish(&row);
                    reply(StatusCode::CREATED, body)
                }
                Err(_) => reply(StatusCode::BAD_REQUEST, Bytes::from_static(b"{}")),
            }
        }
        (Method::DELETE, ["api", "collections", ..]) => reply(StatusCode::OK, Bytes::from_static(b"{}")),
        _ => reply(StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_carry_their_length_and_client_frames_unmask() {
        assert_eq!(&ws_frame(1, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let long = ws_frame(1, &[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
        let mask = [1u8, 2, 3, 4];
        let mut f = BytesMut::from(&[0x81u8, 0x80 | 3][..]);
        f.extend_from_slice(&mask);
        f.extend(b"abc".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        let mut partial = BytesMut::from(&f[..5]);
        assert!(next_client_frame(&mut partial).unwrap().is_none());
        assert_eq!(next_client_frame(&mut f).unwrap(), Some((1, b"abc".to_vec())));
        assert!(f.is_empty());
    }
}
