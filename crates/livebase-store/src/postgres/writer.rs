//! The PostgreSQL writer thread: the only connection of Livebase's that writes records.
//!
//! As on SQLite, requests queue on a channel and the thread applies every request waiting (up
//! to [`MAX_BATCH`]) inside its own SAVEPOINT of one transaction, committing once. The
//! decisions are the shared [`engine`]'s; this file only speaks PostgreSQL.
//!
//! What differs is where events come from. The writer does not write the change log: each
//! request leaves a transactional logical message naming its actor (`livebase` prefix), and
//! the capture ([`super::capture`]) turns the committed transaction, read back from the WAL,
//! into events, exactly as it does for any other writer. A batch's callers are answered when
//! the capture has logged its transaction (matched by transaction id) and its `COMMIT` has
//! returned, so an acknowledged write is already in the change log, as on SQLite, and visible
//! to every read that follows (PostgreSQL streams a commit before it is visible to others).

use super::rows::{params, row_to_record};
use crate::engine::{self, changed_fields_since, WriteTx};
use crate::queue::{self, BatchObserver, Drain, Job, Reply};
use crate::sql::{field_type, quote_ident, select_columns, Dialect, Params};
use crate::{Retention, SchemaChange, StoreError, StoredResponse, WriteRequest, WriteResult};
use livebase_core::schema::{Collection, FieldType};
use livebase_core::{ChangeEvent, Record, Schema};
use parking_lot::{Mutex, RwLock};
use postgres::error::SqlState;
use postgres::{Client, Statement};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a committed batch waits for the capture before its callers are answered anyway
/// (their writes are committed; the events follow when the capture is back).
const CAPTURE_WAIT: Duration = Duration::from_secs(10);

/// Committed transactions waiting for the capture, by transaction id.
#[derive(Default)]
pub struct Pending {
    waiting: Mutex<HashMap<u32, Waiting>>,
}

struct Waiting {
    replies: Vec<(Reply, Result<WriteResult, StoreError>)>,
    since: Instant,
    started: Instant,
    on_batch: Option<BatchObserver>,
    /// The capture has logged the transaction.
    logged: bool,
    /// `COMMIT` has returned to the writer. PostgreSQL decodes a commit from the WAL before
    /// the committing session's transaction is visible to other sessions' snapshots, so a
    /// caller answered on `logged` alone could read its own write back as missing.
    committed: bool,
}

impl Waiting {
    fn answer(self) {
        let n = self.replies.len();
        for (reply, r) in self.replies {
            let _ = reply.send(r);
        }
        if let Some(obs) = &self.on_batch {
            obs(n, self.started.elapsed());
        }
    }
}

impl Pending {
    /// The capture logged transaction `xid`: answer its callers once its `COMMIT` has also
    /// returned (whichever comes second answers).
    pub fn complete(&self, xid: u32) {
        self.mark(xid, |w| w.logged = true);
    }

    /// `COMMIT` of transaction `xid` returned: answer its callers once the capture has also
    /// logged it.
    fn committed(&self, xid: u32) {
        self.mark(xid, |w| {
            w.committed = true;
            w.since = Instant::now();
        });
    }

    fn mark(&self, xid: u32, f: impl FnOnce(&mut Waiting)) {
        let done = {
            let mut map = self.waiting.lock();
            match map.get_mut(&xid) {
                Some(w) => {
                    f(w);
                    if w.logged && w.committed {
                        map.remove(&xid)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        if let Some(w) = done {
            w.answer();
        }
    }

    fn expire(&self) {
        let old: Vec<Waiting> = {
            let mut map = self.waiting.lock();
            let stale: Vec<u32> = map
                .iter()
                .filter(|(_, w)| w.committed && w.since.elapsed() > CAPTURE_WAIT)
                .map(|(x, _)| *x)
                .collect();
            stale.into_iter().filter_map(|x| map.remove(&x)).collect()
        };
        for w in old {
            tracing::warn!(
                "the change capture is behind: answering a committed write before its events are logged"
            );
            w.answer();
        }
    }
}

pub struct Writer {
    pub url: String,
    pub client: Option<Client>,
    pub statements: HashMap<String, Statement>,
    pub schema: Arc<RwLock<Arc<Schema>>>,
    pub pending: Arc<Pending>,
    pub publication: String,
    pub retention: Retention,
    pub on_batch: Option<BatchObserver>,
    pub last_trim: Instant,
}

/// A PostgreSQL error as a store error: a lost connection is `Unavailable`.
pub fn pg_error(e: postgres::Error) -> StoreError {
    // Class 08: connection exceptions; class 57: the server shutting down or starting up.
    let gone = e.code().is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57"));
    if gone || e.is_closed() || e.as_db_error().is_none() && e.code().is_none() {
        return StoreError::Unavailable(super::describe(&e));
    }
    match e.as_db_error() {
        Some(db) => StoreError::Internal(format!("{}: {}", db.code().code(), db.message())),
        None => StoreError::Internal(e.to_string()),
    }
}

impl Writer {
    pub fn run(mut self, rx: crossbeam_channel::Receiver<Job>) {
        queue::run(rx, &mut self, Duration::from_secs(1));
    }

    /// Forgets the connection and the statements prepared on it.
    fn disconnect(&mut self) {
        self.client = None;
        self.statements.clear();
    }

    fn connect(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.disconnect();
        }
        if self.client.is_none() {
            let mut c = Client::connect(&self.url, postgres::NoTls)
                .map_err(|e| StoreError::Unavailable(format!("cannot connect: {}", super::describe(&e))))?;
            // An answered write must be durable whatever the server's default; a flushed
            // commit also reaches the walsender (and so the capture) at once.
            c.batch_execute("SET synchronous_commit = on").map_err(pg_error)?;
            self.client = Some(c);
        }
        self.client.as_mut().ok_or_else(|| StoreError::Unavailable("no connection".into()))
    }

    fn apply_batch(&mut self, mut writes: Vec<(WriteRequest, Reply)>) {
        if writes.is_empty() {
            return;
        }
        let started = Instant::now();
        let schema = self.schema.read().clone();
        let pending = self.pending.clone();
        let on_batch = self.on_batch.clone();
        let mut results = Vec::with_capacity(writes.len());
        let mut events = 0usize;
        let outcome = (|| -> Result<u32, StoreError> {
            self.connect()?;
            let (client, statements) = match (&mut self.client, &mut self.statements) {
                (Some(c), s) => (c, s),
                (None, _) => return Err(StoreError::Unavailable("no connection".into())),
            };
            client.batch_execute("BEGIN; SET LOCAL livebase.writer = 'on'").map_err(pg_error)?;
            let xid: i64 = client
                .query_one("SELECT txid_current()", &[])
                .and_then(|r| r.try_get(0))
                .map_err(pg_error)?;
            let mut tx = PgTx { client, statements };
            let mut seq = 0u64;
            for (req, _) in writes.iter_mut() {
                let (r, evs) = engine::apply_request(&mut tx, &schema, &mut seq, req);
                if let Err(StoreError::Unavailable(m)) = &r {
                    return Err(StoreError::Unavailable(m.clone()));
                }
                events += evs.len();
                results.push(r);
            }
            Ok(xid as u32)
        })();
        let xid = match outcome {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "write batch failed; {} request(s) refused", writes.len());
                if let Some(c) = self.client.as_mut() {
                    if c.batch_execute("ROLLBACK").is_err() {
                        self.disconnect();
                    }
                }
                for (_, reply) in writes {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let replies: Vec<_> = writes.into_iter().map(|(_, reply)| reply).zip(results).collect();
        let waiting =
            Waiting { replies, since: Instant::now(), started, on_batch, logged: false, committed: false };
        let waiting = if events > 0 {
            // Registered before COMMIT: the capture cannot log the transaction any earlier.
            pending.waiting.lock().insert(xid, waiting);
            None
        } else {
            Some(waiting)
        };
        let committed = match self.client.as_mut() {
            Some(c) => c.batch_execute("COMMIT").map_err(pg_error),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        match committed {
            Ok(()) => match waiting {
                Some(w) => w.answer(),
                None => pending.committed(xid),
            },
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                self.disconnect();
                let w = waiting.or_else(|| pending.waiting.lock().remove(&xid));
                match w {
                    // The capture logged it: the transaction did commit.
                    Some(w) if w.logged => w.answer(),
                    Some(w) => {
                        for (reply, _) in w.replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                    None => {}
                }
            }
        }
    }

    fn apply_schema(&mut self, change: SchemaChange) -> Result<Arc<Schema>, StoreError> {
        let current = self.schema.read().clone();
        let publication = self.publication.clone();
        let client = self.connect()?;
        let mut tx = client.transaction().map_err(pg_error)?;
        let next = super::ddl::apply(&mut tx, &publication, &current, change)?;
        tx.commit().map_err(pg_error)?;
        self.statements.clear();
        let next = Arc::new(next);
        *self.schema.write() = next.clone();
        Ok(next)
    }

    /// Drops change events older than their retention and expired idempotency records; the
    /// newest event is always kept so the sequence survives a restart.
    fn trim(&mut self) {
        let retention = self.retention.clone();
        let Ok(client) = self.connect() else { return };
        // Count-based retention is the capture's (it writes the log); age-based is here.
        let mut r = Ok(0);
        if let (Ok(_), Some(age)) = (&r, retention.max_age_secs) {
            let cutoff = livebase_core::record::format_timestamp(
                time::OffsetDateTime::now_utc() - time::Duration::seconds(age as i64),
            );
            r = client.execute(
                "DELETE FROM _lb_changes WHERE committed_at < $1 AND seq < (SELECT max(seq) FROM _lb_changes)",
                &[&cutoff],
            );
        }
        let r2 = client.execute(
            "DELETE FROM _lb_idempotency WHERE created_at < extract(epoch from now())::int8 - $1",
            &[&(retention.idempotency_secs as i64)],
        );
        if let Err(e) = r.and(r2) {
            tracing::warn!(error = %e, "trimming the change log failed");
        }
    }
}

impl Drain for Writer {
    fn commit_writes(&mut self, writes: Vec<(WriteRequest, Reply)>, _more: bool) {
        self.apply_batch(writes);
    }

    fn change_schema(&mut self, change: SchemaChange) -> Result<Arc<Schema>, StoreError> {
        self.apply_schema(change)
    }

    fn tick(&mut self, _idle: bool) {
        self.pending.expire();
        if self.last_trim.elapsed() > Duration::from_secs(30) {
            self.trim();
            self.last_trim = Instant::now();
        }
    }
}

/// The writer's open transaction, as the write engine sees it.
struct PgTx<'a> {
    client: &'a mut Client,
    statements: &'a mut HashMap<String, Statement>,
}

impl PgTx<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn execute(&mut self, sql: &str, p: &Params) -> Result<u64, postgres::Error> {
        let st = self.statement(sql)?;
        self.client.execute(&st, &params(&p.values))
    }

    fn query(&mut self, sql: &str, p: &Params) -> Result<Vec<postgres::Row>, postgres::Error> {
        let st = self.statement(sql)?;
        self.client.query(&st, &params(&p.values))
    }
}

fn pg() -> Params {
    Params::new(Dialect::Postgres)
}

/// Maps a failed INSERT/UPDATE to the constraint it broke.
fn constraint_error(c: &Collection, id: &str, e: postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::UNIQUE_VIOLATION {
            let name = db.constraint().unwrap_or_default();
            if name == format!("{}_pkey", c.name) {
                return StoreError::AlreadyExists { collection: c.name.clone(), id: id.to_string() };
            }
            if let Some(f) = c.fields.iter().find(|f| name == format!("{}__{}__unique", c.name, f.name)) {
                return StoreError::Unique { field: f.name.clone() };
            }
        }
    }
    pg_error(e)
}

impl WriteTx for PgTx<'_> {
    fn stored_response(&mut self, key: &str) -> Result<Option<(String, StoredResponse)>, StoreError> {
        let mut p = pg();
        let sql = format!(
            "SELECT fingerprint, status, body FROM _lb_idempotency WHERE key = {}",
            p.bind(crate::sql::SqlValue::Text(key.into()))
        );
        let rows = self.query(&sql, &p).map_err(pg_error)?;
        let Some(r) = rows.first() else { return Ok(None) };
        let status: i32 = r.try_get(1).map_err(pg_error)?;
        Ok(Some((
            r.try_get(0).map_err(pg_error)?,
            StoredResponse { status: status as u16, body: r.try_get(2).map_err(pg_error)? },
        )))
    }

    fn store_response(&mut self, key: &str, fingerprint: &str, r: &StoredResponse) -> Result<(), StoreError> {
        self.client
            .execute(
                "INSERT INTO _lb_idempotency (key, fingerprint, status, body, created_at) \
                 VALUES ($1, $2, $3, $4, extract(epoch from now())::int8)",
                &[&key, &fingerprint, &(r.status as i32), &r.body],
            )
            .map(|_| ())
            .map_err(pg_error)
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("SAVEPOINT req").map_err(pg_error)
    }

    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("RELEASE SAVEPOINT req").map_err(pg_error)
    }

    fn rollback_savepoint(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("ROLLBACK TO SAVEPOINT req; RELEASE SAVEPOINT req").map_err(pg_error)
    }

    fn begin_request(&mut self, actor: Option<&str>) -> Result<(), StoreError> {
        let note = serde_json::json!({ "actor": actor }).to_string();
        self.client
            .execute("SELECT pg_logical_emit_message(true, 'livebase', $1::text)", &[&note])
            .map(|_| ())
            .map_err(pg_error)
    }

    fn load(&mut self, c: &Collection, id: &str) -> Result<Option<Record>, StoreError> {
        let mut p = pg();
        let sql = format!(
            "SELECT {} FROM {} WHERE \"id\" = {}",
            select_columns(c, Dialect::Postgres),
            quote_ident(&c.name),
            p.bind(crate::sql::SqlValue::Text(id.into()))
        );
        let rows = self.query(&sql, &p).map_err(pg_error)?;
        rows.first().map(|r| row_to_record(c, r)).transpose().map_err(pg_error)
    }

    fn insert(
        &mut self,
        c: &Collection,
        id: &str,
        now: &str,
        fields: &[(String, Value)],
    ) -> Result<(), StoreError> {
        let mut p = pg();
        let mut cols = String::from("\"id\",\"version\",\"created_at\",\"updated_at\"");
        let mut vals = format!(
            "{},1,{},{}",
            p.bind(crate::sql::SqlValue::Text(id.into())),
            p.bind(crate::sql::SqlValue::Text(now.into())),
            p.bind(crate::sql::SqlValue::Text(now.into()))
        );
        for (f, (_, v)) in c.fields.iter().zip(fields) {
            cols.push(',');
            cols.push_str(&quote_ident(&f.name));
            vals.push(',');
            vals.push_str(&p.bind_typed(f.ty, crate::sql::to_sql_value(f.ty, v)));
        }
        let sql = format!("INSERT INTO {} ({cols}) VALUES ({vals})", quote_ident(&c.name));
        self.execute(&sql, &p).map(|_| ()).map_err(|e| constraint_error(c, id, e))
    }

    fn update(
        &mut self,
        c: &Collection,
        id: &str,
        version: i64,
        now: &str,
        patch: &[(String, Value)],
    ) -> Result<(), StoreError> {
        let mut p = pg();
        let mut sql = format!(
            "UPDATE {} SET \"version\" = {}, \"updated_at\" = {}",
            quote_ident(&c.name),
            p.bind(crate::sql::SqlValue::Int(version)),
            p.bind(crate::sql::SqlValue::Text(now.into()))
        );
        for (k, v) in patch {
            let ty = field_type(c, k).unwrap_or(FieldType::Text);
            sql.push_str(&format!(
                ", {} = {}",
                quote_ident(k),
                p.bind_typed(ty, crate::sql::to_sql_value(ty, v))
            ));
        }
        sql.push_str(&format!(" WHERE \"id\" = {}", p.bind(crate::sql::SqlValue::Text(id.into()))));
        self.execute(&sql, &p).map(|_| ()).map_err(|e| constraint_error(c, id, e))
    }

    fn delete(&mut self, c: &Collection, id: &str) -> Result<(), StoreError> {
        let mut p = pg();
        let sql = format!(
            "DELETE FROM {} WHERE \"id\" = {}",
            quote_ident(&c.name),
            p.bind(crate::sql::SqlValue::Text(id.into()))
        );
        self.execute(&sql, &p).map(|_| ()).map_err(pg_error)
    }

    fn referrers(&mut self, rc: &Collection, field: &str, id: &str) -> Result<Vec<Record>, StoreError> {
        let mut p = pg();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = {}",
            select_columns(rc, Dialect::Postgres),
            quote_ident(&rc.name),
            quote_ident(field),
            p.bind(crate::sql::SqlValue::Text(id.into()))
        );
        let rows = self.query(&sql, &p).map_err(pg_error)?;
        rows.iter().map(|r| row_to_record(rc, r).map_err(pg_error)).collect()
    }

    fn exists(&mut self, collection: &str, id: &str) -> Result<bool, StoreError> {
        let mut p = pg();
        let sql = format!(
            "SELECT 1 FROM {} WHERE \"id\" = {}",
            quote_ident(collection),
            p.bind(crate::sql::SqlValue::Text(id.into()))
        );
        Ok(!self.query(&sql, &p).map_err(pg_error)?.is_empty())
    }

    fn changed_since(&mut self, collection: &str, id: &str, base: i64) -> Option<BTreeSet<String>> {
        let rows = self
            .client
            .query(
                "SELECT version, old, new FROM _lb_changes WHERE collection = $1 AND record_id = $2 AND version > $3 ORDER BY seq",
                &[&collection, &id, &base],
            )
            .ok()?;
        changed_fields_since(
            base,
            rows.iter().map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?, r.try_get(2).ok()?))),
        )
    }

    /// The change log is the capture's to write.
    fn log(&mut self, _e: &ChangeEvent) -> Result<(), StoreError> {
        Ok(())
    }
}
