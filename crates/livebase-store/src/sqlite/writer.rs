//! The writer thread: the only connection that writes.
//!
//! Requests queue on a channel. The thread takes every request waiting (up to
//! [`MAX_BATCH`]), applies each inside its own SAVEPOINT of one transaction, and commits once
//! (group commit). A request that fails rolls back only its own savepoint, so one bad op never
//! fails its neighbours. Sequence numbers are assigned here, in apply order, which is commit
//! order.
//!
//! Commits are pipelined: COMMIT hands the WAL frames to the OS and the batch goes to the
//! sync thread ([`sync_loop`]), which fdatasyncs the WAL — one sync for every batch committed
//! meanwhile — and only then pushes the events to the [`LogTail`] and answers the callers.
//! While one batch is being synced, the next one is already being applied. A batch with
//! nothing behind it and nothing being synced is synced and answered by the writer itself:
//! one thread hand-off fewer for a lone write, the same order.

use super::ddl;
use super::rows::row_to_record;
use crate::engine::{self, changed_fields_since, WriteTx};
use crate::queue::{self, BatchObserver, Drain, Job, Reply};
use crate::sql::{field_type, quote_ident, select_columns, to_sql_value as to_sql, Dialect, SqlValue};
use crate::{LogTail, Retention, SchemaChange, StoreError, StoredResponse, WriteRequest, WriteResult};
use livebase_core::schema::{Collection, FieldType};
use livebase_core::{ChangeEvent, Record, Schema};
use parking_lot::RwLock;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Writer {
    pub conn: Connection,
    /// Where committed batches go to be made durable and answered.
    pub synced: crossbeam_channel::Sender<Committed>,
    /// Batches handed to the sync thread and not yet published by it.
    pub in_flight: Arc<AtomicUsize>,
    /// Where a batch the writer syncs itself is published (as the sync thread does).
    pub tail: Arc<LogTail>,
    pub on_batch: Option<BatchObserver>,
    pub wal: Arc<WalSync>,
    pub schema: Arc<RwLock<Arc<Schema>>>,
    pub next_seq: u64,
    pub retention: Retention,
    /// The oldest sequence number still in `_lb_changes`, as far as the writer knows.
    pub log_start: u64,
    pub last_trim: Instant,
    /// Held for each batch's transaction; the checkpointer takes it to finish a checkpoint so the WAL can
    /// start over (see `checkpointer` in the parent module).
    pub checkpoint_gate: Arc<parking_lot::Mutex<()>>,
}

impl Writer {
    pub fn run(mut self, rx: crossbeam_channel::Receiver<Job>) {
        queue::run(rx, &mut self, Duration::from_secs(5));
    }
}

impl Drain for Writer {
    fn tick(&mut self, idle: bool) {
        if idle || self.last_trim.elapsed() > Duration::from_secs(30) {
            self.trim();
            self.last_trim = Instant::now();
        }
    }

    fn change_schema(&mut self, change: SchemaChange) -> Result<Arc<Schema>, StoreError> {
        Writer::change_schema(self, change)
    }

    fn commit_writes(&mut self, mut writes: Vec<(WriteRequest, Reply)>, more: bool) {
        if writes.is_empty() {
            return;
        }
        let started = Instant::now();
        let n = writes.len();
        let schema = self.schema.read().clone();
        let first_seq = self.next_seq;
        let mut results = Vec::with_capacity(n);
        let mut events = Vec::new();
        // The checkpointer may only finish its pass between two transactions.
        let batch = self.checkpoint_gate.lock();
        let outcome = (|| -> rusqlite::Result<()> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let mut tx = SqliteTx { conn: &self.conn };
            for (req, _) in writes.iter_mut() {
                let (r, mut evs) = engine::apply_request(&mut tx, &schema, &mut self.next_seq, req);
                events.append(&mut evs);
                results.push(r);
            }
            self.conn.execute_batch("COMMIT")
        })();
        drop(batch);
        if let Err(e) = outcome {
            tracing::error!(error = %e, "group commit failed; {n} request(s) refused");
            let _ = self.conn.execute_batch("ROLLBACK");
            self.next_seq = first_seq;
            for (_, reply) in writes {
                let _ = reply.send(Err(StoreError::Internal(e.to_string())));
            }
            return;
        }
        // Count-based retention: trim once the log exceeds its limit by 1% (at least one event).
        if let Some(max) = self.retention.max_events {
            let len = self.next_seq.saturating_sub(self.log_start);
            if len > max + (max / 100).max(1) {
                self.trim();
            }
        }
        // The batch is committed but not yet on disk: the sync thread makes it durable, then
        // publishes its events and answers, while this thread goes on with the next batch.
        let replies = writes.into_iter().map(|(_, reply)| reply).zip(results).collect();
        let batch = Committed { events, replies, started };
        // Nothing behind it and nothing before it still being synced: sync it here (the order
        // holds, as every earlier batch is published already).
        if !more && self.in_flight.load(Ordering::Acquire) == 0 {
            sync_or_abort(&self.wal);
            publish(batch, &self.tail, &self.on_batch);
            return;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _ = self.synced.send(batch);
    }
}

impl Writer {
    fn change_schema(&mut self, change: SchemaChange) -> Result<Arc<Schema>, StoreError> {
        let current = self.schema.read().clone();
        let next = ddl::apply(&mut self.conn, &current, change)?;
        // Rare: made durable right here rather than through the sync thread.
        self.wal.sync().map_err(|e| StoreError::Internal(format!("cannot sync the log: {e}")))?;
        self.conn.flush_prepared_statement_cache();
        let next = Arc::new(next);
        *self.schema.write() = next.clone();
        Ok(next)
    }

    /// Drops change events and idempotency records past their retention. The newest event is
    /// always kept so the sequence survives a restart.
    fn trim(&mut self) {
        let head = self.next_seq.saturating_sub(1);
        let mut r = Ok(0);
        if let Some(max) = self.retention.max_events {
            let cut = head.saturating_sub(max.max(1));
            r = self.conn.execute("DELETE FROM _lb_changes WHERE seq <= ?", [cut as i64]);
            if r.is_ok() {
                self.log_start = self.log_start.max(cut + 1);
            }
        }
        if let (Ok(_), Some(age)) = (&r, self.retention.max_age_secs) {
            let cutoff = livebase_core::record::format_timestamp(
                time::OffsetDateTime::now_utc() - time::Duration::seconds(age as i64),
            );
            r = self.conn.execute(
                "DELETE FROM _lb_changes WHERE committed_at < ? AND seq < ?",
                params![cutoff, head as i64],
            );
        }
        let r2 = self.conn.execute(
            "DELETE FROM _lb_idempotency WHERE created_at < unixepoch() - ?",
            [self.retention.idempotency_secs as i64],
        );
        if let Err(e) = r.and(r2) {
            tracing::warn!(error = %e, "trimming the change log failed");
        }
    }
}

/// The writer's open transaction, as the write engine sees it.
struct SqliteTx<'c> {
    conn: &'c Connection,
}

impl WriteTx for SqliteTx<'_> {
    fn stored_response(&mut self, key: &str) -> Result<Option<(String, StoredResponse)>, StoreError> {
        self.conn
            .query_row("SELECT fingerprint, status, body FROM _lb_idempotency WHERE key = ?", [key], |r| {
                Ok((r.get::<_, String>(0)?, StoredResponse { status: r.get(1)?, body: r.get(2)? }))
            })
            .optional()
            .map_err(internal)
    }

    fn store_response(&mut self, key: &str, fingerprint: &str, r: &StoredResponse) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO _lb_idempotency (key, fingerprint, status, body, created_at) VALUES (?,?,?,?,unixepoch())",
                params![key, fingerprint, r.status, r.body],
            )
            .map(|_| ())
            .map_err(internal)
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("SAVEPOINT req").map_err(internal)
    }

    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("RELEASE req").map_err(internal)
    }

    fn rollback_savepoint(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("ROLLBACK TO req; RELEASE req").map_err(internal)
    }

    fn begin_request(&mut self, _actor: Option<&str>) -> Result<(), StoreError> {
        Ok(())
    }

    fn load(&mut self, c: &Collection, id: &str) -> Result<Option<Record>, StoreError> {
        super::load_record(self.conn, c, id)
    }

    fn insert(
        &mut self,
        c: &Collection,
        id: &str,
        now: &str,
        fields: &[(String, Value)],
    ) -> Result<(), StoreError> {
        let mut sql =
            format!("INSERT INTO {} (\"id\",\"version\",\"created_at\",\"updated_at\"", quote_ident(&c.name));
        for f in &c.fields {
            sql.push(',');
            sql.push_str(&quote_ident(&f.name));
        }
        sql.push_str(") VALUES (?,1,?,?");
        sql.push_str(&",?".repeat(c.fields.len()));
        sql.push(')');
        let mut args: Vec<SqlValue> = Vec::with_capacity(3 + fields.len());
        args.push(SqlValue::Text(id.to_string()));
        args.push(SqlValue::Text(now.to_string()));
        args.push(SqlValue::Text(now.to_string()));
        for (f, (_, v)) in c.fields.iter().zip(fields) {
            args.push(to_sql(f.ty, v));
        }
        let mut stmt = self.conn.prepare_cached(&sql).map_err(internal)?;
        stmt.execute(rusqlite::params_from_iter(args)).map(|_| ()).map_err(|e| constraint_error(c, id, e))
    }

    fn update(
        &mut self,
        c: &Collection,
        id: &str,
        version: i64,
        now: &str,
        patch: &[(String, Value)],
    ) -> Result<(), StoreError> {
        let mut sql = format!("UPDATE {} SET \"version\" = ?, \"updated_at\" = ?", quote_ident(&c.name));
        let mut args: Vec<SqlValue> = vec![SqlValue::Int(version), SqlValue::Text(now.to_string())];
        for (k, v) in patch {
            sql.push_str(&format!(", {} = ?", quote_ident(k)));
            args.push(to_sql(field_type(c, k).unwrap_or(FieldType::Text), v));
        }
        sql.push_str(" WHERE \"id\" = ?");
        args.push(SqlValue::Text(id.to_string()));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(internal)?;
        stmt.execute(rusqlite::params_from_iter(args)).map(|_| ()).map_err(|e| constraint_error(c, id, e))
    }

    fn delete(&mut self, c: &Collection, id: &str) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE \"id\" = ?", quote_ident(&c.name));
        self.conn.prepare_cached(&sql).and_then(|mut s| s.execute([id])).map(|_| ()).map_err(internal)
    }

    fn referrers(&mut self, rc: &Collection, field: &str, id: &str) -> Result<Vec<Record>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = ?",
            select_columns(rc, Dialect::Sqlite),
            quote_ident(&rc.name),
            quote_ident(field)
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(internal)?;
        let rows = stmt.query_map([id], |r| row_to_record(rc, r)).map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)
    }

    fn exists(&mut self, collection: &str, id: &str) -> Result<bool, StoreError> {
        let sql = format!("SELECT 1 FROM {} WHERE \"id\" = ?", quote_ident(collection));
        self.conn.prepare_cached(&sql).and_then(|mut s| s.exists([id])).map_err(internal)
    }

    fn changed_since(&mut self, collection: &str, id: &str, base: i64) -> Option<BTreeSet<String>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT version, old, new FROM _lb_changes WHERE collection = ? AND record_id = ? AND version > ? ORDER BY seq",
            )
            .ok()?;
        let rows = stmt
            .query_map(params![collection, id, base], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?))
            })
            .ok()?;
        changed_fields_since(base, rows.map(|r| r.ok()))
    }

    fn log(&mut self, e: &ChangeEvent) -> Result<(), StoreError> {
        let json = |r: &Option<Record>| r.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default());
        self.conn
            .prepare_cached(
                "INSERT INTO _lb_changes (seq, collection, op, record_id, version, actor, committed_at, new, old) VALUES (?,?,?,?,?,?,?,?,?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    e.seq as i64,
                    e.collection,
                    e.op.as_str(),
                    e.id,
                    e.version,
                    e.actor,
                    e.committed_at,
                    json(&e.new),
                    json(&e.old)
                ])
            })
            .map(|_| ())
            .map_err(internal)
    }
}

/// A committed batch waiting to be made durable: its events and its callers' answers.
pub struct Committed {
    events: Vec<ChangeEvent>,
    replies: Vec<(Reply, Result<WriteResult, StoreError>)>,
    started: Instant,
}

/// `fdatasync` of the write-ahead log file. The writer commits with `synchronous=OFF`, so a
/// COMMIT only hands the WAL frames to the OS; syncing the file afterwards makes every
/// transaction committed before the call durable (the WAL is append-only between
/// checkpoints, and the checkpointer's own connection syncs the database file before the WAL
/// is reused).
pub struct WalSync {
    path: std::path::PathBuf,
    file: parking_lot::Mutex<Option<std::fs::File>>,
}

impl WalSync {
    pub fn new(db_path: &std::path::Path) -> WalSync {
        let mut p = db_path.as_os_str().to_owned();
        p.push("-wal");
        WalSync { path: p.into(), file: parking_lot::Mutex::new(None) }
    }

    pub fn sync(&self) -> std::io::Result<()> {
        let mut f = self.file.lock();
        if f.is_none() {
            *f = Some(std::fs::File::open(&self.path)?);
        }
        match f.as_ref() {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }
}

/// The sync thread: one `fdatasync` covers every batch committed since the previous one;
/// then, in commit order, events go to the [`LogTail`] and callers get their answers. An
/// acknowledged write is therefore always on disk, and subscribers only hear of durable
/// changes.
pub fn sync_loop(
    rx: crossbeam_channel::Receiver<Committed>,
    wal: Arc<WalSync>,
    tail: Arc<LogTail>,
    on_batch: Option<BatchObserver>,
    in_flight: Arc<AtomicUsize>,
) {
    while let Ok(first) = rx.recv() {
        let mut done = vec![first];
        done.extend(rx.try_iter());
        sync_or_abort(&wal);
        for c in done {
            publish(c, &tail, &on_batch);
            // After the publication: a writer that sees none in flight publishes after it.
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Makes every committed batch durable, or stops the process.
fn sync_or_abort(wal: &WalSync) {
    if let Err(e) = wal.sync() {
        // Committed data whose durability is unknown must not be acknowledged, and it is
        // already visible to readers: stop, and let recovery decide (as databases do).
        tracing::error!(error = %e, path = %wal.path.display(), "fdatasync of the write-ahead log failed; aborting");
        std::process::abort();
    }
}

/// A durable batch: its events go to the tail, then its callers get their answers.
fn publish(c: Committed, tail: &LogTail, on_batch: &Option<BatchObserver>) {
    tail.push(c.events.into_iter().map(Arc::new).collect());
    let n = c.replies.len();
    for (reply, r) in c.replies {
        let _ = reply.send(r);
    }
    if let Some(obs) = on_batch {
        obs(n, c.started.elapsed());
    }
}

pub fn internal(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// Maps a failed INSERT/UPDATE to the constraint it broke.
fn constraint_error(c: &Collection, id: &str, e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, Some(msg)) = &e {
        if f.code == ErrorCode::ConstraintViolation {
            // SQLite says e.g. "UNIQUE constraint failed: items.title".
            let column = msg.rsplit('.').next().unwrap_or_default().trim();
            if column == "id" {
                return StoreError::AlreadyExists { collection: c.name.clone(), id: id.to_string() };
            }
            if let Some(f) = c.field(column) {
                return StoreError::Unique { field: f.name.clone() };
            }
        }
    }
    internal(e)
}
