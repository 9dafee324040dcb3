//! The write queue both SQL backends' writer threads drain: requests and schema changes in
//! arrival order, writes group-committed in batches of up to [`MAX_BATCH`], a schema change
//! alone after the writes queued before it.

use crate::{BoxFuture, SchemaChange, StoreError, WriteRequest, WriteResult};
use livebase_core::Schema;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Most requests sharing one transaction.
pub const MAX_BATCH: usize = 512;

/// Observed by metrics: how many requests each commit carried, and how long it took.
pub type BatchObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// Where a write request's answer goes.
pub type Reply = oneshot::Sender<Result<WriteResult, StoreError>>;

pub enum Job {
    Write(WriteRequest, Reply),
    Schema(SchemaChange, oneshot::Sender<Result<Arc<Schema>, StoreError>>),
}

/// A writer thread's side of the queue.
pub trait Drain {
    /// Applies and commits one batch; every reply is answered (now or later). `more`: other
    /// jobs are already waiting behind it.
    fn commit_writes(&mut self, writes: Vec<(WriteRequest, Reply)>, more: bool);
    fn change_schema(&mut self, change: SchemaChange) -> Result<Arc<Schema>, StoreError>;
    /// Housekeeping, after every batch and (`idle`) whenever the queue was empty for the
    /// idle interval.
    fn tick(&mut self, idle: bool);
}

/// Runs a writer until every sender is dropped.
pub fn run(rx: crossbeam_channel::Receiver<Job>, w: &mut impl Drain, idle: Duration) {
    loop {
        let first = match rx.recv_timeout(idle) {
            Ok(job) => job,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                w.tick(true);
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let mut writes = Vec::new();
        let mut pending = Some(first);
        while let Some(job) = pending.take() {
            match job {
                Job::Write(req, reply) => writes.push((req, reply)),
                Job::Schema(change, reply) => {
                    w.commit_writes(std::mem::take(&mut writes), true);
                    let _ = reply.send(w.change_schema(change));
                }
            }
            if writes.len() < MAX_BATCH {
                pending = rx.try_recv().ok();
            }
        }
        w.commit_writes(writes, !rx.is_empty());
        w.tick(false);
    }
}

fn stopped<T>(_: T) -> StoreError {
    StoreError::Internal("the writer has stopped".into())
}

/// Queues a write and waits for its answer.
pub fn write(
    jobs: &crossbeam_channel::Sender<Job>,
    req: WriteRequest,
) -> BoxFuture<'static, Result<WriteResult, StoreError>> {
    let jobs = jobs.clone();
    Box::pin(async move {
        let (tx, rx) = oneshot::channel();
        jobs.send(Job::Write(req, tx)).map_err(stopped)?;
        rx.await.map_err(stopped)?
    })
}

/// Queues a schema change and waits for the schema after it.
pub fn change_schema(
    jobs: &crossbeam_channel::Sender<Job>,
    c: SchemaChange,
) -> BoxFuture<'static, Result<Arc<Schema>, StoreError>> {
    let jobs = jobs.clone();
    Box::pin(async move {
        let (tx, rx) = oneshot::channel();
        jobs.send(Job::Schema(c, tx)).map_err(stopped)?;
        rx.await.map_err(stopped)?
    })
}
