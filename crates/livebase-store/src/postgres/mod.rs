//! The PostgreSQL backend: collections are real tables, the change log is every writer's
//! changes captured from the WAL.
//!
//! - [`ddl`]: Livebase's tables (`_lb_collections`, `_lb_changes`, `_lb_idempotency`,
//!   `_lb_meta`), and per collection a typed table with its trigger, indexes, foreign keys,
//!   REPLICA IDENTITY FULL and publication membership.
//! - [`writer`]: one thread applies write requests through the shared write engine, group
//!   committed; its callers are answered once the capture has logged the transaction.
//! - [`capture`]: the slot's stream becomes the ordered, durable change log.
//! - [`wal`]: the pgoutput stream itself.
//! - [`rows`]: rows and captured tuples to records.
//!
//! Livebase owns a publication and a logical replication slot (both named after the database
//! unless configured). A stopped Livebase keeps its slot, so PostgreSQL retains WAL for it:
//! `livebase postgres drop-slot` removes both when a deployment is decommissioned.

pub mod capture;
pub mod ddl;
pub mod rows;
pub mod shared;
pub mod wal;
pub mod writer;

use crate::feed::{ChangeFeed, Epoch, TailFeed};
use crate::queue::BatchObserver;
use crate::queue::Job;
use crate::sql::{changes_sql, list_sql, quote_ident, select_columns, Dialect};
use crate::{
    BoxFuture, ChangePage, ChangeQuery, LogTail, Page, Retention, SchemaChange, Store, StoreError,
    WriteRequest, WriteResult,
};
use capture::{CaptureState, FENCE_PREFIX};
use livebase_core::query::{encode_cursor, ListQuery};
use livebase_core::schema::Collection;
use livebase_core::{ChangeEvent, ChangeOp, Record, Schema};
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, GenericClient, NoTls};
use writer::Writer;

pub struct PgOptions {
    /// `postgres://user[:password]@host[:port]/database`.
    pub url: String,
    pub retention: Retention,
    pub tail_capacity: usize,
    pub on_batch: Option<BatchObserver>,
    /// Slot and publication name; default `livebase_<database>`.
    pub slot: Option<String>,
    /// A node of a cluster: several nodes share the database, the capture runs only when
    /// started ([`PgStore::start_capture`]) and the feed is fed by [`PgStore::apply`].
    pub cluster: bool,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            retention: Retention::default(),
            tail_capacity: 100_000,
            on_batch: None,
            slot: None,
            cluster: false,
        }
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &cred[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The default slot / publication name for a database URL: `livebase_<database>`.
pub fn default_slot(url: &str) -> String {
    let db = url.rsplit('/').next().unwrap_or("").split('?').next().unwrap_or("");
    let mut s: String = format!("livebase_{db}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    s.truncate(63);
    s
}

/// Idle connections for reads.
struct Pool {
    url: String,
    idle: Mutex<Vec<Client>>,
}

struct Pooled {
    pool: Arc<Pool>,
    client: Option<Client>,
}

impl std::ops::Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("a pooled client is present until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("a pooled client is present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let mut idle = self.pool.idle.lock();
            if !c.is_closed() && idle.len() < 16 {
                idle.push(c);
            }
        }
    }
}

impl Pool {
    async fn get(self: &Arc<Self>) -> Result<Pooled, StoreError> {
        let idle = {
            let mut idle = self.idle.lock();
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match idle {
            Some(c) => c,
            None => connect(&self.url).await?,
        };
        Ok(Pooled { pool: self.clone(), client: Some(client) })
    }
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.map_err(|e| {
        StoreError::Unavailable(format!("cannot connect to {}: {}", redact(url), describe(&e)))
    })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// An error with its causes ("error connecting to server: Connection refused (os error 111)").
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

pub use writer::pg_error;

pub struct PgStore {
    jobs: crossbeam_channel::Sender<Job>,
    schema: Arc<RwLock<Arc<Schema>>>,
    feed: Arc<dyn ChangeFeed>,
    pool: Arc<Pool>,
    capture: Arc<CaptureState>,
    spec: CaptureSpec,
    /// The capture of a single node (not a cluster), stopped by `close`.
    local: Mutex<Option<shared::CaptureTerm>>,
    slot: String,
    _open: Arc<()>,
}

/// What a capture is started from.
struct CaptureSpec {
    wal: wal::WalConfig,
    tail: Arc<LogTail>,
    max_events: Option<u64>,
}

impl PgStore {
    /// Connects, checks the server can capture (`wal_level = logical`), creates Livebase's
    /// tables, publication and slot when missing, and starts the writer and the capture.
    pub async fn open(opts: PgOptions) -> Result<PgStore, StoreError> {
        let url = opts.url.clone();
        let db = connect(&url).await?;
        let wal_level: String =
            db.query_one("SHOW wal_level", &[]).await.and_then(|r| r.try_get(0)).map_err(pg_error)?;
        if wal_level != "logical" {
            return Err(StoreError::Internal(format!(
                "PostgreSQL at {} has wal_level = {wal_level}; Livebase captures changes by logical replication and \
                 needs wal_level = logical. Set it with ALTER SYSTEM SET wal_level = logical; (or in postgresql.conf) \
                 and restart PostgreSQL.",
                redact(&url)
            )));
        }
        db.batch_execute(ddl::INTERNAL).await.map_err(pg_error)?;
        let slot = opts.slot.clone().unwrap_or_else(|| default_slot(&url));
        let has_pub = !db
            .query("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&slot])
            .await
            .map_err(pg_error)?
            .is_empty();
        if !has_pub {
            db.batch_execute(&format!(
                "CREATE PUBLICATION {} WITH (publish = 'insert, update, delete')",
                quote_ident(&slot)
            ))
            .await
            .map_err(pg_error)?;
        }
        // Collection definitions travel with the changes, so a capture reads every change with
        // the definition it was written under, whichever node changed it.
        let in_pub = !db
            .query(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = 'public' AND tablename = '_lb_collections'",
                &[&slot],
            )
            .await
            .map_err(pg_error)?
            .is_empty();
        if !in_pub {
            db.batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE _lb_collections", quote_ident(&slot)))
                .await
                .map_err(pg_error)?;
        }
        let state = slot_state(&db, &slot).await?;
        if state == Some(true) && !opts.cluster {
            return Err(StoreError::Internal(format!(
                "the replication slot {slot} on {} is in use by another process (a second Livebase on this \
                 database?); one Livebase captures a database: stop the other one first",
                redact(&url)
            )));
        }
        if state.is_none() {
            db.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await.map_err(|e| {
                StoreError::Internal(format!(
                    "cannot create the replication slot {slot} on {}: {e} (the role needs the REPLICATION attribute)",
                    redact(&url)
                ))
            })?;
        }
        db.execute(
            "INSERT INTO _lb_meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING",
            &[&Epoch::generate().as_str()],
        )
        .await
        .map_err(pg_error)?;
        let epoch: String = db
            .query_one("SELECT value FROM _lb_meta WHERE key = 'epoch'", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_error)?;
        let schema = load_schema(&db).await?;
        let r = db
            .query_one("SELECT coalesce(max(seq), 0), coalesce(max(lsn), 0) FROM _lb_changes", &[])
            .await
            .map_err(pg_error)?;
        let head: i64 = r.try_get(0).map_err(pg_error)?;
        let logged_lsn: i64 = r.try_get(1).map_err(pg_error)?;
        let tail = Arc::new(LogTail::new(head as u64, opts.tail_capacity.max(1)));
        let schema = Arc::new(RwLock::new(Arc::new(schema)));
        let state = Arc::new(CaptureState::default());
        state.logged_lsn.store(logged_lsn as u64, Ordering::Relaxed);
        let open = Arc::new(());
        let spec = CaptureSpec {
            wal: wal::WalConfig { url: url.clone(), slot: slot.clone(), publication: slot.clone() },
            tail: tail.clone(),
            max_events: opts.retention.max_events,
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = Writer {
            url: url.clone(),
            client: None,
            statements: Default::default(),
            schema: schema.clone(),
            pending: state.pending.clone(),
            publication: slot.clone(),
            retention: opts.retention,
            on_batch: opts.on_batch,
            last_trim: std::time::Instant::now(),
        };
        std::thread::Builder::new()
            .name("livebase-pg-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
        let pool = Arc::new(Pool { url, idle: Mutex::new(vec![db]) });
        let history = {
            let pool = pool.clone();
            move |q: ChangeQuery| -> BoxFuture<'static, Result<ChangePage, StoreError>> {
                let pool = pool.clone();
                Box::pin(async move { changes_in(&*pool.get().await?, &q).await })
            }
        };
        let feed: Arc<dyn ChangeFeed> = Arc::new(TailFeed { epoch: Epoch::new(epoch), tail, history });
        let store = PgStore {
            jobs: tx,
            schema,
            feed,
            pool,
            capture: state,
            spec,
            local: Mutex::new(None),
            slot,
            _open: open,
        };
        if !opts.cluster {
            *store.local.lock() = Some(store.spawn_capture(None));
        }
        Ok(store)
    }

    /// The slot (and publication) this store captures from.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// Capture gauges: whether the stream is connected, bytes of WAL the server has written
    /// past what is logged (lag), and changes captured since start.
    pub fn capture_status(&self) -> (bool, u64, u64) {
        let s = &self.capture;
        let lag = s.server_lsn.load(Ordering::Relaxed).saturating_sub(s.logged_lsn.load(Ordering::Relaxed));
        (s.connected.load(Ordering::Relaxed), lag, s.captured.load(Ordering::Relaxed))
    }

    /// Bytes of WAL the server retains for the slot.
    pub async fn slot_retained_bytes(&self) -> Result<i64, StoreError> {
        let c = self.pool.get().await?;
        let r = c
            .query_one(
                "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(pg_error)?;
        r.try_get(0).map_err(pg_error)
    }
}

/// Every collection's stored definition.
async fn load_schema(c: &Client) -> Result<Schema, StoreError> {
    let mut schema = Schema::default();
    for r in c.query("SELECT definition FROM _lb_collections", &[]).await.map_err(pg_error)? {
        let d: String = r.try_get(0).map_err(pg_error)?;
        let coll: Collection = serde_json::from_str(&d)
            .map_err(|e| StoreError::Internal(format!("stored collection definition is unreadable: {e}")))?;
        schema.collections.insert(coll.name.clone(), coll);
    }
    Ok(schema)
}

/// A transaction snapshot (`pg_current_snapshot()`): which transactions it sees.
struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    fn parse(s: &str) -> Option<Snapshot> {
        let mut parts = s.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = parts
            .next()?
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        Some(Snapshot { xmin, xmax, xip })
    }

    /// Whether a committed transaction (its 32-bit xid, as the WAL carries it) is visible.
    fn sees(&self, xid32: u32) -> bool {
        // The full xid nearest to xmax with these low 32 bits (events checked are recent).
        let delta = xid32.wrapping_sub(self.xmax as u32) as i32;
        let full = (self.xmax as i64 + delta as i64) as u64;
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

async fn list_in(c: &impl GenericClient, coll: &Collection, q: &ListQuery) -> Result<Page, StoreError> {
    let l = list_sql(coll, q, Dialect::Postgres)?;
    let rows = c.query(&l.select, &rows::params(&l.params.values)).await.map_err(pg_error)?;
    let mut items: Vec<Record> =
        rows.iter().map(|r| rows::row_to_record(coll, r)).collect::<Result<_, _>>().map_err(pg_error)?;
    let next_cursor = if items.len() > l.limit {
        items.truncate(l.limit);
        items.last().map(|r| encode_cursor(&l.order, r))
    } else {
        None
    };
    let total = match &l.count {
        Some((sql, p)) => {
            let n: i64 = c
                .query_one(sql, &rows::params(&p.values))
                .await
                .and_then(|r| r.try_get(0))
                .map_err(pg_error)?;
            Some(n as u64)
        }
        None => None,
    };
    if let Some(sel) = &q.select {
        items = items.iter().map(|r| r.project(sel)).collect();
    }
    Ok(Page { items, next_cursor, total })
}

async fn changes_in(c: &Client, q: &ChangeQuery) -> Result<ChangePage, StoreError> {
    let r = c
        .query_one("SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM _lb_changes", &[])
        .await
        .map_err(pg_error)?;
    let (oldest, head): (i64, i64) = (r.try_get(0).map_err(pg_error)?, r.try_get(1).map_err(pg_error)?);
    let (oldest, head) = (oldest as u64, head as u64);
    if q.since < head && q.since + 1 < oldest {
        return Err(StoreError::Trimmed { since: q.since, oldest });
    }
    let (sql, p) = changes_sql(q, Dialect::Postgres);
    let rows = c.query(&sql, &rows::params(&p.values)).await.map_err(pg_error)?;
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Record>(&s).ok());
    let mut events = Vec::with_capacity(rows.len());
    for r in rows {
        let get = |e: tokio_postgres::Error| pg_error(e);
        events.push(ChangeEvent {
            seq: r.try_get::<_, i64>(0).map_err(get)? as u64,
            collection: r.try_get(1).map_err(get)?,
            op: ChangeOp::parse(&r.try_get::<_, String>(2).map_err(get)?).unwrap_or(ChangeOp::Update),
            id: r.try_get(3).map_err(get)?,
            version: r.try_get(4).map_err(get)?,
            actor: r.try_get(5).map_err(get)?,
            committed_at: r.try_get(6).map_err(get)?,
            new: parse(r.try_get(7).map_err(get)?),
            old: parse(r.try_get(8).map_err(get)?),
        });
    }
    Ok(ChangePage { events, head })
}

fn coll(schema: &Schema, name: &str) -> Result<Collection, StoreError> {
    schema.get(name).cloned().ok_or_else(|| StoreError::NoCollection(name.to_string()))
}

impl Store for PgStore {
    fn schema(&self) -> Arc<Schema> {
        self.schema.read().clone()
    }

    fn write(&self, req: WriteRequest) -> BoxFuture<'static, Result<WriteResult, StoreError>> {
        crate::queue::write(&self.jobs, req)
    }

    fn get(&self, collection: &str, id: &str) -> BoxFuture<'static, Result<Record, StoreError>> {
        let (collection, id) = (collection.to_string(), id.to_string());
        let (pool, schema) = (self.pool.clone(), self.schema());
        Box::pin(async move {
            let c = coll(&schema, &collection)?;
            let client = pool.get().await?;
            let sql = format!(
                "SELECT {} FROM {} WHERE \"id\" = $1",
                select_columns(&c, Dialect::Postgres),
                quote_ident(&c.name)
            );
            let rows = client.query(&sql, &[&id]).await.map_err(pg_error)?;
            match rows.first() {
                Some(r) => rows::row_to_record(&c, r).map_err(pg_error),
                None => Err(StoreError::NotFound { collection, id }),
            }
        })
    }

    fn list(&self, collection: &str, q: ListQuery) -> BoxFuture<'static, Result<Page, StoreError>> {
        let collection = collection.to_string();
        let (pool, schema) = (self.pool.clone(), self.schema());
        Box::pin(async move {
            let c = coll(&schema, &collection)?;
            list_in(&*pool.get().await?, &c, &q).await
        })
    }

    /// The rows are read in one REPEATABLE READ snapshot. The capture logs transactions a
    /// little after they commit, so the log head seen in the snapshot may lag the rows: a fence
    /// waits until everything committed before the snapshot is logged, then the position is
    /// the longest run of logged events whose transactions the snapshot sees. Should a
    /// transaction the snapshot does not see be logged before one it does (commit and
    /// visibility order can differ in PostgreSQL), no single position is exact and the
    /// snapshot is taken again.
    fn snapshot(
        &self,
        collection: &str,
        q: ListQuery,
    ) -> BoxFuture<'static, Result<(Page, u64), StoreError>> {
        let collection = collection.to_string();
        let schema = self.schema();
        let this = SnapshotCtx { pool: self.pool.clone(), capture: self.capture.clone() };
        Box::pin(async move {
            let c = coll(&schema, &collection)?;
            for _ in 0..5 {
                let mut client = this.pool.get().await?;
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(pg_error)?;
                let r = tx
                    .query_one(
                        "SELECT pg_current_snapshot()::text, coalesce((SELECT max(seq) FROM _lb_changes), 0)",
                        &[],
                    )
                    .await
                    .map_err(pg_error)?;
                let snap: String = r.try_get(0).map_err(pg_error)?;
                let logged: i64 = r.try_get(1).map_err(pg_error)?;
                let snap = Snapshot::parse(&snap)
                    .ok_or_else(|| StoreError::Internal(format!("unreadable snapshot {snap}")))?;
                let page = list_in(&tx, &c, &q).await?;
                tx.commit().await.map_err(pg_error)?;
                let fenced = this.fence(&client).await?;
                // Events logged just before the snapshot are checked too: a transaction is
                // logged a moment before it becomes visible.
                let from = (logged - 256).max(0);
                let rows = client
                    .query(
                        "SELECT seq, xid FROM _lb_changes WHERE seq > $1 AND seq <= $2 ORDER BY seq",
                        &[&from, &(fenced as i64)],
                    )
                    .await
                    .map_err(pg_error)?;
                let mut seq = from as u64;
                let mut gap = false;
                let mut exact = true;
                for r in rows {
                    let s: i64 = r.try_get(0).map_err(pg_error)?;
                    let xid: i64 = r.try_get(1).map_err(pg_error)?;
                    if snap.sees(xid as u32) {
                        if gap {
                            exact = false;
                            break;
                        }
                        seq = s as u64;
                    } else {
                        gap = true;
                    }
                }
                if exact {
                    return Ok((page, seq));
                }
            }
            Err(StoreError::Unavailable("could not align a snapshot with the change log".into()))
        })
    }

    fn changes(&self, q: ChangeQuery) -> BoxFuture<'static, Result<ChangePage, StoreError>> {
        let pool = self.pool.clone();
        Box::pin(async move { changes_in(&*pool.get().await?, &q).await })
    }

    fn change_schema(&self, c: SchemaChange) -> BoxFuture<'static, Result<Arc<Schema>, StoreError>> {
        crate::queue::change_schema(&self.jobs, c)
    }

    fn feed(&self) -> Arc<dyn ChangeFeed> {
        self.feed.clone()
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let local = self.local.lock().take();
        Box::pin(async move {
            if let Some(term) = local {
                term.stop().await;
            }
        })
    }
}

struct SnapshotCtx {
    pool: Arc<Pool>,
    capture: Arc<CaptureState>,
}

impl SnapshotCtx {
    async fn fence(&self, c: &Client) -> Result<u64, StoreError> {
        let token = format!("{:032x}", rand::random::<u128>());
        let rx = self.capture.fence(token.clone());
        // Its own transaction, flushed at commit so the walsender sends it at once (the token
        // is hex, safe to inline).
        let r = c
            .batch_execute(&format!(
                "BEGIN; SET LOCAL synchronous_commit = on; \
                 SELECT pg_logical_emit_message(true, '{FENCE_PREFIX}', '{token}'); COMMIT;"
            ))
            .await;
        if let Err(e) = r {
            self.capture.drop_fence(&token);
            return Err(pg_error(e));
        }
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(head)) => Ok(head),
            _ => {
                self.capture.drop_fence(&token);
                Err(StoreError::Unavailable("the change capture did not catch up within 10 s".into()))
            }
        }
    }
}

/// Whether the slot exists (None: it does not) and is in use. A Livebase that just stopped
/// may hold it for a moment while its connection closes: an active slot is asked again for
/// up to 3 s.
async fn slot_state(db: &Client, slot: &str) -> Result<Option<bool>, StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let rows = db
            .query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(pg_error)?;
        let active = rows.first().map(|r| r.try_get::<_, bool>(0).unwrap_or(false));
        if active != Some(true) || std::time::Instant::now() > deadline {
            return Ok(active);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops Livebase's replication slot and publication from the database (decommissioning:
/// a slot nobody reads makes PostgreSQL keep WAL forever). Returns what was dropped.
pub async fn drop_slot(url: &str, slot: Option<&str>) -> Result<Vec<String>, StoreError> {
    let slot = slot.map(str::to_string).unwrap_or_else(|| default_slot(url));
    let db = connect(url).await?;
    let mut dropped = Vec::new();
    let state = slot_state(&db, &slot).await?;
    if let Some(active) = state {
        if active {
            return Err(StoreError::Forbidden(format!(
                "slot {slot} is in use by a running Livebase; stop it first"
            )));
        }
        db.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.map_err(pg_error)?;
        dropped.push(format!("replication slot {slot}"));
    }
    let has_pub = !db
        .query("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&slot])
        .await
        .map_err(pg_error)?
        .is_empty();
    if has_pub {
        db.batch_execute(&format!("DROP PUBLICATION {}", quote_ident(&slot))).await.map_err(pg_error)?;
        dropped.push(format!("publication {slot}"));
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_visibility_follows_xmin_xmax_and_in_progress_list() {
        let s = Snapshot::parse("100:105:101,103").unwrap();
        assert!(s.sees(99));
        assert!(s.sees(100));
        assert!(!s.sees(101));
        assert!(s.sees(102));
        assert!(!s.sees(103));
        assert!(s.sees(104));
        assert!(!s.sees(105));
        let e = Snapshot::parse("4294967300:4294967310:").unwrap();
        assert!(s.sees(1));
        assert!(e.sees(5));
        assert!(!e.sees(14));
        assert!(e.sees(u32::MAX));
    }

    #[test]
    fn urls_are_redacted_and_name_their_slot() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(default_slot("postgres://u@h:1/My-App"), "livebase_my_app");
    }
}
