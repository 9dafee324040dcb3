//! The filter grammar shared by REST list queries, realtime subscriptions and (later) rules.
//!
//! STUB: signatures fixed, bodies being written.

use crate::record::Record;
use crate::schema::Collection;

pub const MAX_FILTER_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    pub message: String,
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
    Cmp { field: String, op: CmpOp, value: Scalar },
    In { field: String, values: Vec<Scalar> },
    /// `is.null`, `is.true`, `is.false`.
    Is { field: String, value: Scalar },
    Like { field: String, pattern: String, case_insensitive: bool },
}

impl Filter {
    /// Parses `key=value` pairs (already percent-decoded) as a conjunction.
    pub fn from_pairs(_pairs: &[(String, String)]) -> Result<Option<Filter>, FilterError> {
        todo!()
    }

    /// Parses a filter string in query form: `qty=gt.5&status=in.(a,b)` or `and=(...)`.
    pub fn parse(_s: &str) -> Result<Option<Filter>, FilterError> {
        todo!()
    }

    pub fn bind(&self, _c: &Collection) -> Result<BoundFilter, FilterError> {
        todo!()
    }
}

impl BoundFilter {
    pub fn matches(&self, _r: &Record) -> bool {
        todo!()
    }

    /// An equality every match must satisfy (`field = value` at the top level), for indexing.
    pub fn index_key(&self) -> Option<(&str, &Scalar)> {
        todo!()
    }
}
