//! The native realtime frames of Livebase (`docs/protocol.md`), written once for the server,
//! the Rust client and the bench.
//!
//! - [`request`]: what a client sends ([`ClientFrame`]), decoded with the server's error codes
//!   ([`decode_client_frame`]) and built by clients ([`client`]).
//! - [`frame`]: what the server sends ([`ServerFrame`]), decoded by clients and the bench.
//! - [`encode`]: the server's encoders of those frames, including the change-frame fast path
//!   ([`change_body`] once per event, [`change_frame`] per query).
//!
//! Record values are JSON objects. The decoded types hold them as [`serde_json::Value`]; the
//! encoders are generic over any `Serialize` row so a server serializes its own record type
//! without copying it into a `Value` first.
//!
//! The JSON fixtures under `fixtures/` are examples of every frame; the tests of this crate
//! and of the TypeScript SDK both read them.

pub mod encode;
pub mod frame;
pub mod request;

pub use encode::{
    aggregate, broadcast, change_body, change_frame, error, ok, pong, presence_diff, presence_state,
    resync_required, snapshot, subscribed, welcome, ChangeBody,
};
pub use frame::{Change, Op, PresenceEntry, PresenceMap, ServerFrame, View};
pub use request::{
    client, decode_client_frame, peek_ref, AggregateReq, Auth, Broadcast, ChannelReq, ClientFrame,
    DecodeError, Ping, Subscribe, SubscribeMode, Track, Unsubscribe,
};

use serde_json::Value;

/// A request id chosen by the client: any JSON value, echoed unchanged in the reply (`null`
/// when the request had none or could not be read).
pub type Ref = Option<Box<Value>>;

/// A `ref` built from a number, as the Rust client and the bench choose them.
pub fn num_ref(n: u64) -> Ref {
    Some(Box::new(Value::from(n)))
}

/// The number in an echoed `ref` (a JSON number, or a string of digits), if it is one.
pub fn ref_u64(r: &Ref) -> Option<u64> {
    match r.as_deref()? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The `reason` values of `resync_required`.
pub mod reason {
    /// The log no longer holds the events after the requested `since`.
    pub const LOG_TRIMMED: &str = "log_trimmed";
    /// The `epoch` sent with `since` is not the server's: its sequence numbers mean
    /// something else now (e.g. the data directory was replaced).
    pub const EPOCH_CHANGED: &str = "epoch_changed";
}

/// Serializes plain data (structs, strings, numbers, `Value`s with string keys), which
/// cannot fail; an impossible failure yields an empty string rather than a panic.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
