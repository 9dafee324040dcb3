//! Running several nodes as one deployment.
//!
//! - [`log`]: the one ordered change log of the cluster, on a JetStream stream: one node
//!   captures (a lease decides which), every node feeds its hub from the stream.
//! - [`nats`]: the channel bus over NATS: broadcast and presence between nodes, node
//!   liveness (a node that stops beating is gone, and its members with it).

pub mod log;
pub mod nats;
