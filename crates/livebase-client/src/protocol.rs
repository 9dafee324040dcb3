//! Wire frames of the realtime protocol (`docs/protocol.md`): the shared definitions of
//! `livebase-protocol`, re-exported. [`ServerFrame`] parses what the server sends; the
//! [`client`] builders make what the client sends.

pub use livebase_protocol::{
    client, num_ref, reason, ref_u64, AggregateReq, Change, ClientFrame, Op, PresenceEntry, PresenceMap, Ref,
    ServerFrame, SubscribeMode, View,
};
