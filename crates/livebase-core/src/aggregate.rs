//! Aggregates over a collection: `count`, `sum`, `avg`, `min`, `max`, grouped by zero, one or
//! two fields — computed from rows, then kept current from changes.
//!
//! An [`AggregateState`] folds rows in ([`AggregateState::add`]) and out
//! ([`AggregateState::remove`]); a change is the removal of its old row and the addition of
//! its new one, so an update that moves a row between groups adjusts both. Per change, count,
//! sum and avg cost O(1); min and max keep an ordered multiset of each group's values, so they
//! stay exact when the current extreme is deleted, at O(log n) per change and one entry per
//! distinct value in memory.
//!
//! The semantics are SQL's: `count` counts rows; `sum`, `avg`, `min`, `max` skip nulls and are
//! null over no values; without grouping there is always one group (possibly count 0); with
//! grouping, a group exists while it has rows.

use crate::record::Record;
use crate::schema::{Collection, FieldType};
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// At most this many group fields.
pub const MAX_GROUP_FIELDS: usize = 2;
/// At most this many functions in one aggregate.
pub const MAX_FUNCTIONS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AggFn {
    Count,
    Sum(String),
    Avg(String),
    Min(String),
    Max(String),
}

impl AggFn {
    /// The name as written in requests and used as the key in answers: `sum(weight_kg)`.
    pub fn label(&self) -> String {
        match self {
            AggFn::Count => "count".into(),
            AggFn::Sum(f) => format!("sum({f})"),
            AggFn::Avg(f) => format!("avg({f})"),
            AggFn::Min(f) => format!("min({f})"),
            AggFn::Max(f) => format!("max({f})"),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            AggFn::Count => None,
            AggFn::Sum(f) | AggFn::Avg(f) | AggFn::Min(f) | AggFn::Max(f) => Some(f),
        }
    }
}

/// A refused aggregate: the message names the function or field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AggregateError {
    pub field: Option<String>,
    pub message: String,
}

fn err(field: Option<&str>, message: impl Into<String>) -> AggregateError {
    AggregateError { field: field.map(str::to_string), message: message.into() }
}

/// What to compute: group fields and functions, checked against a collection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateSpec {
    pub group: Vec<String>,
    pub fns: Vec<AggFn>,
    /// Field types of the functions' fields (integer sums stay exact integers).
    int_fields: Vec<bool>,
}

impl AggregateSpec {
    /// From the request forms: group fields, and functions as written (`count`, `sum(qty)`).
    pub fn new(group: &[String], fns: &[String], c: &Collection) -> Result<AggregateSpec, AggregateError> {
        if group.len() > MAX_GROUP_FIELDS {
            return Err(err(None, format!("group by at most {MAX_GROUP_FIELDS} fields")));
        }
        if fns.is_empty() {
            return Err(err(None, "name at least one function: count, sum(f), avg(f), min(f), max(f)"));
        }
        if fns.len() > MAX_FUNCTIONS {
            return Err(err(None, format!("at most {MAX_FUNCTIONS} functions")));
        }
        let ty = |f: &str| c.fields.iter().find(|x| x.name == f).map(|x| x.ty);
        let mut seen_group = Vec::new();
        for g in group {
            match ty(g) {
                None => {
                    return Err(err(Some(g), format!("cannot group by '{g}': no such field in '{}'", c.name)))
                }
                Some(FieldType::Json) => {
                    return Err(err(
                        Some(g),
                        format!("cannot group by '{g}': json fields have no group value"),
                    ))
                }
                Some(_) if seen_group.contains(g) => {
                    return Err(err(Some(g), format!("'{g}' is named twice in group")))
                }
                Some(_) => seen_group.push(g.clone()),
            }
        }
        let mut parsed = Vec::new();
        let mut int_fields = Vec::new();
        for f in fns {
            let f = f.trim();
            let func = if f == "count" || f == "count()" || f == "count(*)" {
                AggFn::Count
            } else {
                let (name, arg) = f.strip_suffix(')').and_then(|s| s.split_once('(')).ok_or_else(|| {
                    err(None, format!("'{f}' is not a function: use count, sum(f), avg(f), min(f), max(f)"))
                })?;
                let arg = arg.trim().to_string();
                let kind = ty(&arg).ok_or_else(|| {
                    err(Some(&arg), format!("{name}({arg}): no field '{arg}' in '{}'", c.name))
                })?;
                let numeric = matches!(kind, FieldType::Integer | FieldType::Number);
                let ordered =
                    numeric || matches!(kind, FieldType::Datetime | FieldType::Text | FieldType::Select);
                let (func, ok, need) = match name.trim() {
                    "sum" => (AggFn::Sum(arg.clone()), numeric, "an integer or number"),
                    "avg" => (AggFn::Avg(arg.clone()), numeric, "an integer or number"),
                    "min" => (AggFn::Min(arg.clone()), ordered, "a number, datetime or text"),
                    "max" => (AggFn::Max(arg.clone()), ordered, "a number, datetime or text"),
                    other => {
                        return Err(err(
                            None,
                            format!("unknown function '{other}': use count, sum, avg, min or max"),
                        ))
                    }
                };
                if !ok {
                    return Err(err(
                        Some(&arg),
                        format!(
                            "{}: '{arg}' is a {} field; {name} needs {need} field",
                            func.label(),
                            kind.as_str()
                        ),
                    ));
                }
                func
            };
            if parsed.contains(&func) {
                return Err(err(func.field(), format!("'{}' is named twice", func.label())));
            }
            int_fields.push(func.field().and_then(ty) == Some(FieldType::Integer));
            parsed.push(func);
        }
        Ok(AggregateSpec { group: group.to_vec(), fns: parsed, int_fields })
    }

    /// From the query-string forms: `group=status,region`, `fn=count,sum(qty)`.
    pub fn parse(group: &str, fns: &str, c: &Collection) -> Result<AggregateSpec, AggregateError> {
        let group: Vec<String> =
            group.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        let mut list = Vec::new();
        let mut depth = 0;
        let mut cur = String::new();
        for ch in fns.chars() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    list.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(ch);
        }
        list.push(cur);
        let list: Vec<String> =
            list.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        AggregateSpec::new(&group, &list, c)
    }

    /// A normalized form: equal for equal specs (shared live computations are keyed by it).
    pub fn key(&self) -> String {
        let fns: Vec<String> = self.fns.iter().map(AggFn::label).collect();
        format!("{}|{}", self.group.join(","), fns.join(","))
    }
}

/// An f64 or a string, ordered (numbers by value, text by bytes: canonical timestamps are
/// fixed width, so text order is time order).
#[derive(Debug, Clone, PartialEq)]
enum Ord2 {
    Num(f64),
    Text(String),
}

impl Eq for Ord2 {}

impl PartialOrd for Ord2 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ord2 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (Ord2::Num(a), Ord2::Num(b)) => a.total_cmp(b),
            (Ord2::Text(a), Ord2::Text(b)) => a.cmp(b),
            (Ord2::Num(_), Ord2::Text(_)) => std::cmp::Ordering::Less,
            (Ord2::Text(_), Ord2::Num(_)) => std::cmp::Ordering::Greater,
        }
    }
}

impl Ord2 {
    fn of(v: &Value) -> Option<Ord2> {
        match v {
            Value::Number(n) => n.as_f64().map(Ord2::Num),
            Value::String(s) => Some(Ord2::Text(s.clone())),
            _ => None,
        }
    }
}

/// The running value of one function in one group.
#[derive(Debug, Clone, PartialEq)]
enum Acc {
    Count,
    /// Non-null values seen, their sum (exact for integer fields).
    Sum {
        n: u64,
        int: i128,
        float: f64,
    },
    /// An ordered multiset of the non-null values: value → (how many, one original value).
    Ordered(BTreeMap<Ord2, (u64, Value)>),
}

#[derive(Debug, Clone, PartialEq)]
struct Group {
    values: Vec<Value>,
    count: u64,
    accs: Vec<Acc>,
}

/// What a change did to an aggregate: the groups whose values moved (current values), and
/// the groups that no longer exist (group fields only).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggregateDelta {
    pub changed: Vec<Map<String, Value>>,
    pub removed: Vec<Map<String, Value>>,
}

impl AggregateDelta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// An aggregate's current values (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateState {
    spec: Arc<AggregateSpec>,
    groups: BTreeMap<String, Group>,
}

impl AggregateState {
    pub fn new(spec: Arc<AggregateSpec>) -> AggregateState {
        AggregateState { spec, groups: BTreeMap::new() }
    }

    pub fn spec(&self) -> &Arc<AggregateSpec> {
        &self.spec
    }

    fn group_of(&self, r: &Record) -> (String, Vec<Value>) {
        let values: Vec<Value> =
            self.spec.group.iter().map(|g| r.get(g).cloned().unwrap_or(Value::Null)).collect();
        (serde_json::to_string(&values).unwrap_or_default(), values)
    }

    fn new_group(&self, values: Vec<Value>) -> Group {
        let accs = self
            .spec
            .fns
            .iter()
            .map(|f| match f {
                AggFn::Count => Acc::Count,
                AggFn::Sum(_) | AggFn::Avg(_) => Acc::Sum { n: 0, int: 0, float: 0.0 },
                AggFn::Min(_) | AggFn::Max(_) => Acc::Ordered(BTreeMap::new()),
            })
            .collect();
        Group { values, count: 0, accs }
    }

    /// Folds a row in; returns its group's key.
    pub fn add(&mut self, r: &Record) -> String {
        self.fold(r, true)
    }

    /// Folds a row out (it must have been added); returns its group's key.
    pub fn remove(&mut self, r: &Record) -> String {
        self.fold(r, false)
    }

    fn fold(&mut self, r: &Record, add: bool) -> String {
        let (key, values) = self.group_of(r);
        if !self.groups.contains_key(&key) {
            let g = self.new_group(values);
            self.groups.insert(key.clone(), g);
        }
        let spec = self.spec.clone();
        let Some(g) = self.groups.get_mut(&key) else { return key };
        if add {
            g.count += 1;
        } else {
            g.count = g.count.saturating_sub(1);
        }
        for ((f, acc), is_int) in spec.fns.iter().zip(g.accs.iter_mut()).zip(&spec.int_fields) {
            let Some(v) = f.field().and_then(|name| r.get(name)).filter(|v| !v.is_null()) else { continue };
            match acc {
                Acc::Count => {}
                Acc::Sum { n, int, float } => {
                    let sign = if add { 1 } else { -1 };
                    if *is_int {
                        if let Some(i) = v.as_i64() {
                            *int += sign as i128 * i as i128;
                        }
                    } else if let Some(x) = v.as_f64() {
                        *float += sign as f64 * x;
                    }
                    if add {
                        *n += 1;
                    } else {
                        *n = n.saturating_sub(1);
                    }
                }
                Acc::Ordered(set) => {
                    let Some(k) = Ord2::of(v) else { continue };
                    if add {
                        set.entry(k).or_insert_with(|| (0, v.clone())).0 += 1;
                    } else if let Some(e) = set.get_mut(&k) {
                        e.0 -= 1;
                        if e.0 == 0 {
                            set.remove(&k);
                        }
                    }
                }
            }
        }
        if g.count == 0 && !self.spec.group.is_empty() {
            self.groups.remove(&key);
        }
        key
    }

    /// Applies one change: `old` (the row before, if it was counted) out, `new` (the row
    /// after, if it counts now) in. Returns what moved.
    pub fn apply(&mut self, old: Option<&Record>, new: Option<&Record>) -> AggregateDelta {
        // The affected groups' values before, to report only what really moved.
        let mut before: Vec<(String, Option<Map<String, Value>>)> = Vec::new();
        for r in [old, new].into_iter().flatten() {
            let (k, _) = self.group_of(r);
            if !before.iter().any(|(b, _)| *b == k) {
                let v = self.groups.get(&k).map(|g| self.render(g));
                before.push((k, v));
            }
        }
        if let Some(o) = old {
            self.remove(o);
        }
        if let Some(n) = new {
            self.add(n);
        }
        let mut delta = AggregateDelta::default();
        for (k, was) in before {
            match self.groups.get(&k) {
                Some(g) => {
                    let now = self.render(g);
                    if was.as_ref() != Some(&now) {
                        delta.changed.push(now);
                    }
                }
                None if was.is_some() => delta.removed.push(self.group_fields(&k)),
                None => {}
            }
        }
        delta
    }

    fn group_fields(&self, key: &str) -> Map<String, Value> {
        let values: Vec<Value> = serde_json::from_str(key).unwrap_or_default();
        self.spec.group.iter().cloned().zip(values).collect()
    }

    fn render(&self, g: &Group) -> Map<String, Value> {
        let mut m: Map<String, Value> =
            self.spec.group.iter().cloned().zip(g.values.iter().cloned()).collect();
        for ((f, acc), is_int) in self.spec.fns.iter().zip(&g.accs).zip(&self.spec.int_fields) {
            let v = match (f, acc) {
                (AggFn::Count, _) => Value::from(g.count),
                (AggFn::Sum(_), Acc::Sum { n: 0, .. }) | (AggFn::Avg(_), Acc::Sum { n: 0, .. }) => {
                    Value::Null
                }
                (AggFn::Sum(_), Acc::Sum { int, float, .. }) => {
                    if *is_int {
                        i64::try_from(*int).map(Value::from).unwrap_or_else(|_| float_value(*int as f64))
                    } else {
                        float_value(*float)
                    }
                }
                (AggFn::Avg(_), Acc::Sum { n, int, float }) => {
                    let total = if *is_int { *int as f64 } else { *float };
                    float_value(total / *n as f64)
                }
                (AggFn::Min(_), Acc::Ordered(set)) => {
                    set.first_key_value().map(|(_, (_, v))| v.clone()).unwrap_or(Value::Null)
                }
                (AggFn::Max(_), Acc::Ordered(set)) => {
                    set.last_key_value().map(|(_, (_, v))| v.clone()).unwrap_or(Value::Null)
                }
                _ => Value::Null,
            };
            m.insert(f.label(), v);
        }
        m
    }

    /// Every group's current values, in group order. Without grouping, exactly one group.
    pub fn groups(&self) -> Vec<Map<String, Value>> {
        if self.spec.group.is_empty() && self.groups.is_empty() {
            return vec![self.render(&self.new_group(Vec::new()))];
        }
        self.groups.values().map(|g| self.render(g)).collect()
    }
}

fn float_value(x: f64) -> Value {
    Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn collection() -> Collection {
        serde_json::from_value(json!({"name": "s", "fields": [
            {"name": "status", "type": "select", "values": ["late", "ok"]},
            {"name": "kg", "type": "number"}, {"name": "n", "type": "integer"},
            {"name": "eta", "type": "datetime"}, {"name": "meta", "type": "json"}]}))
        .unwrap()
    }

    fn rec(id: &str, status: &str, kg: f64, eta: &str) -> Record {
        Record::new(
            id,
            1,
            "t",
            "t",
            [
                ("status".to_string(), json!(status)),
                ("kg".to_string(), json!(kg)),
                ("n".to_string(), json!(2)),
                ("eta".to_string(), json!(eta)),
            ],
        )
    }

    #[test]
    fn functions_are_checked_against_field_types_and_name_the_field() {
        let c = collection();
        assert!(AggregateSpec::parse("status", "count,sum(kg),avg(n),min(eta),max(eta)", &c).is_ok());
        let e = AggregateSpec::parse("", "sum(eta)", &c).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("eta"));
        assert!(e.message.contains("datetime"), "{e}");
        assert_eq!(AggregateSpec::parse("", "avg(nope)", &c).unwrap_err().field.as_deref(), Some("nope"));
        assert_eq!(AggregateSpec::parse("meta", "count", &c).unwrap_err().field.as_deref(), Some("meta"));
        assert!(AggregateSpec::parse("status,kg,n", "count", &c).is_err());
        assert!(AggregateSpec::parse("", "median(kg)", &c).is_err());
        assert!(AggregateSpec::parse("", "", &c).is_err());
    }

    #[test]
    fn an_update_between_groups_adjusts_both_and_min_survives_deleting_the_extreme() {
        let c = collection();
        let spec = Arc::new(AggregateSpec::parse("status", "count,sum(kg),min(eta)", &c).unwrap());
        let mut s = AggregateState::new(spec);
        let a = rec("a", "late", 1.5, "2026-01-01T00:00:00.000000Z");
        let b = rec("b", "late", 2.0, "2026-01-02T00:00:00.000000Z");
        s.add(&a);
        s.add(&b);
        assert_eq!(s.groups(), vec![json!({"status": "late", "count": 2, "sum(kg)": 3.5, "min(eta)": "2026-01-01T00:00:00.000000Z"}).as_object().unwrap().clone()]);
        let a2 = rec("a", "ok", 1.5, "2026-01-01T00:00:00.000000Z");
        let d = s.apply(Some(&a), Some(&a2));
        assert_eq!(d.changed.len(), 2);
        assert_eq!(d.changed[0]["min(eta)"], "2026-01-02T00:00:00.000000Z");
        let d = s.apply(Some(&a2), None);
        assert_eq!(d.removed, vec![json!({"status": "ok"}).as_object().unwrap().clone()]);
    }

    #[test]
    fn without_grouping_there_is_always_one_group() {
        let spec = Arc::new(AggregateSpec::parse("", "count,sum(kg)", &collection()).unwrap());
        let s = AggregateState::new(spec);
        assert_eq!(s.groups(), vec![json!({"count": 0, "sum(kg)": null}).as_object().unwrap().clone()]);
    }
}
