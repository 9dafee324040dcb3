//! Records to rows and back: one table per collection, one column per field.

use crate::sqlite_filter::quote_ident;
use livebase_core::schema::{Collection, Field, FieldType};
use livebase_core::Record;
use rusqlite::types::{Value as Sql, ValueRef};
use rusqlite::Row;
use serde_json::{Map, Value};

/// `"id","version","created_at","updated_at","f1",...` in schema order.
pub fn select_columns(c: &Collection) -> String {
    let mut s = String::from("\"id\",\"version\",\"created_at\",\"updated_at\"");
    for f in &c.fields {
        s.push(',');
        s.push_str(&quote_ident(&f.name));
    }
    s
}

/// The SQLite column type a field is stored as.
pub fn column_type(f: &Field) -> &'static str {
    match f.ty {
        FieldType::Integer | FieldType::Boolean => "INTEGER",
        FieldType::Number => "REAL",
        _ => "TEXT",
    }
}

pub fn to_sql(ty: FieldType, v: &Value) -> Sql {
    match (ty, v) {
        (_, Value::Null) => Sql::Null,
        (FieldType::Boolean, Value::Bool(b)) => Sql::Integer(*b as i64),
        (FieldType::Integer, Value::Number(n)) => n.as_i64().map(Sql::Integer).unwrap_or(Sql::Null),
        (FieldType::Number, Value::Number(n)) => n.as_f64().map(Sql::Real).unwrap_or(Sql::Null),
        (FieldType::Json, v) => Sql::Text(v.to_string()),
        (_, Value::String(s)) => Sql::Text(s.clone()),
        (_, v) => Sql::Text(v.to_string()),
    }
}

/// The type of a column, system fields included.
pub fn field_type(c: &Collection, name: &str) -> Option<FieldType> {
    match name {
        "id" => Some(FieldType::Text),
        "version" => Some(FieldType::Integer),
        "created_at" | "updated_at" => Some(FieldType::Datetime),
        _ => c.field(name).map(|f| f.ty),
    }
}

fn from_sql(ty: FieldType, v: ValueRef<'_>) -> Value {
    match (ty, v) {
        (_, ValueRef::Null) => Value::Null,
        (FieldType::Boolean, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (_, ValueRef::Integer(i)) => Value::from(i),
        (_, ValueRef::Real(r)) => serde_json::Number::from_f64(r).map(Value::Number).unwrap_or(Value::Null),
        (FieldType::Json, ValueRef::Text(t)) => serde_json::from_slice(t).unwrap_or(Value::Null),
        (_, ValueRef::Text(t)) => Value::String(String::from_utf8_lossy(t).into_owned()),
        (_, ValueRef::Blob(_)) => Value::Null,
    }
}

/// Reads a row selected with [`select_columns`].
pub fn row_to_record(c: &Collection, row: &Row<'_>) -> rusqlite::Result<Record> {
    let mut m = Map::with_capacity(4 + c.fields.len());
    m.insert("id".into(), Value::String(row.get(0)?));
    m.insert("version".into(), Value::from(row.get::<_, i64>(1)?));
    m.insert("created_at".into(), Value::String(row.get(2)?));
    m.insert("updated_at".into(), Value::String(row.get(3)?));
    for (i, f) in c.fields.iter().enumerate() {
        m.insert(f.name.clone(), from_sql(f.ty, row.get_ref(4 + i)?));
    }
    Ok(Record(m))
}
