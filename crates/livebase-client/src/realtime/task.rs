//! The background task: connects, pumps frames between the socket and [`State`], and
//! reconnects with backoff.

use super::state::{Command, State};
use super::{lock, RealtimeConfig, Shared, Status};
use crate::protocol::ServerFrame;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async_with_config, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Used when neither the config nor the server's `welcome` says how long silence may last.
const DEFAULT_IDLE: Duration = Duration::from_secs(45);

/// What to do after a command that arrived while there is no socket.
enum Flow {
    Continue,
    Reconnect,
    Close,
}

/// How a socket's life ended.
enum End {
    /// Closed for good.
    Closed,
    /// Lost; `established` when it had been welcomed.
    Lost { established: bool },
}

struct Task {
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    status: watch::Sender<Status>,
    shared: Arc<Shared>,
    config: RealtimeConfig,
    state: State,
    close_waiters: Vec<oneshot::Sender<()>>,
}

pub(crate) async fn run(
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    status: watch::Sender<Status>,
    shared: Arc<Shared>,
    config: RealtimeConfig,
) {
    let mut task =
        Task { cmd_rx, status, shared, config, state: State::default(), close_waiters: Vec::new() };
    task.main().await;
    task.state.close();
    *lock(&task.shared.conn_id) = None;
    task.status.send_replace(Status::Disconnected);
    for w in task.close_waiters.drain(..) {
        let _ = w.send(());
    }
}

impl Task {
    async fn main(&mut self) {
        let mut failures: u32 = 0;
        loop {
            match self.connect().await {
                Err(Flow::Close) => return,
                Err(_) => {}
                Ok(ws) => match self.serve(ws).await {
                    End::Closed => return,
                    End::Lost { established } => {
                        if established {
                            failures = 0;
                        }
                    }
                },
            }
            self.state.on_disconnect();
            *lock(&self.shared.conn_id) = None;
            failures = failures.saturating_add(1);
            self.status.send_replace(Status::Reconnecting { attempt: failures });
            let delay = self.config.backoff.delay(failures - 1);
            tracing::debug!(attempt = failures, ?delay, "reconnecting");
            if !self.sleep(delay).await {
                return;
            }
        }
    }

    /// A command while there is no usable socket.
    fn offline_command(&mut self, cmd: Option<Command>) -> Flow {
        match cmd {
            None => Flow::Close,
            Some(Command::Close { reply }) => {
                self.close_waiters.push(reply);
                Flow::Close
            }
            Some(Command::Reconnect) => Flow::Reconnect,
            Some(c) => {
                self.state.command(c);
                Flow::Continue
            }
        }
    }

    /// Waits out a backoff delay; `false` when closed meanwhile. `reconnect()` cuts it short.
    async fn sleep(&mut self, delay: Duration) -> bool {
        let timer = tokio::time::sleep(delay);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                () = &mut timer => return true,
                cmd = self.cmd_rx.recv() => match self.offline_command(cmd) {
                    Flow::Continue => {}
                    Flow::Reconnect => return true,
                    Flow::Close => return false,
                },
            }
        }
    }

    /// One connection attempt (TCP + handshake), serving commands meanwhile.
    async fn connect(&mut self) -> Result<Ws, Flow> {
        let url = match self.shared.ws_url() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect");
                return Err(Flow::Continue);
            }
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(self.config.read_buffer_size)
            .write_buffer_size(self.config.write_buffer_size)
            .max_message_size(Some(self.config.max_message_size))
            .max_frame_size(Some(self.config.max_message_size));
        let attempt = tokio::time::timeout(
            self.config.connect_timeout,
            connect_async_with_config(url, Some(ws_config), true),
        );
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                r = &mut attempt => return match r {
                    Ok(Ok((ws, _response))) => Ok(ws),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "realtime connect failed");
                        Err(Flow::Continue)
                    }
                    Err(_) => {
                        tracing::debug!("realtime connect timed out");
                        Err(Flow::Continue)
                    }
                },
                cmd = self.cmd_rx.recv() => match self.offline_command(cmd) {
                    Flow::Close => return Err(Flow::Close),
                    Flow::Continue | Flow::Reconnect => {}
                },
            }
        }
    }

    /// Runs one socket until it is lost or the connection is closed.
    async fn serve(&mut self, mut ws: Ws) -> End {
        let mut idle = self.config.idle_timeout.unwrap_or(DEFAULT_IDLE);
        let mut last_rx = Instant::now();
        // Until `welcome` the timer is the connect deadline, then the idle check.
        let timer = tokio::time::sleep(self.config.connect_timeout);
        tokio::pin!(timer);
        loop {
            if !self.state.outbox.is_empty() {
                if let Err(e) = self.flush(&mut ws).await {
                    tracing::debug!(error = %e, "realtime write failed");
                    return End::Lost { established: self.state.online };
                }
            }
            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    None => {
                        close(&mut ws).await;
                        return End::Closed;
                    }
                    Some(Command::Close { reply }) => {
                        self.close_waiters.push(reply);
                        close(&mut ws).await;
                        return End::Closed;
                    }
                    // Dropped without a close handshake, like a network failure.
                    Some(Command::Reconnect) => return End::Lost { established: self.state.online },
                    Some(c) => self.state.command(c),
                },
                msg = ws.next() => match msg {
                    None => return End::Lost { established: self.state.online },
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "realtime read failed");
                        return End::Lost { established: self.state.online };
                    }
                    Some(Ok(m)) => {
                        last_rx = Instant::now();
                        let welcomed = match m {
                            Message::Text(t) => self.on_text(t.as_str(), &mut idle),
                            Message::Close(frame) => {
                                let (code, reason) = frame
                                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                                    .unwrap_or_default();
                                // 4001 slow consumer, 4002 heartbeat timeout, 1001 going away:
                                // all mean reconnect and resume.
                                tracing::info!(code, %reason, "server closed the realtime connection");
                                false
                            }
                            _ => false,
                        };
                        if welcomed {
                            timer.as_mut().reset((last_rx + idle).into());
                        }
                    }
                },
                () = &mut timer => {
                    if !self.state.online {
                        tracing::warn!("no welcome from the server in time");
                        return End::Lost { established: false };
                    }
                    if last_rx.elapsed() >= idle {
                        tracing::warn!(?idle, "realtime connection silent; reconnecting");
                        return End::Lost { established: true };
                    }
                    timer.as_mut().reset((last_rx + idle).into());
                }
            }
        }
    }

    /// Handles a text frame; `true` when it was the `welcome` that made the socket usable.
    fn on_text(&mut self, text: &str, idle: &mut Duration) -> bool {
        let frame = match ServerFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                let head: String = text.chars().take(200).collect();
                tracing::warn!(error = %e, frame = %head, "unparseable realtime frame");
                return false;
            }
        };
        match frame {
            ServerFrame::Welcome { conn_id, timeout_ms, .. } => {
                if self.state.online {
                    return false;
                }
                *idle = self
                    .config
                    .idle_timeout
                    .or(timeout_ms.map(Duration::from_millis))
                    .unwrap_or(DEFAULT_IDLE);
                *lock(&self.shared.conn_id) = Some(conn_id);
                self.state.on_connected();
                self.status.send_replace(Status::Connected);
                true
            }
            other => {
                self.state.on_frame(other);
                false
            }
        }
    }

    async fn flush(&mut self, ws: &mut Ws) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        for frame in self.state.outbox.drain(..) {
            ws.feed(Message::text(frame)).await?;
        }
        ws.flush().await
    }
}

/// Sends a close frame, without waiting long for a peer that may be gone.
async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}
