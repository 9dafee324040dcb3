//! Per-collection access rules: small boolean expressions over the caller, the stored record
//! and the incoming data.
//!
//! A collection carries up to five rules, one per action (`list`, `view`, `create`, `update`,
//! `delete`). A missing rule means admin only; the rule `true` lets everyone through. Rules
//! are parsed once when the schema loads ([`CollectionRules::parse`]) and evaluated per
//! request and per subscriber per event ([`Rule::eval`]).
//!
//! # Grammar
//!
//! ```text
//! rule    := or
//! or      := and ( "||" and )*
//! and     := cmp ( "&&" cmp )*
//! cmp     := unary [ ( "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" ) unary ]
//! unary   := "!" unary | primary
//! primary := literal | array | path | "(" or ")"
//! literal := string | number | "true" | "false" | "null"
//! array   := "[" [ literal ( "," literal )* ] "]"          (elements: literals or arrays)
//! path    := ( "auth" | "record" | "data" ) ( "." name )+  (no spaces around the dots)
//! name    := [A-Za-z_][A-Za-z0-9_]*
//! ```
//!
//! - Strings are in double or single quotes, with the escapes `\\`, `\"`, `\'`, `\n`, `\r`,
//!   `\t`, `\0` and `\u{1F600}`. Numbers are integers (`42`, `-7`, within `i64`) or decimals
//!   (`2.5`, `-0.5`, `1e3`); a leading `-` belongs to the number (there is no arithmetic).
//! - Precedence, tightest first: `!`, then comparisons and `in`, then `&&`, then `||`. So
//!   `!record.a == true` is `(!record.a) == true`; write `!(x in [...])` to negate a membership.
//!   Comparisons do not chain: `a == b == c` is an error, `(a == b) == c` is not.
//! - `auth.<claim>` reads the caller's token claims (`auth.sub`, `auth.role`, `auth.org.id` for
//!   nested objects); for anonymous callers the server provides `sub: null, role: "anon"`.
//!   `record.<field>` reads the stored row (absent on a create), `data.<field>` the incoming
//!   fields (absent on list, view and delete). Nested names walk into JSON objects.
//! - Mistakes that can be seen without data are parse errors: an unknown root, a literal that
//!   is not a boolean where a condition is needed (`"yes" && true`), `<` against `null`, a
//!   boolean or a condition, and `in` whose right side is not an array literal or a path.
//!   [`Collection::check`](crate::schema::Collection::check) also refuses `record.x` and
//!   `data.x` when `x` is neither a declared nor a system field.
//! - Rules live in JSON strings, where single-quoted literals read best:
//!   `"view": "record.owner == auth.sub || auth.role == 'admin'"`.
//!
//! # Semantics
//!
//! Evaluation is two-valued (unlike filters, which follow SQL's three-valued logic) and never
//! fails:
//! - A missing path reads as `null`: an absent claim, record, data map or field, or a nested
//!   name under something that is not an object.
//! - `==` and `!=` compare JSON values structurally (arrays by element, objects by key,
//!   regardless of key order); numbers compare numerically, so `1 == 1.0`. `null == null`.
//! - `<`, `<=`, `>`, `>=` hold only between two numbers (numerically) or two strings (byte
//!   order, which is code point order); any other pair, including null, gives false.
//! - `x in arr` is true when `x` equals (as `==`) some element of `arr`; false when the right
//!   side is not an array (e.g. a missing claim).
//! - `&&` and `||` short-circuit, `!` negates. Where a condition is expected (the whole rule
//!   and the operands of `&&`, `||` and `!`) only the boolean `true` counts as true: any other
//!   value (null, a string, a number, ...) counts as false. So `record.public` allows exactly
//!   the rows whose `public` is `true`, and `!record.public` allows every other row, including
//!   those where it is null or missing.
//!
//! # Cost
//!
//! Paths are split into their names at parse time and literals are built once, so evaluation
//! allocates nothing: it walks the tree once, with short-circuiting. Each path costs one map
//! lookup per name; `==` costs O(size of the smaller operand) and `in` O(elements × element
//! size). Rules are at most [`MAX_RULE_BYTES`] long, [`MAX_DEPTH`] deep and hold arrays of at
//! most [`MAX_ARRAY_LEN`] elements, so one evaluation is bounded by the rule's size times the
//! size of the values it compares.

use crate::record::Record;
use serde_json::{Map, Number, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

/// The actions a collection can have rules for.
pub const RULE_ACTIONS: [&str; 5] = ["list", "view", "create", "update", "delete"];

/// Longest rule source, in bytes.
pub const MAX_RULE_BYTES: usize = 4096;
/// Deepest nesting of parentheses, `!` and array brackets.
pub const MAX_DEPTH: usize = 32;
/// Most elements in one array literal.
pub const MAX_ARRAY_LEN: usize = 256;

/// A rule that did not parse. `offset` is in bytes; `line` and `column` count from 1, the
/// column in characters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at line {line}, column {column}")]
pub struct RuleError {
    pub message: String,
    pub offset: usize,
    pub line: usize,
    pub column: usize,
}

impl RuleError {
    fn at(src: &str, offset: usize, message: impl Into<String>) -> RuleError {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &src[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        RuleError {
            message: message.into(),
            offset,
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Root {
    /// The caller's token claims.
    Auth,
    /// The stored record.
    Record,
    /// The incoming fields.
    Data,
}

impl Root {
    pub fn as_str(self) -> &'static str {
        match self {
            Root::Auth => "auth",
            Root::Record => "record",
            Root::Data => "data",
        }
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    fn is_ordering(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::Ne)
    }
}

/// A path, split into its names at parse time. `names` is never empty.
#[derive(Debug, Clone, PartialEq)]
struct Path {
    root: Root,
    names: Box<[Box<str>]>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// A literal: string, number, boolean, null, or an array of literals.
    Lit(Value),
    Path(Path),
    Cmp(Box<Expr>, CmpOp, Box<Expr>),
    In(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// Two or more operands.
    And(Vec<Expr>),
    /// Two or more operands.
    Or(Vec<Expr>),
}

/// A parsed rule. [`fmt::Display`] prints a canonical form that parses back to an equal rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    expr: Expr,
    uses_record: bool,
    uses_data: bool,
}

/// What a rule is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct RuleContext<'a> {
    /// The caller's claims (`auth.*`).
    pub auth: &'a Map<String, Value>,
    /// The stored record (`record.*`); None on a create.
    pub record: Option<&'a Record>,
    /// The incoming fields (`data.*`); None on list, view and delete.
    pub data: Option<&'a Map<String, Value>>,
}

// ---------------------------------------------------------------------------------------------
// Lexing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Str(String),
    Int(i64),
    Float(f64),
    /// A name with its dotted suffix: `auth.org.id`, `true`, `in`.
    Word(&'a str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    Eof,
    /// Where lexing failed; the error is in [`Parser::bad`].
    Bad,
}

/// A token with its byte range in the source.
struct Token<'a> {
    tok: Tok<'a>,
    start: usize,
    end: usize,
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Shortens source text quoted in error messages.
fn show(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX - 3).collect();
        out.push_str("...");
        out
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn err(&self, offset: usize, message: impl Into<String>) -> RuleError {
        RuleError::at(self.src, offset, message)
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + n).copied()
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Tok<'a>, RuleError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.err(start, "'-' must be followed by a number (rules have no arithmetic)"));
            }
        }
        self.digits();
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err(self.pos, "expected digits after the decimal point"));
            }
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err(self.pos, "expected digits in the exponent"));
            }
            float = true;
        }
        if self.peek().is_some_and(|b| is_name_char(b) || b == b'.') {
            let mut end = self.pos;
            while self.src.as_bytes().get(end).is_some_and(|&b| is_name_char(b) || b == b'.') {
                end += 1;
            }
            return Err(self.err(start, format!("invalid number '{}'", show(&self.src[start..end]))));
        }
        let text = &self.src[start..self.pos];
        if float {
            match text.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Tok::Float(x)),
                _ => Err(self.err(start, format!("number {} is out of range", show(text)))),
            }
        } else {
            text.parse::<i64>().map(Tok::Int).map_err(|_| {
                self.err(
                    start,
                    format!(
                        "integer {} is out of range (-9223372036854775808 to 9223372036854775807)",
                        show(text)
                    ),
                )
            })
        }
    }

    fn string(&mut self) -> Result<Tok<'a>, RuleError> {
        let start = self.pos;
        let quote = self.src.as_bytes()[start] as char;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.src[self.pos..].chars().next() else {
                return Err(self.err(start, "unterminated string"));
            };
            let at = self.pos;
            self.pos += c.len_utf8();
            match c {
                c if c == quote => return Ok(Tok::Str(out)),
                '\\' => {
                    let Some(e) = self.src[self.pos..].chars().next() else {
                        return Err(self.err(start, "unterminated string"));
                    };
                    self.pos += e.len_utf8();
                    out.push(match e {
                        '\\' | '"' | '\'' => e,
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        '0' => '\0',
                        'u' => self.unicode_escape(at)?,
                        _ => {
                            return Err(self.err(
                                at,
                                format!(
                                    "unknown escape '\\{e}' (use \\\\, \\\", \\', \\n, \\r, \\t, \\0 or \\u{{...}})"
                                ),
                            ))
                        }
                    });
                }
                c => out.push(c),
            }
        }
    }

    /// The `{1F600}` of `\u{1F600}`; `at` is the backslash.
    fn unicode_escape(&mut self, at: usize) -> Result<char, RuleError> {
        let bad = |l: &Self| l.err(at, "invalid unicode escape (expected \\u{...} with 1 to 6 hex digits)");
        if self.peek() != Some(b'{') {
            return Err(bad(self));
        }
        self.pos += 1;
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_hexdigit()) {
            self.pos += 1;
        }
        let hex = &self.src[start..self.pos];
        if hex.is_empty() || hex.len() > 6 || self.peek() != Some(b'}') {
            return Err(bad(self));
        }
        self.pos += 1;
        let n = u32::from_str_radix(hex, 16).map_err(|_| bad(self))?;
        char::from_u32(n).ok_or_else(|| self.err(at, format!("\\u{{{hex}}} is not a unicode scalar value")))
    }

    fn word(&mut self) -> Result<Tok<'a>, RuleError> {
        let start = self.pos;
        loop {
            while self.peek().is_some_and(is_name_char) {
                self.pos += 1;
            }
            if self.peek() != Some(b'.') {
                break;
            }
            self.pos += 1;
            if !self.peek().is_some_and(is_name_start) {
                return Err(self.err(self.pos, "expected a name after '.'"));
            }
        }
        Ok(Tok::Word(&self.src[start..self.pos]))
    }

    fn next(&mut self) -> Result<Token<'a>, RuleError> {
        while self.peek().is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(b) = self.peek() else {
            return Ok(Token { tok: Tok::Eof, start, end: start });
        };
        let two = |l: &mut Self, tok: Tok<'a>| {
            l.pos += 2;
            Ok(tok)
        };
        let one = |l: &mut Self, tok: Tok<'a>| {
            l.pos += 1;
            Ok(tok)
        };
        let next = self.peek_at(1);
        let tok = match b {
            b'(' => one(self, Tok::LParen),
            b')' => one(self, Tok::RParen),
            b'[' => one(self, Tok::LBracket),
            b']' => one(self, Tok::RBracket),
            b',' => one(self, Tok::Comma),
            b'!' if next == Some(b'=') => two(self, Tok::Cmp(CmpOp::Ne)),
            b'!' => one(self, Tok::Not),
            b'=' if next == Some(b'=') => two(self, Tok::Cmp(CmpOp::Eq)),
            b'=' => Err(self.err(start, "'=' is not an operator; use '==' to compare")),
            b'<' if next == Some(b'=') => two(self, Tok::Cmp(CmpOp::Le)),
            b'<' => one(self, Tok::Cmp(CmpOp::Lt)),
            b'>' if next == Some(b'=') => two(self, Tok::Cmp(CmpOp::Ge)),
            b'>' => one(self, Tok::Cmp(CmpOp::Gt)),
            b'&' if next == Some(b'&') => two(self, Tok::And),
            b'&' => Err(self.err(start, "'&' is not an operator; use '&&'")),
            b'|' if next == Some(b'|') => two(self, Tok::Or),
            b'|' => Err(self.err(start, "'|' is not an operator; use '||'")),
            b'"' | b'\'' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            b if is_name_start(b) => self.word(),
            _ => {
                let c = self.src[start..].chars().next().unwrap_or_default();
                Err(self.err(start, format!("unexpected character '{}'", c.escape_debug())))
            }
        }?;
        Ok(Token { tok, start, end: self.pos })
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// How a literal is named in error messages.
fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What an operand statically is, for messages: None when it may be anything (a path).
fn describe_expr(e: &Expr) -> Option<&'static str> {
    match e {
        Expr::Lit(v) => Some(describe(v)),
        Expr::Path(_) => None,
        _ => Some("a condition"),
    }
}

/// A literal that can never be a condition (anything but `true`/`false`).
fn non_condition(e: &Expr) -> Option<&'static str> {
    match e {
        Expr::Lit(Value::Bool(_)) => None,
        Expr::Lit(v) => Some(describe(v)),
        _ => None,
    }
}

/// Recursive descent with one token of lookahead. A lexing error in the lookahead is kept
/// until the parser reaches it, so errors come in source order: `user.x = 1` reports the
/// unknown root, not the `=`.
struct Parser<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
    tok: Token<'a>,
    /// The lexing error behind a [`Tok::Bad`] lookahead.
    bad: Option<RuleError>,
    depth: usize,
}

impl<'a> Parser<'a> {
    /// A syntax error at `offset`, unless lexing already failed at or before it.
    fn err(&self, offset: usize, message: impl Into<String>) -> RuleError {
        match &self.bad {
            Some(bad) if bad.offset <= offset => bad.clone(),
            _ => RuleError::at(self.src, offset, message),
        }
    }

    /// An error about an operand already parsed; a lexing error after it wins (`'x' = 1`
    /// is a typo for `==`, not a string used as a condition).
    fn operand_err(&self, offset: usize, message: impl Into<String>) -> RuleError {
        match &self.bad {
            Some(bad) => bad.clone(),
            None => RuleError::at(self.src, offset, message),
        }
    }

    fn advance(&mut self) -> Result<Token<'a>, RuleError> {
        if let Some(bad) = &self.bad {
            return Err(bad.clone());
        }
        let next = match self.lexer.next() {
            Ok(t) => t,
            Err(e) => {
                let t = Token { tok: Tok::Bad, start: e.offset, end: e.offset };
                self.bad = Some(e);
                t
            }
        };
        Ok(std::mem::replace(&mut self.tok, next))
    }

    /// The current token as written, for messages.
    fn found(&self) -> String {
        match self.tok.tok {
            Tok::Eof => "the end of the rule".into(),
            _ => format!("'{}'", show(&self.src[self.tok.start..self.tok.end])),
        }
    }

    fn enter(&mut self, offset: usize) -> Result<(), RuleError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(offset, format!("rule nesting is deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn condition(&self, e: &Expr, start: usize, what: &str) -> Result<(), RuleError> {
        match non_condition(e) {
            Some(d) => Err(self.operand_err(start, format!("{what} needs a condition, not {d}"))),
            None => Ok(()),
        }
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        self.chain(Tok::Or)
    }

    /// `and ("||" and)*` or `cmp ("&&" cmp)*`.
    fn chain(&mut self, op: Tok<'static>) -> Result<Expr, RuleError> {
        let is_or = op == Tok::Or;
        let mut items = Vec::new();
        loop {
            let start = self.tok.start;
            let e = if is_or { self.chain(Tok::And)? } else { self.cmp()? };
            items.push((e, start));
            if self.tok.tok != op {
                break;
            }
            self.advance()?;
        }
        if items.len() == 1 {
            return Ok(items.pop().map(|(e, _)| e).unwrap_or(Expr::Lit(Value::Null)));
        }
        let what = if is_or { "'||'" } else { "'&&'" };
        for (e, start) in &items {
            self.condition(e, *start, what)?;
        }
        let items = items.into_iter().map(|(e, _)| e).collect();
        Ok(if is_or { Expr::Or(items) } else { Expr::And(items) })
    }

    fn cmp(&mut self) -> Result<Expr, RuleError> {
        let lstart = self.tok.start;
        let l = self.unary()?;
        let op = match self.tok.tok {
            Tok::Cmp(op) => Some(op),
            Tok::Word("in") => None,
            _ => return Ok(l),
        };
        let op_tok = self.advance()?;
        let src = self.src;
        let op_name = &src[op_tok.start..op_tok.end];
        let rstart = self.tok.start;
        let r = self.unary()?;
        if matches!(self.tok.tok, Tok::Cmp(_) | Tok::Word("in")) {
            return Err(self.err(
                self.tok.start,
                format!("comparisons cannot be chained; add parentheses before {}", self.found()),
            ));
        }
        match op {
            Some(op) => {
                if op.is_ordering() {
                    for (e, start) in [(&l, lstart), (&r, rstart)] {
                        match e {
                            Expr::Path(_) | Expr::Lit(Value::Number(_) | Value::String(_)) => {}
                            _ => {
                                return Err(self.operand_err(
                                    start,
                                    format!(
                                        "'{op_name}' compares two numbers or two strings, not {}",
                                        describe_expr(e).unwrap_or_default()
                                    ),
                                ))
                            }
                        }
                    }
                }
                Ok(Expr::Cmp(Box::new(l), op, Box::new(r)))
            }
            None => match &r {
                Expr::Path(_) | Expr::Lit(Value::Array(_)) => Ok(Expr::In(Box::new(l), Box::new(r))),
                _ => Err(self.operand_err(
                    rstart,
                    format!(
                        "the right side of 'in' must be an array or a path, not {}",
                        describe_expr(&r).unwrap_or_default()
                    ),
                )),
            },
        }
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        if self.tok.tok != Tok::Not {
            return self.primary();
        }
        let bang = self.advance()?;
        self.enter(bang.start)?;
        let start = self.tok.start;
        let e = self.unary()?;
        self.condition(&e, start, "'!'")?;
        self.depth -= 1;
        Ok(Expr::Not(Box::new(e)))
    }

    fn primary(&mut self) -> Result<Expr, RuleError> {
        let found = self.found();
        let t = self.advance()?;
        match t.tok {
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Int(n) => Ok(Expr::Lit(Value::from(n))),
            Tok::Float(x) => Ok(Expr::Lit(Number::from_f64(x).map_or(Value::Null, Value::Number))),
            Tok::Word("true") => Ok(Expr::Lit(Value::Bool(true))),
            Tok::Word("false") => Ok(Expr::Lit(Value::Bool(false))),
            Tok::Word("null") => Ok(Expr::Lit(Value::Null)),
            Tok::Word("in") => Err(self.err(t.start, "expected a value before 'in'")),
            Tok::Word(w) => self.path(w, t.start).map(Expr::Path),
            Tok::LParen => {
                self.enter(t.start)?;
                let e = self.or()?;
                if self.tok.tok != Tok::RParen {
                    return Err(self.err(
                        self.tok.start,
                        format!("expected ')' or an operator but found {}", self.found()),
                    ));
                }
                self.advance()?;
                self.depth -= 1;
                Ok(e)
            }
            Tok::LBracket => {
                self.enter(t.start)?;
                let mut items = Vec::new();
                if self.tok.tok == Tok::RBracket {
                    self.advance()?;
                } else {
                    loop {
                        let start = self.tok.start;
                        match self.or()? {
                            Expr::Lit(v) => items.push(v),
                            _ => {
                                return Err(self.operand_err(
                                    start,
                                    "array elements must be literals (strings, numbers, true, false, null or arrays)",
                                ))
                            }
                        }
                        if items.len() > MAX_ARRAY_LEN {
                            return Err(
                                self.err(start, format!("array has more than {MAX_ARRAY_LEN} elements"))
                            );
                        }
                        match self.tok.tok {
                            Tok::Comma => {
                                self.advance()?;
                            }
                            Tok::RBracket => {
                                self.advance()?;
                                break;
                            }
                            _ => {
                                return Err(self.err(
                                    self.tok.start,
                                    format!("expected ',' or ']' but found {}", self.found()),
                                ))
                            }
                        }
                    }
                }
                self.depth -= 1;
                Ok(Expr::Lit(Value::Array(items)))
            }
            Tok::Eof if self.src.trim().is_empty() => Err(self.err(
                t.start,
                "empty rule; write true to allow everyone, or leave the rule out for admin only",
            )),
            _ => Err(self.err(t.start, format!("expected a value but found {found}"))),
        }
    }

    fn path(&self, w: &str, start: usize) -> Result<Path, RuleError> {
        let mut parts = w.split('.');
        let first = parts.next().unwrap_or_default();
        let root = match first {
            "auth" => Root::Auth,
            "record" => Root::Record,
            "data" => Root::Data,
            _ => {
                return Err(self.err(
                    start,
                    format!(
                        "unknown name '{}'; paths start with auth., record. or data. (e.g. auth.sub, record.owner, data.status)",
                        show(first)
                    ),
                ))
            }
        };
        let names: Box<[Box<str>]> = parts.map(Box::from).collect();
        if names.is_empty() {
            return Err(self.err(
                start,
                format!(
                    "'{first}' must be followed by '.' and a name, e.g. {first}.{}",
                    match root {
                        Root::Auth => "sub",
                        Root::Record => "owner",
                        Root::Data => "status",
                    }
                ),
            ));
        }
        Ok(Path { root, names })
    }
}

impl Rule {
    /// Parses a rule; the error points at the offending spot.
    pub fn parse(src: &str) -> Result<Rule, RuleError> {
        if src.len() > MAX_RULE_BYTES {
            return Err(RuleError::at(src, 0, format!("rule is longer than {MAX_RULE_BYTES} bytes")));
        }
        let mut lexer = Lexer { src, pos: 0 };
        let tok = lexer.next()?;
        let mut p = Parser { src, lexer, tok, bad: None, depth: 0 };
        let start = p.tok.start;
        let expr = p.or()?;
        if p.tok.tok != Tok::Eof {
            let msg = match p.tok.tok {
                Tok::RParen => "unmatched ')'".to_string(),
                _ => format!("expected '&&', '||' or the end of the rule but found {}", p.found()),
            };
            return Err(p.err(p.tok.start, msg));
        }
        if let Some(d) = non_condition(&expr) {
            return Err(p.operand_err(start, format!("a rule must be a condition (or true/false), not {d}")));
        }
        Ok(Rule::from_expr(expr))
    }

    fn from_expr(expr: Expr) -> Rule {
        let mut rule = Rule { expr, uses_record: false, uses_data: false };
        let (mut r, mut d) = (false, false);
        rule.expr.walk_paths(&mut |p| match p.root {
            Root::Record => r = true,
            Root::Data => d = true,
            Root::Auth => {}
        });
        rule.uses_record = r;
        rule.uses_data = d;
        rule
    }

    /// Whether the rule allows this request or event.
    pub fn eval(&self, ctx: &RuleContext<'_>) -> bool {
        self.expr.truth(ctx)
    }

    /// True iff the rule is the literal `true`, so callers can skip evaluation.
    pub fn always(&self) -> bool {
        self.expr == Expr::Lit(Value::Bool(true))
    }

    /// Whether the rule reads `record.*`.
    pub fn uses_record(&self) -> bool {
        self.uses_record
    }

    /// Whether the rule reads `data.*`.
    pub fn uses_data(&self) -> bool {
        self.uses_data
    }

    /// The first names of the paths under `root` (`owner` for `record.owner.id`), each once,
    /// in order of first appearance. For checking them against a collection's fields.
    pub fn fields(&self, root: Root) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        self.expr.walk_paths(&mut |p| {
            if p.root == root && !out.contains(&&*p.names[0]) {
                out.push(&p.names[0]);
            }
        });
        out
    }
}

impl std::str::FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Rule, RuleError> {
        Rule::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Display (canonical form)
// ---------------------------------------------------------------------------------------------

fn write_string(s: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\0' => f.write_str("\\0")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

fn write_value(v: &Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match v {
        Value::Null => f.write_str("null"),
        Value::Bool(b) => write!(f, "{b}"),
        // `{:?}` keeps a decimal point or exponent, so a float reads back as a float.
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => write!(f, "{x:?}"),
            _ => write!(f, "{n}"),
        },
        Value::String(s) => write_string(s, f),
        Value::Array(items) => {
            f.write_char('[')?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_value(item, f)?;
            }
            f.write_char(']')
        }
        // Not produced by the parser; written as a string so the output stays parseable.
        Value::Object(_) => write_string(&v.to_string(), f),
    }
}

impl Expr {
    /// Writes `self`, in parentheses when `paren` says so.
    fn write_in(&self, paren: bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if paren {
            f.write_char('(')?;
            self.write(f)?;
            f.write_char(')')
        } else {
            self.write(f)
        }
    }

    fn is_binary(&self) -> bool {
        matches!(self, Expr::Cmp(..) | Expr::In(..) | Expr::And(_) | Expr::Or(_))
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Lit(v) => write_value(v, f),
            Expr::Path(p) => {
                f.write_str(p.root.as_str())?;
                for n in p.names.iter() {
                    f.write_char('.')?;
                    f.write_str(n)?;
                }
                Ok(())
            }
            Expr::Cmp(l, op, r) => {
                l.write_in(l.is_binary(), f)?;
                write!(f, " {} ", op.as_str())?;
                r.write_in(r.is_binary(), f)
            }
            Expr::In(l, r) => {
                l.write_in(l.is_binary(), f)?;
                f.write_str(" in ")?;
                r.write_in(r.is_binary(), f)
            }
            Expr::Not(e) => {
                f.write_char('!')?;
                e.write_in(e.is_binary(), f)
            }
            Expr::And(items) | Expr::Or(items) => {
                let is_or = matches!(self, Expr::Or(_));
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(if is_or { " || " } else { " && " })?;
                    }
                    let paren = match e {
                        Expr::Or(_) => true,
                        Expr::And(_) => !is_or,
                        _ => false,
                    };
                    e.write_in(paren, f)?;
                }
                Ok(())
            }
        }
    }

    fn walk_paths<'s>(&'s self, visit: &mut impl FnMut(&'s Path)) {
        match self {
            Expr::Lit(_) => {}
            Expr::Path(p) => visit(p),
            Expr::Cmp(l, _, r) | Expr::In(l, r) => {
                l.walk_paths(visit);
                r.walk_paths(visit);
            }
            Expr::Not(e) => e.walk_paths(visit),
            Expr::And(items) | Expr::Or(items) => items.iter().for_each(|e| e.walk_paths(visit)),
        }
    }
}

/// The canonical form: double-quoted strings, single spaces around operators, parentheses
/// only where needed. `Rule::parse(&r.to_string()) == Ok(r)` whenever the printed form stays
/// within [`MAX_RULE_BYTES`] (escapes and spaces can make it longer than the source).
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.write(f)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

static NULL: Value = Value::Null;
static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// Structural equality with numbers compared numerically.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y) == Some(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => false,
    }
}

fn ordering(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    }
}

impl Path {
    fn get<'v>(&self, ctx: &RuleContext<'v>) -> &'v Value {
        let first = &*self.names[0];
        let found = match self.root {
            Root::Auth => ctx.auth.get(first),
            Root::Record => ctx.record.and_then(|r| r.0.get(first)),
            Root::Data => ctx.data.and_then(|d| d.get(first)),
        };
        let Some(mut v) = found else { return &NULL };
        for name in &self.names[1..] {
            match v {
                Value::Object(m) => match m.get(&**name) {
                    Some(next) => v = next,
                    None => return &NULL,
                },
                _ => return &NULL,
            }
        }
        v
    }
}

impl Expr {
    /// The expression as a condition: only the boolean `true` is true.
    fn truth(&self, ctx: &RuleContext<'_>) -> bool {
        match self {
            Expr::Lit(v) => matches!(v, Value::Bool(true)),
            Expr::Path(p) => matches!(p.get(ctx), Value::Bool(true)),
            Expr::Not(e) => !e.truth(ctx),
            Expr::And(items) => items.iter().all(|e| e.truth(ctx)),
            Expr::Or(items) => items.iter().any(|e| e.truth(ctx)),
            Expr::Cmp(l, op, r) => {
                let (a, b) = (l.value(ctx), r.value(ctx));
                match op {
                    CmpOp::Eq => json_eq(a, b),
                    CmpOp::Ne => !json_eq(a, b),
                    CmpOp::Lt => ordering(a, b) == Some(Ordering::Less),
                    CmpOp::Le => matches!(ordering(a, b), Some(Ordering::Less | Ordering::Equal)),
                    CmpOp::Gt => ordering(a, b) == Some(Ordering::Greater),
                    CmpOp::Ge => matches!(ordering(a, b), Some(Ordering::Greater | Ordering::Equal)),
                }
            }
            Expr::In(l, r) => match r.value(ctx) {
                Value::Array(items) => {
                    let x = l.value(ctx);
                    items.iter().any(|item| json_eq(x, item))
                }
                _ => false,
            },
        }
    }

    /// The expression as a value: conditions become `true`/`false`.
    fn value<'v>(&'v self, ctx: &RuleContext<'v>) -> &'v Value {
        match self {
            Expr::Lit(v) => v,
            Expr::Path(p) => p.get(ctx),
            e => {
                if e.truth(ctx) {
                    &TRUE
                } else {
                    &FALSE
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A collection's rules
// ---------------------------------------------------------------------------------------------

/// All rules of a collection, parsed once when the schema loads.
#[derive(Debug, Clone, Default)]
pub struct CollectionRules {
    pub list: Option<Rule>,
    pub view: Option<Rule>,
    pub create: Option<Rule>,
    pub update: Option<Rule>,
    pub delete: Option<Rule>,
}

impl CollectionRules {
    /// Parses every rule. The error names the action; an action outside [`RULE_ACTIONS`] is
    /// an error too (reported at line 1, column 1).
    pub fn parse(rules: &BTreeMap<String, String>) -> Result<CollectionRules, (String, RuleError)> {
        let mut out = CollectionRules::default();
        for (action, src) in rules {
            let slot = match action.as_str() {
                "list" => &mut out.list,
                "view" => &mut out.view,
                "create" => &mut out.create,
                "update" => &mut out.update,
                "delete" => &mut out.delete,
                _ => return Err((action.clone(), RuleError::at(src, 0, unknown_action(action)))),
            };
            *slot = Some(Rule::parse(src).map_err(|e| (action.clone(), e))?);
        }
        Ok(out)
    }

    /// The rule for `action` (one of [`RULE_ACTIONS`]); None means admin only.
    pub fn get(&self, action: &str) -> Option<&Rule> {
        match action {
            "list" => self.list.as_ref(),
            "view" => self.view.as_ref(),
            "create" => self.create.as_ref(),
            "update" => self.update.as_ref(),
            "delete" => self.delete.as_ref(),
            _ => None,
        }
    }
}

/// The message for a rule key that is not an action.
pub fn unknown_action(action: &str) -> String {
    format!("unknown rule action '{}'; use list, view, create, update, delete", show(action))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn rule(s: &str) -> Rule {
        Rule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn perr(s: &str) -> RuleError {
        Rule::parse(s).unwrap_err()
    }

    fn rec(data: Value) -> Record {
        Record::new("r1", 3, "2026-01-01T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z", obj(data))
    }

    /// Evaluates `s` with the given auth claims, record data and incoming data (null = absent).
    fn ev(s: &str, auth: Value, record: Value, data: Value) -> bool {
        let auth = obj(auth);
        let record = (!record.is_null()).then(|| rec(record));
        let data = (!data.is_null()).then(|| obj(data));
        rule(s).eval(&RuleContext { auth: &auth, record: record.as_ref(), data: data.as_ref() })
    }

    /// Evaluates with auth only.
    fn ea(s: &str, auth: Value) -> bool {
        ev(s, auth, Value::Null, Value::Null)
    }

    fn e(s: &str) -> bool {
        ea(s, json!({}))
    }

    #[test]
    fn the_documented_examples() {
        let owner = r#"record.owner == auth.sub || auth.role == "admin""#;
        assert!(ev(owner, json!({"sub": "u1", "role": "user"}), json!({"owner": "u1"}), Value::Null));
        assert!(!ev(owner, json!({"sub": "u2", "role": "user"}), json!({"owner": "u1"}), Value::Null));
        assert!(ev(owner, json!({"sub": "u2", "role": "admin"}), json!({"owner": "u1"}), Value::Null));
        // Anonymous: sub is null, and a record without an owner has a null owner.
        assert!(!ev(owner, json!({"sub": null, "role": "anon"}), json!({"owner": "u1"}), Value::Null));
        assert!(ev(owner, json!({"sub": null, "role": "anon"}), json!({}), Value::Null));

        let roles = r#"auth.role in ["editor", "admin"]"#;
        assert!(ea(roles, json!({"role": "editor"})));
        assert!(!ea(roles, json!({"role": "anon"})));
        assert!(!ea(roles, json!({})));

        let status = r#"data.status != "archived" && record.locked != true"#;
        assert!(ev(status, json!({}), json!({"locked": false}), json!({"status": "open"})));
        assert!(ev(status, json!({}), json!({}), json!({})));
        assert!(!ev(status, json!({}), json!({"locked": true}), json!({"status": "open"})));
        assert!(!ev(status, json!({}), json!({}), json!({"status": "archived"})));

        let private = "!(record.private == true) || record.owner == auth.sub";
        assert!(ev(private, json!({"sub": "u2"}), json!({"private": false, "owner": "u1"}), Value::Null));
        assert!(ev(private, json!({"sub": "u2"}), json!({"owner": "u1"}), Value::Null));
        assert!(!ev(private, json!({"sub": "u2"}), json!({"private": true, "owner": "u1"}), Value::Null));
        assert!(ev(private, json!({"sub": "u1"}), json!({"private": true, "owner": "u1"}), Value::Null));

        assert!(e("true"));
        assert!(rule("true").always());
        assert!(rule(" ( true ) ").always());
        assert!(!rule("false").always());
        assert!(!rule("true && true").always());
        assert!(!rule("!false").always());
    }

    #[test]
    fn equality() {
        assert!(e("1 == 1"));
        assert!(e("1 == 1.0"));
        assert!(e("-2 == -2.0"));
        assert!(e("1.5 != 1"));
        assert!(e("'a' == \"a\""));
        assert!(!e("'a' == 'A'"));
        assert!(!e("1 == '1'"));
        assert!(e("1 != '1'"));
        assert!(e("true == true"));
        assert!(!e("true == 1"));
        assert!(e("null == null"));
        assert!(e("[1, 'a', [null]] == [1.0, 'a', [null]]"));
        assert!(!e("[1, 2] == [2, 1]"));
        assert!(!e("[1] == 1"));
        assert!(e("9223372036854775807 == 9223372036854775807"));
        assert!(!e("9223372036854775807 == 9223372036854775806"));
        let a = json!({"org": {"id": 7, "tags": ["x"]}, "big": 18446744073709551615u64});
        assert!(ea("auth.org == auth.org", a.clone()));
        assert!(ea("auth.big == auth.big", a.clone()));
        assert!(!ea("auth.big == 9223372036854775807", a.clone()));
        assert!(ea("auth.org.id == 7.0", a.clone()));
        assert!(ea("auth.org.tags == ['x']", a.clone()));
        // Objects compare by key regardless of order, numbers numerically inside.
        let ctx = json!({"a": {"x": 1, "y": [2]}, "b": {"y": [2.0], "x": 1}, "c": {"x": 1}});
        assert!(ea("auth.a == auth.b", ctx.clone()));
        assert!(!ea("auth.a == auth.c", ctx.clone()));
        assert!(ea("auth.a != auth.c", ctx));
    }

    #[test]
    fn ordering_numbers_and_strings_only() {
        for (s, want) in [
            ("1 < 2", true),
            ("2 < 1", false),
            ("1 <= 1.0", true),
            ("2 > 1.5", true),
            ("1 >= 2", false),
            ("-1 < 0", true),
            ("1e3 == 1000", true),
            ("2.5e-1 < 0.3", true),
            ("'a' < 'b'", true),
            ("'B' < 'a'", true),
            ("'ab' > 'a'", true),
            ("'é' > 'z'", true),
            ("'a' <= 'a'", true),
            ("'a' >= 'b'", false),
            ("1 < 'b'", false),
            ("'1' < 2", false),
            ("'1' >= 2", false),
        ] {
            assert_eq!(e(s), want, "{s}");
        }
        let a = json!({"n": 5, "s": "m", "b": true, "z": null, "arr": [1]});
        assert!(ea("auth.n > 4 && auth.n <= 5", a.clone()));
        assert!(ea("auth.s > 'a'", a.clone()));
        // Anything but two numbers or two strings: false both ways.
        for s in ["auth.b > 0", "auth.b <= 1", "auth.z < 1", "auth.z >= 1", "auth.missing < 1"] {
            assert!(!ea(s, a.clone()), "{s}");
        }
        assert!(!ea("auth.arr < auth.arr", a.clone()));
        assert!(!ea("auth.arr >= auth.arr", a));
    }

    #[test]
    fn membership() {
        let a = json!({"role": "editor", "roles": ["a", "b"], "n": 2, "nested": {"roles": [1, 2]}});
        assert!(ea("auth.role in ['editor', 'admin']", a.clone()));
        assert!(!ea("auth.role in ['admin']", a.clone()));
        assert!(!ea("auth.role in []", a.clone()));
        assert!(ea("'a' in auth.roles", a.clone()));
        assert!(!ea("'c' in auth.roles", a.clone()));
        assert!(ea("auth.n in [1, 2.0, 3]", a.clone()));
        assert!(ea("2.0 in auth.nested.roles", a.clone()));
        assert!(ea("null in [null]", a.clone()));
        assert!(ea("auth.missing in [null]", a.clone()));
        assert!(ea("[1] in [[1], [2]]", a.clone()));
        // The right side is not an array: false.
        assert!(!ea("'editor' in auth.role", a.clone()));
        assert!(!ea("'a' in auth.missing", a.clone()));
        assert!(ea("!('a' in auth.missing)", a));
    }

    #[test]
    fn logic_and_precedence() {
        assert!(e("true && true"));
        assert!(!e("true && false"));
        assert!(e("false || true"));
        assert!(!e("false || false"));
        assert!(e("!false"));
        assert!(!e("!true"));
        assert!(e("!!true"));
        assert!(e("true || false && false"));
        assert!(!e("(true || false) && false"));
        assert!(e("false && false || true"));
        assert!(e("1 == 1 && 2 == 2"));
        assert!(e("1 == 2 || 'a' in ['a']"));
        // `!` binds tighter than comparisons.
        assert_eq!(rule("!true == false").to_string(), "!true == false");
        assert!(e("!true == false"));
        assert_eq!(rule("!(1 == 2)").to_string(), "!(1 == 2)");
        assert!(e("!(1 == 2)"));
        assert!(e("(1 == 1) == true"));
        assert!(e("(1 == 1) == (2 == 2)"));
        assert_eq!(rule("true || false && true").to_string(), "true || false && true");
        assert_eq!(
            rule("(true || false) && (true && false) || true").to_string(),
            "(true || false) && (true && false) || true"
        );
        assert_eq!(rule("((((true))))").to_string(), "true");
        assert_eq!(rule("true&&false||!true").to_string(), "true && false || !true");
        // Short-circuit: the right side is not needed (and is the same either way here).
        assert!(e("true || auth.x.y.z == 1"));
        assert!(!e("false && auth.x == null"));
    }

    #[test]
    fn non_booleans_count_as_false() {
        let a = json!({"t": true, "f": false, "s": "yes", "n": 1, "z": null, "o": {}, "arr": [true]});
        assert!(ea("auth.t", a.clone()));
        for s in ["auth.f", "auth.s", "auth.n", "auth.z", "auth.o", "auth.arr", "auth.missing"] {
            assert!(!ea(s, a.clone()), "{s}");
            assert!(ea(&format!("!{s}"), a.clone()), "!{s}");
            assert!(!ea(&format!("{s} && true"), a.clone()), "{s} && true");
            assert!(ea(&format!("{s} || true"), a.clone()), "{s} || true");
        }
        // A non-boolean compared with a boolean is a plain comparison.
        assert!(ea("auth.s != true", a.clone()));
        assert!(ea("!auth.s == true", a));
    }

    #[test]
    fn null_and_missing_paths() {
        let a = json!({"sub": null, "role": "anon", "org": {"id": 1}, "s": "str"});
        assert!(ea("auth.sub == null", a.clone()));
        assert!(!ea("auth.sub != null", a.clone()));
        assert!(ea("auth.nope == null", a.clone()));
        assert!(ea("auth.org.nope == null", a.clone()));
        assert!(ea("auth.org.id.deeper == null", a.clone()));
        assert!(ea("auth.s.len == null", a.clone()));
        assert!(ea("auth.org.id != null", a.clone()));
        assert!(ea("auth.org != null", a.clone()));
        // No record on a create, no data on a view: both read as null.
        assert!(ev("record.owner == null && data.x == null", a.clone(), Value::Null, Value::Null));
        assert!(ev("record.id == 'r1' && record.version == 3", a.clone(), json!({}), Value::Null));
        assert!(ev("data.title == 'x' && data.other == null", a, Value::Null, json!({"title": "x"})));
    }

    #[test]
    fn custom_and_nested_claims() {
        let a = json!({"sub": "u1", "tenant": "acme", "org": {"id": "o1", "admins": ["u1"]},
                       "level": 3, "beta": true});
        assert!(ev("record.tenant == auth.tenant", a.clone(), json!({"tenant": "acme"}), Value::Null));
        assert!(ev("auth.sub in auth.org.admins", a.clone(), Value::Null, Value::Null));
        assert!(ea("auth.org.id == 'o1' && auth.level >= 2 && auth.beta", a.clone()));
        assert!(ev(
            "data.org == auth.org.id && data.meta.kind == 'x'",
            a,
            Value::Null,
            json!({"org": "o1", "meta": {"kind": "x"}})
        ));
    }

    #[test]
    fn quoting_and_escapes() {
        let s = |src: &str| match rule(&format!("{src} == auth.x")).expr {
            Expr::Cmp(l, _, _) => match *l {
                Expr::Lit(Value::String(s)) => s,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(s(r#""plain""#), "plain");
        assert_eq!(s(r#"'single'"#), "single");
        assert_eq!(s(r#""it's""#), "it's");
        assert_eq!(s(r#"'say "hi"'"#), "say \"hi\"");
        assert_eq!(s(r#""a\"b\\c\'d""#), "a\"b\\c'd");
        assert_eq!(s(r#"'a\'b'"#), "a'b");
        assert_eq!(s(r#""\n\r\t\0""#), "\n\r\t\0");
        assert_eq!(s(r#""\u{e9}\u{1F600}""#), "é😀");
        assert_eq!(s("\"raw\nnewline ü\""), "raw\nnewline ü");
        assert_eq!(s("''"), "");
        assert_eq!(rule(r#"auth.x == 'it\'s "q" \\ é'"#).to_string(), r#"auth.x == "it's \"q\" \\ é""#);
        assert_eq!(rule("auth.x == '\u{1}\n'").to_string(), r#"auth.x == "\u{1}\n""#);
        assert!(perr(r#"auth.x == "\q""#).message.contains("unknown escape '\\q'"));
        assert!(perr(r#"auth.x == "\u{110000}""#).message.contains("not a unicode scalar value"));
        assert!(perr(r#"auth.x == "\u{D800}""#).message.contains("not a unicode scalar value"));
        assert!(perr(r#"auth.x == "\u00e9""#).message.contains("invalid unicode escape"));
        assert!(perr(r#"auth.x == "\u{1234567}""#).message.contains("invalid unicode escape"));
        assert!(perr(r#"auth.x == "abc"#).message.contains("unterminated string"));
        assert!(perr(r#"auth.x == 'abc\"#).message.contains("unterminated string"));
        assert!(perr(r#"auth.x == "abc'"#).message.contains("unterminated string"));
    }

    #[test]
    fn numbers() {
        let n = |src: &str| match rule(&format!("auth.x == {src}")).expr {
            Expr::Cmp(_, _, r) => match *r {
                Expr::Lit(v) => v,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(n("42"), json!(42));
        assert_eq!(n("-7"), json!(-7));
        assert_eq!(n("007"), json!(7));
        assert_eq!(n("2.5"), json!(2.5));
        assert_eq!(n("-0.5"), json!(-0.5));
        assert_eq!(n("1e3"), json!(1000.0));
        assert_eq!(n("1E-3"), json!(0.001));
        assert_eq!(n("-9223372036854775808"), json!(i64::MIN));
        assert_eq!(rule("auth.x == 5.0").to_string(), "auth.x == 5.0");
        assert_eq!(rule("auth.x == 1e300").to_string(), "auth.x == 1e300");
        assert_eq!(rule("auth.x == 0.1000").to_string(), "auth.x == 0.1");
        assert!(perr("auth.x == 9223372036854775808").message.contains("out of range"));
        assert!(perr("auth.x == 1e999").message.contains("out of range"));
        assert!(perr("auth.x == 1.").message.contains("digits after the decimal point"));
        assert!(perr("auth.x == 1e").message.contains("exponent"));
        assert!(perr("auth.x == 12abc").message.contains("invalid number '12abc'"));
        assert!(perr("auth.x == 1.2.3").message.contains("invalid number '1.2.3'"));
        assert!(perr("auth.x == - 1").message.contains("no arithmetic"));
        assert!(perr("auth.x == -auth.y").message.contains("no arithmetic"));
        assert!(perr("auth.x == .5").message.contains("unexpected character '.'"));
    }

    #[test]
    fn arrays() {
        assert_eq!(rule("auth.x in [ ]").to_string(), "auth.x in []");
        assert_eq!(
            rule("auth.x in [1,'a',[true,null],-2.5]").to_string(),
            r#"auth.x in [1, "a", [true, null], -2.5]"#
        );
        assert!(perr("auth.x in [auth.y]").message.contains("array elements must be literals"));
        assert!(perr("auth.x in [1 == 1]").message.contains("array elements must be literals"));
        assert!(perr("auth.x in [1,]").message.contains("expected a value but found ']'"));
        assert!(perr("auth.x in [1 2]").message.contains("expected ',' or ']' but found '2'"));
        assert!(perr("auth.x in [1").message.contains("expected ',' or ']' but found the end of the rule"));
        assert!(e("[1] == [1.0]"));
        assert!(e("[] == []"));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let m = |s: &str| perr(s).message;
        assert!(m("").contains("empty rule; write true"));
        assert!(m("  \n ").contains("empty rule"));
        assert!(m("user.id == 1").contains("unknown name 'user'; paths start with auth., record. or data."));
        assert!(m("owner == auth.sub").contains("unknown name 'owner'"));
        assert!(m("True").contains("unknown name 'True'"));
        assert!(m("true.x").contains("unknown name 'true'"));
        assert!(m("auth == 1").contains("'auth' must be followed by '.' and a name, e.g. auth.sub"));
        assert!(m("record").contains("record.owner"));
        assert!(m("auth.").contains("expected a name after '.'"));
        assert!(m("auth.x.1").contains("expected a name after '.'"));
        assert!(m("auth .x").contains("'auth' must be followed"));
        assert!(m("auth.x = 1").contains("'=' is not an operator; use '=='"));
        assert!(m("true & false").contains("use '&&'"));
        assert!(m("true | false").contains("use '||'"));
        assert!(m("true and false").contains("expected '&&', '||' or the end of the rule but found 'and'"));
        assert!(m("auth.x == 1 == 2").contains("comparisons cannot be chained"));
        assert!(m("auth.x in [1] in [true]").contains("comparisons cannot be chained"));
        assert!(m("(true").contains("expected ')' or an operator but found the end of the rule"));
        assert!(m("true)").contains("unmatched ')'"));
        assert!(m("()").contains("expected a value but found ')'"));
        assert!(m("auth.x ==").contains("expected a value but found the end of the rule"));
        assert!(m("&& true").contains("expected a value but found '&&'"));
        assert!(m("in [1]").contains("expected a value before 'in'"));
        assert!(m("auth.f(1)").contains("expected '&&', '||' or the end of the rule but found '('"));
        assert!(m("auth.x == 1 + 2").contains("unexpected character '+'"));
        assert!(m("auth.x == 1 # c").contains("unexpected character '#'"));
        assert!(m("auth.x == ü").contains("unexpected character 'ü'"));
        // Statically wrong operands.
        assert!(m("'yes'").contains("a rule must be a condition (or true/false), not a string"));
        assert!(m("1").contains("not a number"));
        assert!(m("null").contains("not null"));
        assert!(m("[true]").contains("not an array"));
        assert!(m("true && 'yes'").contains("'&&' needs a condition, not a string"));
        assert!(m("1 || true").contains("'||' needs a condition, not a number"));
        assert!(m("!null").contains("'!' needs a condition, not null"));
        assert!(m("auth.x < null").contains("'<' compares two numbers or two strings, not null"));
        assert!(m("true >= auth.x").contains("'>=' compares two numbers or two strings, not a boolean"));
        assert!(m("auth.x > (1 == 1)").contains("not a condition"));
        assert!(m("auth.x <= [1]").contains("not an array"));
        assert!(
            m("auth.x in 'abc'").contains("the right side of 'in' must be an array or a path, not a string")
        );
        assert!(m("auth.x in (1 == 1)").contains("not a condition"));
        // A lexing error right after an operand wins over a complaint about the operand.
        assert!(m("true && 'x' = 1").contains("'=' is not an operator"));
        assert!(m("auth.x in 'a' & 1").contains("'&' is not an operator"));
        // An earlier parse error wins over a later lexing error.
        assert!(m("nope.x == 1 = 2").contains("unknown name 'nope'"));
        // Error Display carries the position.
        assert_eq!(
            perr("auth.x = 1").to_string(),
            "'=' is not an operator; use '==' to compare at line 1, column 8"
        );
    }

    #[test]
    fn error_positions() {
        let at = |s: &str| {
            let e = perr(s);
            (e.offset, e.line, e.column)
        };
        assert_eq!(at("auth.x = 1"), (7, 1, 8));
        assert_eq!(at("user.x == 1"), (0, 1, 1));
        assert_eq!(at("true && (auth.x == 1"), (20, 1, 21));
        let src = "record.owner == auth.sub\n  || auth.role == \"admin\"\n  || auth.rank => 3";
        let e = perr(src);
        assert_eq!((e.line, e.column), (3, 16), "{e}");
        assert_eq!(&src[e.offset..e.offset + 2], "=>");
        // Columns count characters, not bytes.
        let e = perr("auth.x == 'ü' &&\r\n\t'é' ==== 1");
        assert_eq!((e.line, e.column), (2, 8), "{e}");
        let e = perr("'ééé' == auth.x && @");
        assert_eq!((e.offset, e.line, e.column), (22, 1, 20));
        // An unterminated string points at its opening quote, across lines.
        let e = perr("auth.x == 1 ||\n  auth.y == 'oops\n more");
        assert_eq!((e.line, e.column), (2, 13));
        // Semantic errors point at the operand.
        let e = perr("true &&\n    'x'");
        assert_eq!((e.line, e.column), (2, 5));
        let e = perr("auth.a == 1 &&\nauth.b < null");
        assert_eq!((e.line, e.column), (2, 10));
    }

    #[test]
    fn limits() {
        let long = format!("auth.x == '{}'", "a".repeat(MAX_RULE_BYTES));
        assert!(perr(&long).message.contains("longer than 4096 bytes"));
        let fits = format!("auth.x == '{}'", "a".repeat(MAX_RULE_BYTES - 12));
        assert_eq!(fits.len(), MAX_RULE_BYTES);
        rule(&fits);

        let nest = |n: usize| format!("{}true{}", "(".repeat(n), ")".repeat(n));
        rule(&nest(MAX_DEPTH));
        assert!(perr(&nest(MAX_DEPTH + 1)).message.contains("deeper than 32 levels"));
        rule(&format!("{}true", "!".repeat(MAX_DEPTH)));
        assert!(perr(&format!("{}true", "!".repeat(MAX_DEPTH + 1))).message.contains("deeper"));
        let arr = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        rule(&format!("auth.x in {}", arr(MAX_DEPTH)));
        assert!(perr(&format!("auth.x in {}", arr(MAX_DEPTH + 1))).message.contains("deeper"));
        // Deep garbage fails cleanly instead of overflowing the stack.
        assert!(Rule::parse(&"(".repeat(4000)).is_err());
        assert!(Rule::parse(&"!".repeat(4000)).is_err());
        assert!(Rule::parse(&"[".repeat(4000)).is_err());

        let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        rule(&format!("auth.x in [{}]", list(MAX_ARRAY_LEN)));
        assert!(perr(&format!("auth.x in [{}]", list(MAX_ARRAY_LEN + 1)))
            .message
            .contains("more than 256 elements"));
        // Long flat chains are fine (no recursion per operand).
        let chain = vec!["auth.a == 1"; 250].join(" || ");
        assert!(chain.len() < MAX_RULE_BYTES);
        assert!(!ea(&chain, json!({"a": 2})));
        assert!(ea(&chain, json!({"a": 1})));
    }

    #[test]
    fn uses_and_fields() {
        let r = rule("record.owner == auth.sub && data.status != 'x' || record.owner.id == 1");
        assert!(r.uses_record());
        assert!(r.uses_data());
        assert_eq!(r.fields(Root::Record), vec!["owner"]);
        assert_eq!(r.fields(Root::Data), vec!["status"]);
        assert_eq!(r.fields(Root::Auth), vec!["sub"]);
        let r = rule("auth.role == 'admin'");
        assert!(!r.uses_record() && !r.uses_data());
        let r = rule("'a' in data.tags");
        assert!(!r.uses_record() && r.uses_data());
        assert!(!rule("true").uses_record());
    }

    #[test]
    fn display_examples_round_trip() {
        for s in [
            r#"record.owner == auth.sub || auth.role == "admin""#,
            r#"auth.role in ["editor", "admin"]"#,
            r#"data.status != "archived" && record.locked != true"#,
            "!(record.private == true) || record.owner == auth.sub",
            "true",
            "!!auth.x",
            "(auth.a || auth.b) && !(auth.c && auth.d)",
            "auth.a && (auth.b && auth.c)",
            "(auth.a && auth.b) && auth.c",
            "auth.a || (auth.b || auth.c)",
            "(auth.a == 1) != (auth.b in [1])",
            "!auth.a in [true]",
            "auth.x == -0.0 || auth.y == 1.5e-7 || auth.z == -9223372036854775808",
        ] {
            let r = rule(s);
            let shown = r.to_string();
            assert_eq!(rule(&shown), r, "{s} -> {shown}");
            assert_eq!(rule(&shown).to_string(), shown);
        }
        assert_eq!(rule("auth.a && (auth.b && auth.c)").to_string(), "auth.a && (auth.b && auth.c)");
        assert_eq!(rule("auth.a&&auth.b&&auth.c").to_string(), "auth.a && auth.b && auth.c");
        assert_eq!("true".parse::<Rule>().unwrap(), rule("true"));
    }

    #[test]
    fn collection_rules() {
        let mut m = BTreeMap::new();
        m.insert("list".to_string(), "true".to_string());
        m.insert("update".to_string(), "record.owner == auth.sub".to_string());
        let c = CollectionRules::parse(&m).unwrap();
        assert!(c.list.as_ref().unwrap().always());
        assert!(c.view.is_none() && c.create.is_none() && c.delete.is_none());
        assert!(c.get("update").unwrap().uses_record());
        assert!(c.get("view").is_none());
        assert!(c.get("nope").is_none());
        for a in RULE_ACTIONS {
            m.insert(a.to_string(), "true".to_string());
        }
        let c = CollectionRules::parse(&m).unwrap();
        assert!(RULE_ACTIONS.iter().all(|a| c.get(a).is_some_and(Rule::always)));

        m.insert("delete".to_string(), "auth.x ==".to_string());
        let (action, e) = CollectionRules::parse(&m).unwrap_err();
        assert_eq!(action, "delete");
        assert_eq!(e.column, 10);
        m.insert("delete".to_string(), "true".to_string());
        m.insert("edit".to_string(), "true".to_string());
        let (action, e) = CollectionRules::parse(&m).unwrap_err();
        assert_eq!(action, "edit");
        assert_eq!(e.message, "unknown rule action 'edit'; use list, view, create, update, delete");
        assert_eq!(CollectionRules::parse(&BTreeMap::new()).unwrap().list, None);
    }

    // -----------------------------------------------------------------------------------------
    // Properties
    // -----------------------------------------------------------------------------------------

    const NAMES: [&str; 4] = ["a", "b", "c", "in"];

    fn arb_path() -> impl Strategy<Value = Expr> {
        (
            prop::sample::select(vec![Root::Auth, Root::Record, Root::Data]),
            prop::collection::vec(prop::sample::select(NAMES.to_vec()), 1..3),
        )
            .prop_map(|(root, names)| {
                Expr::Path(Path { root, names: names.into_iter().map(Box::from).collect() })
            })
    }

    fn arb_scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..4).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop::num::f64::NORMAL.prop_map(Value::from),
            prop::sample::select(vec![0.0, -0.0, 1.0, 2.5, -1.0]).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::String),
            "(?s).{0,8}".prop_map(Value::String),
        ]
    }

    fn arb_literal() -> impl Strategy<Value = Value> {
        arb_scalar()
            .prop_recursive(2, 8, 4, |inner| prop::collection::vec(inner, 0..4).prop_map(Value::Array))
    }

    fn arb_ordered_operand() -> impl Strategy<Value = Expr> {
        prop_oneof![
            arb_path(),
            (-3i64..4).prop_map(|n| Expr::Lit(Value::from(n))),
            prop::num::f64::NORMAL.prop_map(|x| Expr::Lit(Value::from(x))),
            "[a-c]{0,2}".prop_map(|s| Expr::Lit(Value::String(s))),
        ]
    }

    /// Conditions of the shapes the parser produces (And/Or with two or more operands, no
    /// statically non-boolean operands).
    fn arb_cond() -> impl Strategy<Value = Expr> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(|b| Expr::Lit(Value::Bool(b))),
            arb_path(),
            (
                arb_ordered_operand(),
                prop::sample::select(vec![CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge]),
                arb_ordered_operand()
            )
                .prop_map(|(l, op, r)| Expr::Cmp(Box::new(l), op, Box::new(r))),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            let operand = prop_oneof![arb_literal().prop_map(Expr::Lit), arb_path(), inner.clone(),];
            let set = prop_oneof![
                arb_path(),
                prop::collection::vec(arb_literal(), 0..4).prop_map(|v| Expr::Lit(Value::Array(v)))
            ];
            prop_oneof![
                (operand.clone(), prop::sample::select(vec![CmpOp::Eq, CmpOp::Ne]), operand.clone())
                    .prop_map(|(l, op, r)| Expr::Cmp(Box::new(l), op, Box::new(r))),
                (operand, set).prop_map(|(l, r)| Expr::In(Box::new(l), Box::new(r))),
                inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
                prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
                prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
            ]
        })
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..4).prop_map(Value::from),
            prop::sample::select(vec![0.0, 1.0, 2.5]).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(prop::sample::select(NAMES.to_vec()), inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    fn arb_map() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map(prop::sample::select(NAMES.to_vec()), arb_json(), 0..4)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// auth, record (maybe absent), data (maybe absent).
    type Ctx = (Map<String, Value>, Option<Record>, Option<Map<String, Value>>);

    fn arb_ctx() -> impl Strategy<Value = Ctx> {
        (arb_map(), prop::option::of(arb_map()), prop::option::of(arb_map()))
            .prop_map(|(a, r, d)| (a, r.map(Record), d))
    }

    fn eval_expr(e: &Expr, c: &Ctx) -> bool {
        Rule::from_expr(e.clone()).eval(&RuleContext { auth: &c.0, record: c.1.as_ref(), data: c.2.as_ref() })
    }

    fn not(e: &Expr) -> Expr {
        Expr::Not(Box::new(e.clone()))
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "(?s).{0,300}") {
            if let Ok(r) = Rule::parse(&s) {
                let shown = r.to_string();
                if shown.len() <= MAX_RULE_BYTES {
                    prop_assert_eq!(Rule::parse(&shown), Ok(r));
                }
            }
        }

        #[test]
        fn parser_never_panics_on_grammar_soup(
            parts in prop::collection::vec(prop::sample::select(vec![
                "auth", "record", "data", ".", "a", "sub", " ", "\n", "(", ")", "[", "]", ",", "!",
                "&&", "||", "==", "!=", "<", "<=", ">", ">=", "=", "&", "|", " in ", "true", "false",
                "null", "1", "-", "2.5", "e", "\"", "'", "\\", "u{", "}", "ü", "x",
            ]), 0..60)
        ) {
            let s = parts.concat();
            if let Ok(r) = Rule::parse(&s) {
                let _ = r.eval(&RuleContext { auth: &Map::new(), record: None, data: None });
                prop_assert_eq!(Rule::parse(&r.to_string()), Ok(r));
            }
        }

        #[test]
        fn display_round_trips(e in arb_cond()) {
            let r = Rule::from_expr(e);
            let shown = r.to_string();
            prop_assert_eq!(Rule::parse(&shown), Ok(r), "{}", shown);
        }

        #[test]
        fn algebra(a in arb_cond(), b in arb_cond(), c in arb_ctx()) {
            let ab = eval_expr(&Expr::And(vec![a.clone(), b.clone()]), &c);
            prop_assert_eq!(ab, eval_expr(&Expr::And(vec![b.clone(), a.clone()]), &c));
            prop_assert_eq!(
                eval_expr(&Expr::Or(vec![a.clone(), b.clone()]), &c),
                eval_expr(&Expr::Or(vec![b.clone(), a.clone()]), &c)
            );
            // De Morgan, both ways.
            prop_assert_eq!(
                eval_expr(&not(&Expr::Or(vec![a.clone(), b.clone()])), &c),
                eval_expr(&Expr::And(vec![not(&a), not(&b)]), &c)
            );
            prop_assert_eq!(
                eval_expr(&not(&Expr::And(vec![a.clone(), b.clone()])), &c),
                eval_expr(&Expr::Or(vec![not(&a), not(&b)]), &c)
            );
            // Double negation, excluded middle, and `&&` as both true.
            let va = eval_expr(&a, &c);
            prop_assert_eq!(eval_expr(&not(&not(&a)), &c), va);
            prop_assert!(eval_expr(&Expr::Or(vec![a.clone(), not(&a)]), &c));
            prop_assert_eq!(ab, va && eval_expr(&b, &c));
            // A condition compared with true is the condition.
            let t = Expr::Lit(Value::Bool(true));
            prop_assert_eq!(eval_expr(&Expr::Cmp(Box::new(not(&a)), CmpOp::Eq, Box::new(t)), &c), !va);
        }

        #[test]
        fn comparisons_are_consistent(x in arb_ordered_operand(), y in arb_ordered_operand(), c in arb_ctx()) {
            let cmp = |l: &Expr, op, r: &Expr| eval_expr(&Expr::Cmp(Box::new(l.clone()), op, Box::new(r.clone())), &c);
            prop_assert_eq!(cmp(&x, CmpOp::Eq, &y), cmp(&y, CmpOp::Eq, &x));
            prop_assert_eq!(cmp(&x, CmpOp::Ne, &y), !cmp(&x, CmpOp::Eq, &y));
            prop_assert_eq!(cmp(&x, CmpOp::Lt, &y), cmp(&y, CmpOp::Gt, &x));
            prop_assert_eq!(cmp(&x, CmpOp::Le, &y), cmp(&y, CmpOp::Ge, &x));
            if cmp(&x, CmpOp::Le, &y) {
                prop_assert_eq!(cmp(&x, CmpOp::Lt, &y) || cmp(&x, CmpOp::Eq, &y), true);
            }
        }
    }
}
