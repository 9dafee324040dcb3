//! The embedded backend: SQLite in WAL mode, one writer thread, a pool of readers.
//!
//! Layout on disk: `<data dir>/livebase.db` (+ `-wal`, `-shm`). One table per collection, named
//! like it; internal tables start with `_lb_`: `_lb_collections` (definitions),
//! `_lb_changes` (the change log), `_lb_idempotency` (stored responses), `_lb_meta` (the log's
//! epoch).
//!
//! Durability: the writer commits with `synchronous=OFF` and the sync thread `fdatasync`s the
//! WAL before any caller is answered or any subscriber is told (see `writer`), so an
//! acknowledged write survives `kill -9` and power loss.

mod ddl;
pub mod rows;
mod writer;

use crate::feed::{ChangeFeed, Epoch, TailFeed};
use crate::queue::Job;
use crate::sql::{changes_sql, list_sql, quote_ident, select_columns, Dialect};
use crate::{
    BoxFuture, ChangePage, ChangeQuery, LogTail, Page, Retention, SchemaChange, Store, StoreError,
    WriteRequest, WriteResult,
};
use livebase_core::query::{encode_cursor, ListQuery};
use livebase_core::schema::Collection;
use livebase_core::{ChangeEvent, ChangeOp, Record, Schema};
use parking_lot::{Mutex, RwLock};
use rows::row_to_record;
use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use writer::{internal, Writer};

pub use crate::queue::BatchObserver;
pub use crate::queue::MAX_BATCH;

pub struct SqliteOptions {
    pub retention: Retention,
    /// Events kept in memory for fast fan-out and resume.
    pub tail_capacity: usize,
    pub on_batch: Option<BatchObserver>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { retention: Retention::default(), tail_capacity: 100_000, on_batch: None }
    }
}

pub struct SqliteStore {
    jobs: crossbeam_channel::Sender<Job>,
    /// Dropped with the store: tells the checkpoint thread to stop.
    _open: Arc<()>,
    schema: Arc<RwLock<Arc<Schema>>>,
    feed: Arc<dyn ChangeFeed>,
    readers: Arc<ReaderPool>,
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.idle.lock().pop();
        let mut conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.path).map_err(internal)?;
                c.execute_batch("PRAGMA query_only = 1; PRAGMA busy_timeout = 5000;").map_err(internal)?;
                c.set_prepared_statement_cache_capacity(128);
                c
            }
        };
        let r = f(&mut conn);
        // A reader left inside a transaction by an error is not reused.
        if conn.is_autocommit() {
            let mut idle = self.idle.lock();
            if idle.len() < 16 {
                idle.push(conn);
            }
        }
        r
    }
}

const INTERNAL_TABLES: &str = "
CREATE TABLE IF NOT EXISTS _lb_collections (name TEXT PRIMARY KEY NOT NULL, definition TEXT NOT NULL, position INTEGER);
CREATE TABLE IF NOT EXISTS _lb_changes (
    seq INTEGER PRIMARY KEY NOT NULL, collection TEXT NOT NULL, op TEXT NOT NULL, record_id TEXT NOT NULL,
    version INTEGER NOT NULL, actor TEXT, committed_at TEXT NOT NULL, new TEXT, old TEXT);
CREATE INDEX IF NOT EXISTS _lb_changes_record ON _lb_changes (collection, record_id, seq);
CREATE TABLE IF NOT EXISTS _lb_idempotency (
    key TEXT PRIMARY KEY NOT NULL, fingerprint TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS _lb_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
";

impl SqliteStore {
    pub fn open(dir: &Path, opts: SqliteOptions) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Internal(format!("cannot create data dir {}: {e}", dir.display())))?;
        let path = dir.join("livebase.db");
        let conn = Connection::open(&path).map_err(internal)?;
        // Durability is the sync thread's job (`writer::sync_loop`): the writer's COMMIT only
        // hands WAL frames to the OS, and an fdatasync of the WAL precedes every answer. The
        // writer never checkpoints (that would stall a commit); a background connection with
        // synchronous=FULL copies the WAL into the database instead. See `checkpointer`.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA busy_timeout = 5000; \
             PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = 0; \
             PRAGMA journal_size_limit = 67108864;",
        )
        .map_err(internal)?;
        conn.execute_batch(INTERNAL_TABLES).map_err(internal)?;
        conn.set_prepared_statement_cache_capacity(256);
        let mut schema = Schema::default();
        {
            let mut stmt = conn.prepare("SELECT definition FROM _lb_collections").map_err(internal)?;
            let defs = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(internal)?;
            for d in defs {
                let c: Collection = serde_json::from_str(&d.map_err(internal)?).map_err(|e| {
                    StoreError::Internal(format!("stored collection definition is unreadable: {e}"))
                })?;
                schema.collections.insert(c.name.clone(), c);
            }
        }
        let (start, head): (i64, i64) = conn
            .query_row("SELECT coalesce(min(seq), 1), coalesce(max(seq), 0) FROM _lb_changes", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(internal)?;
        let head = head as u64;
        // The log's identity: created with the log (also for a log from before epochs existed),
        // never changed afterwards. Made durable by the WAL sync below.
        conn.execute(
            "INSERT OR IGNORE INTO _lb_meta (key, value) VALUES ('epoch', ?)",
            [Epoch::generate().as_str()],
        )
        .map_err(internal)?;
        let epoch: String = conn
            .query_row("SELECT value FROM _lb_meta WHERE key = 'epoch'", [], |r| r.get(0))
            .map_err(internal)?;
        let tail = Arc::new(LogTail::new(head, opts.tail_capacity.max(1)));
        let schema = Arc::new(RwLock::new(Arc::new(schema)));
        let (tx, rx) = crossbeam_channel::unbounded();
        let open = Arc::new(());
        let still_open = Arc::downgrade(&open);
        let wal = Arc::new(writer::WalSync::new(&path));
        wal.sync().map_err(|e| StoreError::Internal(format!("cannot sync the log: {e}")))?;
        let (synced_tx, synced_rx) = crossbeam_channel::unbounded();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        {
            let (wal, tail, on_batch) = (wal.clone(), tail.clone(), opts.on_batch.clone());
            let in_flight = in_flight.clone();
            std::thread::Builder::new()
                .name("livebase-sync".into())
                .spawn(move || writer::sync_loop(synced_rx, wal, tail, on_batch, in_flight))
                .map_err(|e| StoreError::Internal(format!("cannot start sync thread: {e}")))?;
        }
        let gate = Arc::new(parking_lot::Mutex::new(()));
        let w = Writer {
            conn,
            synced: synced_tx,
            in_flight,
            tail: tail.clone(),
            on_batch: opts.on_batch.clone(),
            wal,
            schema: schema.clone(),
            next_seq: head + 1,
            retention: opts.retention,
            log_start: start as u64,
            last_trim: std::time::Instant::now(),
            checkpoint_gate: gate.clone(),
        };
        let ckpt_path = path.clone();
        std::thread::Builder::new()
            .name("livebase-checkpoint".into())
            .spawn(move || checkpointer(&ckpt_path, &gate, move || still_open.strong_count() > 0))
            .map_err(|e| StoreError::Internal(format!("cannot start checkpoint thread: {e}")))?;
        std::thread::Builder::new()
            .name("livebase-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
        let readers = Arc::new(ReaderPool { path, idle: Mutex::new(Vec::new()) });
        let history = {
            let readers = readers.clone();
            move |q: ChangeQuery| -> BoxFuture<'static, Result<ChangePage, StoreError>> {
                let pool = readers.clone();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || pool.with(|c| changes_in(c, &q)))
                        .await
                        .map_err(|e| StoreError::Internal(format!("reader task failed: {e}")))?
                })
            }
        };
        let feed: Arc<dyn ChangeFeed> = Arc::new(TailFeed { epoch: Epoch::new(epoch), tail, history });
        Ok(SqliteStore { jobs: tx, _open: open, schema, feed, readers })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Schema) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let pool = self.readers.clone();
        let schema = self.schema();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || pool.with(|c| f(c, &schema)))
                .await
                .map_err(|e| StoreError::Internal(format!("reader task failed: {e}")))?
        })
    }
}

/// WAL frames (pages) past which the checkpointer finishes its checkpoint with the writer
/// paused, so the next transaction starts the WAL over (8,192 frames: 32 MiB of 4 KiB pages).
const RESTART_FRAMES: i64 = 8192;
/// A WAL file larger than this (readers kept it from starting over) is truncated, which
/// blocks the writer while it runs: a last resort for disk space.
const TRUNCATE_BYTES: u64 = 256 << 20;

/// Copies committed WAL frames into the database file every 200 ms (PASSIVE: never waits for
/// readers or the writer). Under a steady stream of writes a PASSIVE checkpoint never catches
/// up with the end of the WAL, and SQLite starts a WAL over only once all of it is copied, so
/// the file would grow until a blocking TRUNCATE (measured: the writer sleeping 78 ms in the
/// busy handler, the p999 of `bench writes`). Instead, once the WAL holds [`RESTART_FRAMES`],
/// the checkpointer takes `gate` (the writer holds it for each batch) and copies the few frames
/// written since its bulk pass: the writer waits only for that short pass, and its next
/// transaction starts the WAL from the beginning. Runs until the store is dropped.
fn checkpointer(path: &Path, gate: &parking_lot::Mutex<()>, alive: impl Fn() -> bool) {
    let Ok(conn) = Connection::open(path) else { return };
    // FULL: the database file is synced before the checkpoint lets the WAL be reused.
    let _ = conn.execute_batch("PRAGMA busy_timeout = 50; PRAGMA synchronous = FULL;");
    let wal = path.with_extension("db-wal");
    // The WAL's length in frames when the pass began.
    let checkpoint = |mode: &str| -> Option<i64> {
        match conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(1)) {
            Ok(frames) => Some(frames),
            Err(e) => {
                tracing::debug!(error = %e, "checkpoint skipped");
                None
            }
        }
    };
    while alive() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if std::fs::metadata(&wal).map(|m| m.len() > TRUNCATE_BYTES).unwrap_or(false) {
            checkpoint("TRUNCATE");
            continue;
        }
        // The writer may have appended since this pass began, so even a pass that copied all
        // of `log` does not let the WAL start over.
        let Some(log) = checkpoint("PASSIVE") else { continue };
        if log >= RESTART_FRAMES {
            let _paused = gate.lock();
            let done = checkpoint("PASSIVE");
            tracing::debug!(log, ?done, "checkpoint finished with the writer paused");
        }
    }
}

pub(crate) fn load_record(conn: &Connection, c: &Collection, id: &str) -> Result<Option<Record>, StoreError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE \"id\" = ?",
        select_columns(c, Dialect::Sqlite),
        quote_ident(&c.name)
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(internal)?;
    stmt.query_row([id], |r| row_to_record(c, r)).optional().map_err(internal)
}

fn coll<'s>(schema: &'s Schema, name: &str) -> Result<&'s Collection, StoreError> {
    schema.get(name).ok_or_else(|| StoreError::NoCollection(name.to_string()))
}

fn list_in(conn: &Connection, c: &Collection, q: &ListQuery) -> Result<Page, StoreError> {
    let l = list_sql(c, q, Dialect::Sqlite)?;
    let mut stmt = conn.prepare_cached(&l.select).map_err(internal)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(l.params.values.iter()), |r| row_to_record(c, r))
        .map_err(internal)?;
    let mut items: Vec<Record> = rows.collect::<Result<_, _>>().map_err(internal)?;
    let next_cursor = if items.len() > l.limit {
        items.truncate(l.limit);
        items.last().map(|r| encode_cursor(&l.order, r))
    } else {
        None
    };
    let total = match &l.count {
        Some((sql, params)) => {
            let n: i64 = conn
                .query_row(sql, rusqlite::params_from_iter(params.values.iter()), |r| r.get(0))
                .map_err(internal)?;
            Some(n as u64)
        }
        None => None,
    };
    if let Some(sel) = &q.select {
        items = items.iter().map(|r| r.project(sel)).collect();
    }
    Ok(Page { items, next_cursor, total })
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChangeEvent> {
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Record>(&s).ok());
    Ok(ChangeEvent {
        seq: r.get::<_, i64>(0)? as u64,
        collection: r.get(1)?,
        op: ChangeOp::parse(&r.get::<_, String>(2)?).unwrap_or(ChangeOp::Update),
        id: r.get(3)?,
        version: r.get(4)?,
        actor: r.get(5)?,
        committed_at: r.get(6)?,
        new: parse(r.get(7)?),
        old: parse(r.get(8)?),
    })
}

fn changes_in(conn: &Connection, q: &ChangeQuery) -> Result<ChangePage, StoreError> {
    let (oldest, head): (i64, i64) = conn
        .query_row("SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM _lb_changes", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(internal)?;
    let (oldest, head) = (oldest as u64, head as u64);
    if q.since < head && q.since + 1 < oldest {
        return Err(StoreError::Trimmed { since: q.since, oldest });
    }
    let (sql, params) = changes_sql(q, Dialect::Sqlite);
    let mut stmt = conn.prepare_cached(&sql).map_err(internal)?;
    let rows =
        stmt.query_map(rusqlite::params_from_iter(params.values.iter()), event_from_row).map_err(internal)?;
    let events = rows.collect::<Result<_, _>>().map_err(internal)?;
    Ok(ChangePage { events, head })
}

impl Store for SqliteStore {
    fn schema(&self) -> Arc<Schema> {
        self.schema.read().clone()
    }

    fn write(&self, req: WriteRequest) -> BoxFuture<'static, Result<WriteResult, StoreError>> {
        crate::queue::write(&self.jobs, req)
    }

    fn get(&self, collection: &str, id: &str) -> BoxFuture<'static, Result<Record, StoreError>> {
        let (collection, id) = (collection.to_string(), id.to_string());
        self.read(move |conn, schema| {
            let c = coll(schema, &collection)?;
            load_record(conn, c, &id)?.ok_or(StoreError::NotFound { collection, id })
        })
    }

    fn list(&self, collection: &str, q: ListQuery) -> BoxFuture<'static, Result<Page, StoreError>> {
        let collection = collection.to_string();
        self.read(move |conn, schema| list_in(conn, coll(schema, &collection)?, &q))
    }

    fn snapshot(
        &self,
        collection: &str,
        q: ListQuery,
    ) -> BoxFuture<'static, Result<(Page, u64), StoreError>> {
        let collection = collection.to_string();
        self.read(move |conn, schema| {
            let c = coll(schema, &collection)?;
            // One read transaction: the rows and the sequence come from the same snapshot.
            let tx = conn.transaction().map_err(internal)?;
            let seq: i64 = tx
                .query_row("SELECT coalesce(max(seq), 0) FROM _lb_changes", [], |r| r.get(0))
                .map_err(internal)?;
            let page = list_in(&tx, c, &q)?;
            tx.commit().map_err(internal)?;
            Ok((page, seq as u64))
        })
    }

    fn changes(&self, q: ChangeQuery) -> BoxFuture<'static, Result<ChangePage, StoreError>> {
        self.read(move |conn, _| changes_in(conn, &q))
    }

    fn change_schema(&self, c: SchemaChange) -> BoxFuture<'static, Result<Arc<Schema>, StoreError>> {
        crate::queue::change_schema(&self.jobs, c)
    }

    fn feed(&self) -> Arc<dyn ChangeFeed> {
        self.feed.clone()
    }
}
