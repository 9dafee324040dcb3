//! The in-memory end of the change log.
//!
//! The store's writer appends each committed batch here, after the commit and in sequence
//! order; readers (the realtime hub, resuming subscribers) read by sequence number and wait on
//! [`LogTail::watch`] for more. It keeps the newest `capacity` events: a reader that fell
//! further behind reads the older ones from the store's durable log instead. Nothing is ever
//! pushed that is not committed, so the tail can never disagree with the log.

use livebase_core::ChangeEvent;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;

pub struct LogTail {
    events: RwLock<VecDeque<Arc<ChangeEvent>>>,
    capacity: usize,
    head: watch::Sender<u64>,
}

/// What a reader gets for "events after `seq`".
#[derive(Debug)]
pub enum TailRead {
    /// The events after `seq` (possibly empty: nothing new yet), in order, at most `max`.
    Events(Vec<Arc<ChangeEvent>>),
    /// Events after `seq` are older than the tail keeps: read them from the durable log.
    TooOld,
}

impl LogTail {
    pub fn new(head: u64, capacity: usize) -> LogTail {
        let (tx, _) = watch::channel(head);
        LogTail { events: RwLock::new(VecDeque::with_capacity(capacity.min(1 << 16))), capacity, head: tx }
    }

    /// The newest committed sequence number.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver that changes whenever the head moves.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Appends committed events (consecutive sequence numbers following the head).
    pub fn push(&self, batch: Vec<Arc<ChangeEvent>>) {
        let Some(last) = batch.last().map(|e| e.seq) else {
            return;
        };
        {
            let mut ev = self.events.write();
            for e in batch {
                if ev.len() == self.capacity {
                    ev.pop_front();
                }
                ev.push_back(e);
            }
        }
        self.head.send_replace(last);
    }

    pub fn read_after(&self, seq: u64, max: usize) -> TailRead {
        let ev = self.events.read();
        let head = self.head();
        if seq >= head {
            return TailRead::Events(Vec::new());
        }
        let Some(first) = ev.front().map(|e| e.seq) else {
            return TailRead::TooOld;
        };
        if seq + 1 < first {
            return TailRead::TooOld;
        }
        let start = (seq + 1 - first) as usize;
        TailRead::Events(ev.iter().skip(start).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livebase_core::ChangeOp;

    fn ev(seq: u64) -> Arc<ChangeEvent> {
        Arc::new(ChangeEvent {
            seq,
            collection: "c".into(),
            op: ChangeOp::Insert,
            id: seq.to_string(),
            new: None,
            old: None,
            version: 1,
            actor: None,
            committed_at: String::new(),
        })
    }

    #[test]
    fn reads_by_sequence_and_reports_evicted_ranges() {
        let t = LogTail::new(10, 3);
        assert!(matches!(t.read_after(10, 10), TailRead::Events(v) if v.is_empty()));
        assert!(matches!(t.read_after(5, 10), TailRead::TooOld));
        t.push((11..=14).map(ev).collect());
        assert_eq!(t.head(), 14);
        let TailRead::Events(v) = t.read_after(11, 10) else { panic!() };
        assert_eq!(v.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![12, 13, 14]);
        assert!(matches!(t.read_after(10, 10), TailRead::TooOld));
        let TailRead::Events(v) = t.read_after(12, 1) else { panic!() };
        assert_eq!(v[0].seq, 13);
    }
}
