//! Server → client frames, as clients and the bench decode them.

use crate::{to_json, Ref};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What happened to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// What a change does to a subscription's result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// The row now matches: put `new` in the cache.
    Add,
    /// It matched and still does: replace it with `new`.
    Update,
    /// It no longer matches (or was deleted): drop the row with this `id`.
    Remove,
}

impl View {
    /// The view of a change to a row that matched (`matched_before`) and matches now
    /// (`matches_now`); `None` when the subscription does not see it at all.
    pub fn between(matched_before: bool, matches_now: bool) -> Option<View> {
        match (matched_before, matches_now) {
            (false, false) => None,
            (false, true) => Some(View::Add),
            (true, true) => Some(View::Update),
            (true, false) => Some(View::Remove),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            View::Add => "add",
            View::Update => "update",
            View::Remove => "remove",
        }
    }
}

/// One committed change delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub op: Op,
    pub view: View,
    pub id: String,
    /// The record after the change (`None` for deletes, or when the receiver may not see it).
    #[serde(default, deserialize_with = "null_as_none")]
    pub new: Option<Value>,
    /// The record before the change (`None` for inserts, or when the receiver may not see it).
    #[serde(default, deserialize_with = "null_as_none")]
    pub old: Option<Value>,
    pub version: i64,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub committed_at: String,
}

fn null_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        v => Some(v),
    })
}

/// One connection's entry under a presence key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub conn_id: String,
    #[serde(default)]
    pub meta: Value,
}

/// Presence entries by key.
pub type PresenceMap = BTreeMap<String, Vec<PresenceEntry>>;

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        conn_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_time: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heartbeat_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        /// The server's epoch; absent from servers that predate it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// Why the client's previous connection (`?resume_of=`) was cut off, when it was:
        /// `{"reason": …, "at_seq": N}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cut_off: Option<Value>,
    },
    Subscribed {
        #[serde(rename = "ref", default)]
        reference: Ref,
        sub_id: u64,
        seq: u64,
        /// The epoch `seq` belongs to: send it back beside `since` when resuming.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    Change {
        sub_id: u64,
        #[serde(flatten)]
        change: Box<Change>,
    },
    Snapshot {
        sub_id: u64,
        seq: u64,
        #[serde(default)]
        rows: Vec<Value>,
        #[serde(default)]
        done: bool,
    },
    Broadcast {
        channel: String,
        event: String,
        #[serde(default)]
        payload: Value,
        #[serde(default)]
        from: Option<String>,
    },
    PresenceState {
        channel: String,
        #[serde(default)]
        state: PresenceMap,
    },
    PresenceDiff {
        channel: String,
        #[serde(default)]
        joins: PresenceMap,
        #[serde(default)]
        leaves: PresenceMap,
    },
    /// A live aggregate's values: every group (`full`), or the groups a change moved and the
    /// groups it emptied (`removed`, group fields only).
    Aggregate {
        sub_id: u64,
        seq: u64,
        #[serde(default)]
        full: bool,
        #[serde(default)]
        groups: Vec<serde_json::Map<String, Value>>,
        #[serde(default)]
        removed: Vec<serde_json::Map<String, Value>>,
    },
    Pong {
        #[serde(rename = "ref", default)]
        reference: Ref,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_time: Option<String>,
    },
    Ok {
        #[serde(rename = "ref", default)]
        reference: Ref,
    },
    Error {
        #[serde(rename = "ref", default)]
        reference: Ref,
        code: String,
        #[serde(default)]
        message: String,
        /// `already_subscribed` names the existing subscription.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub_id: Option<u64>,
    },
    ResyncRequired {
        #[serde(rename = "ref", default)]
        reference: Ref,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub_id: Option<u64>,
        /// `log_trimmed`, `epoch_changed` ([`crate::reason`]), or a reason added later.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A frame type this client does not know (to be ignored).
    #[serde(other)]
    Unknown,
}

impl ServerFrame {
    /// Decodes one text frame from the server.
    pub fn parse(text: &str) -> Result<ServerFrame, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        to_json(self)
    }

    /// The `type` of the frame as it is on the wire (`"unknown"` for [`ServerFrame::Unknown`]).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::Subscribed { .. } => "subscribed",
            ServerFrame::Change { .. } => "change",
            ServerFrame::Snapshot { .. } => "snapshot",
            ServerFrame::Broadcast { .. } => "broadcast",
            ServerFrame::PresenceState { .. } => "presence_state",
            ServerFrame::PresenceDiff { .. } => "presence_diff",
            ServerFrame::Aggregate { .. } => "aggregate",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Ok { .. } => "ok",
            ServerFrame::Error { .. } => "error",
            ServerFrame::ResyncRequired { .. } => "resync_required",
            ServerFrame::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> ServerFrame {
        ServerFrame::parse(&v.to_string()).expect("frame parses")
    }

    #[test]
    fn frames_from_servers_without_epoch_still_decode() {
        let f = parse(json!({"type": "subscribed", "ref": 1, "sub_id": 12, "seq": 4810}));
        assert_eq!(
            f,
            ServerFrame::Subscribed { reference: crate::num_ref(1), sub_id: 12, seq: 4810, epoch: None }
        );
        let f = parse(json!({"type": "welcome", "conn_id": "c7"}));
        assert!(matches!(f, ServerFrame::Welcome { epoch: None, heartbeat_ms: None, .. }));
    }

    #[test]
    fn change_sides_may_be_null_or_absent() {
        let f = parse(json!({"type": "change", "sub_id": 1, "seq": 2, "op": "insert",
            "view": "add", "id": "a", "version": 1, "committed_at": "t", "new": {"id": "a"}}));
        let ServerFrame::Change { change, .. } = f else { panic!() };
        assert_eq!((change.old, change.actor), (None, None));
    }

    #[test]
    fn unknown_types_are_tolerated_and_non_json_is_not() {
        assert_eq!(parse(json!({"type": "something_new", "x": 1})), ServerFrame::Unknown);
        assert!(ServerFrame::parse("not json").is_err());
    }

    #[test]
    fn string_refs_of_digits_read_as_numbers() {
        let f = parse(json!({"type": "ok", "ref": "9"}));
        let ServerFrame::Ok { reference } = f else { panic!() };
        assert_eq!(crate::ref_u64(&reference), Some(9));
        assert_eq!(crate::ref_u64(&Some(Box::new(json!({"a": 1})))), None);
    }
}
