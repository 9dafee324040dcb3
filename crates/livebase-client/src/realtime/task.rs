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
                    // Refused by the server (e.g. 401 for a bad token): worth a warning.
                    Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                        tracing::warn!(status = %resp.status(), "the server refused the realtime connection");
                        self.state.notice("connect_refused", &format!("HTTP {}", resp.status()));
                        Err(Flow::Continue)
                    }
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
        let mut pacer = Pacer::new(self.config.max_send_rate, self.config.send_burst);
        // Until `welcome` the timer is the connect deadline, then the idle check.
        let timer = tokio::time::sleep(self.config.connect_timeout);
        tokio::pin!(timer);
        loop {
            let mut pace = None;
            if !self.state.outbox.is_empty() {
                let n = pacer.take(self.state.outbox.len(), Instant::now());
                if n > 0 {
                    if let Err(e) = self.flush(&mut ws, n).await {
                        tracing::debug!(error = %e, "realtime write failed");
                        return End::Lost { established: self.state.online };
                    }
                }
                if !self.state.outbox.is_empty() {
                    pace = Some(pacer.next_in());
                }
            }
            tokio::select! {
                // More frames may go out once the rate allows.
                () = async { if let Some(d) = pace { tokio::time::sleep(d).await } }, if pace.is_some() => {}
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

    /// Writes the first `n` queued frames.
    async fn flush(&mut self, ws: &mut Ws, n: usize) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        for frame in self.state.outbox.drain(..n) {
            ws.feed(Message::text(frame)).await?;
        }
        ws.flush().await
    }
}

/// Sends a close frame, without waiting long for a peer that may be gone.
async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// A token bucket for outgoing frames, so that a resume (one `subscribe` per subscription,
/// `join` + `presence_track` per channel) or a burst of broadcasts stays under the server's
/// per-connection message rate instead of being refused with `rate_limited`.
#[derive(Debug)]
struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// `rate` frames per second with bursts of `burst`; a rate of 0 means unlimited.
    fn new(rate: f64, burst: f64) -> Pacer {
        let burst = burst.max(1.0);
        Pacer { rate, burst, tokens: burst, last: Instant::now() }
    }

    /// Takes up to `want` tokens; returns how many frames may go now.
    fn take(&mut self, want: usize, now: Instant) -> usize {
        if self.rate <= 0.0 {
            return want;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }

    /// How long until one more frame may go.
    fn next_in(&self) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.rate) + Duration::from_millis(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut p = Pacer::new(100.0, 200.0);
        p.last = start;
        assert_eq!(p.take(500, start), 200);
        assert_eq!(p.take(500, start), 0);
        let wait = p.next_in();
        assert!(wait >= Duration::from_millis(10) && wait <= Duration::from_millis(12), "{wait:?}");
        // 0.5 s later: 50 more.
        assert_eq!(p.take(500, start + Duration::from_millis(500)), 50);
        // Never more than the burst, however long the pause.
        assert_eq!(p.take(500, start + Duration::from_secs(60)), 200);
        assert_eq!(p.take(3, start + Duration::from_secs(120)), 3);
    }

    #[test]
    fn a_zero_rate_means_unlimited() {
        let mut p = Pacer::new(0.0, 0.0);
        assert_eq!(p.take(10_000, Instant::now()), 10_000);
        assert_eq!(p.next_in(), Duration::ZERO);
    }
}
