//! `GET /api/openapi.json`: an OpenAPI 3.1 document of the native REST API, built from the
//! route lists ([`rest::ROUTES`](crate::rest::ROUTES) and [`SERVER_ROUTES`]) and, for the
//! admin caller, the current schema (one record schema and concrete paths per collection).
//!
//! A test (`tests/openapi.rs`) checks that every listed route is in the document, that every
//! documented route answers (not the fallback `no such endpoint`), and that methods a path
//! does not document are refused with 405 — so the router and the document agree.

use crate::app::App;
use crate::auth::Principal;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use livebase_core::schema::{Collection, Field, FieldType, Schema};
use serde_json::{json, Map, Value};

/// The routes `server.rs` and its modules add besides [`rest::routes`](crate::rest::routes).
pub const SERVER_ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/api/realtime"),
    ("GET", "/api/_status"),
    ("GET", "/api/openapi.json"),
    ("GET", "/"),
    ("GET", "/_/"),
    ("GET", "/_/{path}"),
];

pub fn routes() -> Router<App> {
    Router::new().route("/api/openapi.json", get(serve))
}

async fn serve(State(app): State<App>, headers: HeaderMap) -> impl IntoResponse {
    // Collection schemas are the admin's to see; anyone may read the shape of the API.
    let schema = match app.principal(&headers) {
        Ok(Principal::Admin) => Some(app.store.schema()),
        _ => None,
    };
    Json(document(schema.as_deref()))
}

/// Every documented (method, path).
pub fn all_routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    crate::rest::ROUTES.iter().chain(SERVER_ROUTES).copied()
}

fn param(name: &str, what: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": what, "schema": {"type": "string"}})
}

fn query(name: &str, what: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": what, "schema": {"type": ty}})
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn reply(what: &str, schema: Value) -> Value {
    json!({"description": what, "content": {"application/json": {"schema": schema}}})
}

fn error_reply(what: &str) -> Value {
    reply(what, json!({"$ref": "#/components/schemas/Error"}))
}

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The operation object of one documented route. `record` names the record schema to use
/// (`Record` for the generic paths, the collection's own for concrete ones).
fn operation(method: &str, path: &str, record: &str, input: &str) -> Value {
    let name = param("name", "collection name");
    let id = param("id", "record id");
    let if_match = json!({"name": "If-Match", "in": "header", "required": false,
        "description": "the version the change was made against (optimistic concurrency)",
        "schema": {"type": "string"}});
    let idem = json!({"name": "Idempotency-Key", "in": "header", "required": false,
        "description": "a retry with the same key and body replays the first answer",
        "schema": {"type": "string"}});
    let force = query("force", "allow destructive schema changes (drop or retype fields)", "boolean");
    let list_params = vec![
        query("order", "e.g. qty.desc,title", "string"),
        query("limit", "page size", "integer"),
        query("offset", "rows to skip", "integer"),
        query("cursor", "next_cursor of the previous page", "string"),
        query("select", "fields to return, e.g. id,title", "string"),
        query("count", "exact: include the total", "string"),
        json!({"name": "filter", "in": "query", "required": false, "style": "form", "explode": true,
            "description": "PostgREST-style conditions, one per field: qty=gt.5, status=in.(a,b), or=(...), and=(...), not.",
            "schema": {"type": "object", "additionalProperties": {"type": "string"}}}),
    ];
    let conflict = reply("stale If-Match: the current record", r("ConflictError"));
    let (summary, tag, params, body, responses): (&str, &str, Vec<Value>, Option<Value>, Value) = match (
        method, path,
    ) {
        ("GET", "/api/collections") => (
            "List collections (admin)",
            "collections",
            vec![],
            None,
            json!({"200": reply("collections", json!({"type": "object", "properties": {"items": {"type": "array", "items": r("Collection")}}})),
                       "401": error_reply("admin key needed")}),
        ),
        ("POST", "/api/collections") => (
            "Create a collection (admin)",
            "collections",
            vec![],
            Some(json_body(r("Collection"))),
            json!({"201": reply("created", r("Collection")), "422": error_reply("invalid schema or rule (line and column)")}),
        ),
        ("GET", "/api/collections/{name}") => (
            "Get a collection (admin)",
            "collections",
            vec![name],
            None,
            json!({"200": reply("the collection", r("Collection")), "404": error_reply("no such collection")}),
        ),
        ("PATCH", "/api/collections/{name}") => (
            "Change a collection (admin); replaces the top-level keys it names",
            "collections",
            vec![name, force],
            Some(json_body(json!({"type": "object"}))),
            json!({"200": reply("the new definition", r("Collection")),
                       "409": error_reply("destructive change without force=true"),
                       "422": error_reply("invalid schema or rule")}),
        ),
        ("DELETE", "/api/collections/{name}") => (
            "Drop a collection (admin)",
            "collections",
            vec![name, force],
            None,
            json!({"204": {"description": "dropped"}, "409": error_reply("not empty or referenced; use force=true")}),
        ),
        ("GET", p) if p.ends_with("/records") => (
            "List records: filter, order, paginate",
            "records",
            if p.contains("{name}") { [vec![name], list_params].concat() } else { list_params },
            None,
            json!({"200": reply("a page", json!({"type": "object", "properties": {
                            "items": {"type": "array", "items": r(record)},
                            "next_cursor": {"type": ["string", "null"]},
                            "total": {"type": "integer"}}})),
                       "400": error_reply("bad filter"), "403": error_reply("not allowed to list")}),
        ),
        ("POST", p) if p.ends_with("/records") => (
            "Create a record",
            "records",
            if p.contains("{name}") { vec![name, idem] } else { vec![idem] },
            Some(json_body(r(input))),
            json!({"201": reply("created", r(record)), "422": error_reply("validation failed (details name the fields)")}),
        ),
        ("GET", p) if p.ends_with("/records/{id}") => (
            "Get a record",
            "records",
            if p.contains("{name}") { vec![name, id] } else { vec![id] },
            None,
            json!({"200": reply("the record", r(record)), "404": error_reply("no such record (or not visible)")}),
        ),
        ("PATCH", p) if p.ends_with("/records/{id}") => (
            "Update a record (partial)",
            "records",
            if p.contains("{name}") { vec![name, id, if_match, idem] } else { vec![id, if_match, idem] },
            Some(json_body(r(input))),
            json!({"200": reply("updated", r(record)), "409": conflict, "422": error_reply("validation failed")}),
        ),
        ("DELETE", p) if p.ends_with("/records/{id}") => (
            "Delete a record",
            "records",
            if p.contains("{name}") { vec![name, id, if_match, idem] } else { vec![id, if_match, idem] },
            None,
            json!({"200": reply("deleted", json!({"type": "object"})), "409": conflict, "404": error_reply("no such record")}),
        ),
        ("POST", "/api/collections/{name}/batch") => (
            "Several ops in one transaction",
            "records",
            vec![name, idem],
            Some(json_body(
                json!({"type": "object", "required": ["ops"], "properties": {"ops": {"type": "array", "maxItems": 1000, "items": {
                    "type": "object", "required": ["op"], "properties": {
                        "op": {"enum": ["create", "update", "delete"]}, "id": {"type": "string"},
                        "data": {"type": "object"}, "if_version": {"type": "integer"}}}}}}),
            )),
            json!({"200": reply("every op's outcome", json!({"type": "object"})), "409": conflict}),
        ),
        ("GET", p) if p.ends_with("/aggregate") => (
            "Count, sum, avg, min, max over the visible rows matching a filter, grouped",
            "records",
            {
                let mut v = if p.contains("{name}") { vec![name] } else { vec![] };
                v.push(query("group", "up to two fields, comma-separated", "string"));
                v.push(query("fn", "functions as written: count, sum(f), avg(f), min(f), max(f)", "string"));
                v
            },
            None,
            json!({"200": reply("one object per group and the sequence it is current at", json!({"type": "object", "properties": {
                    "seq": {"type": "integer"},
                    "groups": {"type": "array", "items": {"type": "object"}}}})),
                   "400": error_reply("bad filter or query"),
                   "422": error_reply("a function or group field the field's type does not allow (details name it)")}),
        ),
        ("GET", "/api/changes") => (
            "The change log (audit trail and catch-up)",
            "changes",
            vec![
                query("since", "sequence to start after", "integer"),
                query("limit", "events per page (1..10000)", "integer"),
                query("collection", "only this collection", "string"),
                query("record_id", "only this record", "string"),
                query("actor", "only this actor", "string"),
                query("from", "committed at or after (RFC 3339)", "string"),
                query("to", "committed at or before (RFC 3339)", "string"),
            ],
            None,
            json!({"200": reply("events", json!({"type": "object", "properties": {
                    "events": {"type": "array", "items": r("ChangeEvent")}, "head": {"type": "integer"},
                    "next_since": {"type": ["integer", "null"]}}}))}),
        ),
        ("GET", "/health") => {
            ("Liveness", "ops", vec![], None, json!({"200": reply("ok", json!({"type": "object"}))}))
        }
        ("GET", "/ready") => (
            "Readiness: the store answers and the log is published",
            "ops",
            vec![],
            None,
            json!({"200": reply("ready", json!({"type": "object"})), "503": reply("not ready", json!({"type": "object"}))}),
        ),
        ("GET", "/metrics") => (
            "Metrics (OpenMetrics text)",
            "ops",
            vec![],
            None,
            json!({"200": {"description": "metrics", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}}),
        ),
        ("GET", "/api/realtime") => (
            "WebSocket upgrade: the realtime protocol (docs/protocol.md)",
            "realtime",
            vec![query("token", "a JWT or the admin key", "string")],
            None,
            json!({"101": {"description": "switching protocols"}, "400": {"description": "not a WebSocket upgrade"}}),
        ),
        ("GET", "/api/_status") => (
            "Live figures for the dashboard (admin)",
            "ops",
            vec![],
            None,
            json!({"200": reply("figures", json!({"type": "object"})), "401": error_reply("admin key needed")}),
        ),
        ("GET", "/api/openapi.json") => (
            "This document (collection schemas for the admin key)",
            "ops",
            vec![],
            None,
            json!({"200": reply("OpenAPI 3.1", json!({"type": "object"}))}),
        ),
        ("GET", "/") => (
            "Redirects to the dashboard",
            "dashboard",
            vec![],
            None,
            json!({"303": {"description": "to /_/"}}),
        ),
        ("GET", "/_/") | ("GET", "/_/{path}") => (
            "The admin dashboard (single-page app)",
            "dashboard",
            if path.contains("{path}") { vec![param("path", "a dashboard view or asset")] } else { vec![] },
            None,
            json!({"200": {"description": "HTML, or an asset", "content": {"text/html": {"schema": {"type": "string"}}}},
                       "404": {"description": "no such asset"}}),
        ),
        _ => ("", "other", vec![], None, json!({"200": {"description": "ok"}})),
    };
    let mut op = json!({"summary": summary, "tags": [tag], "operationId": operation_id(method, path), "responses": responses});
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    if let Some(b) = body {
        op["requestBody"] = b;
    }
    op
}

fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<String> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    format!(
        "{}{}",
        method.to_ascii_lowercase(),
        if words.is_empty() { "Root".into() } else { words.concat() }
    )
}

fn field_schema(f: &Field) -> Value {
    let mut s = match f.ty {
        FieldType::Text => json!({"type": "string"}),
        FieldType::Integer => json!({"type": "integer"}),
        FieldType::Number => json!({"type": "number"}),
        FieldType::Boolean => json!({"type": "boolean"}),
        FieldType::Datetime => json!({"type": "string", "format": "date-time"}),
        FieldType::Json => json!({}),
        FieldType::Select => json!({"type": "string", "enum": f.values}),
        FieldType::Relation => json!({"type": "string",
            "description": format!("id of a record in '{}'", f.collection.as_deref().unwrap_or("?"))}),
    };
    let numeric = matches!(f.ty, FieldType::Integer | FieldType::Number);
    if let Some(min) = f.min {
        s[if numeric { "minimum" } else { "minLength" }] = json!(min);
    }
    if let Some(max) = f.max {
        s[if numeric { "maximum" } else { "maxLength" }] = json!(max);
    }
    if let Some(d) = &f.default {
        s["default"] = d.clone();
    }
    if !f.required && f.ty != FieldType::Json {
        // Optional fields read back as null when unset.
        if let Some(Value::String(t)) = s.get("type").cloned() {
            s["type"] = json!([t, "null"]);
        }
    }
    s
}

fn schema_name(c: &Collection) -> String {
    let mut out = String::new();
    for w in c.name.split(|ch: char| !ch.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
        let mut it = w.chars();
        if let Some(f) = it.next() {
            out.push(f.to_ascii_uppercase());
            out.push_str(it.as_str());
        }
    }
    out
}

fn collection_schemas(c: &Collection) -> (Value, Value) {
    let mut props = Map::new();
    props.insert("id".into(), json!({"type": "string", "readOnly": true}));
    props.insert("version".into(), json!({"type": "integer", "readOnly": true}));
    props.insert("created_at".into(), json!({"type": "string", "format": "date-time", "readOnly": true}));
    props.insert("updated_at".into(), json!({"type": "string", "format": "date-time", "readOnly": true}));
    let mut input = Map::new();
    for f in &c.fields {
        props.insert(f.name.clone(), field_schema(f));
        input.insert(f.name.clone(), field_schema(f));
    }
    let required: Vec<&str> = c.fields.iter().filter(|f| f.required).map(|f| f.name.as_str()).collect();
    let record = json!({"type": "object", "properties": props,
        "required": ["id", "version", "created_at", "updated_at"]});
    let input = json!({"type": "object", "properties": input, "required": required,
        "additionalProperties": false, "description": "on update every field is optional"});
    (record, input)
}

/// The whole document. With a schema, each collection gets `<Name>` and `<Name>Input`
/// schemas and concrete record paths (`/api/collections/shipments/records`, ...).
pub fn document(schema: Option<&Schema>) -> Value {
    let mut paths = Map::new();
    for (method, path) in all_routes() {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method.to_ascii_lowercase()] = operation(method, path, "Record", "RecordInput");
    }
    let mut schemas = json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
            "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}}}}},
        "ConflictError": {"allOf": [r("Error"), {"type": "object", "properties": {"error": {"type": "object", "properties": {
            "details": {"type": "object", "properties": {"current": r("Record"), "fields": {"type": "array", "items": {"type": "string"}}}}}}}}]},
        "Record": {"type": "object", "required": ["id", "version", "created_at", "updated_at"], "properties": {
            "id": {"type": "string"}, "version": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}},
            "additionalProperties": true},
        "RecordInput": {"type": "object", "additionalProperties": true},
        "Field": {"type": "object", "required": ["name", "type"], "properties": {
            "name": {"type": "string"},
            "type": {"enum": ["text", "integer", "number", "boolean", "datetime", "json", "select", "relation"]},
            "required": {"type": "boolean"}, "unique": {"type": "boolean"}, "min": {"type": "number"}, "max": {"type": "number"},
            "default": {}, "values": {"type": "array", "items": {"type": "string"}}, "collection": {"type": "string"},
            "on_delete": {"enum": ["restrict", "cascade", "set_null"]}}},
        "Collection": {"type": "object", "required": ["name", "fields"], "properties": {
            "name": {"type": "string"}, "fields": {"type": "array", "items": r("Field")},
            "conflict": {"enum": ["reject", "lww", "merge"]},
            "rules": {"type": "object", "properties": {"list": {"type": "string"}, "view": {"type": "string"},
                "create": {"type": "string"}, "update": {"type": "string"}, "delete": {"type": "string"}}}}},
        "ChangeEvent": {"type": "object", "properties": {"seq": {"type": "integer"}, "collection": {"type": "string"},
            "op": {"enum": ["insert", "update", "delete"]}, "id": {"type": "string"}, "version": {"type": "integer"},
            "actor": {"type": ["string", "null"]}, "committed_at": {"type": "string", "format": "date-time"},
            "old": {"type": ["object", "null"]}, "new": {"type": ["object", "null"]}}},
    });
    for c in schema.map(|s| s.collections.values().collect::<Vec<_>>()).unwrap_or_default() {
        let name = schema_name(c);
        let (record, input) = collection_schemas(c);
        schemas[name.clone()] = record;
        schemas[format!("{name}Input")] = input;
        let input_name = format!("{name}Input");
        for (method, path) in crate::rest::ROUTES {
            if !path.contains("/records") {
                continue;
            }
            let concrete = path.replace("{name}", &c.name);
            let mut op = operation(method, &concrete, &name, &input_name);
            op["tags"] = json!([c.name]);
            op["operationId"] = json!(operation_id(method, &concrete));
            paths.entry(concrete).or_insert_with(|| json!({}))[method.to_ascii_lowercase()] = op;
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Livebase", "version": env!("CARGO_PKG_VERSION"),
            "description": "The native REST API of a Livebase server. Realtime: docs/protocol.md (WebSocket at /api/realtime)."},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "the admin key or a user JWT; requests without one have the role anon"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
    })
}
