//! Records to rows and back: one table per collection, one column per field.

use crate::sql::SqlValue;
use livebase_core::schema::{Collection, Field, FieldType};
use livebase_core::Record;
use rusqlite::types::{ToSqlOutput, Value as Sql, ValueRef};
use rusqlite::{Row, ToSql};
use serde_json::{Map, Value};

/// The SQLite column type a field is stored as.
pub fn column_type(f: &Field) -> &'static str {
    match f.ty {
        FieldType::Integer | FieldType::Boolean => "INTEGER",
        FieldType::Number => "REAL",
        _ => "TEXT",
    }
}

impl ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Null => ToSqlOutput::Owned(Sql::Null),
            SqlValue::Int(i) => ToSqlOutput::Owned(Sql::Integer(*i)),
            SqlValue::Real(x) => ToSqlOutput::Owned(Sql::Real(*x)),
            SqlValue::Bool(b) => ToSqlOutput::Owned(Sql::Integer(i64::from(*b))),
            SqlValue::Text(t) | SqlValue::Json(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
        })
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
