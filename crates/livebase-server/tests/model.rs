//! Model-based testing of the REST API: random sequences of creates, updates, deletes,
//! batches and filtered lists agree with an in-memory model of the documented rules, and the
//! change log replays to exactly the state the model predicts.
//!
//! A failure prints the seed; `MODEL_SEED=<seed>` replays the same cases.

mod common;

use common::{items_collection, TestServer};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

/// How often each kind of outcome came up over all cases (printed with `--nocapture`).
static COVERAGE: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

fn covered(what: String) {
    *COVERAGE.lock().unwrap_or_else(|e| e.into_inner()).entry(what).or_default() += 1;
}

fn kind(w: &Resolved) -> &'static str {
    match w {
        Resolved::Create { .. } => "create",
        Resolved::Update { .. } => "update",
        Resolved::Delete { .. } => "delete",
    }
}

/// The data fields of `items_collection()`, in schema order.
const FIELDS: [&str; 6] = ["title", "qty", "price", "status", "sku", "done"];

// ---------- generated operations ----------

/// Which record an update or delete names.
#[derive(Debug, Clone)]
enum Target {
    /// The n-th live record (mod the count), or a missing id when there is none.
    Live(usize),
    /// `c0`..`c2` (client ids that may exist, or may have been deleted) or `missing-N`.
    Named(u8),
}

/// The base version an update or delete sends.
#[derive(Debug, Clone, Copy)]
enum Base {
    None,
    Current,
    Stale,
}

/// How a single (non-batch) op sends its base version.
#[derive(Debug, Clone, Copy)]
enum BaseVia {
    IfMatch,
    IfMatchQuoted,
    IfMatchWeak,
    /// `expected_version` in the PATCH body (a DELETE falls back to `If-Match`).
    Body,
}

#[derive(Debug, Clone)]
enum IdChoice {
    Server,
    Client(u8),
    /// The id of a live record: a duplicate.
    Live(usize),
    Invalid,
}

#[derive(Debug, Clone)]
enum Write {
    Create { id: IdChoice, data: Map<String, Value> },
    Update { target: Target, patch: Map<String, Value>, base: Base },
    Delete { target: Target, base: Base },
}

#[derive(Debug, Clone)]
enum Filter {
    QtyGt(i64),
    StatusOpen,
    QtyLtOrLate(i64),
    TitleLikeA,
    DoneIsTrue,
    SkuIsNull,
}

#[derive(Debug, Clone)]
enum Op {
    Single(Write, BaseVia),
    Batch(Vec<Write>),
    List(Filter),
}

fn values(v: Vec<Value>) -> BoxedStrategy<Value> {
    proptest::sample::select(v).boxed()
}

/// A field value: absent, valid, or (rarely) invalid.
fn field(valid: BoxedStrategy<Value>, invalid: Vec<Value>, absent: u32) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        absent => Just(None),
        30 => valid.prop_map(Some),
        1 => values(invalid).prop_map(Some),
    ]
    .boxed()
}

/// Record data. `title_absent` / `absent` weigh leaving a field out against 30 for a valid
/// value and 1 for an invalid one.
fn data(title_absent: u32, absent: u32) -> BoxedStrategy<Map<String, Value>> {
    (
        field(
            "[abAB ]{1,6}".prop_map(Value::String).boxed(),
            vec![Value::Null, json!("x".repeat(101)), json!(5)],
            title_absent,
        ),
        field(
            prop_oneof![5 => (0i64..20).prop_map(Value::from), 1 => Just(Value::Null)].boxed(),
            vec![json!(-1), json!(1.5), json!("5")],
            absent,
        ),
        field(
            values(vec![json!(1.5), json!(2), json!(-0.25), json!(0.1), Value::Null]),
            vec![json!("cheap"), json!(true)],
            absent,
        ),
        field(
            values(vec![json!("open"), json!("late"), json!("done"), Value::Null]),
            vec![json!("lost"), json!(1)],
            absent,
        ),
        field(
            values(vec![json!("S0"), json!("S1"), json!("S2"), json!("S3"), Value::Null]),
            vec![json!(7)],
            absent * 3,
        ),
        field(values(vec![json!(true), json!(false), Value::Null]), vec![json!("yes")], absent),
        proptest::bool::weighted(0.03),
    )
        .prop_map(|(t, q, p, s, k, d, extra)| {
            let mut m = Map::new();
            for (name, v) in FIELDS.iter().zip([t, q, p, s, k, d]) {
                if let Some(v) = v {
                    m.insert(name.to_string(), v);
                }
            }
            if extra {
                m.insert("extra".into(), json!(1));
            }
            m
        })
        .boxed()
}

fn target() -> BoxedStrategy<Target> {
    prop_oneof![
        7 => any::<usize>().prop_map(Target::Live),
        1 => (0u8..5).prop_map(Target::Named),
    ]
    .boxed()
}

fn base() -> BoxedStrategy<Base> {
    prop_oneof![3 => Just(Base::None), 2 => Just(Base::Current), 1 => Just(Base::Stale)].boxed()
}

fn write() -> BoxedStrategy<Write> {
    let id = prop_oneof![
        5 => Just(IdChoice::Server),
        3 => (0u8..10).prop_map(IdChoice::Client),
        1 => any::<usize>().prop_map(IdChoice::Live),
        1 => Just(IdChoice::Invalid),
    ];
    prop_oneof![
        5 => (id, data(1, 8)).prop_map(|(id, data)| Write::Create { id, data }),
        4 => (target(), data(40, 40), base())
            .prop_map(|(target, patch, base)| Write::Update { target, patch, base }),
        2 => (target(), base()).prop_map(|(target, base)| Write::Delete { target, base }),
    ]
    .boxed()
}

fn op() -> BoxedStrategy<Op> {
    let via = prop_oneof![
        Just(BaseVia::IfMatch),
        Just(BaseVia::IfMatchQuoted),
        Just(BaseVia::IfMatchWeak),
        Just(BaseVia::Body),
    ];
    let filter = prop_oneof![
        (0i64..20).prop_map(Filter::QtyGt),
        Just(Filter::StatusOpen),
        (0i64..20).prop_map(Filter::QtyLtOrLate),
        Just(Filter::TitleLikeA),
        Just(Filter::DoneIsTrue),
        Just(Filter::SkuIsNull),
    ];
    prop_oneof![
        8 => (write(), via).prop_map(|(w, via)| Op::Single(w, via)),
        2 => vec(write(), 1..=4).prop_map(Op::Batch),
        2 => filter.prop_map(Op::List),
    ]
    .boxed()
}

// ---------- the model ----------

/// A write with its ids and base version chosen against the current state.
#[derive(Debug, Clone)]
enum Resolved {
    Create { id: Option<String>, data: Map<String, Value> },
    Update { id: String, patch: Map<String, Value>, base: Option<i64> },
    Delete { id: String, base: Option<i64> },
}

#[derive(Debug, Clone)]
struct Rec {
    version: i64,
    /// Learned from the server's first answer about the record.
    created_at: Option<String>,
    updated_at: Option<String>,
    fields: Map<String, Value>,
}

/// A refusal the model predicts: status, acceptable error codes, and (for a version
/// conflict) the current record.
#[derive(Debug, Clone)]
struct Fail {
    status: u16,
    codes: Vec<&'static str>,
    current: Option<Value>,
}

fn fail(status: u16, codes: &[&'static str]) -> Fail {
    Fail { status, codes: codes.to_vec(), current: None }
}

/// A mutation the model predicts succeeds.
#[derive(Debug, Clone)]
struct Expected {
    /// `create`, `update` or `delete`, as batch results name them.
    op: &'static str,
    id: String,
    /// The returned record without timestamps.
    record: Value,
    /// The timestamps the record had before (none for a create).
    before: Option<(Option<String>, Option<String>)>,
    /// Whether the version went up (a new `updated_at`).
    bumped: bool,
}

#[derive(Debug, Clone, Default)]
struct Model {
    records: BTreeMap<String, Rec>,
    /// One (op, id, version) per committed mutation, in commit order.
    events: Vec<(String, String, i64)>,
}

/// Placeholder ids for server-generated ids while predicting; never targeted.
const PLACEHOLDER: char = '~';

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether a (present) value is acceptable for a field; unknown fields never are.
fn valid_value(field: &str, v: &Value) -> bool {
    match field {
        "title" => v.as_str().is_some_and(|s| s.chars().count() <= 100),
        "qty" => v.is_null() || v.as_i64().is_some_and(|n| n >= 0),
        "price" => v.is_null() || v.is_number(),
        "status" => v.is_null() || matches!(v.as_str(), Some("open" | "late" | "done")),
        "sku" => v.is_null() || v.is_string(),
        "done" => v.is_null() || v.is_boolean(),
        _ => false,
    }
}

/// The model keeps numbers as they were sent (`2`); the server answers with the canonical
/// float form of a `number` field (`2.0`) everywhere. Compare by value.
fn normalize(mut rec: Value) -> Value {
    if let Some(p) = rec.get("price").and_then(Value::as_f64) {
        rec["price"] = Value::from(p);
    }
    rec
}

fn without_timestamps(rec: &Value) -> Value {
    let mut r = rec.clone();
    if let Some(m) = r.as_object_mut() {
        m.remove("created_at");
        m.remove("updated_at");
    }
    normalize(r)
}

impl Model {
    fn json(&self, id: &str, r: &Rec) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(id));
        m.insert("version".into(), json!(r.version));
        m.extend(r.fields.clone());
        normalize(Value::Object(m))
    }

    fn live_id(&self, k: usize) -> Option<String> {
        let ids: Vec<&String> = self.records.keys().filter(|id| !id.starts_with(PLACEHOLDER)).collect();
        (!ids.is_empty()).then(|| ids[k % ids.len()].clone())
    }

    fn resolve(&self, w: &Write) -> Resolved {
        let target = |t: &Target| match t {
            Target::Live(k) => self.live_id(*k).unwrap_or_else(|| "missing-0".into()),
            Target::Named(n) if *n < 3 => format!("c{n}"),
            Target::Named(n) => format!("missing-{n}"),
        };
        let base = |id: &str, b: Base| {
            let v = self.records.get(id).map_or(1, |r| r.version);
            match b {
                Base::None => None,
                Base::Current => Some(v),
                Base::Stale if v > 1 => Some(v - 1),
                Base::Stale => Some(v + 1),
            }
        };
        match w {
            Write::Create { id, data } => Resolved::Create {
                id: match id {
                    IdChoice::Server => None,
                    IdChoice::Client(n) => Some(format!("c{n}")),
                    IdChoice::Live(k) => Some(self.live_id(*k).unwrap_or_else(|| "c0".into())),
                    IdChoice::Invalid => Some("bad id!".into()),
                },
                data: data.clone(),
            },
            Write::Update { target: t, patch, base: b } => {
                let id = target(t);
                Resolved::Update { base: base(&id, *b), id, patch: patch.clone() }
            }
            Write::Delete { target: t, base: b } => {
                let id = target(t);
                Resolved::Delete { base: base(&id, *b), id }
            }
        }
    }

    fn conflict(&self, id: &str, r: &Rec) -> Fail {
        Fail { current: Some(self.json(id, r)), ..fail(409, &["version_conflict"]) }
    }

    /// Applies one write by the server's rules (conflict strategy `reject`). `generated` is
    /// the id a create without one gets.
    fn apply(&mut self, w: &Resolved, generated: &str) -> Result<Expected, Fail> {
        match w {
            Resolved::Create { id, data } => {
                if id.as_deref().is_some_and(|id| !valid_id(id)) {
                    return Err(fail(422, &["validation_failed"]));
                }
                let title_given = data.get("title").is_some_and(|t| !t.is_null());
                if !title_given || !data.iter().all(|(k, v)| valid_value(k, v)) {
                    return Err(fail(422, &["validation_failed"]));
                }
                let id = id.clone().unwrap_or_else(|| generated.to_string());
                let fields: Map<String, Value> = FIELDS
                    .iter()
                    .map(|f| (f.to_string(), data.get(*f).cloned().unwrap_or(Value::Null)))
                    .collect();
                let dup_id = self.records.contains_key(&id);
                let sku = &fields["sku"];
                let dup_sku = !sku.is_null() && self.records.values().any(|r| &r.fields["sku"] == sku);
                match (dup_id, dup_sku) {
                    (true, true) => return Err(fail(409, &["already_exists", "unique_violation"])),
                    (true, false) => return Err(fail(409, &["already_exists"])),
                    (false, true) => return Err(fail(409, &["unique_violation"])),
                    (false, false) => {}
                }
                let rec = Rec { version: 1, created_at: None, updated_at: None, fields };
                let record = self.json(&id, &rec);
                self.records.insert(id.clone(), rec);
                self.events.push(("insert".into(), id.clone(), 1));
                Ok(Expected { op: "create", id, record, before: None, bumped: true })
            }
            Resolved::Update { id, patch, base } => {
                // Validation comes first, then existence, then the version check.
                if !patch.iter().all(|(k, v)| valid_value(k, v)) {
                    return Err(fail(422, &["validation_failed"]));
                }
                let Some(cur) = self.records.get(id) else {
                    return Err(fail(404, &["not_found"]));
                };
                if base.is_some_and(|b| b != cur.version) {
                    return Err(self.conflict(id, cur));
                }
                let before = Some((cur.created_at.clone(), cur.updated_at.clone()));
                if patch.is_empty() {
                    // An empty patch changes nothing: same record, same version, no event.
                    return Ok(Expected {
                        op: "update",
                        id: id.clone(),
                        record: self.json(id, cur),
                        before,
                        bumped: false,
                    });
                }
                if let Some(sku) = patch.get("sku").filter(|s| !s.is_null()) {
                    if self.records.iter().any(|(other, r)| other != id && &r.fields["sku"] == sku) {
                        return Err(fail(409, &["unique_violation"]));
                    }
                }
                let mut rec = cur.clone();
                rec.version += 1;
                rec.fields.extend(patch.clone());
                let record = self.json(id, &rec);
                self.events.push(("update".into(), id.clone(), rec.version));
                self.records.insert(id.clone(), rec);
                Ok(Expected { op: "update", id: id.clone(), record, before, bumped: true })
            }
            Resolved::Delete { id, base } => {
                let Some(cur) = self.records.get(id) else {
                    return Err(fail(404, &["not_found"]));
                };
                if base.is_some_and(|b| b != cur.version) {
                    return Err(self.conflict(id, cur));
                }
                let record = self.json(id, cur);
                let before = Some((cur.created_at.clone(), cur.updated_at.clone()));
                self.events.push(("delete".into(), id.clone(), cur.version));
                self.records.remove(id);
                Ok(Expected { op: "delete", id: id.clone(), record, before, bumped: false })
            }
        }
    }

    fn matches(&self, f: &Filter, r: &Rec) -> bool {
        let qty = r.fields["qty"].as_i64();
        let status = r.fields["status"].as_str();
        match f {
            Filter::QtyGt(n) => qty.is_some_and(|q| q > *n),
            Filter::StatusOpen => status == Some("open"),
            Filter::QtyLtOrLate(n) => qty.is_some_and(|q| q < *n) || status == Some("late"),
            Filter::TitleLikeA => r.fields["title"].as_str().is_some_and(|t| t.contains('a')),
            Filter::DoneIsTrue => r.fields["done"] == json!(true),
            Filter::SkuIsNull => r.fields["sku"].is_null(),
        }
    }
}

fn filter_query(f: &Filter) -> String {
    match f {
        Filter::QtyGt(n) => format!("qty=gt.{n}"),
        Filter::StatusOpen => "status=eq.open".into(),
        Filter::QtyLtOrLate(n) => format!("or=(qty.lt.{n},status.eq.late)"),
        Filter::TitleLikeA => "title=like.*a*".into(),
        Filter::DoneIsTrue => "done=is.true".into(),
        Filter::SkuIsNull => "sku=is.null".into(),
    }
}

// ---------- running a case ----------

/// Checks a record the server returned against the model's expectation, and teaches the
/// model the record's timestamps.
fn check_record(model: &mut Model, exp: &Expected, got: &Value, ctx: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(&without_timestamps(got), &exp.record, "{}", ctx);
    let ts = |k: &str| got[k].as_str().map(str::to_string);
    let (created, updated) = (ts("created_at"), ts("updated_at"));
    prop_assert!(created.as_deref().is_some_and(|t| t.ends_with('Z')), "{}: created_at {:?}", ctx, created);
    match &exp.before {
        None => prop_assert_eq!(&created, &updated, "{}: a new record", ctx),
        Some((c, u)) => {
            prop_assert_eq!(&created, c, "{}: created_at never changes", ctx);
            if exp.bumped {
                prop_assert!(updated >= *u, "{}: updated_at {:?} < {:?}", ctx, updated, u);
            } else {
                prop_assert_eq!(&updated, u, "{}: nothing changed", ctx);
            }
        }
    }
    if let Some(r) = model.records.get_mut(&exp.id) {
        r.created_at = created;
        r.updated_at = updated;
    }
    Ok(())
}

fn check_failure(
    f: &Fail,
    status: StatusCode,
    body: &Value,
    index: Option<usize>,
    ctx: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(status.as_u16(), f.status, "{}: {}", ctx, body);
    let code = body["error"]["code"].as_str().unwrap_or_default();
    prop_assert!(f.codes.contains(&code), "{}: code {} not in {:?}", ctx, code, f.codes);
    match index {
        Some(i) => prop_assert_eq!(&body["error"]["details"]["index"], &json!(i), "{}", ctx),
        None => {
            prop_assert!(body["error"]["details"]["index"].is_null(), "{}: a single op names no index", ctx)
        }
    }
    if let Some(cur) = &f.current {
        prop_assert_eq!(
            &without_timestamps(&body["error"]["details"]["current"]),
            cur,
            "{}: the conflict carries the current record",
            ctx
        );
    }
    Ok(())
}

/// Predicts a request of `writes` (resolving each against the state the previous ones left):
/// the resolved writes, and either success or the failing index and its refusal.
fn predict(model: &Model, writes: &[Write]) -> (Vec<Resolved>, Result<(), (usize, Fail)>) {
    let mut m = model.clone();
    let mut resolved = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        let r = m.resolve(w);
        let outcome = m.apply(&r, &format!("{PLACEHOLDER}gen{i}"));
        resolved.push(r);
        if let Err(f) = outcome {
            return (resolved, Err((i, f)));
        }
    }
    (resolved, Ok(()))
}

async fn single(t: &TestServer, w: &Resolved, via: BaseVia) -> (StatusCode, Value) {
    let records = "/api/collections/items/records";
    let if_match = |v: i64| match via {
        BaseVia::IfMatch | BaseVia::Body => v.to_string(),
        BaseVia::IfMatchQuoted => format!("\"{v}\""),
        BaseVia::IfMatchWeak => format!("W/\"{v}\""),
    };
    match w {
        Resolved::Create { id, data } => {
            let mut body = data.clone();
            if let Some(id) = id {
                body.insert("id".into(), json!(id));
            }
            t.post(records, Value::Object(body)).await
        }
        Resolved::Update { id, patch, base } => {
            let path = format!("{records}/{id}");
            let mut body = patch.clone();
            match (base, via) {
                (None, _) => t.patch(&path, Value::Object(body)).await,
                (Some(v), BaseVia::Body) => {
                    body.insert("expected_version".into(), json!(v));
                    t.patch(&path, Value::Object(body)).await
                }
                (Some(v), _) => {
                    let h = if_match(*v);
                    t.req(Method::PATCH, &path, Some(Value::Object(body)), &[("if-match", &h)]).await
                }
            }
        }
        Resolved::Delete { id, base } => {
            let path = format!("{records}/{id}");
            match base {
                None => t.delete(&path).await,
                Some(v) => {
                    let h = if_match(*v);
                    t.req(Method::DELETE, &path, None, &[("if-match", &h)]).await
                }
            }
        }
    }
}

fn batch_body(ws: &[Resolved]) -> Value {
    let ops: Vec<Value> = ws
        .iter()
        .map(|w| match w {
            Resolved::Create { id, data } => {
                let mut o = json!({"op": "create", "data": data});
                if let Some(id) = id {
                    o["id"] = json!(id);
                }
                o
            }
            Resolved::Update { id, patch, base } => {
                let mut o = json!({"op": "update", "id": id, "data": patch});
                if let Some(v) = base {
                    o["if_version"] = json!(v);
                }
                o
            }
            Resolved::Delete { id, base } => {
                let mut o = json!({"op": "delete", "id": id});
                if let Some(v) = base {
                    o["if_version"] = json!(v);
                }
                o
            }
        })
        .collect();
    json!({ "ops": ops })
}

/// Checks a server-generated id and returns it (or the client's own, or nothing for
/// updates and deletes).
fn generated_id(model: &Model, w: &Resolved, got: &Value, ctx: &str) -> Result<String, TestCaseError> {
    if let Resolved::Create { id: None, .. } = w {
        let id = got["id"].as_str().unwrap_or_default().to_string();
        prop_assert_eq!(id.len(), 26, "{}: a generated id: {}", ctx, got);
        prop_assert!(!model.records.contains_key(&id), "{}: fresh id {}", ctx, id);
        return Ok(id);
    }
    Ok(String::new())
}

async fn run_ops(t: &TestServer, ops: &[Op]) -> Result<Model, TestCaseError> {
    let mut model = Model::default();
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::Single(w, via) => {
                let (resolved, predicted) = predict(&model, std::slice::from_ref(w));
                let r = &resolved[0];
                let ctx = format!("op {n}: {r:?} via {via:?}");
                let (status, body) = single(t, r, *via).await;
                match predicted {
                    Err((_, f)) => {
                        covered(format!("{} refused: {} {}", kind(r), f.status, f.codes.join("|")));
                        check_failure(&f, status, &body, None, &ctx)?
                    }
                    Ok(()) => {
                        let want = if matches!(r, Resolved::Create { .. }) {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        };
                        prop_assert_eq!(status, want, "{}: {}", ctx, body);
                        let gen = generated_id(&model, r, &body, &ctx)?;
                        let exp = model
                            .apply(r, &gen)
                            .map_err(|f| TestCaseError::fail(format!("{ctx}: replay {f:?}")))?;
                        check_record(&mut model, &exp, &body, &ctx)?;
                        covered(format!(
                            "{} applied{}",
                            exp.op,
                            if exp.op == "update" && !exp.bumped { " (empty patch)" } else { "" }
                        ));
                    }
                }
            }
            Op::Batch(ws) => {
                let (resolved, predicted) = predict(&model, ws);
                let ctx = format!("op {n}: batch {resolved:?}");
                let (status, body) = t.post("/api/collections/items/batch", batch_body(&resolved)).await;
                match predicted {
                    Err((i, f)) => {
                        covered(format!("batch of {} refused: {} at op {i}", ws.len(), f.status));
                        check_failure(&f, status, &body, Some(i), &ctx)?
                    }
                    Ok(()) => {
                        prop_assert_eq!(status, StatusCode::OK, "{}: {}", ctx, body);
                        let results = body["results"].as_array().cloned().unwrap_or_default();
                        prop_assert_eq!(results.len(), resolved.len(), "{}: {}", ctx, body);
                        for (i, (r, res)) in resolved.iter().zip(&results).enumerate() {
                            let ctx = format!("{ctx} [{i}]");
                            let got = &res["record"];
                            let gen = generated_id(&model, r, got, &ctx)?;
                            let exp = model
                                .apply(r, &gen)
                                .map_err(|f| TestCaseError::fail(format!("{ctx}: replay {f:?}")))?;
                            prop_assert_eq!(&res["op"], &json!(exp.op), "{}", ctx);
                            check_record(&mut model, &exp, got, &ctx)?;
                        }
                        covered(format!("batch of {} applied", resolved.len()));
                    }
                }
            }
            Op::List(f) => {
                let q = filter_query(f);
                let got = t.list("items", &format!("{q}&limit=1000")).await;
                let want: Vec<Value> = model
                    .records
                    .iter()
                    .filter(|(_, r)| model.matches(f, r))
                    .map(|(id, r)| model.json(id, r))
                    .collect();
                let got: Vec<Value> = got.iter().map(without_timestamps).collect();
                covered(format!("list {}", if want.is_empty() { "empty" } else { "non-empty" }));
                prop_assert_eq!(got, want, "op {}: list ?{}", n, q);
            }
        }
    }
    Ok(model)
}

/// The final state: the full list, each record by id, and the change log.
async fn check_final(t: &TestServer, model: &Model) -> Result<(), TestCaseError> {
    let listed = t.list("items", "limit=1000").await;
    let want: Vec<Value> = model.records.iter().map(|(id, r)| model.json(id, r)).collect();
    let got: Vec<Value> = listed.iter().map(without_timestamps).collect();
    prop_assert_eq!(&got, &want, "final list");
    for rec in &listed {
        let id = rec["id"].as_str().unwrap_or_default();
        let r = t
            .http
            .get(format!("{}/api/collections/items/records/{id}", t.url))
            .bearer_auth(&t.admin_key)
            .send()
            .await
            .expect("get record");
        prop_assert_eq!(r.status(), StatusCode::OK);
        let etag = r.headers().get("etag").map(|v| v.to_str().unwrap_or_default().to_string());
        prop_assert_eq!(etag, Some(format!("\"{}\"", rec["version"])), "ETag of {}", id);
        let got: Value = r.json().await.expect("record body");
        prop_assert_eq!(&normalize(got), &normalize(rec.clone()), "GET {} agrees with the list", id);
    }

    let events = t.changes(0).await;
    let logged: Vec<(String, String, i64)> = events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap_or_default().to_string(),
                e["id"].as_str().unwrap_or_default().to_string(),
                e["version"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    prop_assert_eq!(&logged, &model.events, "one event per committed mutation, in order");
    let mut replayed: BTreeMap<String, Value> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        prop_assert_eq!(&e["seq"], &json!(i + 1), "gap-free from 1");
        prop_assert_eq!(&e["collection"], &json!("items"));
        prop_assert_eq!(&e["actor"], &json!("admin"));
        let id = e["id"].as_str().unwrap_or_default().to_string();
        if e["op"] == "delete" {
            prop_assert!(e["new"].is_null() && e["old"]["id"] == json!(id), "delete event {}", e);
            replayed.remove(&id);
        } else {
            prop_assert_eq!(&e["new"]["version"], &e["version"], "event {}", e);
            replayed.insert(id, normalize(e["new"].clone()));
        }
    }
    let stored: BTreeMap<String, Value> = listed
        .iter()
        .map(|r| (r["id"].as_str().unwrap_or_default().to_string(), normalize(r.clone())))
        .collect();
    prop_assert_eq!(replayed, stored, "the log replays to the stored records");
    Ok(())
}

async fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut t = TestServer::start().await;
    t.create_collection(items_collection()).await;
    let checks = async {
        let model = run_ops(&t, &ops).await?;
        check_final(&t, &model).await
    };
    let r = match tokio::time::timeout(std::time::Duration::from_secs(60), checks).await {
        Ok(r) => r,
        Err(_) => Err(TestCaseError::fail("the case took over 60 s")),
    };
    if let Some(s) = t.server.take() {
        s.shutdown().await;
    }
    r
}

#[test]
fn random_op_sequences_agree_with_a_reference_model_and_the_change_log() {
    let seed: u64 = match std::env::var("MODEL_SEED") {
        Ok(s) => s.parse().expect("MODEL_SEED is a u64"),
        Err(_) => std::collections::hash_map::RandomState::new().hash_one(0u8),
    };
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        max_shrink_iters: 300,
        max_shrink_time: 120_000,
        rng_seed: RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&vec(op(), 20..=60), |ops| rt.block_on(run_case(ops))) {
        panic!("model disagreement (replay with MODEL_SEED={seed}): {e}");
    }
    eprintln!("MODEL_SEED={seed}; outcomes over all cases:");
    for (what, n) in COVERAGE.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        eprintln!("  {n:5}  {what}");
    }
}
