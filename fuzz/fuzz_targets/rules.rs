//! `Rule::parse` on arbitrary UTF-8. A rule that parses must evaluate without panicking, and
//! its canonical form (`Display`) must parse back to the same rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livebase_core::rules::{Rule, RuleContext, MAX_RULE_BYTES};
use livebase_core::Record;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// A caller, a stored record and incoming data with values of every JSON type.
fn context() -> &'static (Map<String, Value>, Record, Map<String, Value>) {
    static CTX: OnceLock<(Map<String, Value>, Record, Map<String, Value>)> = OnceLock::new();
    CTX.get_or_init(|| {
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        let auth = obj(json!({"sub": "u1", "role": "editor", "roles": ["a", "b"], "level": 3,
                              "org": {"id": "o1", "admins": ["u1"]}, "beta": true, "none": null}));
        let data = obj(json!({"a": "x", "b": 1, "c": 2.5, "d": false, "e": null, "f": [1, "x"],
                              "g": {"h": {"i": true}}}));
        let record =
            Record::new("r1", 2, "2026-01-01T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z", data.clone());
        (auth, record, data)
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(src) = std::str::from_utf8(bytes) else { return };
    let Ok(rule) = Rule::parse(src) else { return };

    let empty = Map::new();
    rule.eval(&RuleContext { auth: &empty, record: None, data: None });
    let (auth, record, data) = context();
    rule.eval(&RuleContext { auth, record: Some(record), data: Some(data) });
    let _ = (rule.always(), rule.uses_record(), rule.uses_data());

    // Escapes and spaces can make the canonical form longer than the source.
    let shown = rule.to_string();
    if shown.len() <= MAX_RULE_BYTES {
        let again =
            Rule::parse(&shown).unwrap_or_else(|e| panic!("{shown:?} (from {src:?}) does not parse: {e}"));
        assert_eq!(again, rule, "{src:?} -> {shown:?}");
        assert_eq!(again.to_string(), shown);
    }
});
