//! The write side of realtime connections: frames go from the hub straight to the socket,
//! written by the shard that owns it, with no task per connection on the way.
//!
//! Each socket belongs to one [`Writers`] shard (a task per core, assigned round robin). A
//! frame queued on a [`Sock`] (by the hub's dispatch, a catch-up, or the connection's own
//! replies) schedules the socket on its shard once; the shard's pass writes everything queued
//! on each scheduled socket with one non-blocking vectored write. At a low rate a pass carries
//! one frame; under load the frames that piled up while a pass ran leave together. Only a
//! socket whose kernel buffer is full gets a task of its own, which waits until it is writable
//! and drains the queue, then hands the socket back to its shard. Frames are whole WebSocket
//! frames ([`Frame::wire`]), encoded once and shared by every socket that carries them.
//!
//! The queue is bounded in frames ([`crate::realtime::Limits::queue_frames`]): a full queue
//! refuses the frame and the hub cuts the connection off as a slow consumer, exactly as
//! before. A frame is never split: when the queue is cleared for a close, a partly written
//! frame stays in front so the close frame that follows is still read as one.

use super::codec::Frame;
use super::hub::{Outlet, Refused};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Frames per vectored write at most.
const IOV: usize = 128;
/// Sockets written between two yields of a shard's pass, so HTTP requests on the same worker
/// are not held up behind a whole pass.
const PASS_SLICE: usize = 64;

/// The writer shards of one server.
pub struct Writers {
    shards: Vec<Arc<Shard>>,
    next: AtomicUsize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Writers {
    /// One shard per core, each a task on the current runtime.
    pub fn start() -> Arc<Writers> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shards: Vec<Arc<Shard>> = (0..n).map(|_| Arc::new(Shard::default())).collect();
        let tasks = shards.iter().map(|s| tokio::spawn(s.clone().run())).collect();
        Arc::new(Writers { shards, next: AtomicUsize::new(0), tasks: Mutex::new(tasks) })
    }

    /// The write side of a new connection on `tcp`, holding at most `cap` frames.
    pub fn open(&self, tcp: Arc<TcpStream>, cap: usize) -> Arc<Sock> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let shard = self.shards[i].clone();
        Arc::new_cyclic(|me| Sock {
            me: me.clone(),
            tcp,
            shard,
            cap: cap.max(1),
            state: Mutex::new(State::default()),
            room: Notify::new(),
            gone: Notify::new(),
        })
    }

    /// Frames queued on every socket and not yet written (counted when queued; a frame that
    /// left counts until its writer's next report, so the figure errs high, never low).
    pub fn backlog(&self) -> usize {
        let (pushed, left) = self.shards.iter().fold((0u64, 0u64), |(p, l), s| {
            (
                p.wrapping_add(s.pushed.0.load(Ordering::Relaxed)),
                l.wrapping_add(s.left.0.load(Ordering::Relaxed)),
            )
        });
        (pushed.wrapping_sub(left) as i64).max(0) as usize
    }

    /// Stops the shards (the server is shutting down).
    pub fn stop(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl super::hub::Backlog for Writers {
    fn frames(&self) -> usize {
        self.backlog()
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sockets of one core that have frames to write.
#[derive(Default)]
struct Shard {
    inbox: Mutex<Vec<Arc<Sock>>>,
    wake: Notify,
    /// Frames ever queued on this shard's sockets, added by whoever queues them.
    pushed: Padded,
    /// Frames that ever left them (written, or dropped with a close or a failure), added by
    /// the writers. Two lines, so the hub's pushes and the writers' reports do not share one.
    left: Padded,
}

/// A counter on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Padded {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

impl Shard {
    fn schedule(&self, sock: Arc<Sock>) {
        let first = {
            let mut inbox = self.inbox.lock();
            inbox.push(sock);
            inbox.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    async fn run(self: Arc<Self>) {
        let mut batch: Vec<Arc<Sock>> = Vec::new();
        loop {
            // Sockets scheduled while a pass ran are taken by the next one; a shard with
            // nothing to write sleeps until a socket is scheduled (the wake-up is kept).
            std::mem::swap(&mut *self.inbox.lock(), &mut batch);
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            for (i, sock) in batch.drain(..).enumerate() {
                sock.write_out();
                if i % PASS_SLICE == PASS_SLICE - 1 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// One connection's write side: its queue, and the socket it writes to.
pub struct Sock {
    me: Weak<Sock>,
    tcp: Arc<TcpStream>,
    shard: Arc<Shard>,
    cap: usize,
    state: Mutex<State>,
    /// Frames left the queue (or the socket failed): for senders waiting for room.
    room: Notify,
    /// The socket failed or was shut down.
    gone: Notify,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    /// The front frame is partly written.
    partial: bool,
    /// In its shard's inbox.
    scheduled: bool,
    /// A task of its own waits for the socket to be writable.
    busy: bool,
    /// No more frames are accepted (closing, or gone).
    closed: bool,
    failed: bool,
    /// Somebody waits on `room`.
    waiting: bool,
    /// A write is under way with the lock let go: the frames it took are out of `frames`.
    writing: bool,
    /// A close dropped the queue while a write was under way: the writer drops what it took
    /// and did not start.
    cut: bool,
    /// Frames that left the queue and are not yet added to the shard's `left` (the writer
    /// adds them once per write, not per frame).
    left: u64,
}

enum Step {
    Drained,
    Blocked,
    Failed,
}

impl Sock {
    /// Queues `bytes` (a whole frame); `force` ignores the bound (control frames the
    /// WebSocket library writes, a close).
    fn push(&self, bytes: Bytes, force: bool) -> Result<(), Refused> {
        self.push_locked(&mut self.state.lock(), bytes, force)
    }

    fn push_locked(&self, s: &mut State, bytes: Bytes, force: bool) -> Result<(), Refused> {
        if s.closed {
            return Err(Refused::Closed);
        }
        if !force && s.frames.len() >= self.cap {
            return Err(Refused::Full);
        }
        s.frames.push_back(bytes);
        self.shard.pushed.add(1);
        self.schedule(s);
        Ok(())
    }

    fn schedule(&self, s: &mut State) {
        if s.scheduled || s.busy {
            return;
        }
        if let Some(me) = self.me.upgrade() {
            s.scheduled = true;
            self.shard.schedule(me);
        }
    }

    /// Bytes the WebSocket library writes on its own (pongs, the reply to a close).
    pub fn push_raw(&self, bytes: Bytes) {
        let _ = self.push(bytes, true);
    }

    /// Closes the connection with `frame` (a close frame), and accepts nothing after it.
    /// With `drop_queued`, what is queued and not yet started is dropped, so the close is
    /// next on the wire.
    pub fn close_with(&self, frame: Frame, drop_queued: bool) {
        let mut s = self.state.lock();
        if s.closed {
            return;
        }
        if drop_queued {
            // A frame being written, or partly written, stays: the close must follow whole frames.
            let keep = if s.partial && !s.writing { s.frames.pop_front() } else { None };
            // The kept frame is counted already.
            s.left += s.frames.len() as u64;
            s.frames.clear();
            s.frames.extend(keep);
            s.cut = s.writing;
        }
        s.frames.push_back(frame.wire().clone());
        self.shard.pushed.add(1);
        s.closed = true;
        self.schedule(&mut s);
    }

    /// Sends a close frame ahead of anything still queued, and waits (a bounded time) for it
    /// to leave.
    pub async fn close(&self, code: u16, reason: &str) {
        self.close_with(Frame::close(code, reason), true);
        self.drained(super::upgrade::CLOSE_DEADLINE).await;
    }

    /// Sends a close frame after what is queued (a refusal: the error frame, then the close),
    /// and waits (a bounded time) for it to leave.
    pub async fn close_after(&self, code: u16, reason: &str) {
        self.close_with(Frame::close(code, reason), false);
        self.drained(super::upgrade::CLOSE_DEADLINE).await;
    }

    /// Waits until everything queued is written (or the socket failed), for `limit` at most.
    pub async fn drained(&self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut s = self.state.lock();
                // A write under way holds frames outside the queue (the close among them).
                if (s.frames.is_empty() && !s.writing) || s.failed {
                    return;
                }
                s.waiting = true;
            }
            if tokio::time::timeout_at(until, room).await.is_err() {
                return;
            }
        }
    }

    /// Resolves once the socket failed (the peer is gone) or was shut down.
    pub async fn failed(&self) {
        let gone = self.gone.notified();
        tokio::pin!(gone);
        gone.as_mut().enable();
        if self.state.lock().failed {
            return;
        }
        gone.await
    }

    /// Ends the connection: nothing more is written, and the TCP connection is shut down
    /// (also for whoever still holds the socket).
    pub fn shutdown(&self) {
        self.fail(&mut self.state.lock());
        let _ = socket2::SockRef::from(&*self.tcp).shutdown(std::net::Shutdown::Both);
    }

    fn fail(&self, s: &mut State) {
        s.failed = true;
        s.closed = true;
        s.left += s.frames.len() as u64;
        s.frames.clear();
        s.partial = false;
        self.report(s);
        self.room.notify_waiters();
        self.gone.notify_waiters();
    }

    fn report(&self, s: &mut State) {
        if s.left != 0 {
            self.shard.left.add(std::mem::take(&mut s.left));
        }
    }

    /// A shard's turn: writes what is queued, or hands the socket to a task of its own when
    /// the kernel takes no more.
    fn write_out(&self) {
        let mut s = self.state.lock();
        s.scheduled = false;
        if s.busy || s.failed {
            return;
        }
        match self.write_some(&mut s) {
            Step::Drained => {}
            Step::Blocked => {
                if let Some(me) = self.me.upgrade() {
                    s.busy = true;
                    tokio::spawn(me.flush());
                }
            }
            Step::Failed => self.fail(&mut s),
        }
        self.report(&mut s);
    }

    /// Drains the queue of a socket the kernel did not take everything from.
    async fn flush(self: Arc<Self>) {
        loop {
            let gone = self.gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.state.lock().failed {
                return;
            }
            let writable = tokio::select! {
                r = self.tcp.writable() => r.is_ok(),
                _ = gone => return,
            };
            let mut s = self.state.lock();
            if !writable {
                return self.fail(&mut s);
            }
            let step = self.write_some(&mut s);
            self.report(&mut s);
            match step {
                Step::Drained => {
                    s.busy = false;
                    return;
                }
                Step::Blocked => {}
                Step::Failed => return self.fail(&mut s),
            }
        }
    }

    /// Writes queued frames until the queue is empty or the socket is full. The lock is let
    /// go for the write itself, so the hub can queue more meanwhile.
    fn write_some(&self, s: &mut MutexGuard<'_, State>) -> Step {
        let mut progressed = false;
        let mut batch: Vec<Bytes> = Vec::new();
        let step = loop {
            if s.frames.is_empty() || s.failed {
                break Step::Drained;
            }
            let n = s.frames.len().min(IOV);
            batch.extend(s.frames.drain(..n));
            let front_partial = s.partial;
            s.writing = true;
            let r = MutexGuard::unlocked(s, || {
                let mut iov = [IoSlice::new(&[]); IOV];
                for (slot, f) in iov.iter_mut().zip(&batch) {
                    *slot = IoSlice::new(f);
                }
                self.tcp.try_write_vectored(&iov[..batch.len()])
            });
            s.writing = false;
            let mut written = match r {
                Ok(w) => w,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(_) => {
                    s.left += batch.len() as u64;
                    break Step::Failed;
                }
            };
            if s.failed {
                s.left += batch.len() as u64;
                break Step::Failed;
            }
            progressed |= written > 0;
            // What the kernel did not take goes back in front, in order.
            let mut skipped = 0;
            while batch.get(skipped).is_some_and(|f| written >= f.len()) {
                written -= batch[skipped].len();
                skipped += 1;
            }
            s.left += skipped as u64;
            if skipped == batch.len() {
                batch.clear();
                s.partial = false;
                s.cut = false;
                continue;
            }
            // Started: partly written now, or partly written before and untouched now.
            let started = written > 0 || (skipped == 0 && front_partial);
            let first = batch[skipped].slice(written..);
            // A close that dropped the queue meanwhile drops what had not started too.
            let cut = std::mem::take(&mut s.cut);
            if cut {
                let dropped = batch.len() - skipped - usize::from(started);
                s.left += dropped as u64;
            } else {
                for f in batch.drain(skipped + 1..).rev() {
                    s.frames.push_front(f);
                }
            }
            if started || !cut {
                s.frames.push_front(first);
            }
            s.partial = started;
            break Step::Blocked;
        };
        if s.waiting && progressed {
            s.waiting = false;
            self.room.notify_waiters();
        }
        step
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        let s = self.state.get_mut();
        let left = s.left + s.frames.len() as u64;
        self.shard.left.add(left);
    }
}

impl Outlet for Sock {
    fn try_send(&self, frame: Frame) -> Result<(), Refused> {
        self.push(frame.wire().clone(), false)
    }

    fn send(&self, frame: Frame) -> BoxFuture<'_, Result<(), Refused>> {
        Box::pin(async move {
            loop {
                let room = self.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                {
                    let mut s = self.state.lock();
                    match self.push_locked(&mut s, frame.wire().clone(), false) {
                        Err(Refused::Full) => s.waiting = true,
                        done => return done,
                    }
                }
                room.await;
            }
        })
    }

    fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    fn queued(&self) -> usize {
        self.state.lock().frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// Every frame in `wire`, as (opcode, payload); panics on a torn frame.
    fn frames(wire: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut out = Vec::new();
        let mut cur = std::io::Cursor::new(wire);
        while (cur.position() as usize) < wire.len() {
            let (h, len) = FrameHeader::parse(&mut cur).expect("a header").expect("a whole header");
            let at = cur.position() as usize;
            let end = at + len as usize;
            assert!(end <= wire.len(), "a torn frame at byte {at}");
            out.push((h.opcode, wire[at..end].to_vec()));
            cur.set_position(end as u64);
        }
        out
    }

    /// A reader slower than the writer: the kernel takes part of a vectored write, frames
    /// queue behind it, and a close that drops the queue meanwhile still leaves whole frames.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_reader_gets_whole_frames_in_order_then_the_close() {
        for seed in 0..4u64 {
            let writers = Writers::start();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let _ = socket2::SockRef::from(&server).set_send_buffer_size(4096);
            let _ = socket2::SockRef::from(&client).set_recv_buffer_size(4096);
            let sock = writers.open(Arc::new(server), 100_000);
            let reader = tokio::spawn(async move {
                let mut wire = Vec::new();
                let mut buf = [0u8; 1500];
                loop {
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return wire,
                        Ok(n) => wire.extend_from_slice(&buf[..n]),
                    }
                    if wire.len() % 7 == (seed as usize) {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
            });
            let total = 3_000 + 1_000 * seed as usize;
            for i in 0..total {
                let pad = "x".repeat((i * 37 + seed as usize * 11) % 300);
                sock.try_send(Frame::text(&format!("{i} {pad}"))).expect("room");
                if i % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            tokio::time::sleep(Duration::from_millis(5 * seed)).await;
            // `close`, with a deadline no loopback stall reaches: a reader this slow behind
            // buffers this small can wait out TCP's zero-window probes for over a second, and
            // this test is about the bytes, not the deadline.
            sock.close_with(Frame::close(4001, "slow_consumer"), true);
            sock.drained(Duration::from_secs(30)).await;
            sock.shutdown();
            let got = frames(&reader.await.unwrap());
            let (close, texts) = got.split_last().expect("frames");
            assert_eq!(close.0, OpCode::Control(Control::Close), "the close comes last");
            assert_eq!(&close.1[..2], &4001u16.to_be_bytes());
            for (n, (op, payload)) in texts.iter().enumerate() {
                assert_eq!(*op, OpCode::Data(Data::Text));
                let text = std::str::from_utf8(payload).unwrap();
                assert_eq!(text.split(' ').next(), Some(n.to_string().as_str()), "in order, none skipped");
            }
            assert!(texts.len() <= total);
            assert_eq!(writers.backlog(), 0, "nothing is counted as held once the socket is gone");
        }
    }

    /// The node's backlog is what dispatch pauses on: frames count from the moment they are
    /// queued, also on sockets their shard has not reached yet (a busy shard, not a full
    /// socket, is what falls behind under load), and stop counting once written.
    #[tokio::test(flavor = "current_thread")]
    async fn frames_count_as_held_from_the_moment_they_are_queued_until_written() {
        let writers = Writers::start();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut clients = Vec::new();
        let mut socks = Vec::new();
        for _ in 0..4 {
            clients.push(TcpStream::connect(listener.local_addr().unwrap()).await.unwrap());
            let (server, _) = listener.accept().await.unwrap();
            socks.push(writers.open(Arc::new(server), 1_000));
        }
        // One thread: no shard runs until this task yields.
        for i in 0..250 {
            for sock in &socks {
                sock.try_send(Frame::text(&format!("{i}"))).expect("room");
            }
        }
        assert_eq!(writers.backlog(), 1_000, "queued, not yet written: all held");
        let one = Frame::text("0").len();
        for c in &mut clients {
            let mut got = vec![0u8; one];
            tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut got))
                .await
                .expect("written")
                .unwrap();
        }
        for _ in 0..1000 {
            if writers.backlog() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(writers.backlog(), 0, "everything written (the kernel took it all)");
        socks[0].close_with(Frame::close(1000, ""), true);
        drop(socks);
        tokio::task::yield_now().await;
        for _ in 0..1000 {
            if writers.backlog() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(writers.backlog(), 0, "a close frame counts until written or its socket is gone");
    }
}
