//! Collection definitions: the declared shape of records.
//!
//! A [`Collection`] is plain data, deserialized from the admin API or the schema file. It is
//! checked once by [`Collection::check`] (names, types, relation targets) and then trusted by
//! validation, filters and the store adapters.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Fields every record has; they cannot be declared.
pub const SYSTEM_FIELDS: [&str; 4] = ["id", "version", "created_at", "updated_at"];

/// Longest collection or field name (fits identifier limits of every SQL backend).
pub const MAX_NAME_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    pub name: String,
    #[serde(default)]
    pub fields: Vec<Field>,
    /// What a write that carries a stale base version does.
    #[serde(default)]
    pub conflict: ConflictStrategy,
    /// Access rules by action (list, view, create, update, delete). A missing rule means
    /// admin only; `"true"` means everyone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub unique: bool,
    /// Minimum value (integer, number) or length in characters (text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Maximum value (integer, number) or length in characters (text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Allowed values of a `select` field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Target collection of a `relation` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// What deleting the target record does to this one (relations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<OnDelete>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Text,
    Integer,
    Number,
    Boolean,
    Datetime,
    Json,
    Select,
    Relation,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Integer => "integer",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Datetime => "datetime",
            FieldType::Json => "json",
            FieldType::Select => "select",
            FieldType::Relation => "relation",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Refuse to delete a record that others still point at.
    #[default]
    Restrict,
    /// Delete the pointing records too.
    Cascade,
    /// Clear the pointing field.
    SetNull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictStrategy {
    /// A write with a stale base version fails with 409 and the current record.
    #[default]
    Reject,
    /// A write with a stale base version applies anyway.
    Lww,
    /// A patch applies when none of its fields changed since its base version.
    Merge,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SchemaError {
    /// Where the problem is, e.g. `fields[2].min`.
    pub path: String,
    pub message: String,
}

fn schema_err(path: impl Into<String>, message: impl Into<String>) -> SchemaError {
    SchemaError { path: path.into(), message: message.into() }
}

/// A lower-case identifier: `[a-z][a-z0-9_]*`, at most 63 bytes.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_NAME_LEN
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

impl Collection {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Checks the definition on its own: names, duplicate fields, type-specific options and
    /// defaults. Relation targets are checked against the whole schema by [`Schema::check`].
    pub fn check(&self) -> Result<(), SchemaError> {
        if !valid_name(&self.name) {
            return Err(schema_err(
                "name",
                format!(
                    "collection name '{}' must match [a-z][a-z0-9_]* and be at most {MAX_NAME_LEN} bytes",
                    self.name
                ),
            ));
        }
        for (i, f) in self.fields.iter().enumerate() {
            let at = |k: &str| format!("fields[{i}].{k}");
            if !valid_name(&f.name) {
                return Err(schema_err(
                    at("name"),
                    format!("field name '{}' must match [a-z][a-z0-9_]*", f.name),
                ));
            }
            if SYSTEM_FIELDS.contains(&f.name.as_str()) {
                return Err(schema_err(at("name"), format!("'{}' is a system field", f.name)));
            }
            if self.fields[..i].iter().any(|g| g.name == f.name) {
                return Err(schema_err(at("name"), format!("duplicate field '{}'", f.name)));
            }
            let bounded = matches!(f.ty, FieldType::Text | FieldType::Integer | FieldType::Number);
            if (f.min.is_some() || f.max.is_some()) && !bounded {
                return Err(schema_err(
                    at("min"),
                    format!("min/max apply to text, integer and number, not {}", f.ty.as_str()),
                ));
            }
            if let (Some(lo), Some(hi)) = (f.min, f.max) {
                if lo > hi {
                    return Err(schema_err(at("max"), "max is less than min"));
                }
            }
            match f.ty {
                FieldType::Select if f.values.is_empty() => {
                    return Err(schema_err(at("values"), "a select field needs values"));
                }
                FieldType::Relation if f.collection.is_none() => {
                    return Err(schema_err(at("collection"), "a relation field needs a target collection"));
                }
                _ => {}
            }
            if f.ty != FieldType::Select && !f.values.is_empty() {
                return Err(schema_err(at("values"), "values apply to select fields only"));
            }
            if f.ty != FieldType::Relation && (f.collection.is_some() || f.on_delete.is_some()) {
                return Err(schema_err(
                    at("collection"),
                    "collection and on_delete apply to relation fields only",
                ));
            }
            if f.on_delete == Some(OnDelete::SetNull) && f.required {
                return Err(schema_err(at("on_delete"), "on_delete set_null conflicts with required"));
            }
            if let Some(d) = &f.default {
                if f.unique {
                    return Err(schema_err(at("default"), "a unique field cannot have a default"));
                }
                crate::validate::check_value(f, d)
                    .map_err(|e| schema_err(at("default"), format!("default is invalid: {}", e.message)))?;
            }
        }
        self.check_rules()
    }

    /// Rules: known actions, valid syntax, and `record.`/`data.` paths that name declared or
    /// system fields.
    fn check_rules(&self) -> Result<(), SchemaError> {
        use crate::rules::{unknown_action, Root, Rule, RULE_ACTIONS};
        for (action, src) in &self.rules {
            let at = format!("rules.{action}");
            if !RULE_ACTIONS.contains(&action.as_str()) {
                return Err(schema_err(at, unknown_action(action)));
            }
            let rule = Rule::parse(src).map_err(|e| schema_err(&at, e.to_string()))?;
            for root in [Root::Record, Root::Data] {
                for f in rule.fields(root) {
                    if !SYSTEM_FIELDS.contains(&f) && self.field(f).is_none() {
                        return Err(schema_err(
                            at,
                            format!("{}.{f} is not a field of {}", root.as_str(), self.name),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Relation fields of `self` pointing at `target`.
    pub fn relations_to<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.ty == FieldType::Relation && f.collection.as_deref() == Some(target))
    }
}

/// What changing a collection from `old` to `new` does to stored data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Migration {
    pub added: Vec<Field>,
    pub dropped: Vec<String>,
    /// Fields whose type changed: data must be rewritten or dropped.
    pub retyped: Vec<String>,
    /// Fields that became unique, required or narrower: existing rows may fail.
    pub tightened: Vec<String>,
    /// Fields whose `unique` flag changed (index to create or drop).
    pub unique_changed: Vec<String>,
}

impl Migration {
    pub fn between(old: &Collection, new: &Collection) -> Migration {
        let mut m = Migration::default();
        for f in &new.fields {
            match old.field(&f.name) {
                None => m.added.push(f.clone()),
                Some(o) => {
                    if o.ty != f.ty || o.collection != f.collection {
                        m.retyped.push(f.name.clone());
                    }
                    if o.unique != f.unique {
                        m.unique_changed.push(f.name.clone());
                    }
                    let narrower = (f.required && !o.required)
                        || (f.unique && !o.unique)
                        || f.min.is_some_and(|v| o.min.is_none_or(|w| v > w))
                        || f.max.is_some_and(|v| o.max.is_none_or(|w| v < w))
                        || (f.ty == FieldType::Select && o.values.iter().any(|v| !f.values.contains(v)));
                    if narrower {
                        m.tightened.push(f.name.clone());
                    }
                }
            }
        }
        for o in &old.fields {
            if new.field(&o.name).is_none() {
                m.dropped.push(o.name.clone());
            }
        }
        m
    }

    /// Dropping or retyping a field loses data; it needs an explicit flag.
    pub fn is_destructive(&self) -> bool {
        !self.dropped.is_empty() || !self.retyped.is_empty()
    }
}

/// All collections, by name. Cheap to clone behind an `Arc` by its owners.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    pub collections: BTreeMap<String, Collection>,
}

impl Schema {
    pub fn get(&self, name: &str) -> Option<&Collection> {
        self.collections.get(name)
    }

    /// Checks every collection, and that every relation points at an existing collection.
    pub fn check(&self) -> Result<(), SchemaError> {
        for c in self.collections.values() {
            c.check().map_err(|e| schema_err(format!("{}.{}", c.name, e.path), e.message))?;
            for (i, f) in c.fields.iter().enumerate() {
                if let Some(target) = &f.collection {
                    if !self.collections.contains_key(target) {
                        return Err(schema_err(
                            format!("{}.fields[{i}].collection", c.name),
                            format!("relation target '{target}' does not exist"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Collections with a relation to `target`, with the fields that point at it.
    pub fn referrers<'a>(&'a self, target: &'a str) -> Vec<(&'a Collection, &'a Field)> {
        self.collections.values().flat_map(|c| c.relations_to(target).map(move |f| (c, f))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn coll(v: Value) -> Collection {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn issue_example_collection_parses_and_checks() {
        let c = coll(json!({"name": "items", "fields": [
            {"name": "title", "type": "text", "required": true},
            {"name": "qty", "type": "integer", "min": 0},
            {"name": "owner", "type": "relation", "collection": "users", "on_delete": "set_null"}],
            "conflict": "reject"}));
        c.check().unwrap();
        let mut s = Schema::default();
        s.collections.insert(c.name.clone(), c.clone());
        assert!(s.check().unwrap_err().message.contains("users"));
        s.collections.insert("users".into(), coll(json!({"name": "users"})));
        s.check().unwrap();
        assert_eq!(s.referrers("users").len(), 1);
    }

    #[test]
    fn unknown_keys_and_bad_names_are_refused() {
        assert!(serde_json::from_value::<Collection>(json!({"name": "a", "colour": 1})).is_err());
        assert!(coll(json!({"name": "Items"})).check().is_err());
        let e = coll(json!({"name": "a", "fields": [{"name": "id", "type": "text"}]})).check();
        assert_eq!(e.unwrap_err().path, "fields[0].name");
        let e = coll(json!({"name": "a", "fields": [{"name": "s", "type": "select"}]})).check();
        assert_eq!(e.unwrap_err().path, "fields[0].values");
        let e =
            coll(json!({"name": "a", "fields": [{"name": "n", "type": "integer", "default": "x"}]})).check();
        assert_eq!(e.unwrap_err().path, "fields[0].default");
    }

    #[test]
    fn rules_are_checked() {
        let with_rules = |rules: Value| {
            coll(json!({"name": "items", "fields": [
                {"name": "owner", "type": "text"}, {"name": "status", "type": "text"}],
                "rules": rules}))
            .check()
        };
        with_rules(json!({
            "list": "true",
            "view": "record.owner == auth.sub || auth.role == 'admin'",
            "create": "data.owner == auth.sub && data.status in ['open', 'draft']",
            "update": "record.owner == auth.sub && record.version >= 1 && data.id == null",
            "delete": "record.owner.nested == auth.org.id && record.created_at < '2030'"}))
        .unwrap();
        with_rules(json!({})).unwrap();

        let e = with_rules(json!({"edit": "true"})).unwrap_err();
        assert_eq!(e.path, "rules.edit");
        assert_eq!(e.message, "unknown rule action 'edit'; use list, view, create, update, delete");

        let e = with_rules(json!({"view": "record.owner = auth.sub"})).unwrap_err();
        assert_eq!(e.path, "rules.view");
        assert_eq!(e.message, "'=' is not an operator; use '==' to compare at line 1, column 14");
        let e = with_rules(json!({"update": "true &&\n  user.id == 1"})).unwrap_err();
        assert_eq!(e.path, "rules.update");
        assert!(e.message.starts_with("unknown name 'user'"), "{}", e.message);
        assert!(e.message.ends_with("at line 2, column 3"), "{}", e.message);

        let e = with_rules(json!({"view": "record.ownr == auth.sub"})).unwrap_err();
        assert_eq!(e.path, "rules.view");
        assert_eq!(e.message, "record.ownr is not a field of items");
        let e = with_rules(json!({"create": "auth.x == 1 || data.titel != null"})).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("rules.create", "data.titel is not a field of items")
        );

        // The schema-wide check prefixes the collection.
        let mut s = Schema::default();
        let c = coll(json!({"name": "items", "rules": {"list": "record.nope"}}));
        s.collections.insert(c.name.clone(), c);
        let e = s.check().unwrap_err();
        assert_eq!(e.path, "items.rules.list");
        assert_eq!(e.message, "record.nope is not a field of items");
    }

    #[test]
    fn migration_classifies_changes() {
        let a = coll(
            json!({"name": "a", "fields": [{"name": "x", "type": "text"}, {"name": "y", "type": "integer"}]}),
        );
        let b = coll(
            json!({"name": "a", "fields": [{"name": "x", "type": "text", "required": true}, {"name": "z", "type": "boolean"}]}),
        );
        let m = Migration::between(&a, &b);
        assert_eq!(m.added.len(), 1);
        assert_eq!(m.dropped, vec!["y".to_string()]);
        assert_eq!(m.tightened, vec!["x".to_string()]);
        assert!(m.is_destructive());
    }
}
