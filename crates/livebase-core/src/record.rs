//! Records, timestamps and ids.
//!
//! A [`Record`] is one JSON object holding the system fields (`id`, `version`, `created_at`,
//! `updated_at`) followed by the collection's fields in schema order. Keeping it one map means
//! filters, rules and events read every field the same way, and the wire shape is the value
//! itself.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Record(pub Map<String, Value>);

impl Record {
    /// Builds a record from its system fields and its (already validated) data fields.
    pub fn new(
        id: &str,
        version: i64,
        created_at: &str,
        updated_at: &str,
        data: impl IntoIterator<Item = (String, Value)>,
    ) -> Record {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(id.into()));
        m.insert("version".into(), Value::from(version));
        m.insert("created_at".into(), Value::String(created_at.into()));
        m.insert("updated_at".into(), Value::String(updated_at.into()));
        m.extend(data);
        Record(m)
    }

    pub fn id(&self) -> &str {
        self.0.get("id").and_then(Value::as_str).unwrap_or_default()
    }

    pub fn version(&self) -> i64 {
        self.0.get("version").and_then(Value::as_i64).unwrap_or_default()
    }

    /// A field's value; a declared field that is absent reads as null.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }

    /// Data fields only (system fields left out).
    pub fn data(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().filter(|(k, _)| !crate::schema::SYSTEM_FIELDS.contains(&k.as_str()))
    }

    /// Keeps only the named fields (a `select=` projection). `id` is always kept.
    pub fn project(&self, fields: &[String]) -> Record {
        let mut m = Map::new();
        for (k, v) in &self.0 {
            if k == "id" || fields.iter().any(|f| f == k) {
                m.insert(k.clone(), v.clone());
            }
        }
        Record(m)
    }
}

/// The canonical timestamp form: UTC, microseconds, `Z`. Fixed width, so text order is time
/// order in every backend.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Parses an RFC 3339 timestamp and returns its canonical form, or None.
pub fn normalize_timestamp(s: &str) -> Option<String> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    if !(0..=9999).contains(&t.to_offset(UtcOffset::UTC).year()) {
        return None;
    }
    Some(format_timestamp(t))
}

pub fn now_timestamp() -> String {
    format_timestamp(OffsetDateTime::now_utc())
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A time-ordered id: 48 bits of milliseconds then 80 random bits, 26 base32 characters.
/// Ids made later sort after earlier ones (to the millisecond).
pub fn make_id(unix_ms: u64, random: u128) -> String {
    let v: u128 = ((unix_ms as u128 & 0xFFFF_FFFF_FFFF) << 80) | (random & ((1u128 << 80) - 1));
    (0..26).map(|i| CROCKFORD[((v >> (125 - i * 5)) & 31) as usize] as char).collect()
}

pub fn generate_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    make_id(ms, rand::random())
}

/// Client-supplied ids (offline creates): 1 to 64 of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_have_fixed_width() {
        let a = make_id(1_700_000_000_000, u128::MAX);
        let b = make_id(1_700_000_000_001, 0);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert!(valid_id(&a));
        assert!(!valid_id("a b"));
        assert!(!valid_id(""));
    }

    #[test]
    fn timestamps_normalize_to_utc_micros() {
        assert_eq!(normalize_timestamp("2026-01-02T03:04:05+02:00").unwrap(), "2026-01-02T01:04:05.000000Z");
        assert_eq!(normalize_timestamp("2026-01-02T03:04:05.5Z").unwrap(), "2026-01-02T03:04:05.500000Z");
        assert!(normalize_timestamp("yesterday").is_none());
    }
}
