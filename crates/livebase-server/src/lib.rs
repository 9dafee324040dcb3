//! The Livebase server.
//!
//! # Layout
//! - [`config`]: flags and environment.
//! - [`server`]: opening the store, building the router, listening, shutting down.
//! - [`app`]: shared state.
//! - [`auth`]: the caller's identity: admin key, verified JWT or anonymous.
//! - [`access`]: collection and channel rules, checked on every path.
//! - [`ratelimit`]: token buckets for REST callers and WebSocket messages.
//! - [`error`]: the JSON error shape and the mapping from store errors to HTTP statuses.
//! - [`realtime`]: the WebSocket protocol, the hub (fan-out, resume, live queries), presence.
//! - [`metrics`]: Prometheus metrics of one server.
//! - [`service`]: the operations every front end calls (list, get, write, snapshot, changes,
//!   schema), each deciding the caller's access inside.
//! - [`rest`]: the native REST API: thin translations of HTTP onto [`service`].
//! - [`supabase`]: what `@supabase/supabase-js` speaks: keys and roles, the PostgREST subset
//!   at `/rest/v1`.
//! - [`schema_file`]: collections declared in a JSON/TOML file.
//! - [`dashboard`]: the embedded admin dashboard under `/_/`; [`status`]: its live figures
//!   (`/api/_status`); [`openapi`]: the OpenAPI 3.1 document (`/api/openapi.json`).
//! - [`demo`]: the example logistics schema and data behind `serve --demo`.
//!
//! Only this crate knows HTTP and WebSockets; the realtime frames themselves are defined in
//! `livebase-protocol`. It adapts them onto `livebase-core` (plain data) and a
//! `livebase-store` backend. The load generator behind `livebase bench` is the separate
//! `livebase-bench` crate and binary.

pub mod access;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod realtime;
pub mod rest;
pub mod schema_file;
pub mod server;
pub mod service;
pub mod status;
pub mod supabase;

pub use config::Config;
pub use server::{start, Server};
