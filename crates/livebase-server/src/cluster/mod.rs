//! Running several nodes as one deployment.
//!
//! - [`nats`]: the channel bus over NATS: broadcast and presence between nodes, node
//!   liveness (a node that stops beating is gone, and its members with it).

pub mod nats;
