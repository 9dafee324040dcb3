//! Accepting realtime connections so that the server writes to their sockets itself.
//!
//! The HTTP server reads and writes each TCP connection through a [`SharedTcp`]; the stream
//! itself is shared with the request (as [`Peer`], the connection info). A WebSocket upgrade
//! ([`WsUpgrade`]) answers `101` and, once hyper hands the connection over, opens the
//! socket's write side on the server's [`Writers`]. Reading stays with tungstenite (through
//! hyper's upgraded stream, which still holds any bytes read ahead); everything tungstenite
//! writes on its own (pongs, the answer to a close) goes into the same queue as the frames,
//! so nothing can be written between the bytes of another frame.

use super::codec::Frame;
use super::hub::Outlet;
use super::socket::{Sock, Writers};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Hard cap handed to the WebSocket codec: beyond it the connection itself fails. Frames
/// between [`super::Limits::max_frame_bytes`] and this are refused politely.
pub(crate) const CODEC_MAX_MESSAGE: usize = 1 << 20;
/// How long a close frame (and what is queued before it) may take to leave.
pub(crate) const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// The server's listener: TCP connections with `TCP_NODELAY`, each shared with its requests.
pub struct SharedListener(pub TcpListener);

impl axum::serve::Listener for SharedListener {
    type Io = SharedTcp;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SharedTcp, SocketAddr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        // Small frames must leave at once: Nagle's algorithm would hold them for the peer's
        // delayed ACK (tens of milliseconds).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        (SharedTcp(Arc::new(tcp)), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A TCP stream the HTTP server reads and writes through while a realtime connection's
/// writer may hold it too (after the upgrade the HTTP server no longer writes to it).
pub struct SharedTcp(Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// The connection a request came on: the peer's address, and the stream for an upgrade.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    tcp: Arc<TcpStream>,
}

impl Connected<axum::serve::IncomingStream<'_, SharedListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, SharedListener>) -> Peer {
        Peer { addr: *stream.remote_addr(), tcp: stream.io().0.clone() }
    }
}

/// Middleware: the peer's address as `ConnectInfo<SocketAddr>`, for the handlers that key
/// limits by it.
pub async fn peer_addr(mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<Peer>>() {
        let addr = peer.addr;
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    next.run(req).await
}

/// A WebSocket upgrade request (RFC 6455 over HTTP/1.1), checked.
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    tcp: Arc<TcpStream>,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<WsUpgrade, Response> {
        let refuse = |status: StatusCode, why: &'static str| (status, why).into_response();
        if parts.method != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket request must be a GET"));
        }
        if parts.version != Version::HTTP_11 {
            return Err(refuse(StatusCode::BAD_REQUEST, "realtime connections upgrade from HTTP/1.1"));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this endpoint takes WebSocket upgrades only"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
            return Err(refuse(StatusCode::BAD_REQUEST, "only WebSocket version 13 is supported"));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refuse(StatusCode::BAD_REQUEST, "the Sec-WebSocket-Key header is missing"));
        };
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
        };
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<Peer>>() else {
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "realtime needs the server's own listener",
            ));
        };
        Ok(WsUpgrade { key, on_upgrade, tcp: peer.tcp.clone() })
    }
}

impl WsUpgrade {
    /// Answers `101 Switching Protocols` and runs `conn` on the socket once it is handed over;
    /// its queue holds `queue_frames` frames.
    pub fn on_upgrade<F, Fut>(self, writers: Arc<Writers>, queue_frames: usize, conn: F) -> Response
    where
        F: FnOnce(WsConn) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let WsUpgrade { key, on_upgrade, tcp } = self;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return tracing::debug!(error = %e, "a WebSocket upgrade did not complete"),
            };
            let sock = writers.open(tcp, queue_frames);
            let read = ReadSide { up: TokioIo::new(upgraded), sock: sock.clone() };
            // Memory per idle connection decides how many fit: the read buffer is 1 KiB up
            // front (it grows for a larger frame); writes never go through tungstenite's buffer.
            let config = WebSocketConfig::default()
                .read_buffer_size(1024)
                .max_message_size(Some(CODEC_MAX_MESSAGE))
                .max_frame_size(Some(CODEC_MAX_MESSAGE));
            let ws = WebSocketStream::from_raw_socket(read, Role::Server, Some(config)).await;
            conn(WsConn { sock, ws }).await
        });
        let accept = derive_accept_key(key.as_bytes());
        let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        r
    }
}

/// What tungstenite reads from and writes to: reads from hyper's upgraded stream, writes into
/// the socket's queue.
struct ReadSide {
    up: TokioIo<hyper::upgrade::Upgraded>,
    sock: Arc<Sock>,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.up).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.sock.push_raw(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An open realtime connection: client messages in, frames out through the socket's queue.
pub struct WsConn {
    pub sock: Arc<Sock>,
    ws: WebSocketStream<ReadSide>,
}

impl WsConn {
    /// The next client message; None when the peer is gone.
    pub async fn recv(&mut self) -> Option<Result<Message, WsError>> {
        self.ws.next().await
    }

    /// Queues a frame; false when the queue is full or closed.
    pub fn send(&self, frame: Frame) -> bool {
        self.sock.try_send(frame).is_ok()
    }

    /// Ends the connection once what is queued has left (a bounded time).
    pub async fn finish(self) {
        self.sock.drained(CLOSE_DEADLINE).await;
        self.sock.shutdown();
    }
}
