//! The filter grammar shared by REST list queries and realtime subscriptions. (Rules are a
//! separate expression language: see `rules`.)
//!
//! PostgREST operator syntax, as `key=value` pairs that are ANDed:
//!
//! - `qty=gt.5`, `status=in.(open,late)`, `title=like.*box*`, `title=ilike.*Box*`,
//!   `owner=is.null`, `done=is.true`; `qty=not.gt.5` negates any operator.
//! - `or=(a.eq.1,b.lt.2)`, `and=(a.eq.1,or(b.lt.2,c.gt.3))`, `not.or=(...)`, `not.and=(...)`.
//!   Inside groups a condition is `field.op.value` or `field.not.op.value`, and nested groups
//!   are `and(...)`, `or(...)`, `not.and(...)`, `not.or(...)`.
//!
//! Operators: `eq neq lt lte gt gte in is like ilike`. A value after the operator runs to the
//! end of the pair (so `title=eq.a.b` is the value `a.b`); inside groups and `in` lists it runs
//! to the next comma or closing parenthesis at its own nesting level, and may be double-quoted
//! (`"a,b"`, with `\"` and `\\` escapes) to hold commas, parentheses or quotes.
//!
//! Evaluation is SQL three-valued logic, so that [`BoundFilter::matches`] agrees exactly with
//! the SQL the store adapters generate: a comparison against a null field is unknown, `is` is
//! never unknown, `not` of unknown is unknown, `and`/`or` follow Kleene logic, and only a true
//! result matches.

use crate::record::{normalize_timestamp, Record};
use crate::schema::{Collection, FieldType};
use serde_json::Value;
use std::cmp::Ordering;
use std::fmt;

pub const MAX_FILTER_BYTES: usize = 4096;
/// Most conditions (comparisons, `in`, `is`, `like`) in one filter.
pub const MAX_CONDITIONS: usize = 64;
/// Deepest nesting of `and(...)` / `or(...)` groups.
pub const MAX_DEPTH: usize = 8;
/// Most values in one `in.(...)` list.
pub const MAX_IN_VALUES: usize = 256;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    pub message: String,
}

fn ferr(message: impl Into<String>) -> FilterError {
    FilterError { message: message.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    /// The operator's name in the grammar (`eq`, `neq`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Neq => "neq",
            CmpOp::Lt => "lt",
            CmpOp::Lte => "lte",
            CmpOp::Gt => "gt",
            CmpOp::Gte => "gte",
        }
    }

    /// Whether `ord` (record value compared with the literal) satisfies the operator.
    pub fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::Neq => ord != Ordering::Equal,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Lte => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Gte => ord != Ordering::Less,
        }
    }
}

/// A typed literal, after binding to a field's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Text(String),
}

/// Parsed, not yet bound: literals are still raw strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cmp { field: String, op: CmpOp, value: String },
    In { field: String, values: Vec<String> },
    Is { field: String, value: String },
    Like { field: String, pattern: String, case_insensitive: bool },
}

/// Bound to a collection: fields exist, literals typed.
#[derive(Debug, Clone, PartialEq)]
pub enum BoundFilter {
    And(Vec<BoundFilter>),
    Or(Vec<BoundFilter>),
    Not(Box<BoundFilter>),
    Cmp {
        field: String,
        op: CmpOp,
        value: Scalar,
    },
    In {
        field: String,
        values: Vec<Scalar>,
    },
    /// `is.null`, `is.true`, `is.false`.
    Is {
        field: String,
        value: Scalar,
    },
    Like {
        field: String,
        pattern: String,
        case_insensitive: bool,
    },
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Shortens user input quoted in error messages.
fn show(s: &str) -> String {
    const MAX: usize = 120;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX - 3).collect();
        out.push_str("...");
        out
    }
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

const RESERVED_FIELD_NAMES: [&str; 3] = ["and", "or", "not"];

fn check_field_name(name: &str, ctx: &str) -> Result<(), FilterError> {
    if name.is_empty() || !name.bytes().all(is_name_char) {
        return Err(ferr(format!("invalid field name '{}' in '{}'", show(name), show(ctx))));
    }
    if RESERVED_FIELD_NAMES.contains(&name) {
        return Err(ferr(format!(
            "'{name}' is reserved and cannot be used as a field name in '{}'",
            show(ctx)
        )));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Op {
    Cmp(CmpOp),
    In,
    Is,
    Like(bool),
}

fn op_from_name(s: &str) -> Option<Op> {
    Some(match s {
        "eq" => Op::Cmp(CmpOp::Eq),
        "neq" => Op::Cmp(CmpOp::Neq),
        "lt" => Op::Cmp(CmpOp::Lt),
        "lte" => Op::Cmp(CmpOp::Lte),
        "gt" => Op::Cmp(CmpOp::Gt),
        "gte" => Op::Cmp(CmpOp::Gte),
        "in" => Op::In,
        "is" => Op::Is,
        "like" => Op::Like(false),
        "ilike" => Op::Like(true),
        _ => return None,
    })
}

/// Parses one pair's value. `ctx` is the whole pair, for error messages; `conditions` counts
/// conditions across all pairs of the filter.
struct Parser<'a> {
    s: &'a str,
    pos: usize,
    ctx: &'a str,
    conditions: &'a mut usize,
}

impl<'a> Parser<'a> {
    fn err(&self, what: impl fmt::Display) -> FilterError {
        ferr(format!("{what} in '{}'", show(self.ctx)))
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b == b' ' || b == b'\t') {
            self.pos += 1;
        }
    }

    fn count_condition(&mut self) -> Result<(), FilterError> {
        *self.conditions += 1;
        if *self.conditions > MAX_CONDITIONS {
            return Err(ferr(format!("filter has more than {MAX_CONDITIONS} conditions")));
        }
        Ok(())
    }

    /// A value inside a group or an `in` list: quoted, or up to the next comma or closing
    /// parenthesis at its own level. Stops at that comma/parenthesis (not consumed).
    fn value(&mut self) -> Result<String, FilterError> {
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let mut out = String::new();
            loop {
                let Some(c) = self.rest().chars().next() else {
                    return Err(self.err("unterminated quoted value"));
                };
                self.pos += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => match self.rest().chars().next() {
                        Some(n @ ('"' | '\\')) => {
                            out.push(n);
                            self.pos += 1;
                        }
                        Some(_) => out.push('\\'),
                        None => return Err(self.err("unterminated quoted value")),
                    },
                    c => out.push(c),
                }
            }
            self.skip_ws();
            match self.peek() {
                Some(b',' | b')') | None => Ok(out),
                Some(_) => Err(self.err(format!(
                    "unexpected '{}' after quoted value \"{}\"",
                    show(self.rest()),
                    show(&out)
                ))),
            }
        } else {
            let start = self.pos;
            let mut depth = 0usize;
            while let Some(b) = self.peek() {
                match b {
                    b'(' => depth += 1,
                    b')' if depth == 0 => break,
                    b')' => depth -= 1,
                    b',' if depth == 0 => break,
                    _ => {}
                }
                self.pos += 1;
            }
            if depth > 0 {
                return Err(self.err("unbalanced parentheses"));
            }
            Ok(self.s[start..self.pos].to_string())
        }
    }

    /// `(a,"b,c",d)` at the current position; consumes the closing parenthesis.
    fn list(&mut self) -> Result<Vec<String>, FilterError> {
        if self.peek() != Some(b'(') {
            return Err(self.err("'in' needs a parenthesized list like in.(a,b)"));
        }
        self.pos += 1;
        let mut values = Vec::new();
        if self.peek() == Some(b')') {
            self.pos += 1;
            return Ok(values);
        }
        loop {
            values.push(self.value()?);
            if values.len() > MAX_IN_VALUES {
                return Err(self.err(format!("'in' list has more than {MAX_IN_VALUES} values")));
            }
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b')') => {
                    self.pos += 1;
                    return Ok(values);
                }
                _ => return Err(self.err("unbalanced parentheses")),
            }
        }
    }

    /// Reads an operator name: up to the next `.`. In a group it may not cross `,` or `)`.
    fn op_name(&mut self, in_group: bool) -> Result<&'a str, FilterError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == b'.' || (in_group && (b == b',' || b == b')')) {
                break;
            }
            self.pos += 1;
        }
        let s: &'a str = self.s;
        let name = &s[start..self.pos];
        if self.peek() == Some(b'.') {
            self.pos += 1;
            return Ok(name);
        }
        if name == "not" || op_from_name(name).is_some() {
            Err(self.err(format!("missing value after operator '{name}'")))
        } else if name.is_empty() {
            Err(self.err("missing operator (expected e.g. eq.5)"))
        } else {
            Err(self.err(format!("expected operator.value (e.g. eq.5) but found '{}'", show(name))))
        }
    }

    /// `[not.]op.value` for `field`. At the top level the value runs to the end of the pair.
    fn condition(&mut self, field: &str, in_group: bool) -> Result<Filter, FilterError> {
        let mut name = self.op_name(in_group)?;
        let negated = name == "not";
        if negated {
            name = self.op_name(in_group)?;
        }
        let Some(op) = op_from_name(name) else {
            return Err(self.err(format!("unknown operator '{}'", show(name))));
        };
        let field = field.to_string();
        let raw_value = |p: &mut Self| -> Result<String, FilterError> {
            if in_group {
                p.value()
            } else {
                let v = p.rest().to_string();
                p.pos = p.s.len();
                Ok(v)
            }
        };
        let leaf = match op {
            Op::Cmp(op) => Filter::Cmp { field, op, value: raw_value(self)? },
            Op::Like(case_insensitive) => Filter::Like { field, pattern: raw_value(self)?, case_insensitive },
            Op::Is => {
                let value = raw_value(self)?;
                if !matches!(value.as_str(), "null" | "true" | "false") {
                    return Err(
                        self.err(format!("'is' accepts only null, true or false, not '{}'", show(&value)))
                    );
                }
                Filter::Is { field, value }
            }
            Op::In => {
                let values = self.list()?;
                if !in_group && self.pos != self.s.len() {
                    return Err(self.err(format!("unexpected '{}' after the 'in' list", show(self.rest()))));
                }
                Filter::In { field, values }
            }
        };
        self.count_condition()?;
        Ok(if negated { Filter::Not(Box::new(leaf)) } else { leaf })
    }

    /// `(item,item,...)` at the current position, consuming the closing parenthesis.
    fn group(&mut self, depth: usize) -> Result<Vec<Filter>, FilterError> {
        if depth > MAX_DEPTH {
            return Err(ferr(format!("filter nesting is deeper than {MAX_DEPTH} levels")));
        }
        if self.peek() != Some(b'(') {
            return Err(self.err("expected '('"));
        }
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Err(self.err("unbalanced parentheses")),
                Some(b')') if items.is_empty() => return Err(self.err("empty group '()'")),
                _ => {}
            }
            items.push(self.group_item(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b')') => {
                    self.pos += 1;
                    return Ok(items);
                }
                None => return Err(self.err("unbalanced parentheses")),
                Some(_) => {
                    return Err(self.err(format!("unexpected '{}'", show(self.rest()))));
                }
            }
        }
    }

    fn group_item(&mut self, depth: usize) -> Result<Filter, FilterError> {
        for (prefix, negated, is_and) in
            [("and(", false, true), ("or(", false, false), ("not.and(", true, true), ("not.or(", true, false)]
        {
            if self.rest().starts_with(prefix) {
                self.pos += prefix.len() - 1;
                let items = self.group(depth + 1)?;
                let g = if is_and { Filter::And(items) } else { Filter::Or(items) };
                return Ok(if negated { Filter::Not(Box::new(g)) } else { g });
            }
        }
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        let s: &'a str = self.s;
        let field = &s[start..self.pos];
        if field.is_empty() {
            return Err(self.err(match self.peek() {
                Some(b',' | b')') => "empty condition".to_string(),
                _ => format!("expected field.operator.value at '{}'", show(self.rest())),
            }));
        }
        if self.peek() != Some(b'.') {
            return Err(self.err(format!("expected field.operator.value at '{}'", show(&self.s[start..]))));
        }
        self.pos += 1;
        let field = field.to_string();
        check_field_name(&field, self.ctx)?;
        self.condition(&field, true)
    }
}

fn parse_pair(key: &str, value: &str, conditions: &mut usize) -> Result<Filter, FilterError> {
    let ctx = format!("{key}={value}");
    let mut p = Parser { s: value, pos: 0, ctx: &ctx, conditions };
    let group = match key {
        "and" => Some((false, true)),
        "or" => Some((false, false)),
        "not.and" => Some((true, true)),
        "not.or" => Some((true, false)),
        _ => None,
    };
    match group {
        Some((negated, is_and)) => {
            if p.peek() != Some(b'(') {
                return Err(p.err(format!("'{key}' needs a parenthesized list like {key}=(a.eq.1,b.gt.2)")));
            }
            let items = p.group(1)?;
            if p.pos != value.len() {
                return Err(p.err(format!("unexpected '{}' after ')'", show(p.rest()))));
            }
            let g = if is_and { Filter::And(items) } else { Filter::Or(items) };
            Ok(if negated { Filter::Not(Box::new(g)) } else { g })
        }
        None => {
            check_field_name(key, &ctx)?;
            p.condition(key, false)
        }
    }
}

/// Decodes `%XX` escapes and `+` (as space). A `%` not followed by two hex digits stays as is.
pub fn percent_decode(s: &str) -> Result<String, FilterError> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi * 16 + lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ferr(format!("'{}' is not valid UTF-8 after percent-decoding", show(s))))
}

/// Percent-encodes what [`Filter::parse`] would otherwise read differently (`%`, `&`, `+`,
/// `#`, whitespace and control characters). Everything else is kept readable.
fn percent_encode_into(s: &str, out: &mut String) {
    for c in s.chars() {
        if matches!(c, '%' | '&' | '+' | '#') || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

impl Filter {
    /// Parses `key=value` pairs (already percent-decoded) as a conjunction.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Option<Filter>, FilterError> {
        // As long as the query form `k=v&k=v` would be.
        let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if bytes.saturating_sub(1) > MAX_FILTER_BYTES {
            return Err(ferr(format!("filter is longer than {MAX_FILTER_BYTES} bytes")));
        }
        let mut conditions = 0;
        let mut parts = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            parts.push(parse_pair(k, v, &mut conditions)?);
        }
        Ok(match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Filter::And(parts)),
        })
    }

    /// Parses a filter string in query form: `qty=gt.5&status=in.(a,b)` or `and=(...)`.
    pub fn parse(s: &str) -> Result<Option<Filter>, FilterError> {
        if s.len() > MAX_FILTER_BYTES {
            return Err(ferr(format!("filter is longer than {MAX_FILTER_BYTES} bytes")));
        }
        let s = s.strip_prefix('?').unwrap_or(s);
        let mut pairs = Vec::new();
        for part in s.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(ferr(format!("expected key=value (e.g. qty=gt.5) but found '{}'", show(part))));
            };
            pairs.push((percent_decode(k)?, percent_decode(v)?));
        }
        Filter::from_pairs(&pairs)
    }

    pub fn bind(&self, c: &Collection) -> Result<BoundFilter, FilterError> {
        Ok(match self {
            Filter::And(v) => BoundFilter::And(v.iter().map(|f| f.bind(c)).collect::<Result<_, _>>()?),
            Filter::Or(v) => BoundFilter::Or(v.iter().map(|f| f.bind(c)).collect::<Result<_, _>>()?),
            Filter::Not(f) => BoundFilter::Not(Box::new(f.bind(c)?)),
            Filter::Cmp { field, op, value } => {
                let ty = field_type(c, field)?;
                if value == "null" {
                    return Err(ferr(format!(
                        "cannot compare with null using {}: use {field}=is.null (or {field}=not.is.null)",
                        op.as_str()
                    )));
                }
                BoundFilter::Cmp { field: field.clone(), op: *op, value: typed(field, ty, value)? }
            }
            Filter::In { field, values } => {
                let ty = field_type(c, field)?;
                if values.iter().any(|v| v == "null") {
                    return Err(ferr(format!(
                        "null cannot be listed in 'in' (field {field}): use or=({field}.in.(...),{field}.is.null)"
                    )));
                }
                let values = values.iter().map(|v| typed(field, ty, v)).collect::<Result<_, _>>()?;
                BoundFilter::In { field: field.clone(), values }
            }
            Filter::Is { field, value } => {
                let ty = field_type(c, field)?;
                let value = match value.as_str() {
                    "null" => Scalar::Null,
                    "true" | "false" if ty == FieldType::Boolean => Scalar::Bool(value == "true"),
                    "true" | "false" => {
                        return Err(ferr(format!(
                            "is.{value} applies only to boolean fields (field {field} is {})",
                            ty.as_str()
                        )))
                    }
                    _ => {
                        return Err(ferr(format!(
                            "'is' accepts only null, true or false, not '{}' (field {field})",
                            show(value)
                        )))
                    }
                };
                BoundFilter::Is { field: field.clone(), value }
            }
            Filter::Like { field, pattern, case_insensitive } => {
                let ty = field_type(c, field)?;
                if !matches!(
                    ty,
                    FieldType::Text | FieldType::Select | FieldType::Relation | FieldType::Datetime
                ) {
                    return Err(ferr(format!(
                        "{} applies only to text, select, relation and datetime fields (field {field} is {})",
                        if *case_insensitive { "ilike" } else { "like" },
                        ty.as_str()
                    )));
                }
                BoundFilter::Like {
                    field: field.clone(),
                    pattern: pattern.clone(),
                    case_insensitive: *case_insensitive,
                }
            }
        })
    }
}

/// The type of a declared or system field.
fn field_type(c: &Collection, field: &str) -> Result<FieldType, FilterError> {
    match field {
        "id" => Ok(FieldType::Text),
        "version" => Ok(FieldType::Integer),
        "created_at" | "updated_at" => Ok(FieldType::Datetime),
        _ => c
            .field(field)
            .map(|f| f.ty)
            .ok_or_else(|| ferr(format!("field '{field}' does not exist in collection '{}'", c.name))),
    }
}

/// A datetime literal in canonical form. A `+` offset that reached us as a space (an
/// unencoded `+` in a URL query decodes to a space) is read as `+`.
fn datetime_literal(v: &str) -> Option<String> {
    normalize_timestamp(v).or_else(|| {
        let cut = v.len().checked_sub(6)?;
        let (head, offset) = (v.get(..cut)?, v.get(cut..)?);
        let rest = offset.strip_prefix(' ')?;
        normalize_timestamp(&format!("{head}+{rest}"))
    })
}

/// Types a literal by its field's type (not `null`; that is refused by the callers).
fn typed(field: &str, ty: FieldType, v: &str) -> Result<Scalar, FilterError> {
    match ty {
        FieldType::Text | FieldType::Select | FieldType::Relation => Ok(Scalar::Text(v.to_string())),
        FieldType::Integer => v
            .parse::<i64>()
            .map(Scalar::Int)
            .map_err(|_| ferr(format!("'{}' is not an integer (field {field})", show(v)))),
        FieldType::Number => match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Scalar::Num(x)),
            _ => Err(ferr(format!("'{}' is not a finite number (field {field})", show(v)))),
        },
        FieldType::Boolean => match v {
            "true" => Ok(Scalar::Bool(true)),
            "false" => Ok(Scalar::Bool(false)),
            _ => Err(ferr(format!("'{}' is not a boolean (field {field}); use true or false", show(v)))),
        },
        FieldType::Datetime => datetime_literal(v).map(Scalar::Text).ok_or_else(|| {
            ferr(format!(
                "'{}' is not an RFC 3339 datetime (field {field}), e.g. 2026-01-02T03:04:05Z",
                show(v)
            ))
        }),
        FieldType::Json => {
            Err(ferr(format!("json field {field} can only be filtered with is.null or not.is.null")))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Display (back to the query form)
// ---------------------------------------------------------------------------------------------

/// A value inside a group or `in` list, quoted when it would otherwise read differently.
fn push_group_value(v: &str, out: &mut String) {
    if !v.is_empty() && !v.contains([',', '(', ')', '"', '\\']) {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// `op.value` of a leaf (without `not.`); `in_group` selects how plain values are written.
fn push_op_value(f: &Filter, in_group: bool, out: &mut String) {
    let plain = |v: &str, out: &mut String| {
        if in_group {
            push_group_value(v, out)
        } else {
            out.push_str(v)
        }
    };
    match f {
        Filter::Cmp { op, value, .. } => {
            out.push_str(op.as_str());
            out.push('.');
            plain(value, out);
        }
        Filter::In { values, .. } => {
            out.push_str("in.(");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_group_value(v, out);
            }
            out.push(')');
        }
        Filter::Is { value, .. } => {
            out.push_str("is.");
            plain(value, out);
        }
        Filter::Like { pattern, case_insensitive, .. } => {
            out.push_str(if *case_insensitive { "ilike." } else { "like." });
            plain(pattern, out);
        }
        Filter::And(_) | Filter::Or(_) | Filter::Not(_) => {}
    }
}

fn leaf_field(f: &Filter) -> Option<&str> {
    match f {
        Filter::Cmp { field, .. }
        | Filter::In { field, .. }
        | Filter::Is { field, .. }
        | Filter::Like { field, .. } => Some(field),
        Filter::And(_) | Filter::Or(_) | Filter::Not(_) => None,
    }
}

fn push_items(items: &[Filter], out: &mut String) {
    out.push('(');
    for (i, f) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_group_item(f, out);
    }
    out.push(')');
}

/// One item inside a group: `field.op.value`, `field.not.op.value`, `and(...)`, `not.or(...)`.
fn push_group_item(f: &Filter, out: &mut String) {
    match f {
        Filter::And(v) => {
            out.push_str("and");
            push_items(v, out);
        }
        Filter::Or(v) => {
            out.push_str("or");
            push_items(v, out);
        }
        Filter::Not(inner) => match &**inner {
            Filter::And(v) => {
                out.push_str("not.and");
                push_items(v, out);
            }
            Filter::Or(v) => {
                out.push_str("not.or");
                push_items(v, out);
            }
            Filter::Not(_) => {
                // Not produced by the parser; written as a negated one-item group.
                out.push_str("not.and");
                push_items(std::slice::from_ref(inner), out);
            }
            leaf => {
                out.push_str(leaf_field(leaf).unwrap_or_default());
                out.push_str(".not.");
                push_op_value(leaf, true, out);
            }
        },
        leaf => {
            out.push_str(leaf_field(leaf).unwrap_or_default());
            out.push('.');
            push_op_value(leaf, true, out);
        }
    }
}

/// One `key=value` pair, not yet percent-encoded.
fn pair_string(f: &Filter) -> String {
    let mut out = String::new();
    match f {
        Filter::And(v) => {
            out.push_str("and=");
            push_items(v, &mut out);
        }
        Filter::Or(v) => {
            out.push_str("or=");
            push_items(v, &mut out);
        }
        Filter::Not(inner) => match &**inner {
            Filter::And(v) => {
                out.push_str("not.and=");
                push_items(v, &mut out);
            }
            Filter::Or(v) => {
                out.push_str("not.or=");
                push_items(v, &mut out);
            }
            Filter::Not(_) => {
                out.push_str("not.and=");
                push_items(std::slice::from_ref(inner), &mut out);
            }
            leaf => {
                out.push_str(leaf_field(leaf).unwrap_or_default());
                out.push_str("=not.");
                push_op_value(leaf, false, &mut out);
            }
        },
        leaf => {
            out.push_str(leaf_field(leaf).unwrap_or_default());
            out.push('=');
            push_op_value(leaf, false, &mut out);
        }
    }
    out
}

/// Writes the filter in query form (`qty=gt.5&or=(a.eq.1,b.lt.2)`), percent-encoding only
/// what [`Filter::parse`] would read differently, so that `Filter::parse(&f.to_string())`
/// gives back `f` for every filter the parser produces.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: &[Filter] = match self {
            Filter::And(v) if v.len() >= 2 => v,
            other => std::slice::from_ref(other),
        };
        let mut out = String::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            percent_encode_into(&pair_string(p), &mut out);
        }
        f.write_str(&out)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// The record's value compared with a literal; None when unknown (null, or a value of the
/// wrong JSON type).
fn compare(v: &Value, s: &Scalar) -> Option<Ordering> {
    match s {
        Scalar::Null => None,
        Scalar::Int(n) => v.as_i64().map(|x| x.cmp(n)),
        Scalar::Num(n) => match v {
            Value::Number(x) => x.as_f64().and_then(|x| x.partial_cmp(n)),
            _ => None,
        },
        Scalar::Text(t) => v.as_str().map(|x| x.cmp(t.as_str())),
        Scalar::Bool(b) => v.as_bool().map(|x| x.cmp(b)),
    }
}

/// `*` and `%` match any sequence, `_` exactly one character, everything else itself.
/// Greedy with one backtrack point: O(pattern × text), never exponential.
pub fn like_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let any = |c: char| c == '*' || c == '%';
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(&c) if any(c) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '_' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| any(c))
}

fn and3(items: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for v in items {
        match v {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown {
        None
    } else {
        Some(true)
    }
}

fn or3(items: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for v in items {
        match v {
            Some(true) => return Some(true),
            None => unknown = true,
            Some(false) => {}
        }
    }
    if unknown {
        None
    } else {
        Some(false)
    }
}

impl BoundFilter {
    pub fn matches(&self, r: &Record) -> bool {
        self.evaluate(r) == Some(true)
    }

    /// SQL three-valued evaluation: `None` is unknown (SQL NULL).
    pub fn evaluate(&self, r: &Record) -> Option<bool> {
        let get = |field: &str| r.get(field).filter(|v| !v.is_null());
        match self {
            BoundFilter::And(v) => and3(v.iter().map(|f| f.evaluate(r))),
            BoundFilter::Or(v) => or3(v.iter().map(|f| f.evaluate(r))),
            BoundFilter::Not(f) => f.evaluate(r).map(|b| !b),
            BoundFilter::Cmp { field, op, value } => compare(get(field)?, value).map(|o| op.holds(o)),
            BoundFilter::In { field, values } => {
                // SQL: `x IN ()` is false even when x is null.
                if values.is_empty() {
                    return Some(false);
                }
                let v = get(field)?;
                let mut found = false;
                for s in values {
                    match compare(v, s)? {
                        Ordering::Equal => found = true,
                        _ => continue,
                    }
                }
                Some(found)
            }
            BoundFilter::Is { field, value } => Some(match value {
                Scalar::Null => get(field).is_none(),
                Scalar::Bool(b) => get(field).and_then(Value::as_bool) == Some(*b),
                _ => false,
            }),
            BoundFilter::Like { field, pattern, case_insensitive } => {
                let text = get(field)?.as_str()?;
                Some(if *case_insensitive {
                    like_match(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
                } else {
                    like_match(pattern, text)
                })
            }
        }
    }

    /// An equality every match must satisfy (`field = value` at the top level), for indexing.
    pub fn index_key(&self) -> Option<(&str, &Scalar)> {
        fn eq(f: &BoundFilter) -> Option<(&str, &Scalar)> {
            match f {
                BoundFilter::Cmp { field, op: CmpOp::Eq, value } => Some((field.as_str(), value)),
                _ => None,
            }
        }
        match self {
            BoundFilter::And(v) => v.iter().find_map(eq),
            other => eq(other),
        }
    }

    /// The fields the filter reads, each once, in order of first appearance.
    pub fn fields(&self) -> Vec<&str> {
        fn walk<'a>(f: &'a BoundFilter, out: &mut Vec<&'a str>) {
            let field = match f {
                BoundFilter::And(v) | BoundFilter::Or(v) => {
                    v.iter().for_each(|c| walk(c, out));
                    return;
                }
                BoundFilter::Not(c) => return walk(c, out),
                BoundFilter::Cmp { field, .. }
                | BoundFilter::In { field, .. }
                | BoundFilter::Is { field, .. }
                | BoundFilter::Like { field, .. } => field.as_str(),
            };
            if !out.contains(&field) {
                out.push(field);
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn items() -> Collection {
        serde_json::from_value(json!({"name": "items", "fields": [
            {"name": "title", "type": "text"},
            {"name": "qty", "type": "integer"},
            {"name": "price", "type": "number"},
            {"name": "done", "type": "boolean"},
            {"name": "due", "type": "datetime"},
            {"name": "status", "type": "select", "values": ["open", "late"]},
            {"name": "owner", "type": "relation", "collection": "users"},
            {"name": "meta", "type": "json"}]}))
        .unwrap()
    }

    fn rec(data: Value) -> Record {
        let m = data.as_object().unwrap().clone();
        Record::new("r1", 3, "2026-01-01T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z", m)
    }

    fn parse(s: &str) -> Filter {
        Filter::parse(s).unwrap().unwrap()
    }

    fn bound(s: &str) -> BoundFilter {
        parse(s).bind(&items()).unwrap()
    }

    fn m(s: &str, data: Value) -> bool {
        bound(s).matches(&rec(data))
    }

    fn perr(s: &str) -> String {
        Filter::parse(s).unwrap_err().message
    }

    fn berr(s: &str) -> String {
        parse(s).bind(&items()).unwrap_err().message
    }

    fn cmp(field: &str, op: CmpOp, value: &str) -> Filter {
        Filter::Cmp { field: field.into(), op, value: value.into() }
    }

    #[test]
    fn parses_every_operator() {
        assert_eq!(parse("qty=eq.5"), cmp("qty", CmpOp::Eq, "5"));
        assert_eq!(parse("qty=neq.5"), cmp("qty", CmpOp::Neq, "5"));
        assert_eq!(parse("qty=lt.5"), cmp("qty", CmpOp::Lt, "5"));
        assert_eq!(parse("qty=lte.5"), cmp("qty", CmpOp::Lte, "5"));
        assert_eq!(parse("qty=gt.5"), cmp("qty", CmpOp::Gt, "5"));
        assert_eq!(parse("qty=gte.5"), cmp("qty", CmpOp::Gte, "5"));
        assert_eq!(
            parse("status=in.(open,late)"),
            Filter::In { field: "status".into(), values: vec!["open".into(), "late".into()] }
        );
        assert_eq!(parse("owner=is.null"), Filter::Is { field: "owner".into(), value: "null".into() });
        assert_eq!(
            parse("title=like.*box*"),
            Filter::Like { field: "title".into(), pattern: "*box*".into(), case_insensitive: false }
        );
        assert_eq!(
            parse("title=ilike.*Box*"),
            Filter::Like { field: "title".into(), pattern: "*Box*".into(), case_insensitive: true }
        );
        assert_eq!(parse("qty=not.gt.5"), Filter::Not(Box::new(cmp("qty", CmpOp::Gt, "5"))));
    }

    #[test]
    fn values_run_to_the_end_of_the_pair() {
        assert_eq!(parse("title=eq.a.b"), cmp("title", CmpOp::Eq, "a.b"));
        assert_eq!(parse("title=eq.a,b(c"), cmp("title", CmpOp::Eq, "a,b(c"));
        assert_eq!(parse("title=eq."), cmp("title", CmpOp::Eq, ""));
        assert_eq!(parse("title=eq.x=y"), cmp("title", CmpOp::Eq, "x=y"));
        assert_eq!(parse("title=eq.\"q\""), cmp("title", CmpOp::Eq, "\"q\""));
    }

    #[test]
    fn pairs_are_anded_and_none_is_none() {
        assert_eq!(Filter::parse("").unwrap(), None);
        assert_eq!(Filter::parse("&").unwrap(), None);
        assert_eq!(parse("?qty=gt.1"), cmp("qty", CmpOp::Gt, "1"));
        assert_eq!(Filter::from_pairs(&[]).unwrap(), None);
        assert_eq!(
            parse("qty=gt.1&title=eq.a"),
            Filter::And(vec![cmp("qty", CmpOp::Gt, "1"), cmp("title", CmpOp::Eq, "a")])
        );
        let pairs = vec![("qty".to_string(), "gt.1".to_string())];
        assert_eq!(Filter::from_pairs(&pairs).unwrap(), Some(cmp("qty", CmpOp::Gt, "1")));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(parse("title=eq.a%20b+c%26d"), cmp("title", CmpOp::Eq, "a b c&d"));
        assert_eq!(parse("title=eq.100%"), cmp("title", CmpOp::Eq, "100%"));
        assert_eq!(parse("title=eq.%zz"), cmp("title", CmpOp::Eq, "%zz"));
        assert_eq!(parse("t%69tle=eq.%C3%BC"), cmp("title", CmpOp::Eq, "ü"));
        assert!(perr("title=eq.%FF").contains("UTF-8"));
    }

    #[test]
    fn groups_nest_and_negate() {
        assert_eq!(
            parse("or=(a.eq.1,b.lt.2)"),
            Filter::Or(vec![cmp("a", CmpOp::Eq, "1"), cmp("b", CmpOp::Lt, "2")])
        );
        assert_eq!(
            parse("and=(a.eq.1,or(b.lt.2,c.gt.3))"),
            Filter::And(vec![
                cmp("a", CmpOp::Eq, "1"),
                Filter::Or(vec![cmp("b", CmpOp::Lt, "2"), cmp("c", CmpOp::Gt, "3")])
            ])
        );
        assert_eq!(
            parse("not.or=(a.eq.1,not.and(b.not.lt.2,c.is.null))"),
            Filter::Not(Box::new(Filter::Or(vec![
                cmp("a", CmpOp::Eq, "1"),
                Filter::Not(Box::new(Filter::And(vec![
                    Filter::Not(Box::new(cmp("b", CmpOp::Lt, "2"))),
                    Filter::Is { field: "c".into(), value: "null".into() },
                ])))
            ])))
        );
        assert_eq!(
            parse("not.and=(a.in.(1,2),b.like.x*)"),
            Filter::Not(Box::new(Filter::And(vec![
                Filter::In { field: "a".into(), values: vec!["1".into(), "2".into()] },
                Filter::Like { field: "b".into(), pattern: "x*".into(), case_insensitive: false },
            ])))
        );
        // Whitespace before a condition is skipped; values keep theirs.
        assert_eq!(
            parse("or=(a.eq.1, b.eq. x)"),
            Filter::Or(vec![cmp("a", CmpOp::Eq, "1"), cmp("b", CmpOp::Eq, " x")])
        );
        // Values in groups run to the next comma/paren at their own level.
        assert_eq!(
            parse("or=(a.eq.f(x,y),b.eq.a.b)"),
            Filter::Or(vec![cmp("a", CmpOp::Eq, "f(x,y)"), cmp("b", CmpOp::Eq, "a.b")])
        );
    }

    #[test]
    fn quoting_in_lists_and_groups() {
        assert_eq!(
            parse(r#"status=in.("a,b",c)"#),
            Filter::In { field: "status".into(), values: vec!["a,b".into(), "c".into()] }
        );
        assert_eq!(
            parse(r#"or=(title.eq."x,y",qty.gt.1)"#),
            Filter::Or(vec![cmp("title", CmpOp::Eq, "x,y"), cmp("qty", CmpOp::Gt, "1")])
        );
        assert_eq!(
            parse(r#"or=(title.eq."a\"b\\c\d(.)")"#),
            Filter::Or(vec![cmp("title", CmpOp::Eq, r#"a"b\c\d(.)"#)])
        );
        assert_eq!(parse(r#"status=in.()"#), Filter::In { field: "status".into(), values: vec![] });
        assert_eq!(
            parse(r#"status=in.("",)"#),
            Filter::In { field: "status".into(), values: vec!["".into(), "".into()] }
        );
        assert_eq!(parse(r#"or=(title.eq."")"#), Filter::Or(vec![cmp("title", CmpOp::Eq, "")]));
    }

    #[test]
    fn parse_errors_are_precise() {
        assert_eq!(perr("qty=gtx.5"), "unknown operator 'gtx' in 'qty=gtx.5'");
        assert_eq!(perr("or=(a.eq.1"), "unbalanced parentheses in 'or=(a.eq.1'");
        assert_eq!(perr("status=in.(a,b"), "unbalanced parentheses in 'status=in.(a,b'");
        assert_eq!(perr("or=(a.eq.(1)"), "unbalanced parentheses in 'or=(a.eq.(1)'");
        assert!(perr("qty=5").contains("expected operator.value"));
        assert!(perr("qty=gt").contains("missing value after operator 'gt'"));
        assert!(perr("qty").contains("expected key=value"));
        assert!(perr("qty=not.not.gt.1").contains("unknown operator 'not'"));
        assert!(perr("owner=is.nothing").contains("'is' accepts only null, true or false"));
        assert!(perr("status=in.a,b").contains("parenthesized list"));
        assert!(perr("status=in.(a)x").contains("unexpected 'x' after the 'in' list"));
        assert!(perr("or=a.eq.1").contains("parenthesized list"));
        assert!(perr("or=()").contains("empty group"));
        assert!(perr("or=(a.eq.1,)").contains("empty condition"));
        assert!(perr("or=(a.eq.1)x").contains("unexpected 'x' after ')'"));
        assert!(perr("or=(a.eq.1,b)").contains("expected field.operator.value"));
        assert!(perr("or=(a.xx.1)").contains("unknown operator 'xx'"));
        assert!(perr("or=(a.eq)").contains("missing value after operator 'eq'"));
        assert!(perr(r#"or=(a.eq."x)"#).contains("unterminated quoted value"));
        assert!(perr(r#"or=(a.eq."x"y)"#).contains("after quoted value"));
        assert!(perr("a b=eq.1").contains("invalid field name 'a b'"));
        assert!(perr("=eq.1").contains("invalid field name ''"));
        assert!(perr("not=eq.1").contains("reserved"));
        assert!(perr("or=(or.eq.1)").contains("reserved"));
    }

    #[test]
    fn limits() {
        let long = format!("title=eq.{}", "x".repeat(MAX_FILTER_BYTES));
        assert!(perr(&long).contains("longer than 4096 bytes"));
        let pairs = vec![("title".to_string(), format!("eq.{}", "x".repeat(MAX_FILTER_BYTES)))];
        assert!(Filter::from_pairs(&pairs).unwrap_err().message.contains("longer"));

        let conds = |n: usize| (0..n).map(|i| format!("a.eq.{i}")).collect::<Vec<_>>().join(",");
        assert!(Filter::parse(&format!("or=({})", conds(64))).is_ok());
        assert!(perr(&format!("or=({})", conds(65))).contains("more than 64 conditions"));
        let many_pairs = (0..65).map(|i| format!("a=eq.{i}")).collect::<Vec<_>>().join("&");
        assert!(perr(&many_pairs).contains("more than 64 conditions"));

        let nest = |n: usize| format!("and=({}a.eq.1{}", "or(".repeat(n - 1), ")".repeat(n));
        assert!(Filter::parse(&nest(8)).is_ok());
        assert!(perr(&nest(9)).contains("deeper than 8"));
        // Deep garbage must not overflow the stack.
        assert!(Filter::parse(&format!("and=({}", "and(".repeat(1000))).is_err());

        let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert!(Filter::parse(&format!("qty=in.({})", list(256))).is_ok());
        assert!(perr(&format!("qty=in.({})", list(257))).contains("more than 256 values"));
    }

    #[test]
    fn binding_types_literals() {
        assert_eq!(
            bound("qty=eq.5"),
            BoundFilter::Cmp { field: "qty".into(), op: CmpOp::Eq, value: Scalar::Int(5) }
        );
        assert_eq!(
            bound("price=gt.5"),
            BoundFilter::Cmp { field: "price".into(), op: CmpOp::Gt, value: Scalar::Num(5.0) }
        );
        assert_eq!(
            bound("done=eq.true"),
            BoundFilter::Cmp { field: "done".into(), op: CmpOp::Eq, value: Scalar::Bool(true) }
        );
        assert_eq!(
            bound("due=lt.2026-01-02T03:04:05+02:00"),
            BoundFilter::Cmp {
                field: "due".into(),
                op: CmpOp::Lt,
                value: Scalar::Text("2026-01-02T01:04:05.000000Z".into())
            }
        );
        assert_eq!(
            bound("version=gte.2"),
            BoundFilter::Cmp { field: "version".into(), op: CmpOp::Gte, value: Scalar::Int(2) }
        );
        assert_eq!(
            bound("done=is.false"),
            BoundFilter::Is { field: "done".into(), value: Scalar::Bool(false) }
        );
        assert_eq!(bound("meta=is.null"), BoundFilter::Is { field: "meta".into(), value: Scalar::Null });
        // A select value outside the allowed ones simply matches nothing.
        assert!(!m("status=eq.nope", json!({"status": "open"})));
        bound("id=like.r*");
        bound("created_at=ilike.2026*");
        bound("owner=in.(a,b)");
    }

    #[test]
    fn binding_errors_are_precise() {
        assert_eq!(berr("nope=eq.1"), "field 'nope' does not exist in collection 'items'");
        assert_eq!(berr("qty=eq.5.5"), "'5.5' is not an integer (field qty)");
        assert!(berr("qty=eq.abc").contains("'abc' is not an integer"));
        assert!(berr("qty=in.(1,x)").contains("'x' is not an integer"));
        assert!(berr("price=eq.abc").contains("not a finite number"));
        assert!(berr("price=eq.NaN").contains("not a finite number"));
        assert!(berr("price=eq.inf").contains("not a finite number"));
        assert!(berr("done=eq.yes").contains("not a boolean"));
        assert!(berr("due=eq.yesterday").contains("not an RFC 3339 datetime"));
        assert!(berr("qty=eq.null").contains("use qty=is.null"));
        assert!(berr("title=neq.null").contains("use title=is.null"));
        assert!(berr("title=in.(a,null)").contains("null cannot be listed"));
        assert!(berr("title=is.true").contains("only to boolean fields"));
        assert!(berr("meta=eq.1").contains("json field meta"));
        assert!(berr("meta=is.true").contains("only to boolean fields"));
        assert!(berr("qty=like.1*").contains("like applies only to text"));
        assert!(berr("done=ilike.t*").contains("ilike applies only to text"));
        assert!(berr("or=(title.eq.a,nope.eq.1)").contains("'nope' does not exist"));
        bound("price=eq.5");
        bound("price=eq.-1e3");
    }

    #[test]
    fn comparisons() {
        let r = json!({"title": "box", "qty": 5, "price": 2.5, "done": true,
                       "due": "2026-03-01T00:00:00.000000Z", "status": "open"});
        assert!(m("qty=eq.5", r.clone()));
        assert!(!m("qty=neq.5", r.clone()));
        assert!(m("qty=lt.6", r.clone()));
        assert!(m("qty=lte.5", r.clone()));
        assert!(!m("qty=gt.5", r.clone()));
        assert!(m("qty=gte.5", r.clone()));
        assert!(m("price=gt.2", r.clone()));
        assert!(m("price=lt.3", r.clone()));
        assert!(m("price=eq.2.5", r.clone()));
        assert!(m("price=gt.2", json!({"price": 3})));
        assert!(m("title=gt.a", r.clone()));
        assert!(!m("title=gt.boxes", r.clone()));
        assert!(m("title=lt.boy", r.clone()));
        assert!(m("title=gt.Box", r.clone()));
        assert!(m("done=gt.false", r.clone()));
        assert!(m("done=eq.true", r.clone()));
        assert!(m("due=gt.2026-02-28T23:00:00%2B00:30", r.clone()));
        assert!(m("due=lt.2026-03-01T00:00:00.000001Z", r.clone()));
        assert!(m("due=lt.2026-02-28T23:00:00-02:00", r.clone()));
        assert!(m("status=in.(late,open)", r.clone()));
        assert!(!m("status=in.(late)", r.clone()));
        assert!(!m("status=in.()", r.clone()));
        assert!(m("status=not.in.()", json!({"status": null})));
        assert!(m("qty=in.(1,5)", r.clone()));
        assert!(m("id=eq.r1", r.clone()));
        assert!(m("version=eq.3", r.clone()));
        assert!(m("created_at=lt.2026-01-02T00:00:00Z", r.clone()));
        assert!(m("qty=gt.1&title=eq.box", r.clone()));
        assert!(!m("qty=gt.1&title=eq.bag", r.clone()));
        // Wrong JSON type in the record: unknown.
        assert!(!m("qty=eq.5", json!({"qty": "5"})));
        assert!(!m("qty=not.eq.5", json!({"qty": "5"})));
    }

    #[test]
    fn is_null_true_false() {
        assert!(m("owner=is.null", json!({"owner": null})));
        assert!(m("owner=is.null", json!({})));
        assert!(!m("owner=is.null", json!({"owner": "u1"})));
        assert!(m("owner=not.is.null", json!({"owner": "u1"})));
        assert!(m("done=is.true", json!({"done": true})));
        assert!(!m("done=is.true", json!({"done": false})));
        assert!(!m("done=is.true", json!({"done": null})));
        assert!(m("done=is.false", json!({"done": false})));
        assert!(m("done=not.is.true", json!({"done": null})));
        assert!(m("meta=not.is.null", json!({"meta": {"a": 1}})));
    }

    #[test]
    fn three_valued_logic() {
        let null_qty = json!({"qty": null, "title": "a"});
        assert!(!m("qty=gt.5", null_qty.clone()));
        assert!(!m("qty=not.gt.5", null_qty.clone()));
        assert!(!m("qty=neq.5", null_qty.clone()));
        assert!(!m("qty=not.in.(1,2)", null_qty.clone()));
        assert!(m("or=(qty.is.null,qty.gt.5)", null_qty.clone()));
        assert!(!m("or=(qty.lt.5,qty.gte.5)", null_qty.clone()));
        assert!(m("or=(qty.lt.5,title.eq.a)", null_qty.clone()));
        assert!(!m("not.or=(qty.lt.5,title.eq.b)", null_qty.clone()));
        assert!(m("not.and=(qty.lt.5,title.eq.b)", null_qty.clone()));
        assert!(!m("not.and=(qty.lt.5,title.eq.a)", null_qty.clone()));
        assert!(!m("title=not.like.x*", json!({"title": null})));
        let f = bound("qty=gt.5");
        assert_eq!(f.evaluate(&rec(null_qty)), None);
        assert_eq!(BoundFilter::And(vec![]).evaluate(&rec(json!({}))), Some(true));
        assert_eq!(BoundFilter::Or(vec![]).evaluate(&rec(json!({}))), Some(false));
    }

    #[test]
    fn like_and_ilike() {
        assert!(like_match("*box*", "a box here"));
        assert!(like_match("%box%", "box"));
        assert!(like_match("b_x", "box"));
        assert!(like_match("b_x", "büx"));
        assert!(!like_match("b_x", "bx"));
        assert!(!like_match("b_x", "boox"));
        assert!(like_match("", ""));
        assert!(!like_match("", "a"));
        assert!(like_match("*", ""));
        assert!(like_match("a*b*c", "aXbYbZc"));
        assert!(!like_match("a*b*c", "aXbYbZ"));
        assert!(like_match("[x]?", "[x]?"));
        assert!(!like_match("[x]", "x"));
        assert!(like_match("*a*a*a*a*a*a*b", &format!("{}b", "a".repeat(60))));
        assert!(!like_match("*a*a*a*a*a*a*b", &"a".repeat(5000)));
        assert!(m("title=like.*box*", json!({"title": "a box"})));
        assert!(!m("title=like.*box*", json!({"title": "a Box"})));
        assert!(m("title=ilike.*BOX*", json!({"title": "a bOx"})));
        // ilike lowercases ASCII only, as SQLite's lower().
        assert!(!m("title=ilike.Ü", json!({"title": "ü"})));
        assert!(m("title=ilike.ü", json!({"title": "ü"})));
        assert!(m("due=like.2026-03*", json!({"due": "2026-03-01T00:00:00.000000Z"})));
        assert!(m("title=not.like.x*", json!({"title": "box"})));
    }

    #[test]
    fn index_key_and_fields() {
        let f = bound("qty=eq.5");
        assert_eq!(f.index_key(), Some(("qty", &Scalar::Int(5))));
        let f = bound("qty=gt.1&status=eq.open&title=eq.a");
        assert_eq!(f.index_key(), Some(("status", &Scalar::Text("open".into()))));
        assert_eq!(bound("or=(qty.eq.1,qty.eq.2)").index_key(), None);
        assert_eq!(bound("qty=not.eq.1").index_key(), None);
        assert_eq!(bound("and=(or(qty.eq.1),title.gt.a)").index_key(), None);
        let f = bound("qty=gt.1&or=(title.eq.a,qty.lt.0,done.is.true)");
        assert_eq!(f.fields(), vec!["qty", "title", "done"]);
    }

    #[test]
    fn display_round_trips_examples() {
        for s in [
            "qty=gt.5",
            "status=in.(open,late)",
            "title=like.*box*&title=ilike.*Box*",
            "owner=is.null&done=is.true&qty=not.gt.5",
            "or=(a.eq.1,b.lt.2)",
            "and=(a.eq.1,or(b.lt.2,c.gt.3))",
            "not.or=(a.eq.1,not.and(b.not.lt.2,c.in.(\"x,y\",\"\")))",
            "and=(a.eq.1)",
            "title=eq.a%26b%25c+d",
            "title=eq.\"quoted\"&or=(title.eq.\"\\\"q\\\"\")",
        ] {
            let f = parse(s);
            let shown = f.to_string();
            assert_eq!(parse(&shown), f, "{s} -> {shown}");
        }
        assert_eq!(parse("qty=gt.5&or=(a.eq.1,b.lt.2)").to_string(), "qty=gt.5&or=(a.eq.1,b.lt.2)");
        assert_eq!(parse("title=eq.a b").to_string(), "title=eq.a%20b");
    }

    fn arb_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]{0,4}",
            "[ -~]{0,8}",
            prop::collection::vec(
                prop::sample::select(vec![
                    ",", "(", ")", "\"", "\\", ".", "&", "%", "+", "=", "#", " ", "ü", "a", "null", "*", "_",
                    "%2", "\t"
                ]),
                0..6
            )
            .prop_map(|v| v.concat()),
        ]
    }

    fn arb_leaf() -> impl Strategy<Value = Filter> {
        let field = prop::sample::select(vec!["a", "qty", "title", "x_1", "B9"]).prop_map(String::from);
        let op =
            prop::sample::select(vec![CmpOp::Eq, CmpOp::Neq, CmpOp::Lt, CmpOp::Lte, CmpOp::Gt, CmpOp::Gte]);
        let leaf = prop_oneof![
            (field.clone(), op, arb_value()).prop_map(|(field, op, value)| Filter::Cmp { field, op, value }),
            (field.clone(), prop::collection::vec(arb_value(), 0..4))
                .prop_map(|(field, values)| Filter::In { field, values }),
            (field.clone(), prop::sample::select(vec!["null", "true", "false"]))
                .prop_map(|(field, v)| Filter::Is { field, value: v.to_string() }),
            (field, arb_value(), any::<bool>()).prop_map(|(field, pattern, case_insensitive)| {
                Filter::Like { field, pattern, case_insensitive }
            }),
        ];
        (leaf, any::<bool>()).prop_map(|(l, neg)| if neg { Filter::Not(Box::new(l)) } else { l })
    }

    /// Filters of the shapes the parser produces: no double negation, no empty groups.
    fn arb_filter() -> impl Strategy<Value = Filter> {
        arb_leaf().prop_recursive(4, 24, 4, |inner| {
            (prop::collection::vec(inner, 1..4), any::<bool>(), any::<bool>()).prop_map(
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

    proptest! {
        #[test]
        fn parser_never_panics(s in "(?s).{0,300}") {
            let _ = Filter::parse(&s);
        }

        #[test]
        fn parser_never_panics_on_grammar_soup(
            parts in prop::collection::vec(prop::sample::select(vec![
                "a", "=", "&", ".", ",", "(", ")", "\"", "\\", "eq", "in", "is", "not", "or",
                "and", "like", "null", "%", "%2", "+", "*", "ü", " ",
            ]), 0..80)
        ) {
            let s = parts.concat();
            if let Ok(Some(f)) = Filter::parse(&s) {
                let _ = f.bind(&items());
                prop_assert_eq!(Filter::parse(&f.to_string()).unwrap(), Some(f));
            }
        }

        #[test]
        fn display_round_trips(f in arb_filter()) {
            let shown = f.to_string();
            prop_assert_eq!(Filter::parse(&shown).unwrap(), Some(f), "{}", shown);
        }

        #[test]
        fn display_round_trips_conjunctions(fs in prop::collection::vec(arb_filter(), 2..4)) {
            let f = Filter::And(fs);
            let shown = f.to_string();
            prop_assert_eq!(Filter::parse(&shown).unwrap(), Some(f), "{}", shown);
        }

        #[test]
        fn like_matches_a_reference(p in "[ab*%_]{0,6}", t in "[ab]{0,6}") {
            fn reference(p: &[char], t: &[char]) -> bool {
                match p.first() {
                    None => t.is_empty(),
                    Some('*' | '%') => (0..=t.len()).any(|i| reference(&p[1..], &t[i..])),
                    Some('_') => !t.is_empty() && reference(&p[1..], &t[1..]),
                    Some(c) => t.first() == Some(c) && reference(&p[1..], &t[1..]),
                }
            }
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(like_match(&p, &t), reference(&pc, &tc));
        }
    }
}
