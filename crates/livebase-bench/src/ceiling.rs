//! `ceiling`: the reference fan-out figures are read against. The same subscribers, writers
//! and latency measurement as `fanout`, against a minimal broadcaster run as the child
//! process instead of `livebase` ([`serve`]): HTTP on hyper, WebSockets on the same runtime,
//! and per created record one change frame (the bytes Livebase would send, WebSocket header
//! included) encoded once and written to every subscribed socket. No store, no log, no
//! fsync, no hub, no rules: what is left is the cost of parsing a request and of the kernel's
//! loopback sends.
//!
//! Sending is sharded like a server that owns its connections per core: each socket belongs to
//! one shard (a task per core); an event is numbered, encoded once and handed to every shard,
//! and a shard writes everything that arrived since its last pass to each of its sockets with
//! one non-blocking vectored write. At a low rate a pass carries one frame; under load the
//! frames that piled up while a pass ran leave together (coalescing without a timer). Only a
//! socket whose buffer is full gets a queue, drained by its own task when it is writable
//! again. A socket queuing more than 8 MiB is dropped (a slow consumer).

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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

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
    let hub = Broadcaster::start();
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

struct Broadcaster {
    /// The last sequence number; held while an event is numbered and handed to every shard,
    /// so each shard sees the events in sequence order.
    seq: Mutex<u64>,
    shards: Vec<Arc<Shard>>,
    next_shard: AtomicUsize,
    conns: AtomicU64,
}

impl Broadcaster {
    /// One shard per core, each a task of its own.
    fn start() -> Arc<Broadcaster> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shards: Vec<Arc<Shard>> = (0..n).map(|_| Arc::new(Shard::default())).collect();
        for s in &shards {
            tokio::spawn(s.clone().run());
        }
        Arc::new(Broadcaster {
            seq: Mutex::new(0),
            shards,
            next_shard: AtomicUsize::new(0),
            conns: AtomicU64::new(0),
        })
    }

    fn publish(&self, row: &serde_json::Value) -> u64 {
        let mut last = self.seq.lock();
        *last += 1;
        let seq = *last;
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
        let frame = ws_frame(OpCode::Data(Data::Text), change_frame(&body, 1, View::Add).as_bytes());
        for shard in &self.shards {
            shard.inbox.lock().push((seq, frame.clone()));
            shard.wake.notify_one();
        }
        seq
    }

    /// Adds `sock` to the broadcast from the next event on; `reply` goes out before it.
    fn subscribe(&self, sock: &Arc<Sock>, reply: impl FnOnce(u64) -> Bytes) {
        let last = self.seq.lock();
        sock.send_now(reply(*last));
        let mut q = sock.state.lock();
        let fresh = q.after.is_none();
        q.after = Some(q.after.unwrap_or(*last));
        drop(q);
        if fresh {
            let i = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
            self.shards[i].add(sock.clone());
        }
    }
}

/// The sockets of one core, and the events not yet written to them.
#[derive(Default)]
struct Shard {
    inbox: Mutex<Vec<(u64, Bytes)>>,
    wake: Notify,
    /// Replaced (not edited) when a socket joins or leaves, so a pass reads it unlocked.
    sockets: Mutex<Arc<Vec<Arc<Sock>>>>,
}

/// Sockets written between two yields of a shard's pass, so HTTP requests on the same
/// worker are not held up behind a whole pass.
const PASS_SLICE: usize = 64;

impl Shard {
    async fn run(self: Arc<Self>) {
        let mut batch: Vec<(u64, Bytes)> = Vec::new();
        loop {
            self.wake.notified().await;
            loop {
                std::mem::swap(&mut *self.inbox.lock(), &mut batch);
                if batch.is_empty() {
                    break;
                }
                let sockets = self.sockets.lock().clone();
                let mut gone = false;
                for (i, s) in sockets.iter().enumerate() {
                    gone |= !s.send_batch(&batch);
                    if i % PASS_SLICE == PASS_SLICE - 1 {
                        tokio::task::yield_now().await;
                    }
                }
                batch.clear();
                if gone {
                    let mut list = self.sockets.lock();
                    *list = Arc::new(list.iter().filter(|s| !s.state.lock().dead).cloned().collect());
                }
            }
        }
    }

    fn add(&self, sock: Arc<Sock>) {
        let mut list = self.sockets.lock();
        let mut next = Vec::with_capacity(list.len() + 1);
        next.extend(list.iter().cloned());
        next.push(sock);
        *list = Arc::new(next);
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
    /// Subscribed after this event (None: not subscribed).
    after: Option<u64>,
}

impl Queue {
    fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }
}

/// Frames per vectored write at most.
const IOV: usize = 128;

impl Sock {
    /// Writes (or queues) the events of `batch` after the socket's subscription; false when
    /// the socket is gone or was too slow.
    fn send_batch(&self, batch: &[(u64, Bytes)]) -> bool {
        let mut q = self.state.lock();
        let after = q.after.unwrap_or(u64::MAX);
        let from = batch.partition_point(|(seq, _)| *seq <= after);
        self.send_locked(&mut q, batch[from..].iter().map(|(_, f)| f))
    }

    /// A reply of this socket's own (welcome, subscribed, pong, close).
    fn send_now(&self, frame: Bytes) -> bool {
        let mut q = self.state.lock();
        self.send_locked(&mut q, std::iter::once(&frame))
    }

    fn send_locked<'a>(&self, q: &mut Queue, frames: impl ExactSizeIterator<Item = &'a Bytes>) -> bool {
        if q.dead {
            return false;
        }
        let mut frames = frames.peekable();
        if !q.busy {
            // Straight into the socket while it takes them.
            while frames.peek().is_some() {
                let chunk: Vec<&Bytes> = frames.by_ref().take(IOV).collect();
                let slices: Vec<IoSlice<'_>> = chunk.iter().map(|b| IoSlice::new(b)).collect();
                let written = match self.out.try_write_vectored(&slices) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                    Err(_) => {
                        q.dead = true;
                        return false;
                    }
                };
                let mut skip = written;
                let mut rest = chunk.into_iter();
                let mut partial = None;
                for f in rest.by_ref() {
                    if skip < f.len() {
                        partial = Some(f.slice(skip..));
                        break;
                    }
                    skip -= f.len();
                }
                let Some(first) = partial else { continue };
                // The socket is full: the rest waits for the flusher.
                q.busy = true;
                q.push(first);
                rest.chain(frames).for_each(|f| q.push(f.clone()));
                self.wake.notify_one();
                return self.check_size(q);
            }
            return true;
        }
        frames.for_each(|f| q.push(f.clone()));
        self.check_size(q)
    }

    /// Drops a socket that queued too much.
    fn check_size(&self, q: &mut Queue) -> bool {
        if q.bytes <= MAX_QUEUED {
            return true;
        }
        q.dead = true;
        q.frames.clear();
        self.wake.notify_one();
        false
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
                    let n = q.frames.len().min(IOV);
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

/// An unmasked server frame: the header (tungstenite's), then the payload.
fn ws_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    let mut f = Vec::with_capacity(payload.len() + 10);
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut f);
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
    sock.send_now(ws_frame(TEXT, welcome.as_bytes()));
    let r = read_frames(read, &sock, &hub).await;
    // Its shard forgets it on the next pass.
    {
        let mut q = sock.state.lock();
        q.dead = true;
        q.frames.clear();
    }
    sock.wake.notify_one();
    r
}

async fn read_frames(mut read: OwnedReadHalf, sock: &Arc<Sock>, hub: &Broadcaster) -> anyhow::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some((opcode, payload)) = next_client_frame(&mut buf)? {
            match opcode {
                TEXT => {
                    let text = std::str::from_utf8(&payload)?;
                    if frame_type(text) == Some("subscribe") {
                        // The reply goes out before any change after it.
                        hub.subscribe(sock, |seq| {
                            ws_frame(
                                TEXT,
                                livebase_protocol::subscribed(&peek_ref(text), 1, seq, EPOCH).as_bytes(),
                            )
                        });
                    }
                }
                OpCode::Control(Control::Close) => {
                    sock.send_now(ws_frame(opcode, &payload[..payload.len().min(2)]));
                    return Ok(());
                }
                OpCode::Control(Control::Ping) => {
                    sock.send_now(ws_frame(OpCode::Control(Control::Pong), &payload));
                }
                _ => {}
            }
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

const TEXT: OpCode = OpCode::Data(Data::Text);

/// The next complete client frame in `buf` (masked, as clients send them), unmasked.
fn next_client_frame(buf: &mut BytesMut) -> anyhow::Result<Option<(OpCode, Vec<u8>)>> {
    let mut cursor = std::io::Cursor::new(&buf[..]);
    let Some((header, len)) = FrameHeader::parse(&mut cursor)? else { return Ok(None) };
    anyhow::ensure!(len <= MAX_CLIENT_FRAME as u64, "client frame too large");
    let at = cursor.position() as usize;
    let len = len as usize;
    if buf.len() < at + len {
        return Ok(None);
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(mask) = header.mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    buf.advance(at + len);
    Ok(Some((header.opcode, payload)))
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
        assert_eq!(&ws_frame(TEXT, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let long = ws_frame(TEXT, &[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
        let mask = [1u8, 2, 3, 4];
        let mut f = BytesMut::from(&[0x81u8, 0x80 | 3][..]);
        f.extend_from_slice(&mask);
        f.extend(b"abc".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        let mut partial = BytesMut::from(&f[..5]);
        assert!(next_client_frame(&mut partial).unwrap().is_none());
        assert_eq!(next_client_frame(&mut f).unwrap(), Some((TEXT, b"abc".to_vec())));
        assert!(f.is_empty());
    }
}
