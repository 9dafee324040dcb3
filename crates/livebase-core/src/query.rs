//! List queries: the REST list endpoint's query string, parsed.
//!
//! Reserved keys: `select` (comma list of fields), `order` (`qty.desc,title`, modifiers
//! `.asc`, `.desc`, `.nullsfirst`, `.nullslast`), `limit`, `offset`, `cursor` and
//! `count=exact`. Every other key is a filter pair (see [`crate::filter`]).
//!
//! Sorting follows PostgreSQL: ascending by default, nulls last when ascending and first when
//! descending, and the record id as the final tiebreak so every order is total.

use crate::filter::{Filter, FilterError};
use crate::record::Record;
use crate::schema::{Collection, FieldType, SYSTEM_FIELDS};
use serde_json::Value;
use std::cmp::Ordering;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Query keys that are not filter pairs.
pub const RESERVED_KEYS: [&str; 6] = ["select", "order", "limit", "offset", "cursor", "count"];

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    pub order: Vec<OrderBy>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
    /// `None` means every field.
    pub select: Option<Vec<String>>,
    pub cursor: Option<String>,
    pub count: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBy {
    pub field: String,
    pub descending: bool,
    pub nulls_first: bool,
}

impl OrderBy {
    /// Ascending, nulls last.
    pub fn asc(field: &str) -> OrderBy {
        OrderBy { field: field.to_string(), descending: false, nulls_first: false }
    }

    /// Descending, nulls first.
    pub fn desc(field: &str) -> OrderBy {
        OrderBy { field: field.to_string(), descending: true, nulls_first: true }
    }
}

fn qerr(message: impl Into<String>) -> FilterError {
    FilterError { message: message.into() }
}

fn parse_count(key: &str, v: &str) -> Result<usize, FilterError> {
    v.parse::<usize>().map_err(|_| qerr(format!("{key} must be a non-negative integer, not '{v}'")))
}

fn parse_order(v: &str) -> Result<Vec<OrderBy>, FilterError> {
    let mut out = Vec::new();
    for item in v.split(',') {
        let mut parts = item.split('.');
        let field = parts.next().unwrap_or_default().trim();
        if field.is_empty() {
            return Err(qerr(format!("empty field in order '{v}'")));
        }
        let mut descending = None;
        let mut nulls_first = None;
        for m in parts {
            let (slot, value) = match m {
                "asc" => (&mut descending, false),
                "desc" => (&mut descending, true),
                "nullsfirst" => (&mut nulls_first, true),
                "nullslast" => (&mut nulls_first, false),
                _ => {
                    return Err(qerr(format!(
                    "unknown order modifier '{m}' in '{item}' (expected asc, desc, nullsfirst or nullslast)"
                )))
                }
            };
            if slot.replace(value).is_some() {
                return Err(qerr(format!("conflicting order modifiers in '{item}'")));
            }
        }
        let descending = descending.unwrap_or(false);
        out.push(OrderBy {
            field: field.to_string(),
            descending,
            nulls_first: nulls_first.unwrap_or(descending),
        });
    }
    Ok(out)
}

fn parse_select(v: &str) -> Result<Option<Vec<String>>, FilterError> {
    if v.trim() == "*" {
        return Ok(None);
    }
    let mut out: Vec<String> = Vec::new();
    for f in v.split(',').map(str::trim) {
        if f.is_empty() {
            return Err(qerr(format!("empty field in select '{v}'")));
        }
        if !out.iter().any(|g| g == f) {
            out.push(f.to_string());
        }
    }
    Ok(Some(out))
}

impl ListQuery {
    /// Parses the decoded query pairs of a list request.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<ListQuery, FilterError> {
        let mut q = ListQuery::default();
        let mut seen: Vec<&str> = Vec::new();
        let mut filter_pairs = Vec::new();
        for (k, v) in pairs {
            let key = k.as_str();
            if !RESERVED_KEYS.contains(&key) {
                filter_pairs.push((k.clone(), v.clone()));
                continue;
            }
            if seen.contains(&key) {
                return Err(qerr(format!("'{key}' is given more than once")));
            }
            seen.push(key);
            match key {
                "select" => q.select = parse_select(v)?,
                "order" => q.order = parse_order(v)?,
                "limit" => {
                    let n = parse_count("limit", v)?;
                    if n > MAX_LIMIT {
                        return Err(qerr(format!("limit must be at most {MAX_LIMIT}, not {n}")));
                    }
                    q.limit = Some(n);
                }
                "offset" => q.offset = Some(parse_count("offset", v)?),
                "cursor" => q.cursor = Some(v.clone()).filter(|c| !c.is_empty()),
                "count" => {
                    if v != "exact" {
                        return Err(qerr(format!("count must be 'exact', not '{v}'")));
                    }
                    q.count = true;
                }
                _ => {}
            }
        }
        q.filter = Filter::from_pairs(&filter_pairs)?;
        Ok(q)
    }

    /// Checks that the fields named in `order` and `select` exist (system fields included).
    /// The filter is checked by binding it ([`Filter::bind`]).
    pub fn check(&self, c: &Collection) -> Result<(), FilterError> {
        let exists = |f: &str| SYSTEM_FIELDS.contains(&f) || c.field(f).is_some();
        let missing = |f: &str| qerr(format!("field '{f}' does not exist in collection '{}'", c.name));
        for o in &self.order {
            if !exists(&o.field) {
                return Err(missing(&o.field));
            }
            if c.field(&o.field).is_some_and(|f| f.ty == FieldType::Json) {
                return Err(qerr(format!("cannot order by json field '{}'", o.field)));
            }
        }
        for f in self.select.iter().flatten() {
            if !exists(f) {
                return Err(missing(f));
            }
        }
        Ok(())
    }

    /// The page size to use: `limit`, or [`DEFAULT_LIMIT`].
    pub fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }
}

/// Rank of a JSON value's type in SQL ordering (SQLite: NULL < numbers < text < blob;
/// booleans are stored as integers).
fn type_rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) | Value::Number(_) => 1,
        Value::String(_) => 2,
        Value::Array(_) | Value::Object(_) => 3,
    }
}

/// Compares two non-null field values the way SQL does for the column types of the store.
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    let num = |v: &Value| match v {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Number(n) => n.as_f64(),
        _ => None,
    };
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => num(a).partial_cmp(&num(b)).unwrap_or(Ordering::Equal),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => match type_rank(a).cmp(&type_rank(b)) {
            Ordering::Equal if type_rank(a) == 1 => num(a).partial_cmp(&num(b)).unwrap_or(Ordering::Equal),
            Ordering::Equal => a.to_string().cmp(&b.to_string()),
            o => o,
        },
    }
}

/// Compares two records by `order`, then by id (unless the order already names `id`): the
/// same order as the SQL the store generates.
pub fn compare_records(order: &[OrderBy], a: &Record, b: &Record) -> Ordering {
    for o in order {
        let va = a.get(&o.field).filter(|v| !v.is_null());
        let vb = b.get(&o.field).filter(|v| !v.is_null());
        let ord = match (va, vb) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if o.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(_), None) => {
                if o.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(x), Some(y)) => {
                let c = compare_values(x, y);
                if o.descending {
                    c.reverse()
                } else {
                    c
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    if order.iter().any(|o| o.field == "id") {
        Ordering::Equal
    } else {
        a.id().cmp(b.id())
    }
}

/// The sort keys actually used: the requested ones, then `id` so the order is total.
pub fn effective_order(order: &[OrderBy]) -> Vec<OrderBy> {
    let mut o = order.to_vec();
    if !o.iter().any(|k| k.field == "id") {
        o.push(OrderBy { field: "id".into(), descending: false, nulls_first: false });
    }
    o
}

/// A cursor is the sort-key values of the last row returned, hex-encoded JSON.
pub fn encode_cursor(order: &[OrderBy], r: &Record) -> String {
    let vals: Vec<&serde_json::Value> =
        order.iter().map(|k| r.get(&k.field).unwrap_or(&serde_json::Value::Null)).collect();
    let json = serde_json::to_string(&vals).unwrap_or_default();
    json.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Reads a cursor made by [`encode_cursor`] for an order of `n` keys.
pub fn decode_cursor(s: &str, n: usize) -> Result<Vec<serde_json::Value>, FilterError> {
    let bad = || FilterError { message: "invalid cursor".into() };
    if !s.len().is_multiple_of(2) || s.len() > 16_384 {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let vals: Vec<serde_json::Value> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if vals.len() != n {
        return Err(bad());
    }
    Ok(vals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn q(s: &[(&str, &str)]) -> ListQuery {
        ListQuery::from_pairs(&pairs(s)).unwrap()
    }

    fn qerr(s: &[(&str, &str)]) -> String {
        ListQuery::from_pairs(&pairs(s)).unwrap_err().message
    }

    fn items() -> Collection {
        serde_json::from_value(json!({"name": "items", "fields": [
            {"name": "title", "type": "text"},
            {"name": "qty", "type": "integer"},
            {"name": "meta", "type": "json"}]}))
        .unwrap()
    }

    #[test]
    fn reserved_keys_and_filter_pairs() {
        let l = q(&[
            ("select", "title, qty,title"),
            ("order", "qty.desc,title,id.asc.nullsfirst,version.desc.nullslast"),
            ("limit", "10"),
            ("offset", "20"),
            ("cursor", "abc"),
            ("count", "exact"),
            ("qty", "gt.5"),
            ("or", "(title.eq.a,title.eq.b)"),
        ]);
        assert_eq!(l.select, Some(vec!["title".to_string(), "qty".to_string()]));
        assert_eq!(
            l.order,
            vec![
                OrderBy::desc("qty"),
                OrderBy::asc("title"),
                OrderBy { field: "id".into(), descending: false, nulls_first: true },
                OrderBy { field: "version".into(), descending: true, nulls_first: false },
            ]
        );
        assert_eq!(
            (l.limit, l.offset, l.cursor.as_deref(), l.count),
            (Some(10), Some(20), Some("abc"), true)
        );
        assert_eq!(l.filter, Filter::parse("qty=gt.5&or=(title.eq.a,title.eq.b)").unwrap());
        l.check(&items()).unwrap();
        assert_eq!(l.effective_limit(), 10);

        let empty = q(&[]);
        assert_eq!(empty, ListQuery::default());
        assert_eq!(empty.effective_limit(), DEFAULT_LIMIT);
        assert_eq!(q(&[("select", "*")]).select, None);
        assert_eq!(q(&[("cursor", "")]).cursor, None);
        assert_eq!(q(&[("limit", "1000")]).limit, Some(1000));
        assert_eq!(q(&[("limit", "0")]).limit, Some(0));
    }

    #[test]
    fn bad_values_are_explained() {
        assert!(qerr(&[("limit", "-1")]).contains("limit must be a non-negative integer, not '-1'"));
        assert!(qerr(&[("limit", "ten")]).contains("non-negative integer"));
        assert!(qerr(&[("limit", "1001")]).contains("at most 1000"));
        assert!(qerr(&[("offset", "1.5")]).contains("offset must be a non-negative integer"));
        assert!(qerr(&[("count", "planned")]).contains("count must be 'exact'"));
        assert!(qerr(&[("order", "qty.down")]).contains("unknown order modifier 'down'"));
        assert!(qerr(&[("order", "qty.asc.desc")]).contains("conflicting"));
        assert!(qerr(&[("order", "qty,")]).contains("empty field"));
        assert!(qerr(&[("select", "a,,b")]).contains("empty field"));
        assert!(qerr(&[("limit", "1"), ("limit", "2")]).contains("more than once"));
        assert!(qerr(&[("qty", "gtx.1")]).contains("unknown operator 'gtx'"));
    }

    #[test]
    fn check_finds_unknown_fields() {
        let c = items();
        let e = q(&[("order", "nope")]).check(&c).unwrap_err();
        assert_eq!(e.message, "field 'nope' does not exist in collection 'items'");
        assert!(q(&[("select", "title,nope")]).check(&c).is_err());
        assert!(q(&[("select", "id,created_at,meta")]).check(&c).is_ok());
        assert!(q(&[("order", "meta")]).check(&c).unwrap_err().message.contains("json"));
    }

    #[test]
    fn record_order_is_postgres_like() {
        let r = |id: &str, qty: Value| {
            Record::new(id, 1, "t", "t", [("qty".to_string(), qty), ("title".to_string(), json!("x"))])
        };
        let mut rs = vec![r("a", json!(2)), r("b", Value::Null), r("c", json!(1)), r("d", json!(2))];
        let ids = |rs: &[Record]| rs.iter().map(|r| r.id().to_string()).collect::<String>();
        rs.sort_by(|a, b| compare_records(&[OrderBy::asc("qty")], a, b));
        assert_eq!(ids(&rs), "cadb");
        rs.sort_by(|a, b| compare_records(&[OrderBy::desc("qty")], a, b));
        assert_eq!(ids(&rs), "badc");
        rs.sort_by(|a, b| compare_records(&[OrderBy::desc("id")], a, b));
        assert_eq!(ids(&rs), "dcba");
        assert_eq!(compare_values(&json!(1), &json!(1.5)), Ordering::Less);
        assert_eq!(compare_values(&json!(false), &json!(true)), Ordering::Less);
        assert_eq!(compare_values(&json!(9), &json!("1")), Ordering::Less);
    }
}
