//! A PostgREST request read: the query string (`select`, filters, `order`, `limit`,
//! `offset`, `columns`, `on_conflict`), `Prefer`, `Accept` and `Range`.
//!
//! Filters are Livebase's own grammar (`livebase_core::filter`), which is PostgREST's; this
//! module only sets the PostgREST keys apart and classifies errors the way PostgreSQL would
//! (an unknown column is `42703`, a bad integer `22P02`, anything else unreadable `PGRST100`).

use super::errors::PgError;
use axum::http::{HeaderMap, StatusCode};
use livebase_core::filter::{BoundFilter, Filter};
use livebase_core::query::OrderBy;
use livebase_core::record::normalize_timestamp;
use livebase_core::schema::{Collection, FieldType};
use serde_json::{Map, Value};

/// Query keys that are not filters. `apikey` carries the credential.
const RESERVED: [&str; 7] = ["select", "columns", "on_conflict", "order", "limit", "offset", "apikey"];

/// One item of `select`.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    Star,
    Column { name: String, alias: Option<String> },
}

#[derive(Debug, Clone, Default)]
pub struct Params {
    /// Empty: `*`.
    pub select: Vec<SelectItem>,
    pub filter: Option<Filter>,
    pub bound: Option<BoundFilter>,
    pub order: Vec<OrderBy>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
    /// `columns="a","b"` of a bulk insert: the keys taken from each object.
    pub columns: Option<Vec<String>>,
    pub on_conflict: Option<Vec<String>>,
}

/// The type of a column, system columns included.
pub fn column_type(c: &Collection, name: &str) -> Option<FieldType> {
    match name {
        "id" => Some(FieldType::Text),
        "version" => Some(FieldType::Integer),
        "created_at" | "updated_at" => Some(FieldType::Datetime),
        _ => c.field(name).map(|f| f.ty),
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

fn column(c: &Collection, name: &str) -> Result<String, PgError> {
    let name = unquote(name);
    if column_type(c, name).is_none() {
        return Err(PgError::no_column(&c.name, name));
    }
    Ok(name.to_string())
}

/// Splits at commas outside parentheses and double quotes.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut quoted, mut start) = (Vec::new(), 0i32, false, 0);
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth -= 1,
            b',' if !quoted && depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_select(c: &Collection, v: &str) -> Result<Vec<SelectItem>, PgError> {
    let mut out = Vec::new();
    for raw in split_top(v) {
        let item = raw.trim();
        if item.is_empty() {
            return Err(PgError::syntax(format!("empty item in select={v}")));
        }
        if item == "*" {
            out.push(SelectItem::Star);
            continue;
        }
        if item.contains('(') {
            return Err(PgError::new(
                StatusCode::BAD_REQUEST,
                "PGRST200",
                format!("Could not find a relationship for '{item}' in the schema cache"),
            )
            .hint("Livebase does not embed related collections or run aggregates in select; read the related collection with its own request"));
        }
        if item.contains("->") || item.contains("::") || item.starts_with("...") {
            return Err(PgError::syntax(format!(
                "'{item}' in select is not supported: Livebase selects plain columns, optionally renamed (alias:column)"
            )));
        }
        let (alias, name) = match item.split_once(':') {
            Some((a, n)) => (Some(unquote(a).to_string()), n),
            None => (None, item),
        };
        out.push(SelectItem::Column { name: column(c, name)?, alias });
    }
    Ok(out)
}

fn parse_order(c: &Collection, v: &str) -> Result<Vec<OrderBy>, PgError> {
    let mut out = Vec::new();
    for item in v.split(',') {
        let mut parts = item.trim().split('.');
        let name = column(c, parts.next().unwrap_or_default())?;
        if c.field(&name).is_some_and(|f| f.ty == FieldType::Json) {
            return Err(PgError::syntax(format!("cannot order by json column '{name}'")));
        }
        let (mut descending, mut nulls_first) = (false, None);
        for m in parts {
            match m {
                "asc" => descending = false,
                "desc" => descending = true,
                "nullsfirst" => nulls_first = Some(true),
                "nullslast" => nulls_first = Some(false),
                _ => {
                    return Err(PgError::syntax(format!(
                        "unknown order modifier '{m}' in order={v} (use asc, desc, nullsfirst, nullslast)"
                    )))
                }
            }
        }
        out.push(OrderBy { field: name, descending, nulls_first: nulls_first.unwrap_or(descending) });
    }
    Ok(out)
}

fn parse_count(key: &str, v: &str) -> Result<usize, PgError> {
    v.trim()
        .parse::<usize>()
        .map_err(|_| PgError::syntax(format!("{key} must be a non-negative integer, not '{v}'")))
}

/// PostgreSQL's complaint about a literal that does not fit its column's type.
fn check_literal(c: &Collection, field: &str, v: &str) -> Result<(), PgError> {
    let bad = |code: &'static str, ty: &str| {
        PgError::new(StatusCode::BAD_REQUEST, code, format!("invalid input syntax for type {ty}: \"{v}\""))
    };
    match column_type(c, field) {
        None => Err(PgError::no_column(&c.name, field)),
        Some(FieldType::Integer) if v.parse::<i64>().is_err() => Err(bad("22P02", "integer")),
        Some(FieldType::Number) if !v.parse::<f64>().is_ok_and(f64::is_finite) => {
            Err(bad("22P02", "double precision"))
        }
        Some(FieldType::Boolean) if !matches!(v, "true" | "false") => Err(bad("22P02", "boolean")),
        Some(FieldType::Datetime)
            if normalize_timestamp(v).is_none()
                && normalize_timestamp(&v.replacen(' ', "+", 1)).is_none() =>
        {
            Err(bad("22007", "timestamp with time zone"))
        }
        _ => Ok(()),
    }
}

/// Unknown columns and ill-typed literals, as PostgreSQL would name them.
fn check_filter(c: &Collection, f: &Filter) -> Result<(), PgError> {
    match f {
        Filter::And(v) | Filter::Or(v) => v.iter().try_for_each(|f| check_filter(c, f)),
        Filter::Not(f) => check_filter(c, f),
        Filter::Cmp { field, value, .. } => check_literal(c, field, value),
        Filter::In { field, values } => values.iter().try_for_each(|v| check_literal(c, field, v)),
        Filter::Is { field, .. } | Filter::Like { field, .. } => {
            column_type(c, field).map(|_| ()).ok_or_else(|| PgError::no_column(&c.name, field))
        }
    }
}

const OPERATORS_HINT: &str =
    "Livebase supports eq, neq, gt, gte, lt, lte, like, ilike, is, in, not., or=(…) and and=(…)";

/// Reads the decoded query pairs of a request on collection `c`.
pub fn parse(pairs: &[(String, String)], c: &Collection) -> Result<Params, PgError> {
    let mut p = Params::default();
    let mut filters = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "select" => p.select = parse_select(c, v)?,
            "order" => p.order = parse_order(c, v)?,
            "limit" => p.limit = Some(parse_count("limit", v)?),
            "offset" => p.offset = Some(parse_count("offset", v)?),
            "columns" => {
                p.columns =
                    Some(v.split(',').map(|s| unquote(s).to_string()).filter(|s| !s.is_empty()).collect())
            }
            "on_conflict" => {
                p.on_conflict =
                    Some(v.split(',').map(|s| unquote(s).to_string()).filter(|s| !s.is_empty()).collect())
            }
            "apikey" => {}
            key if key.contains('.') && key != "not.and" && key != "not.or" => {
                return Err(PgError::syntax(format!(
                    "'{key}' applies to an embedded resource; Livebase does not embed related collections"
                )))
            }
            _ => filters.push((k.clone(), v.clone())),
        }
    }
    debug_assert!(filters.iter().all(|(k, _)| !RESERVED.contains(&k.as_str())));
    p.filter = Filter::from_pairs(&filters).map_err(|e| {
        let mut err = PgError::syntax(e.message.clone());
        if e.message.contains("operator") {
            err = err.hint(OPERATORS_HINT);
        }
        err
    })?;
    if let Some(f) = &p.filter {
        check_filter(c, f)?;
        p.bound = Some(f.bind(c).map_err(|e| PgError::syntax(e.message))?);
    }
    Ok(p)
}

/// One record as `select` shapes it: the named columns in the order asked (renamed by their
/// alias), `*` for every column.
pub fn project(select: &[SelectItem], r: &Map<String, Value>) -> Value {
    if select.is_empty() {
        return Value::Object(r.clone());
    }
    let mut out = Map::new();
    for item in select {
        match item {
            SelectItem::Star => out.extend(r.iter().map(|(k, v)| (k.clone(), v.clone()))),
            SelectItem::Column { name, alias } => {
                let v = r.get(name).cloned().unwrap_or(Value::Null);
                out.insert(alias.clone().unwrap_or_else(|| name.clone()), v);
            }
        }
    }
    Value::Object(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    #[default]
    Minimal,
    Representation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Merge,
    Ignore,
}

/// The `Prefer` header(s).
#[derive(Debug, Clone, Default)]
pub struct Prefer {
    pub ret: Return,
    pub count: bool,
    pub resolution: Option<Resolution>,
    /// `missing=default`: keys absent from an object of a bulk insert take the column default
    /// (else null).
    pub missing_default: bool,
    pub strict: bool,
    pub max_affected: Option<usize>,
}

pub fn prefer(headers: &HeaderMap) -> Prefer {
    let mut p = Prefer::default();
    for v in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
        for item in v.split(',').map(str::trim) {
            match item.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("return", "representation")) => p.ret = Return::Representation,
                Some(("return", _)) => p.ret = Return::Minimal,
                Some(("count", "exact" | "planned" | "estimated")) => p.count = true,
                Some(("resolution", "merge-duplicates")) => p.resolution = Some(Resolution::Merge),
                Some(("resolution", "ignore-duplicates")) => p.resolution = Some(Resolution::Ignore),
                Some(("missing", m)) => p.missing_default = m == "default",
                Some(("handling", h)) => p.strict = h == "strict",
                Some(("max-affected", n)) => p.max_affected = n.parse().ok(),
                _ => {}
            }
        }
    }
    p
}

/// What the response body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Media {
    /// `application/vnd.pgrst.object+json`: exactly one row, as an object.
    pub single: bool,
    /// `;nulls=stripped`: keys whose value is null are left out.
    pub strip_nulls: bool,
}

/// Reads `Accept`; 406 `PGRST107` when it names nothing JSON.
pub fn media(headers: &HeaderMap) -> Result<Media, PgError> {
    let Some(accept) = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Media::default());
    };
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let ty = parts.next().unwrap_or_default().to_ascii_lowercase();
        let strip_nulls = parts.any(|p| p.replace(' ', "") == "nulls=stripped");
        match ty.as_str() {
            "application/vnd.pgrst.object+json" | "application/vnd.pgrst.object" => {
                return Ok(Media { single: true, strip_nulls })
            }
            "application/json" | "application/vnd.pgrst.array+json" | "*/*" | "application/*" | "" => {
                return Ok(Media { single: false, strip_nulls })
            }
            _ => {}
        }
    }
    Err(PgError::new(
        StatusCode::NOT_ACCEPTABLE,
        "PGRST107",
        format!("None of these media types are available: {accept}"),
    )
    .hint("Livebase answers JSON only (application/json, application/vnd.pgrst.object+json)"))
}

/// `Range: 0-4` (items): offset and inclusive end. Malformed ranges are ignored, as PostgREST
/// does.
pub fn range(headers: &HeaderMap) -> Option<(usize, Option<usize>)> {
    let v = headers.get(axum::http::header::RANGE)?.to_str().ok()?.trim();
    let v = v.strip_prefix("items=").unwrap_or(v);
    let (a, b) = v.split_once('-')?;
    let start = a.trim().parse::<usize>().ok()?;
    let end = match b.trim() {
        "" => None,
        b => Some(b.parse::<usize>().ok()?),
    };
    if end.is_some_and(|e| e < start) {
        return None;
    }
    Some((start, end))
}

/// `Content-Range`: `first-last/total`, `*` for an empty range or an unknown total.
pub fn content_range(offset: usize, rows: usize, total: Option<u64>) -> String {
    let total_s = total.map_or("*".to_string(), |t| t.to_string());
    if rows == 0 || total == Some(0) {
        format!("*/{total_s}")
    } else {
        format!("{offset}-{}/{total_s}", offset + rows - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_reads_like_postgrest() {
        assert_eq!(content_range(0, 5, Some(5)), "0-4/5");
        assert_eq!(content_range(0, 5, None), "0-4/*");
        assert_eq!(content_range(0, 0, Some(0)), "*/0");
        assert_eq!(content_range(0, 0, None), "*/*");
        assert_eq!(content_range(2, 3, Some(9)), "2-4/9");
    }

    #[test]
    fn select_keeps_order_and_aliases() {
        let c: Collection = serde_json::from_value(serde_json::json!({"name": "t", "fields": [
            {"name": "a", "type": "text"}, {"name": "b", "type": "integer"}]}))
        .expect("collection");
        let s = parse_select(&c, "b,x:a").expect("select");
        let mut r = Map::new();
        r.insert("id".into(), "1".into());
        r.insert("a".into(), "A".into());
        r.insert("b".into(), 2.into());
        assert_eq!(serde_json::to_string(&project(&s, &r)).expect("json"), r#"{"b":2,"x":"A"}"#);
        assert_eq!(parse_select(&c, "nope").expect_err("unknown").code, "42703");
        assert_eq!(parse_select(&c, "a,other(*)").expect_err("embed").code, "PGRST200");
    }
}
