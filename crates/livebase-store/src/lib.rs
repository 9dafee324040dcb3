//! Storage adapters for Livebase.
//!
//! # Layout
//! - this file: the [`Store`] trait every backend implements, and the plain-data requests and
//!   results that cross it. Nothing here names a SQL dialect.
//! - [`engine`]: the write engine every SQL backend shares: validation, access checks,
//!   conflicts, relations, cascades, idempotency; a backend supplies the row operations.
//! - [`queue`]: the write queue both SQL writers drain (group commit, schema changes alone).
//! - [`feed`]: the [`ChangeFeed`] port the realtime hub reads committed changes from: a head
//!   and a watch of it, recent events, history; positions are `(epoch, seq)`.
//! - [`tail`]: [`LogTail`], the in-memory end of the change log that committed events are
//!   handed to; a store that is its log's only writer builds its feed from it.
//! - [`sqlite`]: the embedded backend: one writer thread that group-commits, a pool of readers.
//! - [`sql`]: filters, sort orders, cursors and list queries translated to SQL, for the
//!   SQLite and PostgreSQL dialects.
//! - [`postgres`]: the PostgreSQL backend: real tables, the shared write engine, and every
//!   writer's changes captured from the WAL (logical replication, pgoutput) into the log.
//!
//! Invariant: every committed mutation becomes exactly one change event in the log, with a
//! sequence number one greater than the previous event, in commit order. SQLite appends it in
//! the write's own transaction; PostgreSQL's capture logs it from the WAL, for every writer,
//! before the write is answered.

pub mod engine;
pub mod feed;
pub mod postgres;
pub mod queue;
pub mod sql;
pub mod sqlite;
pub mod tail;

use livebase_core::filter::FilterError;
use livebase_core::query::ListQuery;
use livebase_core::schema::{Collection, SchemaError};
use livebase_core::validate::FieldError;
use livebase_core::{ChangeEvent, Record, Schema};
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use feed::{ChangeFeed, Epoch, Position};
pub use tail::LogTail;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One mutation of a write request.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Create {
        collection: String,
        id: Option<String>,
        data: Map<String, Value>,
    },
    /// Partial update. `base_version` is the version the client last saw, if it sent one.
    Update {
        collection: String,
        id: String,
        data: Map<String, Value>,
        base_version: Option<i64>,
    },
    Delete {
        collection: String,
        id: String,
        base_version: Option<i64>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum OpOutcome {
    Created(Record),
    Updated(Record),
    Deleted(Record),
}

impl OpOutcome {
    pub fn record(&self) -> &Record {
        match self {
            OpOutcome::Created(r) | OpOutcome::Updated(r) | OpOutcome::Deleted(r) => r,
        }
    }
}

/// Why an operation was refused. Every variant leaves the data unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("collection '{0}' does not exist")]
    NoCollection(String),
    #[error("record '{id}' does not exist in '{collection}'")]
    NotFound { collection: String, id: String },
    #[error("record '{id}' already exists in '{collection}'")]
    AlreadyExists { collection: String, id: String },
    #[error("invalid record data")]
    Validation(Vec<FieldError>),
    /// Stale base version; `fields` names overlapping fields under the merge strategy.
    #[error("{}", conflict_message(fields))]
    Conflict { current: Box<Record>, fields: Vec<String> },
    #[error("{field} must be unique: another record already has this value")]
    Unique { field: String },
    #[error("{field} points at '{target_id}', which does not exist in '{target}'")]
    MissingRelation { field: String, target: String, target_id: String },
    #[error("record is still referenced by {count} record(s) in {collection}.{field}")]
    Referenced { collection: String, field: String, count: u64 },
    #[error("this idempotency key was used with a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    BadQuery(#[from] FilterError),
    #[error("{0}")]
    Schema(#[from] SchemaError),
    #[error("collection '{0}' already exists")]
    CollectionExists(String),
    #[error("{0}")]
    Destructive(String),
    #[error("the change log no longer holds events after {since}; oldest retained is {oldest}")]
    Trimmed { since: u64, oldest: u64 },
    #[error("{0}")]
    Forbidden(String),
    /// The database cannot be reached right now (restarting, network); nothing was applied.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Internal(String),
}

fn conflict_message(fields: &[String]) -> String {
    if fields.is_empty() {
        "version conflict: the record changed since the version you sent".into()
    } else {
        format!("version conflict on fields: {}", fields.join(", "))
    }
}

/// A failed operation within a request: which op and why.
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    pub index: usize,
    pub error: StoreError,
}

pub type OpsResult = Result<Vec<OpOutcome>, OpError>;

/// A response kept under an idempotency key and replayed for retries.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

/// Turns a request's result into the response to remember for it. Runs inside the
/// transaction, so the stored response and the mutation commit together.
pub type Render = Box<dyn FnOnce(&OpsResult) -> StoredResponse + Send>;

pub struct Idempotency {
    /// The client's key, scoped by the caller (e.g. prefixed with the actor).
    pub key: String,
    /// A digest of the request (method, path, body): same key + other request is refused.
    pub fingerprint: String,
    pub render: Render,
}

/// What an access check is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// One mutation to authorize: the stored record (update, delete) and the validated incoming
/// fields (create, update), read inside the write's transaction.
pub struct AccessCheck<'a> {
    pub collection: &'a str,
    pub action: Action,
    pub record: Option<&'a Record>,
    pub data: Option<&'a Map<String, Value>>,
}

/// Decides whether a caller may apply a mutation; the store calls it for every op of a
/// request (not for the cascades that follow from a permitted delete).
pub type Authorize = Arc<dyn Fn(&AccessCheck<'_>) -> Result<(), StoreError> + Send + Sync>;

/// Ops applied atomically: all commit, or none and the first failure is returned.
pub struct WriteRequest {
    pub ops: Vec<WriteOp>,
    pub actor: Option<String>,
    pub idempotency: Option<Idempotency>,
    /// None: every op is allowed (the service credential, internal writes).
    pub authorize: Option<Authorize>,
}

#[derive(Debug)]
pub enum WriteResult {
    Applied(OpsResult),
    /// A retry of a request already applied: the stored response, nothing applied again.
    Replayed(StoredResponse),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Record>,
    pub next_cursor: Option<String>,
    pub total: Option<u64>,
}

/// A read of the change log (catch-up and audit).
#[derive(Debug, Clone, Default)]
pub struct ChangeQuery {
    pub since: u64,
    pub limit: usize,
    pub collection: Option<String>,
    pub record_id: Option<String>,
    pub actor: Option<String>,
    /// Inclusive bounds on `committed_at` (canonical timestamps).
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChangePage {
    pub events: Vec<ChangeEvent>,
    /// The newest committed sequence number.
    pub head: u64,
}

#[derive(Debug, Clone)]
pub enum SchemaChange {
    Create(Collection),
    /// Replace a collection's definition; `force` allows dropping or retyping fields.
    Update {
        collection: Collection,
        force: bool,
    },
    /// Drop a collection; `force` is needed when it still holds records.
    Drop {
        name: String,
        force: bool,
    },
}

/// How long the change log and idempotency keys are kept.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Keep at most this many events (None: no count limit).
    pub max_events: Option<u64>,
    /// Drop events older than this many seconds (None: no age limit).
    pub max_age_secs: Option<u64>,
    /// How long a stored idempotent response is replayed.
    pub idempotency_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_events: Some(1_000_000), max_age_secs: None, idempotency_secs: 24 * 3600 }
    }
}

/// A storage backend. Implementations apply each [`WriteRequest`] in one transaction (with
/// its idempotency record) and answer it once its change events are in the log; the events
/// reach readers through the backend's [`ChangeFeed`].
pub trait Store: Send + Sync + 'static {
    fn schema(&self) -> Arc<Schema>;
    fn write(&self, req: WriteRequest) -> BoxFuture<'static, Result<WriteResult, StoreError>>;
    fn get(&self, collection: &str, id: &str) -> BoxFuture<'static, Result<Record, StoreError>>;
    fn list(&self, collection: &str, q: ListQuery) -> BoxFuture<'static, Result<Page, StoreError>>;
    /// Records matching `q` and the sequence number they are current at, read in one snapshot:
    /// every event after that sequence is not reflected in the rows, every event up to it is.
    fn snapshot(&self, collection: &str, q: ListQuery)
        -> BoxFuture<'static, Result<(Page, u64), StoreError>>;
    fn changes(&self, q: ChangeQuery) -> BoxFuture<'static, Result<ChangePage, StoreError>>;
    fn change_schema(&self, c: SchemaChange) -> BoxFuture<'static, Result<Arc<Schema>, StoreError>>;
    /// The change feed of this store's log: committed events in order, by sequence number.
    fn feed(&self) -> Arc<dyn ChangeFeed>;
    /// Stops background work that holds shared resources (a replication slot) so another
    /// instance can take over; reads and writes after it may fail.
    fn close(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// What a [`SchemaChange`] does, decided against the current schema before any SQL runs.
/// Both SQL backends execute the same plan, so their migration rules cannot drift apart.
pub enum SchemaPlan {
    Create(Collection),
    Update { old: Collection, new: Collection, migration: livebase_core::schema::Migration },
    Drop { name: String, force: bool },
}

impl SchemaPlan {
    /// Checks the change (existence, destructive changes without `force`, references) and
    /// returns the plan and the schema after it.
    pub fn decide(current: &Schema, change: SchemaChange) -> Result<(SchemaPlan, Schema), StoreError> {
        let mut next = current.clone();
        let plan = match change {
            SchemaChange::Create(c) => {
                if current.get(&c.name).is_some() {
                    return Err(StoreError::CollectionExists(c.name));
                }
                next.collections.insert(c.name.clone(), c.clone());
                next.check()?;
                SchemaPlan::Create(c)
            }
            SchemaChange::Update { collection: c, force } => {
                let old = current.get(&c.name).ok_or_else(|| StoreError::NoCollection(c.name.clone()))?;
                let m = livebase_core::schema::Migration::between(old, &c);
                if m.is_destructive() && !force {
                    let mut lost: Vec<String> = m.dropped.clone();
                    lost.extend(m.retyped.iter().map(|f| format!("{f} (type change)")));
                    return Err(StoreError::Destructive(format!(
                        "this change drops data in: {}; repeat it with force=true to apply",
                        lost.join(", ")
                    )));
                }
                next.collections.insert(c.name.clone(), c.clone());
                next.check()?;
                SchemaPlan::Update { old: old.clone(), new: c, migration: m }
            }
            SchemaChange::Drop { name, force } => {
                if current.get(&name).is_none() {
                    return Err(StoreError::NoCollection(name));
                }
                next.collections.remove(&name);
                if let Some((rc, f)) = next.referrers(&name).first() {
                    return Err(StoreError::Schema(SchemaError {
                        path: format!("{}.{}", rc.name, f.name),
                        message: format!(
                            "{}.{} still relates to '{name}'; change or drop it first",
                            rc.name, f.name
                        ),
                    }));
                }
                SchemaPlan::Drop { name, force }
            }
        };
        Ok((plan, next))
    }

    /// Refuses to drop a collection that still holds records unless forced.
    pub fn check_drop(name: &str, rows: i64, force: bool) -> Result<(), StoreError> {
        if rows > 0 && !force {
            return Err(StoreError::Destructive(format!(
                "'{name}' still holds {rows} record(s); repeat with force=true to drop them"
            )));
        }
        Ok(())
    }

    /// A field added without a default cannot be required while records exist.
    pub fn check_added(f: &livebase_core::schema::Field, rows: i64) -> Result<(), StoreError> {
        if f.default.is_none() && f.required && rows > 0 {
            return Err(field_error(
                f,
                format!(
                    "{} is required but {rows} existing record(s) have no value; give it a default",
                    f.name
                ),
            ));
        }
        Ok(())
    }

    /// Counts stored values that the field's new definition no longer accepts.
    pub fn check_tightened(
        f: &livebase_core::schema::Field,
        values: impl Iterator<Item = Value>,
    ) -> Result<(), StoreError> {
        let bad = values
            .filter(|v| {
                if v.is_null() {
                    f.required
                } else {
                    f.ty != livebase_core::FieldType::Json
                        && livebase_core::validate::check_value(f, v).is_err()
                }
            })
            .count();
        if bad > 0 {
            return Err(field_error(
                f,
                format!("{bad} existing record(s) do not satisfy the new definition of {}", f.name),
            ));
        }
        Ok(())
    }

    /// A field's default, checked against the field.
    pub fn default_value(f: &livebase_core::schema::Field) -> Result<Option<Value>, StoreError> {
        f.default
            .as_ref()
            .map(|d| livebase_core::validate::check_value(f, d).map_err(|e| field_error(f, e.message)))
            .transpose()
    }
}

/// A schema error about one field.
pub fn field_error(f: &livebase_core::schema::Field, message: String) -> StoreError {
    StoreError::Schema(SchemaError { path: f.name.clone(), message })
}
