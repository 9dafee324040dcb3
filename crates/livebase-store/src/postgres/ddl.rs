//! Schema on PostgreSQL: Livebase's own tables, and one real table per collection with typed
//! columns, unique indexes, foreign keys, REPLICA IDENTITY FULL (captured updates and deletes
//! carry the whole old row), a trigger that keeps the system columns right for any writer, and
//! membership in Livebase's publication.
//!
//! Each change runs in one transaction with the stored definition. The rules (what needs
//! `force`, what is refused) are [`SchemaPlan`]'s, shared with SQLite.

use super::writer::pg_error;
use crate::sql::{pg_type, quote_ident, to_sql_value};
use crate::{SchemaChange, SchemaPlan, StoreError};
use livebase_core::schema::{Collection, Field, FieldType, Migration, OnDelete, SchemaError};
use livebase_core::Schema;
use postgres::Transaction;

/// Livebase's tables and functions; idempotent. `_lb_changes` is the durable change log
/// (never in the publication), `xid` and `lsn` tie each event to the captured transaction.
pub const INTERNAL: &str = r#"
CREATE TABLE IF NOT EXISTS _lb_collections (name text COLLATE "C" PRIMARY KEY, definition text NOT NULL);
CREATE TABLE IF NOT EXISTS _lb_changes (
    seq int8 PRIMARY KEY, collection text COLLATE "C" NOT NULL, op text NOT NULL,
    record_id text COLLATE "C" NOT NULL, version int8 NOT NULL, actor text COLLATE "C",
    committed_at text COLLATE "C" NOT NULL, new text, old text, xid int8 NOT NULL, lsn int8 NOT NULL);
CREATE INDEX IF NOT EXISTS _lb_changes_record ON _lb_changes (collection, record_id, seq);
CREATE TABLE IF NOT EXISTS _lb_idempotency (
    key text COLLATE "C" PRIMARY KEY, fingerprint text NOT NULL, status int4 NOT NULL, body text NOT NULL,
    created_at int8 NOT NULL);
CREATE TABLE IF NOT EXISTS _lb_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE OR REPLACE FUNCTION _lb_now() RETURNS text LANGUAGE sql VOLATILE AS
  $$ SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;
CREATE OR REPLACE FUNCTION _lb_touch() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE livebase boolean := coalesce(current_setting('livebase.writer', true), '') = 'on';
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NOT livebase THEN
      NEW.version := 1;
      NEW.updated_at := NEW.created_at;
    END IF;
  ELSE
    IF coalesce(current_setting('livebase.migrating', true), '') = 'on' THEN
      RETURN NEW;
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id THEN
      RAISE EXCEPTION 'a record''s id cannot be changed (% -> %)', OLD.id, NEW.id USING ERRCODE = '23514';
    END IF;
    NEW.version := OLD.version + 1;
    NEW.created_at := OLD.created_at;
    IF NOT livebase THEN
      NEW.updated_at := _lb_now();
    END IF;
  END IF;
  RETURN NEW;
END $$;
"#;

/// Marks the transaction as a migration (see [`super::capture`]).
pub const MIGRATION_MARK: &str =
    "SET LOCAL livebase.migrating = 'on'; SELECT pg_logical_emit_message(true, 'livebase-migration', '')";

/// Canonical timestamps only (`2026-01-02T03:04:05.000000Z`), whoever writes.
const DATETIME_CHECK: &str = r#"~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$'"#;

pub fn apply(
    tx: &mut Transaction<'_>,
    publication: &str,
    current: &Schema,
    change: SchemaChange,
) -> Result<Schema, StoreError> {
    let (plan, next) = SchemaPlan::decide(current, change)?;
    match plan {
        SchemaPlan::Create(c) => {
            create_table(tx, &next, &c, publication)?;
            tx.execute(
                "INSERT INTO _lb_collections (name, definition) VALUES ($1, $2)",
                &[&c.name, &definition(&c)],
            )
            .map_err(pg_error)?;
        }
        SchemaPlan::Update { old, new: c, migration } => {
            migrate(tx, &next, &old, &c, &migration)?;
            tx.execute(
                "UPDATE _lb_collections SET definition = $1 WHERE name = $2",
                &[&definition(&c), &c.name],
            )
            .map_err(pg_error)?;
        }
        SchemaPlan::Drop { name, force } => {
            let rows = count(tx, &name)?;
            SchemaPlan::check_drop(&name, rows, force)?;
            tx.batch_execute(&format!("DROP TABLE {}", quote_ident(&name))).map_err(pg_error)?;
            tx.execute("DELETE FROM _lb_collections WHERE name = $1", &[&name]).map_err(pg_error)?;
        }
    }
    Ok(next)
}

fn definition(c: &Collection) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

fn count(tx: &mut Transaction<'_>, table: &str) -> Result<i64, StoreError> {
    tx.query_one(&format!("SELECT count(*) FROM {}", quote_ident(table)), &[])
        .and_then(|r| r.try_get(0))
        .map_err(pg_error)
}

fn column_sql(f: &Field) -> String {
    let col = quote_ident(&f.name);
    let mut s = format!("{col} {}", pg_type(f.ty));
    if pg_type(f.ty) == "text" {
        s.push_str(" COLLATE \"C\"");
    }
    if f.ty == FieldType::Datetime {
        s.push_str(&format!(" CHECK ({col} {DATETIME_CHECK})"));
    }
    s
}

fn create_table(
    tx: &mut Transaction<'_>,
    schema: &Schema,
    c: &Collection,
    publication: &str,
) -> Result<(), StoreError> {
    let t = quote_ident(&c.name);
    let mut sql = format!(
        "CREATE TABLE {t} (\"id\" text COLLATE \"C\" PRIMARY KEY DEFAULT replace(gen_random_uuid()::text, '-', ''), \
         \"version\" int8 NOT NULL DEFAULT 1, \
         \"created_at\" text COLLATE \"C\" NOT NULL DEFAULT _lb_now() CHECK (\"created_at\" {DATETIME_CHECK}), \
         \"updated_at\" text COLLATE \"C\" NOT NULL DEFAULT _lb_now() CHECK (\"updated_at\" {DATETIME_CHECK})"
    );
    for f in &c.fields {
        sql.push_str(", ");
        sql.push_str(&column_sql(f));
    }
    sql.push(')');
    tx.batch_execute(&sql).map_err(pg_error)?;
    tx.batch_execute(&format!(
        "ALTER TABLE {t} REPLICA IDENTITY FULL; \
         CREATE TRIGGER _lb_touch BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION _lb_touch(); \
         ALTER PUBLICATION {} ADD TABLE {t};",
        quote_ident(publication)
    ))
    .map_err(pg_error)?;
    for f in &c.fields {
        create_constraints(tx, schema, c, f)?;
    }
    Ok(())
}

fn constraint_name(c: &str, f: &str, kind: &str) -> String {
    quote_ident(&format!("{c}__{f}__{kind}"))
}

/// Unique index, relation index and foreign key of one field.
fn create_constraints(
    tx: &mut Transaction<'_>,
    schema: &Schema,
    c: &Collection,
    f: &Field,
) -> Result<(), StoreError> {
    let (t, col) = (quote_ident(&c.name), quote_ident(&f.name));
    if f.unique {
        tx.batch_execute(&format!(
            "CREATE UNIQUE INDEX {} ON {t} ({col})",
            constraint_name(&c.name, &f.name, "unique")
        ))
        .map_err(|e| {
            StoreError::Schema(SchemaError {
                path: f.name.clone(),
                message: format!("cannot make {} unique: existing records share values ({e})", f.name),
            })
        })?;
    }
    if f.ty == FieldType::Relation {
        tx.batch_execute(&format!(
            "CREATE INDEX {} ON {t} ({col})",
            constraint_name(&c.name, &f.name, "rel")
        ))
        .map_err(pg_error)?;
        if let Some(target) = f.collection.as_deref().filter(|t| schema.get(t).is_some()) {
            let action = match f.on_delete.unwrap_or_default() {
                OnDelete::Restrict => "RESTRICT",
                OnDelete::Cascade => "CASCADE",
                OnDelete::SetNull => "SET NULL",
            };
            tx.batch_execute(&format!(
                "ALTER TABLE {t} ADD CONSTRAINT {} FOREIGN KEY ({col}) REFERENCES {}(\"id\") ON DELETE {action}",
                constraint_name(&c.name, &f.name, "fk"),
                quote_ident(target)
            ))
            .map_err(pg_error)?;
        }
    }
    Ok(())
}

fn drop_constraints(tx: &mut Transaction<'_>, c: &str, f: &str) -> Result<(), StoreError> {
    tx.batch_execute(&format!(
        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}; DROP INDEX IF EXISTS {}; DROP INDEX IF EXISTS {};",
        quote_ident(c),
        constraint_name(c, f, "fk"),
        constraint_name(c, f, "unique"),
        constraint_name(c, f, "rel")
    ))
    .map_err(pg_error)
}

fn migrate(
    tx: &mut Transaction<'_>,
    schema: &Schema,
    old: &Collection,
    new: &Collection,
    m: &Migration,
) -> Result<(), StoreError> {
    let t = quote_ident(&new.name);
    let rows = count(tx, &new.name)?;
    for name in m.dropped.iter().chain(&m.retyped) {
        drop_constraints(tx, &old.name, name)?;
        tx.batch_execute(&format!("ALTER TABLE {t} DROP COLUMN {}", quote_ident(name))).map_err(pg_error)?;
    }
    let added = m.added.iter().chain(new.fields.iter().filter(|f| m.retyped.contains(&f.name)));
    for f in added {
        tx.batch_execute(&format!("ALTER TABLE {t} ADD COLUMN {}", column_sql(f))).map_err(pg_error)?;
        SchemaPlan::check_added(f, rows)?;
        if let Some(d) = SchemaPlan::default_value(f)? {
            let mut p = crate::sql::Params::new(crate::sql::Dialect::Postgres);
            let ph = p.bind_typed(f.ty, to_sql_value(f.ty, &d));
            // Filling a new field's default is a migration, not a change: the trigger leaves the
            // system columns alone and the capture skips transactions marked as migrations.
            tx.batch_execute(MIGRATION_MARK).map_err(pg_error)?;
            tx.execute(
                &format!("UPDATE {t} SET {} = {ph}", quote_ident(&f.name)),
                &super::rows::params(&p.values),
            )
            .map_err(pg_error)?;
        }
        create_constraints(tx, schema, new, f)?;
    }
    for name in &m.unique_changed {
        if m.retyped.contains(name) {
            continue;
        }
        let Some(f) = new.field(name) else { continue };
        drop_constraints(tx, &new.name, name)?;
        create_constraints(tx, schema, new, f)?;
    }
    for name in &m.tightened {
        let Some(f) = new.field(name) else { continue };
        let col = quote_ident(name);
        let rows = tx.query(&format!("SELECT {col}::text FROM {t}"), &[]).map_err(pg_error)?;
        let values = rows.iter().map(|r| match r.try_get::<_, Option<String>>(0) {
            Ok(Some(s)) => super::rows::from_text(f.ty, &s),
            _ => serde_json::Value::Null,
        });
        SchemaPlan::check_tightened(f, values)?;
    }
    Ok(())
}
