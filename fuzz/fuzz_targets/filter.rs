//! `Filter::parse` on arbitrary UTF-8. A filter that parses must print (`Display`) back to a
//! string that parses to the same filter, and bind to a fixed collection (or fail to bind) and
//! evaluate against fixed records without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livebase_core::filter::{Filter, MAX_FILTER_BYTES};
use livebase_core::{Collection, Record};
use serde_json::{json, Value};
use std::sync::OnceLock;

/// A collection with a field of every type, and records with typical, null and mistyped values.
fn fixture() -> &'static (Collection, Vec<Record>) {
    static FIXTURE: OnceLock<(Collection, Vec<Record>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let c: Collection = serde_json::from_value(json!({"name": "items", "fields": [
            {"name": "title", "type": "text"},
            {"name": "qty", "type": "integer"},
            {"name": "price", "type": "number"},
            {"name": "done", "type": "boolean"},
            {"name": "due", "type": "datetime"},
            {"name": "status", "type": "select", "values": ["open", "late"]},
            {"name": "owner", "type": "relation", "collection": "users"},
            {"name": "meta", "type": "json"}]}))
        .expect("fixture collection");
        let rec = |v: Value| {
            let data = v.as_object().cloned().unwrap_or_default();
            Record::new("r1", 3, "2026-01-01T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z", data)
        };
        let records = vec![
            rec(json!({"title": "a box", "qty": 5, "price": 2.5, "done": true,
                       "due": "2026-03-01T00:00:00.000000Z", "status": "open", "owner": "u1",
                       "meta": {"k": [1, 2]}})),
            rec(json!({"title": null, "qty": null, "price": null, "done": null, "due": null,
                       "status": null, "owner": null, "meta": null})),
            rec(json!({"title": 7, "qty": "5", "price": "x", "done": 1, "due": 3, "status": [],
                       "owner": {}, "meta": "s"})),
            rec(json!({})),
        ];
        (c, records)
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(src) = std::str::from_utf8(bytes) else { return };
    let Ok(Some(filter)) = Filter::parse(src) else { return };
    // Percent-encoding can make the printed form longer than the source.
    let shown = filter.to_string();
    if shown.len() <= MAX_FILTER_BYTES {
        assert_eq!(Filter::parse(&shown).ok(), Some(Some(filter.clone())), "{src:?} -> {shown:?}");
    }
    let (collection, records) = fixture();
    let Ok(bound) = filter.bind(collection) else { return };
    for r in records {
        let _ = bound.evaluate(r);
        let _ = bound.matches(r);
    }
    let _ = (bound.index_key(), bound.fields());
});
