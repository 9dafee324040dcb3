//! The service layer: what any front end (the native REST API, the realtime hub, another
//! REST dialect) asks of Livebase, each call with its caller.
//!
//! Every operation decides the caller's access itself, through [`Access`], so a front end
//! only translates its wire shapes to these calls and the answers back; it never reads the
//! store directly. Invisible rows are `NotFound`, never `Forbidden`.

use crate::access::{Access, AccessCache};
use crate::auth::Principal;
use livebase_core::aggregate::{AggregateError, AggregateSpec, AggregateState};
use livebase_core::filter::Filter;
use livebase_core::query::{effective_order, encode_cursor, ListQuery, MAX_LIMIT};
use livebase_core::schema::Collection;
use livebase_core::Schema;
use livebase_core::{ChangeEvent, Record};
use livebase_store::{
    AccessCheck, Authorize, ChangeQuery, Idempotency, Page, SchemaChange, Store, StoreError, WriteOp,
    WriteRequest, WriteResult,
};
use serde_json::{json, Value};
use std::sync::Arc;

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operation is for the service credential (the admin key) only.
    #[error("{0}")]
    AdminOnly(String),
    #[error("{0}")]
    Aggregate(#[from] AggregateError),
    /// An aggregate over more rows than one computation may read.
    #[error("the aggregate covers more than {0} rows; narrow the filter")]
    TooManyRows(usize),
}

/// At most this many rows are read to compute an aggregate from scratch.
pub const MAX_AGGREGATE_ROWS: usize = 200_000;

pub type Result<T> = std::result::Result<T, ServiceError>;

/// A condition on the stored row an update or delete touches (see [`Service::write_where`]).
pub type RowGuard = Arc<dyn Fn(&Record) -> bool + Send + Sync>;

/// A page of the change log as one caller sees it.
#[derive(Debug, Clone)]
pub struct Changes {
    pub events: Vec<ChangeEvent>,
    /// The newest committed sequence number.
    pub head: u64,
    /// Where the next page starts (`since`), when this one read anything.
    pub next_since: Option<u64>,
}

/// Cheap to clone: a few reference counts.
#[derive(Clone)]
pub struct Service {
    store: Arc<dyn Store>,
    access: Arc<AccessCache>,
    admission: Option<Arc<dyn Admission>>,
}

/// Holds writes back while the node cannot deliver what it already committed (the realtime
/// hub says when: see `Hub::admit`). Every write of [`Service::write`] and
/// [`Service::write_where`] passes it before it reaches the store, so under overload the
/// writers slow down instead of the change log growing a lag no subscriber can catch up with.
pub trait Admission: Send + Sync + 'static {
    /// Completes when a write may go on; it never waits without bound.
    fn admit(&self) -> futures_util::future::BoxFuture<'_, ()>;
}

/// Renders records as one caller may see them: a record its rules hide (e.g. created for
/// someone else) shows only `id` and `version`.
#[derive(Clone)]
pub struct Viewer {
    access: Arc<Access>,
    who: Principal,
    collection: String,
}

impl Viewer {
    pub fn record(&self, r: &Record) -> Value {
        if self.access.can_view(&self.who, &self.collection, r) {
            json!(r)
        } else {
            json!({"id": r.id(), "version": r.version()})
        }
    }
}

fn admin_only(who: &Principal) -> Result<()> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(ServiceError::AdminOnly(
            "this endpoint needs the admin key: Authorization: Bearer <admin key>".into(),
        ))
    }
}

impl Service {
    pub fn new(store: Arc<dyn Store>, access: Arc<AccessCache>) -> Service {
        Service { store, access, admission: None }
    }

    /// The same service, with its writes held back by `a` (see [`Admission`]).
    pub fn with_admission(self, a: Arc<dyn Admission>) -> Service {
        Service { admission: Some(a), ..self }
    }

    async fn admit(&self) {
        if let Some(a) = &self.admission {
            a.admit().await;
        }
    }

    /// The rules of the current schema.
    pub fn access(&self) -> Arc<Access> {
        self.access.get(&self.store.schema())
    }

    pub fn schema(&self) -> Arc<Schema> {
        self.store.schema()
    }

    pub fn viewer(&self, who: &Principal, collection: &str) -> Viewer {
        Viewer { access: self.access(), who: who.clone(), collection: collection.to_string() }
    }

    // ---------- records ----------

    /// A page of the records the caller may see.
    pub async fn list(&self, who: &Principal, collection: &str, q: ListQuery) -> Result<Page> {
        let access = self.access();
        if self.store.schema().get(collection).is_some() && !access.can_list(who, collection) {
            return Err(StoreError::Forbidden(format!("not allowed to list '{collection}'")).into());
        }
        if access.open_rows(who, collection) {
            return Ok(self.store.list(collection, q).await?);
        }
        self.visible_page(&access, who, collection, q).await
    }

    /// A page of the rows the caller may see when rules hide some. Rules are evaluated in
    /// memory, so the store is read page by page (by cursor) until `limit` visible rows are
    /// found; `offset` and the total count are applied to visible rows.
    async fn visible_page(&self, access: &Access, who: &Principal, name: &str, q: ListQuery) -> Result<Page> {
        let limit = q.effective_limit();
        let mut skip = q.offset.unwrap_or(0);
        let order = effective_order(&q.order);
        let mut scan =
            ListQuery { limit: Some(MAX_LIMIT), offset: None, count: false, select: None, ..q.clone() };
        let mut items = Vec::new();
        let mut total = 0u64;
        let mut next_cursor = None;
        loop {
            let page = self.store.list(name, scan.clone()).await?;
            for r in page.items {
                if !access.row_visible(who, name, &r) {
                    continue;
                }
                total += 1;
                if skip > 0 {
                    skip -= 1;
                } else if items.len() < limit {
                    items.push(r);
                } else if next_cursor.is_none() {
                    // One visible row past the page: there is a next page, after the last kept.
                    next_cursor = items.last().map(|l| encode_cursor(&order, l));
                    if !q.count {
                        break;
                    }
                }
            }
            let done = next_cursor.is_some() && !q.count;
            match page.next_cursor {
                Some(c) if !done => scan.cursor = Some(c),
                _ => break,
            }
        }
        if let Some(sel) = &q.select {
            items = items.iter().map(|r| r.project(sel)).collect();
        }
        Ok(Page { items, next_cursor, total: q.count.then_some(total) })
    }

    /// One record, when the caller may see it.
    pub async fn get(&self, who: &Principal, collection: &str, id: &str) -> Result<Record> {
        let r = self.store.get(collection, id).await?;
        if !self.access().can_view(who, collection, &r) {
            return Err(StoreError::NotFound { collection: collection.into(), id: id.into() }.into());
        }
        Ok(r)
    }

    /// Applies ops atomically as the caller: every op is authorized inside the store's
    /// transaction by the caller's rules (the admin key passes). With an idempotency key, a
    /// retry replays the stored answer instead.
    pub async fn write(
        &self,
        who: &Principal,
        ops: Vec<WriteOp>,
        idempotency: Option<Idempotency>,
    ) -> Result<WriteResult> {
        let authorize: Option<Authorize> = if who.is_admin() {
            None
        } else {
            let (who, access) = (who.clone(), self.access());
            Some(Arc::new(move |check: &AccessCheck<'_>| access.authorize(&who, check)))
        };
        let req = WriteRequest { ops, actor: who.actor(), idempotency, authorize };
        self.admit().await;
        Ok(self.store.write(req).await?)
    }

    /// [`Service::write`] for ops chosen from rows read a moment before (an update or delete
    /// "where …"): inside the transaction every stored row an op touches must still pass
    /// `still`, else the request fails with `NotFound` for it and nothing is applied, so the
    /// caller can read again and retry. The caller's rules apply as in `write`.
    pub async fn write_where(
        &self,
        who: &Principal,
        ops: Vec<WriteOp>,
        still: RowGuard,
    ) -> Result<WriteResult> {
        let rules = (!who.is_admin()).then(|| (who.clone(), self.access()));
        let authorize: Authorize = Arc::new(move |check: &AccessCheck<'_>| {
            if let Some(r) = check.record {
                if !still(r) {
                    return Err(StoreError::NotFound {
                        collection: check.collection.to_string(),
                        id: r.id().to_string(),
                    });
                }
            }
            match &rules {
                Some((who, access)) => access.authorize(who, check),
                None => Ok(()),
            }
        });
        let req = WriteRequest { ops, actor: who.actor(), idempotency: None, authorize: Some(authorize) };
        self.admit().await;
        Ok(self.store.write(req).await?)
    }

    /// The caller's visible rows matching `q` and the sequence they are current at (the start
    /// of a live query).
    pub async fn snapshot(&self, who: &Principal, collection: &str, q: ListQuery) -> Result<(Page, u64)> {
        let access = self.access();
        if !access.can_list(who, collection) {
            return Err(StoreError::Forbidden(format!("not allowed to list '{collection}'")).into());
        }
        let (mut page, seq) = self.store.snapshot(collection, q).await?;
        if !access.open_rows(who, collection) {
            page.items.retain(|r| access.row_visible(who, collection, r));
        }
        Ok((page, seq))
    }

    /// The change log as the caller may see it: the events of rows its rules let it see,
    /// hidden sides blanked (all of it for the admin key).
    pub async fn changes(&self, who: &Principal, q: ChangeQuery) -> Result<Changes> {
        let page = self.store.changes(q).await?;
        // Paging continues after the last event read, whether or not the caller may see it.
        let next_since = page.events.last().map(|e| e.seq);
        let events = if who.is_admin() {
            page.events
        } else {
            let access = self.access();
            page.events
                .into_iter()
                .filter(|e| access.can_list(who, &e.collection))
                .filter_map(|e| access.redact_event(who, e))
                .collect()
        };
        Ok(Changes { events, head: page.head, next_since })
    }

    /// An aggregate over the rows the caller may see that match `filter`, and the sequence it
    /// is current at (rows and sequence from one snapshot).
    pub async fn aggregate(
        &self,
        who: &Principal,
        collection: &str,
        filter: Option<Filter>,
        spec: Arc<AggregateSpec>,
    ) -> Result<(AggregateState, u64)> {
        let q = ListQuery { filter, limit: Some(MAX_AGGREGATE_ROWS + 1), ..Default::default() };
        let (page, seq) = self.snapshot(who, collection, q).await?;
        if page.items.len() > MAX_AGGREGATE_ROWS {
            return Err(ServiceError::TooManyRows(MAX_AGGREGATE_ROWS));
        }
        let mut state = AggregateState::new(spec);
        for r in &page.items {
            state.add(r);
        }
        Ok((state, seq))
    }

    /// Checks an aggregate against the collection it is over.
    pub fn aggregate_spec(
        &self,
        collection: &str,
        group: &[String],
        fns: &[String],
    ) -> Result<AggregateSpec> {
        let schema = self.store.schema();
        let c = schema.get(collection).ok_or_else(|| StoreError::NoCollection(collection.to_string()))?;
        Ok(AggregateSpec::new(group, fns, c)?)
    }

    // ---------- schema (admin) ----------

    pub fn collections(&self, who: &Principal) -> Result<Arc<Schema>> {
        admin_only(who)?;
        Ok(self.store.schema())
    }

    pub fn collection(&self, who: &Principal, name: &str) -> Result<Collection> {
        admin_only(who)?;
        self.store
            .schema()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NoCollection(name.to_string()).into())
    }

    pub async fn change_schema(&self, who: &Principal, change: SchemaChange) -> Result<Arc<Schema>> {
        admin_only(who)?;
        Ok(self.store.change_schema(change).await?)
    }
}
