//! The dispatch task: reads the change feed in sequence order and fans each event out to the
//! subscribers of the queries it concerns.
//!
//! Per event: the index names the candidate queries; per query, each subscriber's view of the
//! event (the effect on its result set, the sides its rules let it see) picks one frame from a
//! per-event cache keyed by (codec, view), so a frame is encoded once and its bytes shared.
//! Frames are pushed with `try_send`: the hub never waits on a client.

use super::registry::{ConnId, Matched, QueryId, Refused, Registry, SubState};
use super::Hub;
use crate::access::Access;
use crate::auth::Principal;
use crate::realtime::codec::{codec_key, Codec, Frame, Sides};
use crate::realtime::protocol::View;
use livebase_core::{ChangeEvent, Record};
use std::sync::Arc;

/// How one subscriber sees one event: the effect on its result set, and which sides of the
/// change it may see. Subscribers with the same answer (and codec) share one encoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    pub view: View,
    pub sides: Sides,
}

pub(super) fn seen_by(
    access: &Access,
    who: &Principal,
    open: bool,
    collection: &str,
    e: &ChangeEvent,
    m: Matched,
) -> Option<Seen> {
    if open {
        let sides = Sides { new: e.new.is_some(), old: e.old.is_some() };
        return View::between(m.before, m.after).map(|view| Seen { view, sides });
    }
    let vis = |r: &Option<Record>| r.as_ref().is_some_and(|r| access.row_visible(who, collection, r));
    let sides = Sides { new: vis(&e.new), old: vis(&e.old) };
    View::between(m.before && sides.old, m.after && sides.new).map(|view| Seen { view, sides })
}

/// Frames of one event, by codec and by what the receiver may see (encoded on first use).
#[derive(Default)]
pub(super) struct FrameCache {
    bodies: Vec<(usize, Sides, Arc<str>)>,
    frames: Vec<(usize, QueryId, Seen, Frame)>,
}

impl FrameCache {
    pub fn get(&mut self, codec: &Arc<dyn Codec>, e: &ChangeEvent, qid: QueryId, seen: Seen) -> Frame {
        let ck = codec_key(codec);
        if let Some((.., f)) = self.frames.iter().find(|(c, q, s, _)| *c == ck && *q == qid && *s == seen) {
            return f.clone();
        }
        let body = match self.bodies.iter().find(|(c, s, _)| *c == ck && *s == seen.sides) {
            Some((.., b)) => b.clone(),
            None => {
                let b = codec.change_body(e, seen.sides);
                self.bodies.push((ck, seen.sides, b.clone()));
                b
            }
        };
        let f = codec.change(&body, qid, seen.view);
        self.frames.push((ck, qid, seen, f.clone()));
        f
    }

    /// Forgets the per-query frames (the bodies stay valid for the whole event).
    pub fn next_query(&mut self) {
        self.frames.clear();
    }
}

impl Hub {
    pub(super) async fn dispatch_loop(&self) {
        let feed = self.inner.feed.clone();
        let mut watch = feed.watch();
        loop {
            let head = *watch.borrow_and_update();
            let from = self.inner.reg.lock().dispatched;
            if from >= head {
                self.dispatched_at_age(None);
                if watch.changed().await.is_err() {
                    return;
                }
                continue;
            }
            // From memory while the feed holds the events, else from its history.
            let events = match feed.read_after(from, 512, None).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "hub cannot read the change feed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let age = self.dispatch(&events);
            self.dispatched_at_age(age);
            self.wait_for_writers().await;
        }
    }

    /// Pauses while the writers hold more than [`super::BACKLOG_QUEUES`] queues' worth of
    /// frames and are getting through them. Writers that make no progress for
    /// [`super::BACKLOG_PAUSE`] hold frames of clients that stopped reading: dispatch goes on,
    /// and those clients are cut off as slow consumers when their own queue fills.
    async fn wait_for_writers(&self) {
        let limit = self.backlog_limit();
        let mut low = self.writer_backlog();
        let mut since = tokio::time::Instant::now();
        while low > limit {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let now = self.writer_backlog();
            if now < low {
                (low, since) = (now, tokio::time::Instant::now());
            } else if since.elapsed() >= super::BACKLOG_PAUSE {
                tracing::warn!(
                    frames = now,
                    "the connections' writers made no progress for {:?}; dispatch goes on",
                    super::BACKLOG_PAUSE
                );
                return;
            }
        }
    }

    /// The writers' backlog above which the node is behind (see [`super::Backlog`]).
    fn backlog_limit(&self) -> usize {
        self.inner.limits.queue_frames.saturating_mul(super::BACKLOG_QUEUES)
    }

    /// Fans a run of consecutive events out to their subscribers. The registry lock is taken
    /// per event, so subscribes and joins interleave with a long run. The run stops early
    /// once the writers hold more than their share (see [`Hub::wait_for_writers`]); the
    /// rest waits in the feed. Returns how long after its commit the last event dispatched
    /// was, in seconds.
    pub(super) fn dispatch(&self, events: &[Arc<ChangeEvent>]) -> Option<f64> {
        let access = self.access();
        let (mut delivered, mut committed) = (0u64, 0u64);
        let mut head = 0;
        let mut last = None;
        let limit = self.backlog_limit();
        for ev in events {
            if last.is_some() && self.writer_backlog() > limit {
                break;
            }
            let mut reg = self.inner.reg.lock();
            if ev.seq <= reg.dispatched {
                continue;
            }
            committed += 1;
            let slow = self.dispatch_one(&mut reg, &access, ev, &mut delivered);
            // A connection that missed this event must receive nothing after it: it is cut
            // off before the next event is dispatched, and resumes from its last sequence.
            for conn in slow {
                if let Some(c) = reg.conns.get(&conn) {
                    // Remembered first, so a client that reconnects at once is told.
                    self.inner.cut_offs.record(&c.name, c.who.scope(), "slow_consumer", ev.seq);
                    c.handle.close.close(4001, "slow_consumer");
                }
                self.inner.metrics.slow_consumer_dropped();
                self.remove_conn(&mut reg, conn);
            }
            head = reg.dispatched;
            last = Some(ev);
        }
        let age = last.and_then(|last| time_since(&last.committed_at).ok());
        if let Some(secs) = age {
            self.inner.metrics.fanout_latency(secs);
        }
        self.inner.metrics.events_committed(committed);
        self.inner.metrics.events_delivered(delivered);
        if committed > 0 {
            self.inner.metrics.set_log_head(head);
        }
        age
    }

    /// Queues one event for every subscriber that sees it; returns the connections whose
    /// queue (or catch-up buffer) overflowed.
    fn dispatch_one(
        &self,
        reg: &mut Registry,
        access: &Access,
        ev: &Arc<ChangeEvent>,
        delivered: &mut u64,
    ) -> Vec<ConnId> {
        let mut slow: Vec<ConnId> = Vec::new();
        reg.dispatched = ev.seq;
        self.dispatch_aggregates(reg, access, ev, delivered, &mut slow);
        let Some(ix) = reg.index.get(&ev.collection) else { return slow };
        let candidates = ix.candidates(ev);
        // Rules that let everyone see every row need no per-subscriber work.
        let anon_open = access.open_to_all(&ev.collection);
        let buffer_cap = self.inner.limits.queue_frames * 4;
        let mut frames = FrameCache::default();
        for qid in candidates {
            let Some(q) = reg.queries.get_mut(&qid) else { continue };
            let m = q.matches(ev);
            if !m.before && !m.after {
                continue;
            }
            frames.next_query();
            for (conn, state) in q.subscribers.iter_mut() {
                if matches!(state, SubState::Paused(_)) || slow.contains(conn) {
                    continue;
                }
                let Some(c) = reg.conns.get(conn) else { continue };
                let open = anon_open || c.who.is_admin();
                let Some(seen) = seen_by(access, &c.who, open, &ev.collection, ev, m) else { continue };
                let frame = frames.get(&c.handle.codec, ev, qid, seen);
                match state {
                    SubState::Paused(_) => {}
                    SubState::Live(after) if ev.seq <= *after => {}
                    SubState::Live(_) => match c.handle.tx.try_send(frame) {
                        Ok(()) => *delivered += 1,
                        Err(Refused::Full) => slow.push(*conn),
                        // Closing: it is removed when its task ends.
                        Err(Refused::Closed) => {}
                    },
                    SubState::CatchingUp(buf) if buf.len() >= buffer_cap => slow.push(*conn),
                    SubState::CatchingUp(buf) => buf.push((ev.seq, frame)),
                }
            }
        }
        slow
    }
}

/// Seconds since a canonical timestamp.
fn time_since(ts: &str) -> Result<f64, ()> {
    let t =
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).map_err(|_| ())?;
    Ok((time::OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0))
}
