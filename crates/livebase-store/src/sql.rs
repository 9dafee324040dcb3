//! Filters, sort orders, cursors and list queries translated to SQL, for both SQL backends.
//!
//! Table layout (both backends): one table per collection, named like it; columns `id`,
//! `version`, `created_at`, `updated_at`, then one per field named like it. text, select,
//! relation and datetime (canonical text, which sorts chronologically) are text columns
//! compared bytewise (SQLite's BINARY, PostgreSQL's `COLLATE "C"`); integer is a 64-bit
//! integer; number a double; boolean SQLite INTEGER 0/1 or PostgreSQL boolean; json SQLite
//! TEXT or PostgreSQL jsonb; null is NULL.
//!
//! The generated SQL has exactly the truth of [`BoundFilter::matches`]: comparisons yield
//! NULL on NULL columns and AND/OR/NOT are Kleene logic in both databases, which is what the
//! core evaluator implements. `like` is SQLite's `GLOB` / PostgreSQL's `LIKE` (case-sensitive,
//! `_` is one character) and `ilike` compares `lower(col)` with an ASCII-lowercased pattern, as
//! `lower()` folds ASCII only in both (no ICU; PostgreSQL's "C" collation).
//!
//! Values travel as [`SqlValue`]s; each backend hands them to its driver. A dialect differs
//! only in the spelling of placeholders, booleans and patterns, which [`Params`] and
//! [`Dialect`] carry.

use livebase_core::filter::FilterError;
use livebase_core::filter::{BoundFilter, CmpOp, Scalar};
use livebase_core::query::{decode_cursor, effective_order, ListQuery, OrderBy, DEFAULT_LIMIT};
use livebase_core::schema::{Collection, FieldType};
use serde_json::Value as Json;

/// A double-quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Which SQL the text is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Bool(bool),
    Text(String),
    /// JSON text, stored as PostgreSQL jsonb / SQLite TEXT.
    Json(String),
}

/// The placeholders' values of one statement, in order.
#[derive(Debug, Clone)]
pub struct Params {
    pub dialect: Dialect,
    pub values: Vec<SqlValue>,
}

impl Params {
    pub fn new(dialect: Dialect) -> Params {
        Params { dialect, values: Vec::new() }
    }

    /// Appends a value; returns its placeholder (`?`, or `$n` with the type PostgreSQL must
    /// read it as).
    pub fn bind(&mut self, v: SqlValue) -> String {
        let cast = match &v {
            SqlValue::Int(_) => "::int8",
            SqlValue::Real(_) => "::float8",
            SqlValue::Bool(_) => "::bool",
            SqlValue::Json(_) => "::text::jsonb",
            SqlValue::Text(_) | SqlValue::Null => "::text",
        };
        self.values.push(v);
        match self.dialect {
            Dialect::Sqlite => "?".to_string(),
            Dialect::Postgres => format!("${}{cast}", self.values.len()),
        }
    }

    /// A value for a column of type `ty` (NULL typed like the column on PostgreSQL).
    pub fn bind_typed(&mut self, ty: FieldType, v: SqlValue) -> String {
        if self.dialect == Dialect::Postgres && v == SqlValue::Null {
            self.values.push(v);
            return format!("${}::{}", self.values.len(), pg_type(ty));
        }
        self.bind(v)
    }

    fn lit(&self, b: bool) -> &'static str {
        match (self.dialect, b) {
            (Dialect::Sqlite, true) => "1",
            (Dialect::Sqlite, false) => "0",
            (Dialect::Postgres, true) => "TRUE",
            (Dialect::Postgres, false) => "FALSE",
        }
    }
}

/// The PostgreSQL column type a field is stored as (text columns are `COLLATE "C"`).
pub fn pg_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Integer => "int8",
        FieldType::Number => "float8",
        FieldType::Boolean => "bool",
        FieldType::Json => "jsonb",
        FieldType::Text | FieldType::Select | FieldType::Relation | FieldType::Datetime => "text",
    }
}

/// A field's JSON value as the value its column stores.
pub fn to_sql_value(ty: FieldType, v: &Json) -> SqlValue {
    match (ty, v) {
        (_, Json::Null) => SqlValue::Null,
        (FieldType::Boolean, Json::Bool(b)) => SqlValue::Bool(*b),
        (FieldType::Integer, Json::Number(n)) => n.as_i64().map(SqlValue::Int).unwrap_or(SqlValue::Null),
        (FieldType::Number, Json::Number(n)) => n.as_f64().map(SqlValue::Real).unwrap_or(SqlValue::Null),
        (FieldType::Json, v) => SqlValue::Json(v.to_string()),
        (_, Json::String(s)) => SqlValue::Text(s.clone()),
        (_, v) => SqlValue::Text(v.to_string()),
    }
}

/// The type of a column, system fields included.
pub fn field_type(c: &Collection, name: &str) -> Option<FieldType> {
    match name {
        "id" => Some(FieldType::Text),
        "version" => Some(FieldType::Integer),
        "created_at" | "updated_at" => Some(FieldType::Datetime),
        _ => c.field(name).map(|f| f.ty),
    }
}

/// `"id","version","created_at","updated_at","f1",...` in schema order (PostgreSQL reads
/// jsonb columns as text).
pub fn select_columns(c: &Collection, dialect: Dialect) -> String {
    let mut s = String::from("\"id\",\"version\",\"created_at\",\"updated_at\"");
    for f in &c.fields {
        s.push(',');
        s.push_str(&quote_ident(&f.name));
        if dialect == Dialect::Postgres && f.ty == FieldType::Json {
            s.push_str("::text");
        }
    }
    s
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

/// A `like` pattern as a PostgreSQL LIKE pattern with `\` as the escape character.
pub fn like_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '*' | '%' => out.push('%'),
            '_' => out.push('_'),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out
}

fn scalar(s: &Scalar) -> SqlValue {
    match s {
        Scalar::Null => SqlValue::Null,
        Scalar::Bool(b) => SqlValue::Bool(*b),
        Scalar::Int(n) => SqlValue::Int(*n),
        Scalar::Num(x) => SqlValue::Real(*x),
        Scalar::Text(t) => SqlValue::Text(t.clone()),
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

/// The filter as a SQL boolean expression; its values are appended to `params` in order.
pub fn where_sql(f: &BoundFilter, params: &mut Params) -> String {
    let mut out = String::new();
    push_where(f, params, &mut out);
    out
}

fn push_where(f: &BoundFilter, params: &mut Params, out: &mut String) {
    match f {
        BoundFilter::And(v) | BoundFilter::Or(v) if v.is_empty() => {
            out.push_str(params.lit(matches!(f, BoundFilter::And(_))));
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
            out.push(' ');
            out.push_str(&params.bind(scalar(value)));
        }
        // An empty IN list is false even for a NULL left side; the core agrees.
        BoundFilter::In { values, .. } if values.is_empty() => out.push_str(params.lit(false)),
        BoundFilter::In { field, values } => {
            out.push_str(&quote_ident(field));
            out.push_str(" IN (");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&params.bind(scalar(v)));
            }
            out.push(')');
        }
        BoundFilter::Is { field, value } => {
            out.push_str(&quote_ident(field));
            out.push_str(match (params.dialect, value) {
                (Dialect::Sqlite, Scalar::Bool(true)) => " IS 1",
                (Dialect::Sqlite, Scalar::Bool(false)) => " IS 0",
                (Dialect::Postgres, Scalar::Bool(true)) => " IS TRUE",
                (Dialect::Postgres, Scalar::Bool(false)) => " IS FALSE",
                // Binding only produces null/true/false here.
                _ => " IS NULL",
            });
        }
        BoundFilter::Like { field, pattern, case_insensitive } => {
            let col =
                if *case_insensitive { format!("lower({})", quote_ident(field)) } else { quote_ident(field) };
            let pattern = if *case_insensitive { pattern.to_ascii_lowercase() } else { pattern.clone() };
            match params.dialect {
                Dialect::Sqlite => {
                    let p = params.bind(SqlValue::Text(glob_pattern(&pattern)));
                    out.push_str(&format!("{col} GLOB {p}"));
                }
                Dialect::Postgres => {
                    let p = params.bind(SqlValue::Text(like_pattern(&pattern)));
                    out.push_str(&format!("{col} LIKE {p} ESCAPE '\\'"));
                }
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

/// Rows strictly after the cursor position in the given order (nulls placed as ordered).
pub fn cursor_sql(c: &Collection, order: &[OrderBy], vals: &[Json], params: &mut Params) -> String {
    let ty = |f: &str| field_type(c, f).unwrap_or(FieldType::Text);
    let same = match params.dialect {
        Dialect::Sqlite => "IS",
        Dialect::Postgres => "IS NOT DISTINCT FROM",
    };
    let mut alts = Vec::new();
    for i in 0..order.len() {
        let mut parts = Vec::new();
        for (k, v) in order[..i].iter().zip(vals) {
            let p = params.bind_typed(ty(&k.field), to_sql_value(ty(&k.field), v));
            parts.push(format!("{} {same} {p}", quote_ident(&k.field)));
        }
        let (k, v) = (&order[i], &vals[i]);
        let col = quote_ident(&k.field);
        let cmp = if k.descending { "<" } else { ">" };
        let after = match (v.is_null(), k.nulls_first) {
            (true, true) => format!("{col} IS NOT NULL"),
            (true, false) => params.lit(false).to_string(),
            (false, true) => {
                let p = params.bind(to_sql_value(ty(&k.field), v));
                format!("{col} {cmp} {p}")
            }
            (false, false) => {
                let p = params.bind(to_sql_value(ty(&k.field), v));
                format!("({col} {cmp} {p} OR {col} IS NULL)")
            }
        };
        parts.push(after);
        alts.push(format!("({})", parts.join(" AND ")));
    }
    format!("({})", alts.join(" OR "))
}

/// A list query as SQL: the page's SELECT (one row more than the limit, to tell whether a
/// next page exists) and, when a total is asked for, the COUNT over the same filter.
pub struct ListSql {
    pub select: String,
    pub params: Params,
    pub count: Option<(String, Params)>,
    pub limit: usize,
    pub order: Vec<OrderBy>,
}

pub fn list_sql(c: &Collection, q: &ListQuery, dialect: Dialect) -> Result<ListSql, FilterError> {
    q.check(c)?;
    let mut params = Params::new(dialect);
    let mut conds = Vec::new();
    if let Some(f) = &q.filter {
        conds.push(where_sql(&f.bind(c)?, &mut params));
    }
    let count = q.count.then(|| {
        let mut sql = format!("SELECT count(*) FROM {}", quote_ident(&c.name));
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        (sql, params.clone())
    });
    let order = effective_order(&q.order);
    if let Some(cur) = &q.cursor {
        let vals = decode_cursor(cur, order.len())?;
        conds.push(cursor_sql(c, &order, &vals, &mut params));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    let mut select = format!("SELECT {} FROM {}", select_columns(c, dialect), quote_ident(&c.name));
    if !conds.is_empty() {
        select.push_str(" WHERE ");
        select.push_str(&conds.join(" AND "));
    }
    select.push_str(" ORDER BY ");
    select.push_str(&order_sql(&order));
    let lim = params.bind(SqlValue::Int(limit as i64 + 1));
    let off = params.bind(SqlValue::Int(q.offset.unwrap_or(0) as i64));
    select.push_str(&format!(" LIMIT {lim} OFFSET {off}"));
    Ok(ListSql { select, params, count, limit, order })
}

/// The change-log read of a [`crate::ChangeQuery`]: columns `seq, collection, op, record_id,
/// version, actor, committed_at, new, old` of `_lb_changes`, in sequence order.
pub fn changes_sql(q: &crate::ChangeQuery, dialect: Dialect) -> (String, Params) {
    let mut params = Params::new(dialect);
    let mut sql = format!(
        "SELECT seq, collection, op, record_id, version, actor, committed_at, new, old FROM _lb_changes WHERE seq > {}",
        params.bind(SqlValue::Int(q.since as i64))
    );
    for (col, op, v) in [
        ("collection", "=", &q.collection),
        ("record_id", "=", &q.record_id),
        ("actor", "=", &q.actor),
        ("committed_at", ">=", &q.from),
        ("committed_at", "<=", &q.to),
    ] {
        if let Some(v) = v {
            let p = params.bind(SqlValue::Text(v.clone()));
            sql.push_str(&format!(" AND {col} {op} {p}"));
        }
    }
    let lim = params.bind(SqlValue::Int(q.limit.clamp(1, 10_000) as i64));
    sql.push_str(&format!(" ORDER BY seq LIMIT {lim}"));
    (sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use livebase_core::filter::{BoundFilter, Filter};
    use livebase_core::query::compare_records;
    use livebase_core::{Collection, Record};
    use proptest::prelude::*;
    use rusqlite::types::Value;
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
        let mut params = Params::new(Dialect::Sqlite);
        let w = where_sql(f, &mut params);
        let params = params.values;
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
        let mut p = Params::new(Dialect::Sqlite);
        assert_eq!(
            where_sql(&b("qty=gt.5&or=(title.like.a_*,done.is.true,status.in.(open,late))"), &mut p),
            "(\"qty\" > ? AND (\"title\" GLOB ? OR \"done\" IS 1 OR \"status\" IN (?, ?)))"
        );
        assert_eq!(
            p.values,
            vec![
                SqlValue::Int(5),
                SqlValue::Text("a?*".into()),
                SqlValue::Text("open".into()),
                SqlValue::Text("late".into())
            ]
        );
        let mut p = Params::new(Dialect::Sqlite);
        assert_eq!(
            where_sql(&b("title=not.ilike.A[?]*&meta=is.null&price=eq.2&done=neq.false"), &mut p),
            "(NOT (lower(\"title\") GLOB ?) AND \"meta\" IS NULL AND \"price\" = ? AND \"done\" <> ?)"
        );
        assert_eq!(
            p.values,
            vec![SqlValue::Text("a[[][?]]*".into()), SqlValue::Real(2.0), SqlValue::Bool(false)]
        );
        let mut p = Params::new(Dialect::Sqlite);
        assert_eq!(where_sql(&BoundFilter::And(vec![]), &mut p), "1");
        assert_eq!(where_sql(&BoundFilter::Or(vec![]), &mut p), "0");
        assert_eq!(where_sql(&b("qty=in.()"), &mut p), "0");
        assert!(p.values.is_empty());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(glob_pattern("*%_?[]x"), "**?[?][[]]x");
        assert_eq!(like_pattern("*%_?\\x"), "%%_?\\\\x");
        let mut p = Params::new(Dialect::Postgres);
        assert_eq!(
            where_sql(&b("qty=gt.5&or=(title.ilike.A_*,done.is.true,status.in.())"), &mut p),
            "(\"qty\" > $1::int8 AND (lower(\"title\") LIKE $2::text ESCAPE '\\' OR \"done\" IS TRUE OR FALSE))"
        );
        assert_eq!(p.values, vec![SqlValue::Int(5), SqlValue::Text("a_%".into())]);
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
