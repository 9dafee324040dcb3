//! Supabase compatibility: what unmodified `@supabase/supabase-js` speaks, served on the
//! same service layer and hub as the native API (see `docs/supabase.md`).
//!
//! - [`keys`]: the `apikey` / `Authorization: Bearer` credential and its role
//!   (`service_role` → the service credential, `anon` → anonymous, others → a user).
//! - [`rest`]: the PostgREST subset at `/rest/v1/{collection}`.
//! - realtime: [`crate::realtime::phoenix`], on the hub like the native protocol.

pub mod keys;
pub mod rest;
//
// Realtime (the Phoenix protocol at /realtime/v1) is a wire adapter of the hub and lives with
// the native one: `crate::realtime::phoenix`, authenticated with `keys`.
