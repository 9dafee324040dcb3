//! Incoming record data, checked and normalized against a collection.
//!
//! Validation never coerces: `"5"` is not an integer and `5.5` is not an integer either.
//! Every failing field is reported, not only the first.

use crate::record::normalize_timestamp;
use crate::schema::{Collection, Field, FieldType, SYSTEM_FIELDS};
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

fn err(f: &str, code: &'static str, message: String) -> FieldError {
    FieldError { field: f.to_string(), code, message }
}

/// Checks one non-null value against a field and returns its canonical form
/// (datetimes become UTC microseconds; numbers stay as given).
pub fn check_value(f: &Field, v: &Value) -> Result<Value, FieldError> {
    let name = f.name.as_str();
    let wrong = |what: &str| err(name, "invalid_type", format!("{name} must be {what}"));
    let out = match f.ty {
        FieldType::Text | FieldType::Relation => {
            let s = v.as_str().ok_or_else(|| wrong("a string"))?;
            if f.ty == FieldType::Relation && !crate::record::valid_id(s) {
                return Err(err(name, "invalid_id", format!("{name} is not a valid record id")));
            }
            let len = s.chars().count() as f64;
            if f.min.is_some_and(|m| len < m) {
                return Err(err(
                    name,
                    "too_short",
                    format!("{name} must have at least {} characters", f.min.unwrap_or_default()),
                ));
            }
            if f.max.is_some_and(|m| len > m) {
                return Err(err(
                    name,
                    "too_long",
                    format!("{name} must have at most {} characters", f.max.unwrap_or_default()),
                ));
            }
            v.clone()
        }
        FieldType::Integer | FieldType::Number => {
            let n = if f.ty == FieldType::Integer {
                // i64 only: 5.0, 5.5 and 2^63 are refused rather than rounded.
                v.as_i64().ok_or_else(|| wrong("an integer"))? as f64
            } else {
                v.as_f64().ok_or_else(|| wrong("a number"))?
            };
            if f.min.is_some_and(|m| n < m) {
                return Err(err(
                    name,
                    "too_small",
                    format!("{name} must be at least {}", f.min.unwrap_or_default()),
                ));
            }
            if f.max.is_some_and(|m| n > m) {
                return Err(err(
                    name,
                    "too_large",
                    format!("{name} must be at most {}", f.max.unwrap_or_default()),
                ));
            }
            if f.ty == FieldType::Number {
                // Canonical float form, as every backend reads it back: `2` becomes `2.0`, so
                // write responses, events and reads agree.
                serde_json::Number::from_f64(n).map(Value::Number).ok_or_else(|| wrong("a finite number"))?
            } else {
                v.clone()
            }
        }
        FieldType::Boolean => Value::Bool(v.as_bool().ok_or_else(|| wrong("a boolean"))?),
        FieldType::Datetime => {
            let s = v.as_str().ok_or_else(|| wrong("an RFC 3339 datetime string"))?;
            Value::String(normalize_timestamp(s).ok_or_else(|| wrong("an RFC 3339 datetime"))?)
        }
        FieldType::Json => v.clone(),
        FieldType::Select => {
            let s = v.as_str().ok_or_else(|| wrong("a string"))?;
            if !f.values.iter().any(|x| x == s) {
                return Err(err(
                    name,
                    "invalid_choice",
                    format!("{name} must be one of: {}", f.values.join(", ")),
                ));
            }
            v.clone()
        }
    };
    Ok(out)
}

/// System fields the server sets itself: refused in record data, never silently dropped.
/// (`id` is not among them: a create may choose its id, an update may repeat its own.)
const READ_ONLY: [&str; 3] = ["version", "created_at", "updated_at"];

fn check_keys(c: &Collection, input: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    debug_assert!(READ_ONLY.iter().all(|f| SYSTEM_FIELDS.contains(f)));
    for k in input.keys() {
        if READ_ONLY.contains(&k.as_str()) {
            errors.push(err(
                k,
                "read_only",
                format!("{k} is set by the server and cannot be written (send a base version as expected_version or If-Match)"),
            ));
        } else if c.field(k).is_none() && !SYSTEM_FIELDS.contains(&k.as_str()) {
            errors.push(err(k, "unknown_field", format!("{} has no field '{k}'", c.name)));
        }
    }
}

type Checked = Vec<(String, Value)>;

fn checked(f: &Field, v: &Value, out: &mut Checked, errors: &mut Vec<FieldError>) {
    match check_value(f, v) {
        Ok(v) => out.push((f.name.clone(), v)),
        Err(e) => errors.push(e),
    }
}

fn finish(out: Checked, errors: Vec<FieldError>) -> Result<Checked, Vec<FieldError>> {
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Validates the data of a new record: every declared field, in schema order, with defaults
/// applied and absent optional fields set to null. `id` in `input` is ignored (the caller
/// takes a client-supplied `id` itself); `version`, `created_at` and `updated_at` are refused
/// (`read_only`).
pub fn validate_create(
    c: &Collection,
    input: &Map<String, Value>,
) -> Result<Vec<(String, Value)>, Vec<FieldError>> {
    let mut errors = Vec::new();
    check_keys(c, input, &mut errors);
    let mut out = Vec::with_capacity(c.fields.len());
    for f in &c.fields {
        let v = match input.get(&f.name) {
            Some(v) if !v.is_null() => v,
            Some(_) | None => {
                let given_null = input.contains_key(&f.name);
                match (&f.default, given_null) {
                    (Some(d), false) => d,
                    _ if f.required => {
                        errors.push(err(&f.name, "required", format!("{} is required", f.name)));
                        continue;
                    }
                    _ => {
                        out.push((f.name.clone(), Value::Null));
                        continue;
                    }
                }
            }
        };
        checked(f, v, &mut out, &mut errors);
    }
    finish(out, errors)
}

/// Validates a partial update: only the given fields, nulls allowed unless required. System
/// fields other than `id` are refused (`read_only`), as on create.
pub fn validate_patch(
    c: &Collection,
    input: &Map<String, Value>,
) -> Result<Vec<(String, Value)>, Vec<FieldError>> {
    let mut errors = Vec::new();
    check_keys(c, input, &mut errors);
    let mut out = Vec::new();
    for f in &c.fields {
        let Some(v) = input.get(&f.name) else {
            continue;
        };
        if v.is_null() {
            if f.required {
                errors.push(err(&f.name, "required", format!("{} cannot be null", f.name)));
            } else {
                out.push((f.name.clone(), Value::Null));
            }
            continue;
        }
        checked(f, v, &mut out, &mut errors);
    }
    finish(out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn items() -> Collection {
        serde_json::from_value(json!({"name": "items", "fields": [
            {"name": "title", "type": "text", "required": true, "max": 5},
            {"name": "qty", "type": "integer", "min": 0, "default": 1},
            {"name": "price", "type": "number"},
            {"name": "done", "type": "boolean"},
            {"name": "due", "type": "datetime"},
            {"name": "status", "type": "select", "values": ["open", "late"]},
            {"name": "meta", "type": "json"}]}))
        .unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn create_applies_defaults_and_nulls_in_schema_order() {
        let out = validate_create(&items(), &obj(json!({"title": "box"}))).unwrap();
        let names: Vec<_> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["title", "qty", "price", "done", "due", "status", "meta"]);
        assert_eq!(out[1].1, json!(1));
        assert_eq!(out[2].1, Value::Null);
    }

    #[test]
    fn every_failing_field_is_named() {
        let e = validate_create(
            &items(),
            &obj(json!({"qty": "5", "price": "1", "done": 1, "due": "soon", "status": "x",
                        "nope": 1, "title": "toolong"})),
        )
        .unwrap_err();
        let mut fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["done", "due", "nope", "price", "qty", "status", "title"]);
    }

    #[test]
    fn system_fields_in_data_are_refused_not_ignored() {
        let c = items();
        let e =
            validate_create(&c, &obj(json!({"title": "box", "version": 99, "created_at": 5}))).unwrap_err();
        let mut fields: Vec<_> = e.iter().map(|e| (e.field.as_str(), e.code)).collect();
        fields.sort();
        assert_eq!(fields, [("created_at", "read_only"), ("version", "read_only")]);
        let e = validate_patch(&c, &obj(json!({"updated_at": "2026-01-01T00:00:00Z"}))).unwrap_err();
        assert_eq!((e[0].field.as_str(), e[0].code), ("updated_at", "read_only"));
        assert!(validate_create(&c, &obj(json!({"title": "box", "id": "x1"}))).is_ok(), "id stays accepted");
        assert!(validate_patch(&c, &obj(json!({"id": "x1", "qty": 2}))).is_ok());
    }

    #[test]
    fn numbers_are_not_coerced() {
        let c = items();
        assert!(validate_patch(&c, &obj(json!({"qty": 5.5}))).is_err());
        assert!(validate_patch(&c, &obj(json!({"qty": -1}))).is_err());
        assert!(validate_patch(&c, &obj(json!({"qty": 5}))).is_ok());
        assert!(validate_patch(&c, &obj(json!({"price": 5}))).is_ok());
    }

    #[test]
    fn patch_refuses_null_for_required() {
        let e = validate_patch(&items(), &obj(json!({"title": null}))).unwrap_err();
        assert_eq!(e[0].code, "required");
        let ok = validate_patch(&items(), &obj(json!({"due": "2026-01-01T00:00:00+01:00"}))).unwrap();
        assert_eq!(ok[0].1, json!("2025-12-31T23:00:00.000000Z"));
    }
}
