//! The REST decoders on arbitrary input: a list query string and a record body.
//!
//! Input: `<query string>\n<JSON body>`. The query is split into `k=v` pairs (as the server's
//! `form_urlencoded` does, without percent-decoding: the decoded pairs are arbitrary strings
//! either way) and parsed by `ListQuery::from_pairs`; a query that parses is checked against a
//! fixed collection, its filter bound, its cursor decoded. The body, when it is a JSON object,
//! is validated as a create and as a patch against the same collection:
//! - no panic;
//! - a system field other than `id` (`version`, `created_at`, `updated_at`) is always refused,
//!   by name; so is a field the collection does not have;
//! - what validates is normalized: validating the output again gives the same output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livebase_core::query::{decode_cursor, ListQuery};
use livebase_core::validate::{validate_create, validate_patch};
use livebase_core::Collection;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

fn collection() -> &'static Collection {
    static C: OnceLock<Collection> = OnceLock::new();
    C.get_or_init(|| {
        serde_json::from_value(json!({"name": "items", "fields": [
            {"name": "title", "type": "text", "required": true, "min": 1, "max": 20},
            {"name": "qty", "type": "integer", "min": 0, "max": 1000, "default": 1},
            {"name": "price", "type": "number", "min": 0},
            {"name": "done", "type": "boolean", "default": false},
            {"name": "due", "type": "datetime"},
            {"name": "status", "type": "select", "values": ["open", "late"]},
            {"name": "owner", "type": "relation", "collection": "users"},
            {"name": "meta", "type": "json"}]}))
        .expect("fixture collection")
    })
}

const READ_ONLY: [&str; 3] = ["version", "created_at", "updated_at"];

fn as_map(fields: &[(String, Value)]) -> Map<String, Value> {
    fields.iter().cloned().collect()
}

fn check_body(c: &Collection, body: &Map<String, Value>) {
    let must_refuse: Vec<&str> = body
        .keys()
        .map(String::as_str)
        .filter(|k| READ_ONLY.contains(k) || (*k != "id" && c.field(k).is_none()))
        .collect();
    for (which, r) in [("create", validate_create(c, body)), ("patch", validate_patch(c, body))] {
        match r {
            Ok(out) => {
                assert!(must_refuse.is_empty(), "{which} accepted {must_refuse:?} in {body:?}");
                assert!(out.iter().all(|(k, _)| c.field(k).is_some()), "{which} output has a non-field: {out:?}");
                let again = if which == "create" {
                    validate_create(c, &as_map(&out))
                } else {
                    validate_patch(c, &as_map(&out))
                };
                assert_eq!(again.as_ref(), Ok(&out), "{which} output does not re-validate to itself");
            }
            Err(errors) => {
                assert!(!errors.is_empty(), "{which}: an error without a field error");
                for k in &must_refuse {
                    assert!(errors.iter().any(|e| e.field == *k), "{which} did not name '{k}': {errors:?}");
                }
            }
        }
    }
}

fn check_query(c: &Collection, query: &str) {
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    let Ok(q) = ListQuery::from_pairs(&pairs) else { return };
    let _ = q.check(c);
    let _ = q.effective_limit();
    if let Some(f) = &q.filter {
        let _ = f.bind(c);
    }
    if let Some(cur) = &q.cursor {
        let n = livebase_core::query::effective_order(&q.order).len();
        let _ = decode_cursor(cur, n);
    }
}

fuzz_target!(|bytes: &[u8]| {
    let c = collection();
    let (query, body) = match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    if let Ok(q) = std::str::from_utf8(query) {
        check_query(c, q);
    }
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
        check_body(c, &m);
    }
});
