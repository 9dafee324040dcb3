//! Change events: the entries of the change log.

use crate::record::Record;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeOp> {
        match s {
            "insert" => Some(ChangeOp::Insert),
            "update" => Some(ChangeOp::Update),
            "delete" => Some(ChangeOp::Delete),
            _ => None,
        }
    }
}

/// One committed mutation. `seq` is strictly increasing and gap-free in commit order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub seq: u64,
    pub collection: String,
    pub op: ChangeOp,
    pub id: String,
    /// The record after the change (none for delete).
    pub new: Option<Record>,
    /// The record before the change (none for insert).
    pub old: Option<Record>,
    /// The record's version after the change (for delete: the version it had).
    pub version: i64,
    /// Who made the change: a token subject, `admin`, or none for anonymous.
    pub actor: Option<String>,
    pub committed_at: String,
}

impl ChangeEvent {
    /// The record as a subscriber sees it: `new` for insert/update, `old` for delete.
    pub fn current(&self) -> Option<&Record> {
        self.new.as_ref().or(self.old.as_ref())
    }
}
