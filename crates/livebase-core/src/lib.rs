//! Livebase's core: plain data and pure functions.
//!
//! # Layout
//! - [`schema`]: collection definitions, their checks and migrations between versions.
//! - [`record`]: the record value, canonical timestamps, time-ordered ids.
//! - [`validate`]: incoming data checked and normalized against a collection.
//! - [`filter`]: the filter grammar (PostgREST operators) shared by REST lists and realtime
//!   subscriptions (rules have their own expression language, [`rules`]);
//!   parsing, binding to a schema and evaluation.
//! - [`rules`]: per-collection access rules (`record.owner == auth.sub`): parsing, checks and
//!   evaluation against the caller's claims, the stored record and the incoming data.
//! - [`query`]: list queries (filter, order, paging, select, count) and record order.
//! - [`event`]: change events, the entries of the change log.
//! - [`aggregate`]: count / sum / avg / min / max over rows, grouped, kept current per change.
//! - [`conflict`]: optimistic concurrency decisions (reject, last-write-wins, field merge).
//!
//! Nothing here does IO or knows HTTP, WebSockets or SQL: storage backends and wire protocols
//! are adapters around these types.

pub mod aggregate;
pub mod conflict;
pub mod event;
pub mod filter;
pub mod query;
pub mod record;
pub mod rules;
pub mod schema;
pub mod validate;

pub use event::{ChangeEvent, ChangeOp};
pub use record::Record;
pub use schema::{Collection, ConflictStrategy, Field, FieldType, OnDelete, Schema};
