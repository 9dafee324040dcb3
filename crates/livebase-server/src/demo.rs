//! `--demo`: an example logistics schema and a few hundred generated records.

use crate::schema_file;
use livebase_core::schema::Collection;
use livebase_store::{Store, WriteOp, WriteRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

pub const SCHEMA: &str = r#"{"collections": [
 {"name": "customers", "fields": [
   {"name": "name", "type": "text", "required": true, "max": 120},
   {"name": "email", "type": "text", "unique": true},
   {"name": "tier", "type": "select", "values": ["standard", "priority", "enterprise"], "default": "standard"},
   {"name": "city", "type": "text"}],
  "rules": {"list": "true", "view": "true", "create": "true", "update": "true", "delete": "true"}},
 {"name": "vehicles", "fields": [
   {"name": "plate", "type": "text", "required": true, "unique": true},
   {"name": "kind", "type": "select", "values": ["van", "truck", "trailer"], "required": true},
   {"name": "capacity_kg", "type": "integer", "min": 0},
   {"name": "available", "type": "boolean", "default": true}],
  "rules": {"list": "true", "view": "true", "create": "true", "update": "true", "delete": "true"}},
 {"name": "shipments", "conflict": "merge", "fields": [
   {"name": "reference", "type": "text", "required": true, "unique": true},
   {"name": "customer", "type": "relation", "collection": "customers", "on_delete": "cascade", "required": true},
   {"name": "vehicle", "type": "relation", "collection": "vehicles", "on_delete": "set_null"},
   {"name": "status", "type": "select", "values": ["pending", "in_transit", "delivered", "late"], "default": "pending"},
   {"name": "weight_kg", "type": "number", "min": 0},
   {"name": "eta", "type": "datetime"},
   {"name": "notes", "type": "text"}],
  "rules": {"list": "true", "view": "true", "create": "true", "update": "true", "delete": "true"}},
 {"name": "bookings", "fields": [
   {"name": "customer", "type": "relation", "collection": "customers", "on_delete": "cascade", "required": true},
   {"name": "vehicle", "type": "relation", "collection": "vehicles", "on_delete": "restrict"},
   {"name": "starts_at", "type": "datetime", "required": true},
   {"name": "ends_at", "type": "datetime"},
   {"name": "confirmed", "type": "boolean", "default": false}],
  "rules": {"list": "true", "view": "true", "create": "true", "update": "true", "delete": "true"}},
 {"name": "inventory_items", "conflict": "merge", "fields": [
   {"name": "sku", "type": "text", "required": true, "unique": true},
   {"name": "title", "type": "text", "required": true},
   {"name": "qty", "type": "integer", "min": 0, "default": 0},
   {"name": "location", "type": "text"},
   {"name": "attributes", "type": "json"}],
  "rules": {"list": "true", "view": "true", "create": "true", "update": "true", "delete": "true"}}
]}"#;

pub fn collections() -> Vec<Collection> {
    schema_file::parse(SCHEMA, false).map(|f| f.collections).unwrap_or_default()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Creates the demo collections, and fills the ones that are empty.
pub async fn load(store: &dyn Store) -> anyhow::Result<()> {
    schema_file::ensure(store, collections()).await?;
    let empty = store.list("customers", Default::default()).await?.items.is_empty();
    if !empty {
        return Ok(());
    }
    let mut rng = StdRng::seed_from_u64(7);
    let cities = ["Rotterdam", "Hamburg", "Antwerp", "Lyon", "Milan", "Gdansk", "Porto", "Vienna"];
    let first = ["Ada", "Ben", "Chloe", "Dev", "Eva", "Finn", "Gia", "Hugo", "Iris", "Jon"];
    let last = ["Logistics", "Freight", "Cargo", "Trading", "Supply", "Imports"];
    let mut ops = Vec::new();
    let mut customers = Vec::new();
    for i in 0..60 {
        let id = format!("cust_{i:03}");
        customers.push(id.clone());
        let name = format!("{} {}", first[i % first.len()], last[rng.random_range(0..last.len())]);
        ops.push(WriteOp::Create {
            collection: "customers".into(),
            id: Some(id),
            data: obj(json!({"name": name, "email": format!("ops{i}@example.com"),
                "tier": (["standard", "priority", "enterprise"][rng.random_range(0..3)]),
                "city": cities[rng.random_range(0..cities.len())]})),
        });
    }
    let mut vehicles = Vec::new();
    for i in 0..25 {
        let id = format!("veh_{i:03}");
        vehicles.push(id.clone());
        ops.push(WriteOp::Create {
            collection: "vehicles".into(),
            id: Some(id),
            data: obj(json!({"plate": format!("LB-{:04}", 1000 + i * 37),
                "kind": (["van", "truck", "trailer"][i % 3]),
                "capacity_kg": ([1200, 18000, 24000][i % 3]), "available": rng.random_bool(0.7)})),
        });
    }
    for i in 0..200 {
        let day = 1 + rng.random_range(0..28);
        ops.push(WriteOp::Create {
            collection: "shipments".into(),
            id: None,
            data: obj(json!({"reference": format!("SHP-{:05}", 10_000 + i),
                "customer": customers[rng.random_range(0..customers.len())],
                "vehicle": if rng.random_bool(0.8) { json!(vehicles[rng.random_range(0..vehicles.len())]) } else { Value::Null },
                "status": (["pending", "in_transit", "delivered", "late"][rng.random_range(0..4)]),
                "weight_kg": (rng.random_range(50.0..9000.0_f64) * 10.0).round() / 10.0,
                "eta": format!("2026-12-{day:02}T{:02}:00:00Z", rng.random_range(6..20))})),
        });
    }
    for i in 0..60 {
        let day = 1 + rng.random_range(0..27);
        ops.push(WriteOp::Create {
            collection: "bookings".into(),
            id: None,
            data: obj(json!({"customer": customers[i % customers.len()],
                "vehicle": vehicles[rng.random_range(0..vehicles.len())],
                "starts_at": format!("2026-12-{day:02}T08:00:00Z"),
                "ends_at": format!("2026-12-{:02}T18:00:00Z", day + 1),
                "confirmed": rng.random_bool(0.5)})),
        });
    }
    for i in 0..120 {
        ops.push(WriteOp::Create {
            collection: "inventory_items".into(),
            id: None,
            data: obj(json!({"sku": format!("SKU-{:05}", 20_000 + i * 7),
                "title": format!("{} {}", ["Pallet", "Crate", "Box", "Drum", "Roll"][i % 5], ["S", "M", "L", "XL"][i % 4]),
                "qty": rng.random_range(0..500),
                "location": format!("{}-{:02}", ["A", "B", "C", "D"][i % 4], rng.random_range(1..40)),
                "attributes": {"fragile": rng.random_bool(0.2)}})),
        });
    }
    let n = ops.len();
    match store
        .write(WriteRequest { ops, actor: Some("demo".into()), idempotency: None, authorize: None })
        .await?
    {
        livebase_store::WriteResult::Applied(Ok(_)) => {
            tracing::info!("demo data loaded: {n} records");
            Ok(())
        }
        livebase_store::WriteResult::Applied(Err(e)) => {
            anyhow::bail!("demo data failed at op {}: {}", e.index, e.error)
        }
        livebase_store::WriteResult::Replayed(_) => Ok(()),
    }
}
