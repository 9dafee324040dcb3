//! Live aggregates: KPI numbers that stay equal to what a fresh computation over the rows
//! would say — over REST, live over the socket, per caller's rules, across resumes.

mod common;

use common::ws::Ws;
use common::TestServer;
use livebase_server::auth::sign;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const SECRET: &str = "aggregate-secret";

fn shipments() -> Value {
    json!({"name": "shipments", "fields": [
        {"name": "status", "type": "select", "values": ["late", "ok", "lost"]},
        {"name": "region", "type": "text"},
        {"name": "owner", "type": "text"},
        {"name": "weight_kg", "type": "number"},
        {"name": "pieces", "type": "integer"},
        {"name": "eta", "type": "datetime"},
        {"name": "notes", "type": "json"}],
      "rules": {"list": "auth.role != \"anon\"", "view": "record.owner == auth.sub || auth.role == \"manager\""}})
}

async fn server() -> TestServer {
    let t = TestServer::start_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    t.create_collection(shipments()).await;
    t
}

fn group(v: &Value) -> Vec<Map<String, Value>> {
    v["groups"].as_array().unwrap().iter().map(|g| g.as_object().unwrap().clone()).collect()
}

#[tokio::test]
async fn rest_aggregate_groups_rows_with_each_function_as_written() {
    let t = server().await;
    for (s, kg, p, eta) in [
        ("late", 1.5, 1, "2026-03-01T10:00:00Z"),
        ("late", 9.0, 2, "2026-03-02T10:00:00Z"),
        ("ok", 4.0, 3, "2026-03-03T10:00:00Z"),
    ] {
        t.create("shipments", json!({"status": s, "weight_kg": kg, "pieces": p, "eta": eta, "owner": "u1"}))
            .await;
    }
    t.create("shipments", json!({"status": "ok", "owner": "u1"})).await;
    let (st, v) = t
        .get("/api/collections/shipments/aggregate?group=status&fn=count,sum(weight_kg),avg(weight_kg),sum(pieces),min(eta),max(eta)")
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["seq"], 4);
    assert_eq!(
        v["groups"],
        json!([
            {"status": "late", "count": 2, "sum(weight_kg)": 10.5, "avg(weight_kg)": 5.25, "sum(pieces)": 3,
             "min(eta)": "2026-03-01T10:00:00.000000Z", "max(eta)": "2026-03-02T10:00:00.000000Z"},
            {"status": "ok", "count": 2, "sum(weight_kg)": 4.0, "avg(weight_kg)": 4.0, "sum(pieces)": 3,
             "min(eta)": "2026-03-03T10:00:00.000000Z", "max(eta)": "2026-03-03T10:00:00.000000Z"}
        ])
    );
    // The same filter grammar as lists, and no grouping: one group.
    let (_, v) = t.get("/api/collections/shipments/aggregate?weight_kg=gt.2&fn=count").await;
    assert_eq!(v["groups"], json!([{"count": 2}]));
    let (_, v) = t.get("/api/collections/shipments/aggregate?status=eq.lost&fn=count,sum(pieces)").await;
    assert_eq!(v["groups"], json!([{"count": 0, "sum(pieces)": null}]));
}

#[tokio::test]
async fn an_aggregate_a_field_type_does_not_allow_is_refused_naming_the_field() {
    let t = server().await;
    for (q, field) in [
        ("fn=sum(eta)", "eta"),
        ("fn=avg(region)", "region"),
        ("fn=max(notes)", "notes"),
        ("fn=count&group=notes", "notes"),
        ("fn=sum(nope)", "nope"),
    ] {
        let (st, v) = t.get(&format!("/api/collections/shipments/aggregate?{q}")).await;
        assert_eq!(st, 422, "{q}: {v}");
        assert_eq!(v["error"]["code"], "invalid_aggregate", "{q}: {v}");
        assert_eq!(v["error"]["details"]["field"], field, "{q}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(field), "{q}: {v}");
    }
    let (st, v) = t.get("/api/collections/shipments/aggregate?fn=median(pieces)").await;
    assert_eq!((st.as_u16(), &v["error"]["code"]), (422, &json!("invalid_aggregate")));
    let (st, _) = t.get("/api/collections/shipments/aggregate?fn=count&group=status,region,owner").await;
    assert_eq!(st, 422);
    let (st, v) = t.get("/api/collections/shipments/aggregate?fn=count&qty=gtx.1").await;
    assert_eq!((st.as_u16(), &v["error"]["code"]), (400, &json!("bad_filter")));
    let (st, v) = t.get("/api/collections/shipments/aggregate?group=status").await;
    assert_eq!((st.as_u16(), &v["error"]["code"]), (400, &json!("bad_query")));
}

/// Subscribes to a live aggregate; returns (sub_id, seq, values).
async fn subscribe(
    ws: &mut Ws,
    filter: Option<&str>,
    group: &[&str],
    fns: &[&str],
    extra: Value,
) -> (u64, u64, Value) {
    let mut req =
        json!({"type": "subscribe", "collection": "shipments", "aggregate": {"group": group, "fn": fns}});
    if let Some(f) = filter {
        req["filter"] = json!(f);
    }
    if let Value::Object(m) = extra {
        for (k, v) in m {
            req[k] = v;
        }
    }
    let reply = ws.request(req).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let full = ws.recv_until(|f| f["type"] == "aggregate").await.0;
    assert_eq!(full["full"], true, "{full}");
    (reply["sub_id"].as_u64().unwrap(), reply["seq"].as_u64().unwrap(), full)
}

#[tokio::test]
async fn live_aggregate_sends_only_the_groups_a_change_moves_and_both_sides_of_a_move() {
    let t = server().await;
    let a = t
        .create("shipments", json!({"status": "late", "weight_kg": 2.0, "eta": "2026-03-01T00:00:00Z"}))
        .await;
    t.create("shipments", json!({"status": "late", "weight_kg": 3.0, "eta": "2026-03-05T00:00:00Z"})).await;
    t.create("shipments", json!({"status": "ok", "weight_kg": 1.0})).await;
    let mut ws = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let (sub, seq, full) =
        subscribe(&mut ws, None, &["status"], &["count", "sum(weight_kg)", "min(eta)"], json!({})).await;
    assert_eq!(seq, 3);
    assert_eq!(full["groups"].as_array().unwrap().len(), 2, "{full}");

    // A row moves from late to ok: both groups, in one frame.
    let id = a["id"].as_str().unwrap();
    t.patch(&format!("/api/collections/shipments/records/{id}"), json!({"status": "ok"})).await;
    let f = ws.recv_until(|f| f["type"] == "aggregate").await.0;
    assert_eq!((f["sub_id"].as_u64(), f["seq"].as_u64(), &f["full"]), (Some(sub), Some(4), &json!(false)));
    assert_eq!(
        f["groups"],
        json!([{"status": "late", "count": 1, "sum(weight_kg)": 3.0, "min(eta)": "2026-03-05T00:00:00.000000Z"},
               {"status": "ok", "count": 2, "sum(weight_kg)": 3.0, "min(eta)": "2026-03-01T00:00:00.000000Z"}])
    );
    // Deleting the current extreme keeps min exact; deleting a group's last row removes it.
    t.delete(&format!("/api/collections/shipments/records/{id}")).await;
    let f = ws.recv_until(|f| f["type"] == "aggregate").await.0;
    assert_eq!(f["groups"], json!([{"status": "ok", "count": 1, "sum(weight_kg)": 1.0, "min(eta)": null}]));
    let late = t.list("shipments", "status=eq.late").await;
    t.delete(&format!("/api/collections/shipments/records/{}", late[0]["id"].as_str().unwrap())).await;
    let f = ws.recv_until(|f| f["type"] == "aggregate").await.0;
    assert_eq!((&f["groups"], &f["removed"]), (&json!([]), &json!([{"status": "late"}])));
    // A change outside every group's values (a notes edit) sends nothing: the next frame is
    // the one after it.
    let ok = t.list("shipments", "status=eq.ok").await;
    let ok_id = ok[0]["id"].as_str().unwrap();
    t.patch(&format!("/api/collections/shipments/records/{ok_id}"), json!({"region": "north"})).await;
    t.patch(&format!("/api/collections/shipments/records/{ok_id}"), json!({"weight_kg": 7.5})).await;
    let f = ws.recv_until(|f| f["type"] == "aggregate").await.0;
    assert_eq!(f["seq"], 8);
    assert_eq!(f["groups"][0]["sum(weight_kg)"], 7.5);
}

#[tokio::test]
async fn two_users_with_different_rules_count_different_rows_live() {
    let t = server().await;
    let u1 = sign(SECRET, "u1", "clerk", 3600, Map::new()).unwrap();
    let boss = sign(SECRET, "boss", "manager", 3600, Map::new()).unwrap();
    for owner in ["u1", "u2", "u2"] {
        t.create("shipments", json!({"status": "late", "owner": owner})).await;
    }
    let mut w1 = Ws::connect(&t.url, Some(&u1)).await;
    let mut wb = Ws::connect(&t.url, Some(&boss)).await;
    let (s1, _, f1) = subscribe(&mut w1, None, &[], &["count"], json!({})).await;
    let (sb, _, fb) = subscribe(&mut wb, None, &[], &["count"], json!({})).await;
    assert_eq!(s1, sb, "one query; two views of it");
    assert_eq!((&f1["groups"], &fb["groups"]), (&json!([{"count": 1}]), &json!([{"count": 3}])));
    // REST agrees with each.
    let rest = |tok: String| {
        let t = &t;
        async move {
            let r = t
                .http
                .get(format!("{}/api/collections/shipments/aggregate?fn=count", t.url))
                .bearer_auth(tok);
            r.send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    assert_eq!(rest(u1.clone()).await["groups"], json!([{"count": 1}]));
    assert_eq!(rest(boss.clone()).await["groups"], json!([{"count": 3}]));
    // A row u1 cannot see moves only the manager's count.
    t.create("shipments", json!({"status": "ok", "owner": "u2"})).await;
    t.create("shipments", json!({"status": "ok", "owner": "u1"})).await;
    assert_eq!(wb.recv_until(|f| f["type"] == "aggregate").await.0["groups"], json!([{"count": 4}]));
    let f = w1.recv_until(|f| f["type"] == "aggregate").await.0;
    assert_eq!((f["seq"].as_u64(), &f["groups"]), (Some(5), &json!([{"count": 2}])));
    assert_eq!(wb.recv_until(|f| f["type"] == "aggregate").await.0["groups"], json!([{"count": 5}]));
}

/// The aggregate of `rows` computed from scratch, as the REST answer would render it.
fn recompute(rows: &BTreeMap<String, Value>) -> Vec<Map<String, Value>> {
    let mut groups: BTreeMap<String, (Value, u64, f64, u64, i64)> = BTreeMap::new();
    for r in rows.values() {
        let key = serde_json::to_string(&json!([r["status"]])).unwrap();
        let g = groups.entry(key).or_insert((r["status"].clone(), 0, 0.0, 0, 0));
        g.1 += 1;
        if let Some(w) = r["weight_kg"].as_f64() {
            g.2 += w;
            g.3 += 1;
        }
        if let Some(p) = r["pieces"].as_i64() {
            g.4 = g.4.max(p);
        }
    }
    groups
        .into_values()
        .map(|(status, count, sum, n, max)| {
            let mut m = Map::new();
            m.insert("status".into(), status);
            m.insert("count".into(), json!(count));
            m.insert("sum(weight_kg)".into(), if n == 0 { Value::Null } else { json!(sum) });
            m.insert("max(pieces)".into(), json!(max));
            m
        })
        .collect()
}

fn close(a: &[Map<String, Value>], b: &[Map<String, Value>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter().all(|(k, v)| match (v.as_f64(), y[k].as_f64()) {
                    (Some(p), Some(q)) => (p - q).abs() <= 1e-9 * (1.0 + q.abs()),
                    _ => v == &y[k],
                })
        })
}

/// Random creates, updates (also between groups) and deletes; after each batch the live
/// aggregate, the REST aggregate and a recomputation from the rows all agree — also for a
/// subscriber that disconnected midway and resumed.
async fn random_run(seed: u64) {
    let t = server().await;
    let mut rng = StdRng::seed_from_u64(seed);
    let fns = ["count", "sum(weight_kg)", "max(pieces)"];
    let mut live = Ws::connect(&t.url, Some(&t.admin_key)).await;
    let (_, _, full) = subscribe(&mut live, None, &["status"], &fns, json!({})).await;
    let mut values: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let key = |g: &Map<String, Value>| g["status"].to_string();
    for g in group(&full) {
        values.insert(key(&g), g);
    }
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    let mut epoch = String::new();
    let mut last_seq = 0u64;
    for round in 0..4 {
        for _ in 0..rng.random_range(5..15) {
            let status = ["late", "ok", "lost"][rng.random_range(0..3)];
            let kg =
                if rng.random_bool(0.2) { Value::Null } else { json!(rng.random_range(0..100) as f64 / 4.0) };
            let pieces = rng.random_range(0..9);
            let ids: Vec<String> = rows.keys().cloned().collect();
            match rng.random_range(0..3) {
                0 if !ids.is_empty() => {
                    let id = &ids[rng.random_range(0..ids.len())];
                    let (st, r) = t
                        .patch(
                            &format!("/api/collections/shipments/records/{id}"),
                            json!({"status": status, "weight_kg": kg, "pieces": pieces}),
                        )
                        .await;
                    assert_eq!(st, 200, "{r}");
                    rows.insert(id.clone(), r);
                }
                1 if !ids.is_empty() => {
                    let id = &ids[rng.random_range(0..ids.len())];
                    t.delete(&format!("/api/collections/shipments/records/{id}")).await;
                    rows.remove(id);
                }
                _ => {
                    let r = t
                        .create("shipments", json!({"status": status, "weight_kg": kg, "pieces": pieces}))
                        .await;
                    rows.insert(r["id"].as_str().unwrap().to_string(), r);
                }
            }
        }
        let (_, rest) = t
            .get("/api/collections/shipments/aggregate?group=status&fn=count,sum(weight_kg),max(pieces)")
            .await;
        let head = rest["seq"].as_u64().unwrap();
        // Apply live frames until the aggregate is current at the head.
        while last_seq < head {
            let f = live.recv_until(|f| f["type"] == "aggregate").await.0;
            last_seq = f["seq"].as_u64().unwrap();
            for g in group(&f) {
                values.insert(key(&g), g);
            }
            for g in f["removed"].as_array().unwrap() {
                values.remove(&g["status"].to_string());
            }
        }
        let mine: Vec<Map<String, Value>> = values.values().cloned().collect();
        let expected = recompute(&rows);
        assert!(close(&mine, &expected), "seed {seed} round {round}: live {mine:?} != {expected:?}");
        assert!(close(&group(&rest), &expected), "seed {seed} round {round}: rest {rest} != {expected:?}");
        if round == 1 {
            // Drop the socket; changes happen while away; resume with since.
            let reply = live.request(json!({"type": "ping"})).await;
            assert_eq!(reply["type"], "pong");
            epoch = t.get("/api/changes?limit=1").await.1["epoch"].as_str().unwrap().to_string();
            drop(live);
            t.create("shipments", json!({"status": "late", "weight_kg": 1.0, "pieces": 1}))
                .await
                .as_object()
                .map(|r| rows.insert(r["id"].as_str().unwrap().to_string(), Value::Object(r.clone())));
            live = Ws::connect(&t.url, Some(&t.admin_key)).await;
            let (_, seq, full) =
                subscribe(&mut live, None, &["status"], &fns, json!({"since": last_seq, "epoch": epoch}))
                    .await;
            last_seq = seq;
            values = group(&full).into_iter().map(|g| (key(&g), g)).collect();
        }
    }
    assert!(!epoch.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]
    #[test]
    fn live_aggregate_always_equals_the_aggregate_recomputed_from_scratch(seed in any::<u64>()) {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(random_run(seed));
    }
}
