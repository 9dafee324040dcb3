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
//! While one batch is being synced, the next one is already being applied.

use super::ddl;
use super::rows::{field_type, row_to_record, select_columns, to_sql};
use crate::sqlite_filter::quote_ident;
use crate::{
    Idempotency, LogTail, OpError, OpOutcome, OpsResult, Retention, SchemaChange, StoreError, WriteOp,
    WriteRequest, WriteResult,
};
use livebase_core::conflict::{changed_fields, decide, Decision};
use livebase_core::record::{generate_id, now_timestamp, valid_id};
use livebase_core::schema::{Collection, FieldType, OnDelete};
use livebase_core::validate::{validate_create, validate_patch, FieldError};
use livebase_core::{ChangeEvent, ChangeOp, Record, Schema};
use parking_lot::RwLock;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most requests sharing one transaction.
pub const MAX_BATCH: usize = 512;

/// Where a write request's answer goes.
pub type Reply = oneshot::Sender<Result<WriteResult, StoreError>>;

pub enum Job {
    Write(WriteRequest, Reply),
    Schema(SchemaChange, oneshot::Sender<Result<Arc<Schema>, StoreError>>),
}

/// Observed by metrics: how many requests each commit carried.
pub type BatchObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

pub struct Writer {
    pub conn: Connection,
    /// Where committed batches go to be made durable and answered.
    pub synced: crossbeam_channel::Sender<Committed>,
    pub wal: Arc<WalSync>,
    pub schema: Arc<RwLock<Arc<Schema>>>,
    pub next_seq: u64,
    pub retention: Retention,
    /// The oldest sequence number still in `_lb_changes`, as far as the writer knows.
    pub log_start: u64,
}

/// Per-batch state: the time stamped on every record and event, and the events produced.
struct Batch<'a> {
    now: String,
    schema: &'a Schema,
    events: Vec<ChangeEvent>,
    actor: Option<String>,
    authorize: Option<crate::Authorize>,
}

impl Batch<'_> {
    fn check(
        &self,
        collection: &str,
        action: crate::Action,
        record: Option<&Record>,
        data: Option<&Map<String, Value>>,
    ) -> Result<(), StoreError> {
        match &self.authorize {
            None => Ok(()),
            Some(f) => f(&crate::AccessCheck { collection, action, record, data }),
        }
    }
}

fn as_map(fields: &[(String, Value)]) -> Map<String, Value> {
    fields.iter().cloned().collect()
}

impl Writer {
    pub fn run(mut self, rx: crossbeam_channel::Receiver<Job>) {
        let mut last_trim = Instant::now();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(job) => job,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    self.trim();
                    last_trim = Instant::now();
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
                        // Schema changes run alone, after the writes queued before them.
                        self.commit_writes(std::mem::take(&mut writes));
                        let r = self.change_schema(change);
                        let _ = reply.send(r);
                    }
                }
                if writes.len() < MAX_BATCH {
                    pending = rx.try_recv().ok();
                }
            }
            self.commit_writes(writes);
            if last_trim.elapsed() > Duration::from_secs(30) {
                self.trim();
                last_trim = Instant::now();
            }
        }
    }

    fn commit_writes(&mut self, mut writes: Vec<(WriteRequest, Reply)>) {
        if writes.is_empty() {
            return;
        }
        let started = Instant::now();
        let n = writes.len();
        let schema = self.schema.read().clone();
        let first_seq = self.next_seq;
        let mut results = Vec::with_capacity(n);
        let mut events = Vec::new();
        let outcome = (|| -> rusqlite::Result<()> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            for (req, _) in writes.iter_mut() {
                let mut batch = Batch {
                    now: now_timestamp(),
                    schema: &schema,
                    events: Vec::new(),
                    actor: req.actor.clone(),
                    authorize: req.authorize.clone(),
                };
                let r = self.apply_request(&mut batch, req);
                events.append(&mut batch.events);
                results.push(r);
            }
            self.conn.execute_batch("COMMIT")
        })();
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
        let _ = self.synced.send(Committed { events, replies, started });
    }

    /// One request inside its own savepoint.
    fn apply_request(
        &mut self,
        batch: &mut Batch<'_>,
        req: &mut WriteRequest,
    ) -> Result<WriteResult, StoreError> {
        let idem = req.idempotency.take();
        if let Some(i) = &idem {
            if let Some((fp, status, body)) = self
                .conn
                .query_row(
                    "SELECT fingerprint, status, body FROM _lb_idempotency WHERE key = ?",
                    [&i.key],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, u16>(1)?, r.get::<_, String>(2)?)),
                )
                .optional()
                .map_err(internal)?
            {
                if fp != i.fingerprint {
                    return Err(StoreError::IdempotencyMismatch);
                }
                return Ok(WriteResult::Replayed(crate::StoredResponse { status, body }));
            }
        }
        let seq_before = self.next_seq;
        self.conn.execute_batch("SAVEPOINT req").map_err(internal)?;
        let mut outcomes = Vec::with_capacity(req.ops.len());
        let mut failed = None;
        for (index, op) in std::mem::take(&mut req.ops).into_iter().enumerate() {
            match self.apply_op(batch, op) {
                Ok(o) => outcomes.push(o),
                Err(error) => {
                    failed = Some(OpError { index, error });
                    break;
                }
            }
        }
        let result: OpsResult = match failed {
            None => {
                self.conn.execute_batch("RELEASE req").map_err(internal)?;
                Ok(outcomes)
            }
            Some(e) => {
                self.conn.execute_batch("ROLLBACK TO req; RELEASE req").map_err(internal)?;
                self.next_seq = seq_before;
                batch.events.clear();
                Err(e)
            }
        };
        if let Some(Idempotency { key, fingerprint, render }) = idem {
            let resp = render(&result);
            // Server faults are not remembered: a retry should get a real attempt.
            if resp.status < 500 && resp.status != 429 {
                self.conn
                    .execute(
                        "INSERT INTO _lb_idempotency (key, fingerprint, status, body, created_at) VALUES (?,?,?,?,unixepoch())",
                        params![key, fingerprint, resp.status, resp.body],
                    )
                    .map_err(internal)?;
            }
        }
        Ok(WriteResult::Applied(result))
    }

    fn apply_op(&mut self, b: &mut Batch<'_>, op: WriteOp) -> Result<OpOutcome, StoreError> {
        match op {
            WriteOp::Create { collection, id, data } => self.create(b, &collection, id, &data),
            WriteOp::Update { collection, id, data, base_version } => {
                self.update(b, &collection, &id, &data, base_version)
            }
            WriteOp::Delete { collection, id, base_version } => {
                let c = coll(b.schema, &collection)?;
                let current = self.load(c, &id)?;
                b.check(&collection, crate::Action::Delete, Some(&current), None)?;
                match decide(c.conflict, current.version(), base_version, &[], || {
                    self.changed_since(&collection, &id, base_version.unwrap_or(0))
                }) {
                    Decision::Apply => {}
                    Decision::Stale => return Err(conflict(current, vec![])),
                    Decision::Overlap(f) => return Err(conflict(current, f)),
                }
                let mut visiting = BTreeSet::new();
                self.delete_record(b, c, current.clone(), &mut visiting)?;
                Ok(OpOutcome::Deleted(current))
            }
        }
    }

    fn create(
        &mut self,
        b: &mut Batch<'_>,
        collection: &str,
        id: Option<String>,
        data: &Map<String, Value>,
    ) -> Result<OpOutcome, StoreError> {
        let c = coll(b.schema, collection)?;
        let id = match id {
            Some(id) if valid_id(&id) => id,
            Some(_) => {
                return Err(StoreError::Validation(vec![FieldError {
                    field: "id".into(),
                    code: "invalid_id",
                    message: "id must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -".into(),
                }]))
            }
            None => generate_id(),
        };
        let fields = validate_create(c, data).map_err(StoreError::Validation)?;
        if b.authorize.is_some() {
            let mut m = as_map(&fields);
            m.insert("id".into(), Value::String(id.clone()));
            b.check(collection, crate::Action::Create, None, Some(&m))?;
        }
        self.check_relations(b.schema, c, fields.iter())?;
        let mut sql =
            format!("INSERT INTO {} (\"id\",\"version\",\"created_at\",\"updated_at\"", quote_ident(&c.name));
        for f in &c.fields {
            sql.push(',');
            sql.push_str(&quote_ident(&f.name));
        }
        sql.push_str(") VALUES (?,1,?,?");
        sql.push_str(&",?".repeat(c.fields.len()));
        sql.push(')');
        let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(3 + fields.len());
        args.push(id.clone().into());
        args.push(b.now.clone().into());
        args.push(b.now.clone().into());
        for (f, (_, v)) in c.fields.iter().zip(&fields) {
            args.push(to_sql(f.ty, v));
        }
        let mut stmt = self.conn.prepare_cached(&sql).map_err(internal)?;
        if let Err(e) = stmt.execute(rusqlite::params_from_iter(args)) {
            return Err(constraint_error(c, &id, e));
        }
        drop(stmt);
        let rec = Record::new(&id, 1, &b.now, &b.now, fields);
        self.log(b, c, ChangeOp::Insert, &id, Some(rec.clone()), None, 1)?;
        Ok(OpOutcome::Created(rec))
    }

    fn update(
        &mut self,
        b: &mut Batch<'_>,
        collection: &str,
        id: &str,
        data: &Map<String, Value>,
        base_version: Option<i64>,
    ) -> Result<OpOutcome, StoreError> {
        let c = coll(b.schema, collection)?;
        if let Some(other) = data.get("id").and_then(Value::as_str) {
            if other != id {
                return Err(StoreError::Validation(vec![FieldError {
                    field: "id".into(),
                    code: "immutable",
                    message: "id cannot be changed".into(),
                }]));
            }
        }
        let patch = validate_patch(c, data).map_err(StoreError::Validation)?;
        let current = self.load(c, id)?;
        if b.authorize.is_some() {
            b.check(collection, crate::Action::Update, Some(&current), Some(&as_map(&patch)))?;
        }
        let names: Vec<&str> = patch.iter().map(|(k, _)| k.as_str()).collect();
        match decide(c.conflict, current.version(), base_version, &names, || {
            self.changed_since(collection, id, base_version.unwrap_or(0))
        }) {
            Decision::Apply => {}
            Decision::Stale => return Err(conflict(current, vec![])),
            Decision::Overlap(f) => return Err(conflict(current, f)),
        }
        if patch.is_empty() {
            return Ok(OpOutcome::Updated(current));
        }
        self.check_relations(b.schema, c, patch.iter())?;
        self.write_update(b, c, current, patch).map(OpOutcome::Updated)
    }

    /// Applies validated field values to a stored record: version + 1, one update event.
    fn write_update(
        &mut self,
        b: &mut Batch<'_>,
        c: &Collection,
        current: Record,
        patch: Vec<(String, Value)>,
    ) -> Result<Record, StoreError> {
        let id = current.id().to_string();
        let version = current.version() + 1;
        let mut sql = format!("UPDATE {} SET \"version\" = ?, \"updated_at\" = ?", quote_ident(&c.name));
        let mut args: Vec<rusqlite::types::Value> = vec![version.into(), b.now.clone().into()];
        for (k, v) in &patch {
            sql.push_str(&format!(", {} = ?", quote_ident(k)));
            args.push(to_sql(field_type(c, k).unwrap_or(FieldType::Text), v));
        }
        sql.push_str(" WHERE \"id\" = ?");
        args.push(id.clone().into());
        let mut stmt = self.conn.prepare_cached(&sql).map_err(internal)?;
        if let Err(e) = stmt.execute(rusqlite::params_from_iter(args)) {
            return Err(constraint_error(c, &id, e));
        }
        drop(stmt);
        let mut new = current.clone();
        new.0.insert("version".into(), Value::from(version));
        new.0.insert("updated_at".into(), Value::String(b.now.clone()));
        for (k, v) in patch {
            new.0.insert(k, v);
        }
        self.log(b, c, ChangeOp::Update, &id, Some(new.clone()), Some(current), version)?;
        Ok(new)
    }

    /// Deletes a record after applying its referrers' `on_delete` rules.
    fn delete_record(
        &mut self,
        b: &mut Batch<'_>,
        c: &Collection,
        rec: Record,
        visiting: &mut BTreeSet<(String, String)>,
    ) -> Result<(), StoreError> {
        let id = rec.id().to_string();
        if !visiting.insert((c.name.clone(), id.clone())) {
            return Ok(()); // already being deleted higher up a cascade cycle
        }
        let schema = b.schema;
        for (rc, f) in schema.referrers(&c.name) {
            let sql = format!(
                "SELECT {} FROM {} WHERE {} = ?",
                select_columns(rc),
                quote_ident(&rc.name),
                quote_ident(&f.name)
            );
            let referrers: Vec<Record> = {
                let mut stmt = self.conn.prepare_cached(&sql).map_err(internal)?;
                let rows = stmt.query_map([&id], |r| row_to_record(rc, r)).map_err(internal)?;
                rows.collect::<Result<_, _>>().map_err(internal)?
            };
            let referrers: Vec<Record> = referrers
                .into_iter()
                .filter(|r| !visiting.contains(&(rc.name.clone(), r.id().to_string())))
                .collect();
            if referrers.is_empty() {
                continue;
            }
            match f.on_delete.unwrap_or_default() {
                OnDelete::Restrict => {
                    return Err(StoreError::Referenced {
                        collection: rc.name.clone(),
                        field: f.name.clone(),
                        count: referrers.len() as u64,
                    })
                }
                OnDelete::Cascade => {
                    for r in referrers {
                        self.delete_record(b, rc, r, visiting)?;
                    }
                }
                OnDelete::SetNull => {
                    for r in referrers {
                        self.write_update(b, rc, r, vec![(f.name.clone(), Value::Null)])?;
                    }
                }
            }
        }
        let sql = format!("DELETE FROM {} WHERE \"id\" = ?", quote_ident(&c.name));
        self.conn.prepare_cached(&sql).and_then(|mut s| s.execute([&id])).map_err(internal)?;
        let version = rec.version();
        self.log(b, c, ChangeOp::Delete, &id, None, Some(rec), version)
    }

    fn check_relations<'v>(
        &self,
        schema: &Schema,
        c: &Collection,
        values: impl Iterator<Item = &'v (String, Value)>,
    ) -> Result<(), StoreError> {
        for (k, v) in values {
            let Some(f) = c.field(k) else { continue };
            let (FieldType::Relation, Some(target), Some(tid)) = (f.ty, &f.collection, v.as_str()) else {
                continue;
            };
            if schema.get(target).is_none() {
                return Err(StoreError::NoCollection(target.clone()));
            }
            let sql = format!("SELECT 1 FROM {} WHERE \"id\" = ?", quote_ident(target));
            let found = self.conn.prepare_cached(&sql).and_then(|mut s| s.exists([tid])).map_err(internal)?;
            if !found {
                return Err(StoreError::MissingRelation {
                    field: f.name.clone(),
                    target: target.clone(),
                    target_id: tid.to_string(),
                });
            }
        }
        Ok(())
    }

    fn load(&self, c: &Collection, id: &str) -> Result<Record, StoreError> {
        super::load_record(&self.conn, c, id)?
            .ok_or_else(|| StoreError::NotFound { collection: c.name.clone(), id: id.to_string() })
    }

    /// Fields changed by versions after `base`, or None when the log no longer covers them.
    fn changed_since(&self, collection: &str, id: &str, base: i64) -> Option<BTreeSet<String>> {
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
        let mut out = BTreeSet::new();
        for (expected, row) in (base + 1..).zip(rows) {
            let (version, old, new) = row.ok()?;
            if version != expected {
                return None;
            }
            let parse = |s: Option<String>| -> Option<Record> { serde_json::from_str(&s?).ok() };
            match (parse(old), parse(new)) {
                (Some(o), Some(n)) => out.extend(changed_fields(&o, &n)),
                _ => return None,
            }
        }
        Some(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &mut self,
        b: &mut Batch<'_>,
        c: &Collection,
        op: ChangeOp,
        id: &str,
        new: Option<Record>,
        old: Option<Record>,
        version: i64,
    ) -> Result<(), StoreError> {
        let seq = self.next_seq;
        let json = |r: &Option<Record>| r.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default());
        self.conn
            .prepare_cached(
                "INSERT INTO _lb_changes (seq, collection, op, record_id, version, actor, committed_at, new, old) VALUES (?,?,?,?,?,?,?,?,?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    seq as i64,
                    c.name,
                    op.as_str(),
                    id,
                    version,
                    b.actor,
                    b.now,
                    json(&new),
                    json(&old)
                ])
            })
            .map_err(internal)?;
        self.next_seq += 1;
        b.events.push(ChangeEvent {
            seq,
            collection: c.name.clone(),
            op,
            id: id.to_string(),
            new,
            old,
            version,
            actor: b.actor.clone(),
            committed_at: b.now.clone(),
        });
        Ok(())
    }

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
) {
    while let Ok(first) = rx.recv() {
        let mut done = vec![first];
        done.extend(rx.try_iter());
        if let Err(e) = wal.sync() {
            // Committed data whose durability is unknown must not be acknowledged, and it is
            // already visible to readers: stop, and let recovery decide (as databases do).
            tracing::error!(error = %e, path = %wal.path.display(), "fdatasync of the write-ahead log failed; aborting");
            std::process::abort();
        }
        for c in done {
            tail.push(c.events.into_iter().map(Arc::new).collect());
            let n = c.replies.len();
            for (reply, r) in c.replies {
                let _ = reply.send(r);
            }
            if let Some(obs) = &on_batch {
                obs(n, c.started.elapsed());
            }
        }
    }
}

fn coll<'s>(schema: &'s Schema, name: &str) -> Result<&'s Collection, StoreError> {
    schema.get(name).ok_or_else(|| StoreError::NoCollection(name.to_string()))
}

fn conflict(current: Record, fields: Vec<String>) -> StoreError {
    StoreError::Conflict { current: Box::new(current), fields }
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
