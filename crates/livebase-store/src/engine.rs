//! The write engine: how one [`WriteRequest`] becomes row changes and change events, in any
//! SQL database.
//!
//! Everything a write decides — ids, validation, access checks, conflict strategies, relation
//! checks, `on_delete` cascades, idempotent replays, the all-or-nothing savepoint — is decided
//! here, once. A backend supplies a [`WriteTx`]: the handful of row operations of one open
//! transaction in its own SQL. That keeps the behaviour of every backend identical by
//! construction: they differ only in how a row is read or written.

use crate::{
    AccessCheck, Action, Authorize, Idempotency, OpError, OpOutcome, OpsResult, StoreError, StoredResponse,
    WriteOp, WriteRequest, WriteResult,
};
use livebase_core::conflict::{decide, Decision};
use livebase_core::record::{generate_id, now_timestamp, valid_id};
use livebase_core::schema::{Collection, FieldType, OnDelete};
use livebase_core::validate::{validate_create, validate_patch, FieldError};
use livebase_core::{ChangeEvent, ChangeOp, Record, Schema};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The row operations of one open write transaction, in one backend's SQL.
pub trait WriteTx {
    /// The response stored under an idempotency key and its request's fingerprint.
    fn stored_response(&mut self, key: &str) -> Result<Option<(String, StoredResponse)>, StoreError>;
    fn store_response(&mut self, key: &str, fingerprint: &str, r: &StoredResponse) -> Result<(), StoreError>;
    /// Opens the savepoint one request's ops share.
    fn savepoint(&mut self) -> Result<(), StoreError>;
    fn release_savepoint(&mut self) -> Result<(), StoreError>;
    fn rollback_savepoint(&mut self) -> Result<(), StoreError>;
    /// Called inside the savepoint before a request's first op, with who makes it.
    fn begin_request(&mut self, actor: Option<&str>) -> Result<(), StoreError>;
    fn load(&mut self, c: &Collection, id: &str) -> Result<Option<Record>, StoreError>;
    /// Inserts a new record (version 1). A duplicate id is `AlreadyExists`, a duplicate
    /// unique value `Unique`.
    fn insert(
        &mut self,
        c: &Collection,
        id: &str,
        now: &str,
        fields: &[(String, Value)],
    ) -> Result<(), StoreError>;
    /// Sets `version`, `updated_at` and the patched fields of a stored record.
    fn update(
        &mut self,
        c: &Collection,
        id: &str,
        version: i64,
        now: &str,
        patch: &[(String, Value)],
    ) -> Result<(), StoreError>;
    fn delete(&mut self, c: &Collection, id: &str) -> Result<(), StoreError>;
    /// Records of `rc` whose relation field `field` points at `id`.
    fn referrers(&mut self, rc: &Collection, field: &str, id: &str) -> Result<Vec<Record>, StoreError>;
    fn exists(&mut self, collection: &str, id: &str) -> Result<bool, StoreError>;
    /// Fields changed by the versions after `base`, or None when the log no longer covers them.
    fn changed_since(&mut self, collection: &str, id: &str, base: i64) -> Option<BTreeSet<String>>;
    /// Records one change event in the transaction (a backend whose log is filled elsewhere,
    /// e.g. by capture, does nothing).
    fn log(&mut self, e: &ChangeEvent) -> Result<(), StoreError>;
}

/// Applies one request inside its own savepoint. Events get sequence numbers from
/// `next_seq` on; on failure `next_seq` is left as it was and no event is returned.
pub fn apply_request<T: WriteTx>(
    tx: &mut T,
    schema: &Schema,
    next_seq: &mut u64,
    req: &mut WriteRequest,
) -> (Result<WriteResult, StoreError>, Vec<ChangeEvent>) {
    let mut a = Apply {
        tx,
        schema,
        next_seq,
        now: now_timestamp(),
        actor: req.actor.clone(),
        authorize: req.authorize.clone(),
        events: Vec::new(),
    };
    let r = a.request(req);
    let events = std::mem::take(&mut a.events);
    (r, events)
}

struct Apply<'a, T: WriteTx> {
    tx: &'a mut T,
    schema: &'a Schema,
    next_seq: &'a mut u64,
    /// The time stamped on every record and event of the request.
    now: String,
    actor: Option<String>,
    authorize: Option<Authorize>,
    events: Vec<ChangeEvent>,
}

fn as_map(fields: &[(String, Value)]) -> Map<String, Value> {
    fields.iter().cloned().collect()
}

fn coll<'s>(schema: &'s Schema, name: &str) -> Result<&'s Collection, StoreError> {
    schema.get(name).ok_or_else(|| StoreError::NoCollection(name.to_string()))
}

fn conflict(current: Record, fields: Vec<String>) -> StoreError {
    StoreError::Conflict { current: Box::new(current), fields }
}

impl<T: WriteTx> Apply<'_, T> {
    fn check(
        &self,
        collection: &str,
        action: Action,
        record: Option<&Record>,
        data: Option<&Map<String, Value>>,
    ) -> Result<(), StoreError> {
        match &self.authorize {
            None => Ok(()),
            Some(f) => f(&AccessCheck { collection, action, record, data }),
        }
    }

    fn request(&mut self, req: &mut WriteRequest) -> Result<WriteResult, StoreError> {
        let idem = req.idempotency.take();
        if let Some(i) = &idem {
            if let Some((fp, stored)) = self.tx.stored_response(&i.key)? {
                if fp != i.fingerprint {
                    return Err(StoreError::IdempotencyMismatch);
                }
                return Ok(WriteResult::Replayed(stored));
            }
        }
        let seq_before = *self.next_seq;
        self.tx.savepoint()?;
        let mut outcomes = Vec::with_capacity(req.ops.len());
        let mut failed = None;
        if let Err(error) = self.tx.begin_request(self.actor.as_deref()) {
            failed = Some(OpError { index: 0, error });
        }
        for (index, op) in std::mem::take(&mut req.ops).into_iter().enumerate() {
            if failed.is_some() {
                break;
            }
            match self.op(op) {
                Ok(o) => outcomes.push(o),
                Err(error) => failed = Some(OpError { index, error }),
            }
        }
        let result: OpsResult = match failed {
            None => {
                self.tx.release_savepoint()?;
                Ok(outcomes)
            }
            Some(e) => {
                self.tx.rollback_savepoint()?;
                *self.next_seq = seq_before;
                self.events.clear();
                Err(e)
            }
        };
        if let Some(Idempotency { key, fingerprint, render }) = idem {
            let resp = render(&result);
            // Server faults are not remembered: a retry should get a real attempt.
            if resp.status < 500 && resp.status != 429 {
                self.tx.store_response(&key, &fingerprint, &resp)?;
            }
        }
        Ok(WriteResult::Applied(result))
    }

    fn op(&mut self, op: WriteOp) -> Result<OpOutcome, StoreError> {
        match op {
            WriteOp::Create { collection, id, data } => self.create(&collection, id, &data),
            WriteOp::Update { collection, id, data, base_version } => {
                self.update(&collection, &id, &data, base_version)
            }
            WriteOp::Delete { collection, id, base_version } => {
                let c = coll(self.schema, &collection)?;
                let current = self.load(c, &id)?;
                self.check(&collection, Action::Delete, Some(&current), None)?;
                let tx = &mut *self.tx;
                match decide(c.conflict, current.version(), base_version, &[], || {
                    tx.changed_since(&collection, &id, base_version.unwrap_or(0))
                }) {
                    Decision::Apply => {}
                    Decision::Stale => return Err(conflict(current, vec![])),
                    Decision::Overlap(f) => return Err(conflict(current, f)),
                }
                let mut visiting = BTreeSet::new();
                self.delete_record(c, current.clone(), &mut visiting)?;
                Ok(OpOutcome::Deleted(current))
            }
        }
    }

    fn create(
        &mut self,
        collection: &str,
        id: Option<String>,
        data: &Map<String, Value>,
    ) -> Result<OpOutcome, StoreError> {
        let c = coll(self.schema, collection)?;
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
        if self.authorize.is_some() {
            let mut m = as_map(&fields);
            m.insert("id".into(), Value::String(id.clone()));
            self.check(collection, Action::Create, None, Some(&m))?;
        }
        self.check_relations(c, fields.iter())?;
        self.tx.insert(c, &id, &self.now, &fields)?;
        let rec = Record::new(&id, 1, &self.now, &self.now, fields);
        self.log(c, ChangeOp::Insert, &id, Some(rec.clone()), None, 1)?;
        Ok(OpOutcome::Created(rec))
    }

    fn update(
        &mut self,
        collection: &str,
        id: &str,
        data: &Map<String, Value>,
        base_version: Option<i64>,
    ) -> Result<OpOutcome, StoreError> {
        let c = coll(self.schema, collection)?;
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
        if self.authorize.is_some() {
            self.check(collection, Action::Update, Some(&current), Some(&as_map(&patch)))?;
        }
        let names: Vec<&str> = patch.iter().map(|(k, _)| k.as_str()).collect();
        let tx = &mut *self.tx;
        match decide(c.conflict, current.version(), base_version, &names, || {
            tx.changed_since(collection, id, base_version.unwrap_or(0))
        }) {
            Decision::Apply => {}
            Decision::Stale => return Err(conflict(current, vec![])),
            Decision::Overlap(f) => return Err(conflict(current, f)),
        }
        if patch.is_empty() {
            return Ok(OpOutcome::Updated(current));
        }
        self.check_relations(c, patch.iter())?;
        self.write_update(c, current, patch).map(OpOutcome::Updated)
    }

    /// Applies validated field values to a stored record: version + 1, one update event.
    fn write_update(
        &mut self,
        c: &Collection,
        current: Record,
        patch: Vec<(String, Value)>,
    ) -> Result<Record, StoreError> {
        let id = current.id().to_string();
        let version = current.version() + 1;
        self.tx.update(c, &id, version, &self.now, &patch)?;
        let mut new = current.clone();
        new.0.insert("version".into(), Value::from(version));
        new.0.insert("updated_at".into(), Value::String(self.now.clone()));
        for (k, v) in patch {
            new.0.insert(k, v);
        }
        self.log(c, ChangeOp::Update, &id, Some(new.clone()), Some(current), version)?;
        Ok(new)
    }

    /// Deletes a record after applying its referrers' `on_delete` rules.
    fn delete_record(
        &mut self,
        c: &Collection,
        rec: Record,
        visiting: &mut BTreeSet<(String, String)>,
    ) -> Result<(), StoreError> {
        let id = rec.id().to_string();
        if !visiting.insert((c.name.clone(), id.clone())) {
            return Ok(()); // already being deleted higher up a cascade cycle
        }
        let schema = self.schema;
        for (rc, f) in schema.referrers(&c.name) {
            let referrers: Vec<Record> = self
                .tx
                .referrers(rc, &f.name, &id)?
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
                        self.delete_record(rc, r, visiting)?;
                    }
                }
                OnDelete::SetNull => {
                    for r in referrers {
                        self.write_update(rc, r, vec![(f.name.clone(), Value::Null)])?;
                    }
                }
            }
        }
        self.tx.delete(c, &id)?;
        let version = rec.version();
        self.log(c, ChangeOp::Delete, &id, None, Some(rec), version)
    }

    fn check_relations<'v>(
        &mut self,
        c: &Collection,
        values: impl Iterator<Item = &'v (String, Value)>,
    ) -> Result<(), StoreError> {
        for (k, v) in values {
            let Some(f) = c.field(k) else { continue };
            let (FieldType::Relation, Some(target), Some(tid)) = (f.ty, &f.collection, v.as_str()) else {
                continue;
            };
            if self.schema.get(target).is_none() {
                return Err(StoreError::NoCollection(target.clone()));
            }
            if !self.tx.exists(target, tid)? {
                return Err(StoreError::MissingRelation {
                    field: f.name.clone(),
                    target: target.clone(),
                    target_id: tid.to_string(),
                });
            }
        }
        Ok(())
    }

    fn load(&mut self, c: &Collection, id: &str) -> Result<Record, StoreError> {
        self.tx
            .load(c, id)?
            .ok_or_else(|| StoreError::NotFound { collection: c.name.clone(), id: id.to_string() })
    }

    fn log(
        &mut self,
        c: &Collection,
        op: ChangeOp,
        id: &str,
        new: Option<Record>,
        old: Option<Record>,
        version: i64,
    ) -> Result<(), StoreError> {
        let e = ChangeEvent {
            seq: *self.next_seq,
            collection: c.name.clone(),
            op,
            id: id.to_string(),
            new,
            old,
            version,
            actor: self.actor.clone(),
            committed_at: self.now.clone(),
        };
        self.tx.log(&e)?;
        *self.next_seq += 1;
        self.events.push(e);
        Ok(())
    }
}

/// Fields changed by a record's log rows `(version, old JSON, new JSON)` after `base`, in
/// order; None when a row is missing or unreadable (the log no longer covers them).
pub fn changed_fields_since(
    base: i64,
    rows: impl Iterator<Item = Option<(i64, Option<String>, Option<String>)>>,
) -> Option<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for (expected, row) in (base + 1..).zip(rows) {
        let (version, old, new) = row?;
        if version != expected {
            return None;
        }
        let parse = |s: Option<String>| -> Option<Record> { serde_json::from_str(&s?).ok() };
        match (parse(old), parse(new)) {
            (Some(o), Some(n)) => out.extend(livebase_core::conflict::changed_fields(&o, &n)),
            _ => return None,
        }
    }
    Some(out)
}
