//! Filters and sort orders translated to SQLite SQL.
//!
//! Table layout: one table per collection, named like it; columns `id`, `version`,
//! `created_at`, `updated_at`, then one per field named like it. text, select, relation and
//! datetime (canonical text) are TEXT; integer is INTEGER; number is REAL; boolean is INTEGER
//! 0/1; json is TEXT; null is NULL.
//!
//! The generated SQL has exactly the truth of [`BoundFilter::matches`]: SQLite's comparisons
//! yield NULL on NULL columns and its AND/OR/NOT are Kleene logic, which is what the core
//! evaluator implements. `like` becomes `GLOB` (case-sensitive, `?` is one character) and
//! `ilike` becomes `lower(col) GLOB` with an ASCII-lowercased pattern, as `lower()` without
//! ICU folds ASCII only.

use livebase_core::filter::{BoundFilter, CmpOp, Scalar};
use livebase_core::query::OrderBy;
use rusqlite::types::Value;

/// A double-quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A `like` pattern (`*`/`%` any sequence, `_` one character) as a GLOB pattern.
pub fn glob_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '*' | '%' => out.push('*'),
            '_' => out.push('?'),
            '?' => out.push_str("[?]"),
            '[' => out.push_str("[[]"),
            c => out.push(c),
        }
    }
    out
}

fn param(s: &Scalar) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Bool(b) => Value::Integer(i64::from(*b)),
        Scalar::Int(n) => Value::Integer(*n),
        Scalar::Num(x) => Value::Real(*x),
        Scalar::Text(t) => Value::Text(t.clone()),
    }
}

fn op_sql(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "=",
        CmpOp::Neq => "<>",
        CmpOp::Lt => "<",
        CmpOp::Lte => "<=",
        CmpOp::Gt => ">",
        CmpOp::Gte => ">=",
    }
}

/// The filter as a SQL boolean expression with `?` placeholders; their values are appended
/// to `params` in order.
pub fn where_sql(f: &BoundFilter, params: &mut Vec<Value>) -> String {
    let mut out = String::new();
    push_where(f, params, &mut out);
    out
}

fn push_where(f: &BoundFilter, params: &mut Vec<Value>, out: &mut String) {
    match f {
        BoundFilter::And(v) | BoundFilter::Or(v) if v.is_empty() => {
            out.push_str(if matches!(f, BoundFilter::And(_)) { "1" } else { "0" });
        }
        BoundFilter::And(v) | BoundFilter::Or(v) => {
            let joiner = if matches!(f, BoundFilter::And(_)) { " AND " } else { " OR " };
            out.push('(');
            for (i, c) in v.iter().enumerate() {
                if i > 0 {
                    out.push_str(joiner);
                }
                push_where(c, params, out);
            }
            out.push(')');
        }
        BoundFilter::Not(c) => {
            out.push_str("NOT (");
            push_where(c, params, out);
            out.push(')');
        }
        BoundFilter::Cmp { field, op, value } => {
            out.push_str(&quote_ident(field));
            out.push(' ');
            out.push_str(op_sql(*op));
            out.push_str(" ?");
            params.push(param(value));
        }
        // SQLite: an empty IN list is false even for a NULL left side; the core agrees.
        BoundFilter::In { values, .. } if values.is_empty() => out.push('0'),
        BoundFilter::In { field, values } => {
            out.push_str(&quote_ident(field));
            out.push_str(" IN (");
            for (i, v) in values.iter().enumerate() {
                out.push_str(if i == 0 { "?" } else { ", ?" });
                params.push(param(v));
            }
            out.push(')');
        }
        BoundFilter::Is { field, value } => {
            out.push_str(&quote_ident(field));
            out.push_str(match value {
                Scalar::Bool(true) => " IS 1",
                Scalar::Bool(false) => " IS 0",
                // Binding only produces null/true/false here.
                _ => " IS NULL",
            });
        }
        BoundFilter::Like { field, pattern, case_insensitive } => {
            if *case_insensitive {
                out.push_str(&format!("lower({}) GLOB ?", quote_ident(field)));
                params.push(Value::Text(glob_pattern(&pattern.to_ascii_lowercase())));
            } else {
                out.push_str(&format!("{} GLOB ?", quote_ident(field)));
                params.push(Value::Text(glob_pattern(pattern)));
            }
        }
    }
}

/// The `ORDER BY` list (without the keywords), always ending with `"id"` unless the order
/// already names it, so the order is total.
pub fn order_sql(order: &[OrderBy]) -> String {
    let mut parts: Vec<String> = order
        .iter()
        .map(|o| {
            format!(
                "{} {} NULLS {}",
                quote_ident(&o.field),
                if o.descending { "DESC" } else { "ASC" },
                if o.nulls_first { "FIRST" } else { "LAST" }
            )
        })
        .collect();
    if !order.iter().any(|o| o.field == "id") {
        parts.push("\"id\" ASC".to_string());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use livebase_core::filter::{BoundFilter, Filter};
    use livebase_core::query::compare_records;
    use livebase_core::{Collection, Record};
    use proptest::prelude::*;
    use rusqlite::Connection;
    use serde_json::{json, Value as Json};

    fn items() -> Collection {
        serde_json::from_value(json!({"name": "items", "fields": [
            {"name": "title", "type": "text"},
            {"name": "qty", "type": "integer"},
            {"name": "price", "type": "number"},
            {"name": "done", "type": "boolean"},
            {"name": "due", "type": "datetime"},
            {"name": "status", "type": "select", "values": ["open", "late", "closed"]},
            {"name": "meta", "type": "json"}]}))
        .unwrap()
    }

    const TITLES: [&str; 16] =
        ["", "a", "A", "ab", "aB", "box", "Box", "a box", "b_x", "x*y", "a%b", "ü", "Ü", "[x]", "?", "bx"];
    const DUES: [&str; 4] = [
        "2026-01-01T00:00:00.000000Z",
        "2026-01-01T00:00:00.500000Z",
        "2026-02-01T12:00:00.000000Z",
        "2025-12-31T23:59:59.999999Z",
    ];
    const PRICES: [f64; 6] = [-1.5, 0.0, 0.5, 2.0, 3.25, 1e10];

    /// One test record's fields: title, qty, price (None / float / integer-valued JSON),
    /// done, due, status, meta.
    type Row = (
        Option<usize>,
        Option<i64>,
        Option<(usize, bool)>,
        Option<bool>,
        Option<usize>,
        Option<usize>,
        Option<bool>,
    );

    fn arb_row() -> impl Strategy<Value = Row> {
        (
            prop::option::weighted(0.7, 0..TITLES.len()),
            prop::option::weighted(0.7, -3i64..4),
            prop::option::weighted(0.7, (0..PRICES.len(), any::<bool>())),
            prop::option::weighted(0.6, any::<bool>()),
            prop::option::weighted(0.6, 0..DUES.len()),
            prop::option::weighted(0.6, 0..3usize),
            prop::option::weighted(0.5, any::<bool>()),
        )
    }

    fn record(i: usize, row: &Row) -> Record {
        let (title, qty, price, done, due, status, meta) = row;
        let price = price.map(|(p, as_int)| {
            let x = PRICES[p];
            // Number fields keep integer JSON as given; the column stores it as REAL.
            if as_int && x.fract() == 0.0 {
                json!(x as i64)
            } else {
                json!(x)
            }
        });
        let data = vec![
            ("title".to_string(), title.map_or(Json::Null, |t| json!(TITLES[t]))),
            ("qty".to_string(), qty.map_or(Json::Null, |q| json!(q))),
            ("price".to_string(), price.unwrap_or(Json::Null)),
            ("done".to_string(), done.map_or(Json::Null, |d| json!(d))),
            ("due".to_string(), due.map_or(Json::Null, |d| json!(DUES[d]))),
            ("status".to_string(), status.map_or(Json::Null, |s| json!(["open", "late", "closed"][s]))),
            ("meta".to_string(), meta.map_or(Json::Null, |m| if m { json!({"a": 1}) } else { json!([1]) })),
        ];
        Record::new(
            &format!("r{i:02}"),
            (i % 3) as i64 + 1,
            DUES[i % DUES.len()],
            DUES[(i + 1) % DUES.len()],
            data,
        )
    }

    fn sql_value(v: &Json) -> Value {
        match v {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Integer(i64::from(*b)),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Real(n.as_f64().unwrap()),
            },
            Json::String(s) => Value::Text(s.clone()),
            other => Value::Text(other.to_string()),
        }
    }

    fn db(records: &[Record]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE \"items\" (\"id\" TEXT PRIMARY KEY, \"version\" INTEGER, \
             \"created_at\" TEXT, \"updated_at\" TEXT, \"title\" TEXT, \"qty\" INTEGER, \
             \"price\" REAL, \"done\" INTEGER, \"due\" TEXT, \"status\" TEXT, \"meta\" TEXT)",
        )
        .unwrap();
        let cols = [
            "id",
            "version",
            "created_at",
            "updated_at",
            "title",
            "qty",
            "price",
            "done",
            "due",
            "status",
            "meta",
        ];
        for r in records {
            let vals: Vec<Value> = cols.iter().map(|c| sql_value(r.get(c).unwrap_or(&Json::Null))).collect();
            conn.execute(
                "INSERT INTO \"items\" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rusqlite::params_from_iter(vals),
            )
            .unwrap();
        }
        conn
    }

    fn sql_ids(conn: &Connection, f: &BoundFilter) -> Vec<String> {
        let mut params = Vec::new();
        let w = where_sql(f, &mut params);
        let sql = format!("SELECT \"id\" FROM \"items\" WHERE {w} ORDER BY \"id\"");
        let mut st = conn.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let rows = st.query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    fn rust_ids(records: &[Record], f: &BoundFilter) -> Vec<String> {
        let mut ids: Vec<String> =
            records.iter().filter(|r| f.matches(r)).map(|r| r.id().to_string()).collect();
        ids.sort();
        ids
    }

    /// A literal for `field`, usually valid for its type.
    fn arb_literal(field: &'static str) -> BoxedStrategy<String> {
        match field {
            "title" => prop::sample::select(TITLES.to_vec()).prop_map(String::from).boxed(),
            "qty" | "version" => (-4i64..5).prop_map(|n| n.to_string()).boxed(),
            "price" => prop_oneof![
                prop::sample::select(PRICES.to_vec()).prop_map(|x| x.to_string()),
                prop::sample::select(vec!["2", "0", "-0", "3.2", "1e10", "-1.5"]).prop_map(String::from),
            ]
            .boxed(),
            "done" => prop::sample::select(vec!["true", "false"]).prop_map(String::from).boxed(),
            "due" | "created_at" | "updated_at" => prop_oneof![
                prop::sample::select(DUES.to_vec()).prop_map(String::from),
                Just("2026-01-01T01:00:00+01:00".to_string()),
            ]
            .boxed(),
            "status" => {
                prop::sample::select(vec!["open", "late", "closed", "nope"]).prop_map(String::from).boxed()
            }
            _ => (0..12usize).prop_map(|i| format!("r{i:02}")).boxed(),
        }
    }

    const FIELDS: [&str; 11] = [
        "title",
        "qty",
        "price",
        "done",
        "due",
        "status",
        "meta",
        "id",
        "version",
        "created_at",
        "updated_at",
    ];

    fn arb_pattern() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "a", "A", "b", "B", "x", "o", "ü", "Ü", "*", "%", "_", "?", "[", "]", " ", "2026", "-0",
            ]),
            0..5,
        )
        .prop_map(|v| v.concat())
    }

    fn arb_leaf() -> impl Strategy<Value = Filter> {
        prop::sample::select(FIELDS.to_vec())
            .prop_flat_map(|field| {
                let f = field.to_string();
                let op = prop::sample::select(vec![
                    CmpOp::Eq,
                    CmpOp::Neq,
                    CmpOp::Lt,
                    CmpOp::Lte,
                    CmpOp::Gt,
                    CmpOp::Gte,
                ]);
                let leaf = prop_oneof![
                    3 => (Just(f.clone()), op, arb_literal(field))
                        .prop_map(|(field, op, value)| Filter::Cmp { field, op, value }),
                    2 => (Just(f.clone()), prop::collection::vec(arb_literal(field), 0..4))
                        .prop_map(|(field, values)| Filter::In { field, values }),
                    2 => (Just(f.clone()), prop::sample::select(vec!["null", "null", "true", "false"]))
                        .prop_map(|(field, v)| Filter::Is { field, value: v.to_string() }),
                    2 => (Just(f), prop_oneof![arb_pattern(), arb_literal(field)], any::<bool>())
                        .prop_map(|(field, pattern, case_insensitive)| Filter::Like {
                            field,
                            pattern,
                            case_insensitive
                        }),
                ];
                (leaf, prop::bool::weighted(0.3))
            })
            .prop_map(|(l, neg)| if neg { Filter::Not(Box::new(l)) } else { l })
    }

    fn arb_filter() -> impl Strategy<Value = Filter> {
        arb_leaf().prop_recursive(4, 24, 4, |inner| {
            (prop::collection::vec(inner, 0..4), any::<bool>(), prop::bool::weighted(0.3)).prop_map(
                |(items, is_and, neg)| {
                    let g = if is_and { Filter::And(items) } else { Filter::Or(items) };
                    if neg {
                        Filter::Not(Box::new(g))
                    } else {
                        g
                    }
                },
            )
        })
    }

    #[test]
    fn sql_shapes() {
        let c = items();
        let b = |s: &str| Filter::parse(s).unwrap().unwrap().bind(&c).unwrap();
        let mut p = Vec::new();
        assert_eq!(
            where_sql(&b("qty=gt.5&or=(title.like.a_*,done.is.true,status.in.(open,late))"), &mut p),
            "(\"qty\" > ? AND (\"title\" GLOB ? OR \"done\" IS 1 OR \"status\" IN (?, ?)))"
        );
        assert_eq!(
            p,
            vec![
                Value::Integer(5),
                Value::Text("a?*".into()),
                Value::Text("open".into()),
                Value::Text("late".into())
            ]
        );
        let mut p = Vec::new();
        assert_eq!(
            where_sql(&b("title=not.ilike.A[?]*&meta=is.null&price=eq.2&done=neq.false"), &mut p),
            "(NOT (lower(\"title\") GLOB ?) AND \"meta\" IS NULL AND \"price\" = ? AND \"done\" <> ?)"
        );
        assert_eq!(p, vec![Value::Text("a[[][?]]*".into()), Value::Real(2.0), Value::Integer(0)]);
        let mut p = Vec::new();
        assert_eq!(where_sql(&BoundFilter::And(vec![]), &mut p), "1");
        assert_eq!(where_sql(&BoundFilter::Or(vec![]), &mut p), "0");
        assert_eq!(where_sql(&b("qty=in.()"), &mut p), "0");
        assert!(p.is_empty());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(glob_pattern("*%_?[]x"), "**?[?][[]]x");
        assert_eq!(order_sql(&[]), "\"id\" ASC");
        assert_eq!(order_sql(&[OrderBy::desc("qty")]), "\"qty\" DESC NULLS FIRST, \"id\" ASC");
        assert_eq!(
            order_sql(&[OrderBy::asc("title"), OrderBy::desc("id")]),
            "\"title\" ASC NULLS LAST, \"id\" DESC NULLS FIRST"
        );
    }

    #[test]
    fn three_valued_examples_agree() {
        let rows: Vec<Row> = vec![
            (None, None, None, None, None, None, None),
            (Some(5), Some(6), Some((3, true)), Some(true), Some(0), Some(0), Some(true)),
            (Some(6), Some(2), Some((0, false)), Some(false), Some(2), Some(1), None),
        ];
        let records: Vec<Record> = rows.iter().enumerate().map(|(i, r)| record(i, r)).collect();
        let conn = db(&records);
        let c = items();
        for (s, expect) in [
            ("qty=not.gt.5", vec!["r02"]),
            ("or=(qty.is.null,qty.gt.5)", vec!["r00", "r01"]),
            ("title=ilike.BOX", vec!["r01", "r02"]),
            ("title=like.?", vec![]),
            ("done=is.false", vec!["r02"]),
            ("done=not.is.true", vec!["r00", "r02"]),
            ("price=eq.2", vec!["r01"]),
            ("status=not.in.()", vec!["r00", "r01", "r02"]),
            ("meta=not.is.null", vec!["r01"]),
        ] {
            let f = Filter::parse(s).unwrap().unwrap().bind(&c).unwrap();
            let expect: Vec<String> = expect.into_iter().map(String::from).collect();
            assert_eq!(rust_ids(&records, &f), expect, "{s}");
            assert_eq!(sql_ids(&conn, &f), expect, "{s}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn sql_agrees_with_matches(
            rows in prop::collection::vec(arb_row(), 30),
            filters in prop::collection::vec(arb_filter(), 8),
        ) {
            let records: Vec<Record> = rows.iter().enumerate().map(|(i, r)| record(i, r)).collect();
            let conn = db(&records);
            let c = items();
            for f in filters {
                let Ok(b) = f.bind(&c) else { continue };
                prop_assert_eq!(sql_ids(&conn, &b), rust_ids(&records, &b), "filter {}", f);
            }
        }

        #[test]
        fn sql_order_agrees_with_rust_sort(
            rows in prop::collection::vec(arb_row(), 30),
            order in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "title", "qty", "price", "done", "due", "status", "id", "version",
                        "created_at", "updated_at",
                    ]),
                    any::<bool>(),
                    any::<bool>(),
                ),
                0..4,
            ),
        ) {
            let records: Vec<Record> = rows.iter().enumerate().map(|(i, r)| record(i, r)).collect();
            let conn = db(&records);
            let order: Vec<OrderBy> = order
                .into_iter()
                .map(|(f, descending, nulls_first)| OrderBy { field: f.to_string(), descending, nulls_first })
                .collect();
            let sql = format!("SELECT \"id\" FROM \"items\" ORDER BY {}", order_sql(&order));
            let mut st = conn.prepare(&sql).unwrap();
            let from_sql: Vec<String> =
                st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect();
            let mut sorted = records.clone();
            sorted.sort_by(|a, b| compare_records(&order, a, b));
            let from_rust: Vec<String> = sorted.iter().map(|r| r.id().to_string()).collect();
            prop_assert_eq!(from_sql, from_rust, "{}", sql);
        }
    }
}
