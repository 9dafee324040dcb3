//! Schema changes: tables, columns and indexes for collection definitions.
//!
//! Each change runs in its own transaction together with the stored definition, so a failed
//! migration leaves both the data and the schema as they were.

use super::rows::column_type;
use super::writer::internal;
use crate::sql::{quote_ident, to_sql_value};
use crate::{SchemaChange, SchemaPlan, StoreError};
use livebase_core::schema::{Collection, Field, FieldType, Migration, SchemaError};
use livebase_core::Schema;
use rusqlite::Connection;

pub fn apply(conn: &mut Connection, current: &Schema, change: SchemaChange) -> Result<Schema, StoreError> {
    let (plan, next) = SchemaPlan::decide(current, change)?;
    let tx = conn.transaction().map_err(internal)?;
    match plan {
        SchemaPlan::Create(c) => {
            create_table(&tx, &c)?;
            tx.execute(
                "INSERT INTO _lb_collections (name, definition) VALUES (?, ?)",
                rusqlite::params![c.name, definition(&c)],
            )
            .map_err(internal)?;
        }
        SchemaPlan::Update { old, new: c, migration } => {
            migrate(&tx, &old, &c, &migration)?;
            tx.execute(
                "UPDATE _lb_collections SET definition = ? WHERE name = ?",
                rusqlite::params![definition(&c), c.name],
            )
            .map_err(internal)?;
        }
        SchemaPlan::Drop { name, force } => {
            let t = quote_ident(&name);
            let rows: i64 =
                tx.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0)).map_err(internal)?;
            SchemaPlan::check_drop(&name, rows, force)?;
            tx.execute_batch(&format!("DROP TABLE {t}")).map_err(internal)?;
            tx.execute("DELETE FROM _lb_collections WHERE name = ?", [&name]).map_err(internal)?;
        }
    }
    tx.commit().map_err(internal)?;
    Ok(next)
}

fn definition(c: &Collection) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

fn create_table(tx: &Connection, c: &Collection) -> Result<(), StoreError> {
    let mut sql = format!(
        "CREATE TABLE {} (\"id\" TEXT PRIMARY KEY NOT NULL, \"version\" INTEGER NOT NULL, \"created_at\" TEXT NOT NULL, \"updated_at\" TEXT NOT NULL",
        quote_ident(&c.name)
    );
    for f in &c.fields {
        sql.push_str(&format!(", {} {}", quote_ident(&f.name), column_type(f)));
    }
    sql.push(')');
    tx.execute_batch(&sql).map_err(internal)?;
    for f in &c.fields {
        create_indexes(tx, c, f)?;
    }
    Ok(())
}

fn index_name(c: &str, f: &str, kind: &str) -> String {
    quote_ident(&format!("{c}__{f}__{kind}"))
}

fn create_indexes(tx: &Connection, c: &Collection, f: &Field) -> Result<(), StoreError> {
    let (t, col) = (quote_ident(&c.name), quote_ident(&f.name));
    if f.unique {
        tx.execute_batch(&format!(
            "CREATE UNIQUE INDEX {} ON {t} ({col})",
            index_name(&c.name, &f.name, "unique")
        ))
        .map_err(|e| {
            StoreError::Schema(SchemaError {
                path: f.name.clone(),
                message: format!("cannot make {} unique: existing records share values ({e})", f.name),
            })
        })?;
    }
    if f.ty == FieldType::Relation {
        tx.execute_batch(&format!("CREATE INDEX {} ON {t} ({col})", index_name(&c.name, &f.name, "rel")))
            .map_err(internal)?;
    }
    Ok(())
}

fn drop_indexes(tx: &Connection, c: &str, f: &str) -> Result<(), StoreError> {
    for kind in ["unique", "rel"] {
        tx.execute_batch(&format!("DROP INDEX IF EXISTS {}", index_name(c, f, kind))).map_err(internal)?;
    }
    Ok(())
}

fn migrate(tx: &Connection, old: &Collection, new: &Collection, m: &Migration) -> Result<(), StoreError> {
    let t = quote_ident(&new.name);
    let rows: i64 = tx.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0)).map_err(internal)?;
    for name in m.dropped.iter().chain(&m.retyped) {
        drop_indexes(tx, &old.name, name)?;
        tx.execute_batch(&format!("ALTER TABLE {t} DROP COLUMN {}", quote_ident(name))).map_err(internal)?;
    }
    let added = m.added.iter().chain(new.fields.iter().filter(|f| m.retyped.contains(&f.name)));
    for f in added {
        let col = quote_ident(&f.name);
        tx.execute_batch(&format!("ALTER TABLE {t} ADD COLUMN {col} {}", column_type(f)))
            .map_err(internal)?;
        SchemaPlan::check_added(f, rows)?;
        if let Some(d) = SchemaPlan::default_value(f)? {
            tx.execute(&format!("UPDATE {t} SET {col} = ?"), [to_sql_value(f.ty, &d)]).map_err(internal)?;
        }
        create_indexes(tx, new, f)?;
    }
    for name in &m.unique_changed {
        if m.retyped.contains(name) {
            continue;
        }
        let Some(f) = new.field(name) else { continue };
        drop_indexes(tx, &new.name, name)?;
        create_indexes(tx, new, f)?;
    }
    for name in &m.tightened {
        let Some(f) = new.field(name) else { continue };
        let mut stmt = tx.prepare(&format!("SELECT {} FROM {t}", quote_ident(name))).map_err(internal)?;
        let ty = f.ty;
        let values = stmt
            .query_map([], |r| {
                let v = r.get_ref(0)?;
                Ok(match (ty, v) {
                    (_, rusqlite::types::ValueRef::Null) => serde_json::Value::Null,
                    (FieldType::Boolean, rusqlite::types::ValueRef::Integer(i)) => {
                        serde_json::Value::Bool(i != 0)
                    }
                    (_, rusqlite::types::ValueRef::Integer(i)) => i.into(),
                    (_, rusqlite::types::ValueRef::Real(x)) => x.into(),
                    (_, rusqlite::types::ValueRef::Text(s)) => String::from_utf8_lossy(s).into_owned().into(),
                    _ => serde_json::Value::Null,
                })
            })
            .map_err(internal)?;
        let values: Vec<serde_json::Value> = values.collect::<Result<_, _>>().map_err(internal)?;
        SchemaPlan::check_tightened(f, values.into_iter())?;
    }
    Ok(())
}
