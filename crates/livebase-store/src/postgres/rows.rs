//! Records to PostgreSQL rows and back, and captured WAL tuples (text) to records.

use crate::sql::SqlValue;
use livebase_core::schema::{Collection, FieldType};
use livebase_core::Record;
use serde_json::{Map, Value};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Row;

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(i) => i.to_sql(ty, out),
            SqlValue::Real(x) => x.to_sql(ty, out),
            SqlValue::Bool(b) => b.to_sql(ty, out),
            SqlValue::Text(t) | SqlValue::Json(t) => t.as_str().to_sql(ty, out),
        }
    }

    /// Placeholders are always cast to the value's type (see [`crate::sql::Params::bind`]).
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// The values as driver parameters.
pub fn params(values: &[SqlValue]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn json_number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null)
}

/// Reads a row selected with [`crate::sql::select_columns`] (PostgreSQL dialect).
pub fn row_to_record(c: &Collection, row: &Row) -> Result<Record, tokio_postgres::Error> {
    let mut m = Map::with_capacity(4 + c.fields.len());
    m.insert("id".into(), Value::String(row.try_get(0)?));
    m.insert("version".into(), Value::from(row.try_get::<_, i64>(1)?));
    m.insert("created_at".into(), Value::String(row.try_get(2)?));
    m.insert("updated_at".into(), Value::String(row.try_get(3)?));
    for (i, f) in c.fields.iter().enumerate() {
        let i = 4 + i;
        let v = match f.ty {
            FieldType::Integer => row.try_get::<_, Option<i64>>(i)?.map(Value::from),
            FieldType::Number => row.try_get::<_, Option<f64>>(i)?.map(json_number),
            FieldType::Boolean => row.try_get::<_, Option<bool>>(i)?.map(Value::Bool),
            FieldType::Json => {
                row.try_get::<_, Option<String>>(i)?.map(|s| serde_json::from_str(&s).unwrap_or(Value::Null))
            }
            FieldType::Text | FieldType::Select | FieldType::Relation | FieldType::Datetime => {
                row.try_get::<_, Option<String>>(i)?.map(Value::String)
            }
        };
        m.insert(f.name.clone(), v.unwrap_or(Value::Null));
    }
    Ok(Record(m))
}

/// One column value in PostgreSQL's text output format, as the field's JSON value.
pub fn from_text(ty: FieldType, s: &str) -> Value {
    match ty {
        FieldType::Integer => s.parse::<i64>().map(Value::from).unwrap_or(Value::Null),
        FieldType::Number => {
            s.parse::<f64>().ok().filter(|x| x.is_finite()).map(json_number).unwrap_or(Value::Null)
        }
        FieldType::Boolean => match s {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => Value::Null,
        },
        FieldType::Json => serde_json::from_str(s).unwrap_or(Value::Null),
        FieldType::Text | FieldType::Select | FieldType::Relation | FieldType::Datetime => {
            Value::String(s.into())
        }
    }
}

/// A captured tuple (column names and text values) as a record of `c`; None when it lacks
/// the system columns (not a Livebase table's row).
pub fn tuple_to_record(c: &Collection, columns: &[String], values: &[Option<String>]) -> Option<Record> {
    let get = |name: &str| {
        columns.iter().position(|n| n == name).and_then(|i| values.get(i)).and_then(|v| v.as_deref())
    };
    let mut m = Map::with_capacity(4 + c.fields.len());
    m.insert("id".into(), Value::String(get("id")?.to_string()));
    m.insert("version".into(), Value::from(get("version")?.parse::<i64>().ok()?));
    m.insert("created_at".into(), Value::String(get("created_at")?.to_string()));
    m.insert("updated_at".into(), Value::String(get("updated_at")?.to_string()));
    for f in &c.fields {
        m.insert(f.name.clone(), get(&f.name).map_or(Value::Null, |s| from_text(f.ty, s)));
    }
    Some(Record(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_output_becomes_typed_json() {
        assert_eq!(from_text(FieldType::Integer, "-42"), Value::from(-42));
        assert_eq!(from_text(FieldType::Number, "2.5"), Value::from(2.5));
        assert_eq!(from_text(FieldType::Number, "NaN"), Value::Null);
        assert_eq!(from_text(FieldType::Boolean, "t"), Value::Bool(true));
        assert_eq!(from_text(FieldType::Boolean, "false"), Value::Bool(false));
        assert_eq!(from_text(FieldType::Json, "{\"a\": [1, 2]}"), serde_json::json!({"a": [1, 2]}));
        assert_eq!(from_text(FieldType::Text, "x"), Value::from("x"));
    }
}
