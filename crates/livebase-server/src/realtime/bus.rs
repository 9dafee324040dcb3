//! The channel-bus port: broadcast and presence between the nodes that serve one deployment.
//!
//! Channels have members on every node. A node's hub delivers a channel event (a broadcast,
//! a presence join or leave) to its own members itself, and hands it to the bus, which
//! carries it to every *other* node; each of them applies it through the same code as its
//! own events ([`super::hub::Hub`] reads [`ChannelBus::subscribe`]). So a single node needs no
//! bus traffic at all, and a cluster adapter (NATS) only moves events between nodes.
//!
//! Identities that cross nodes carry the node: a connection is `MemberId { node, conn }`, and
//! its public name (`welcome.conn_id`, presence entries, broadcast `from`) is `"{node}-{conn}"`.
//!
//! Invariants an adapter keeps: an event published on a node reaches every other node's
//! hub once; events from one node arrive in the order that node published them.

use parking_lot::Mutex;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The name of one node. Generated at start unless configured (`--node-id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn new(s: impl Into<Arc<str>>) -> NodeId {
        NodeId(s.into())
    }

    /// A random 8-hex-digit id.
    pub fn generate() -> NodeId {
        NodeId(format!("{:08x}", rand::random::<u32>()).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        Ok(NodeId(String::deserialize(d)?.into()))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A connection, unique across nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct MemberId {
    pub node: NodeId,
    pub conn: u64,
}

impl MemberId {
    /// The public name: `"{node}-{conn}"`.
    pub fn name(&self) -> Arc<str> {
        format!("{}-{}", self.node, self.conn).into()
    }
}

/// What travels between nodes (as JSON, tagged by `t`, on a cluster bus).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ChannelEvent {
    Broadcast {
        channel: String,
        event: String,
        payload: Value,
        from: MemberId,
        include_self: bool,
    },
    /// A member tracks presence under `key` (replacing what it tracked before in the channel).
    Track {
        channel: String,
        key: String,
        member: MemberId,
        meta: Value,
    },
    /// A member stops tracking presence in the channel (untrack, leave, disconnect).
    Untrack {
        channel: String,
        member: MemberId,
    },
    /// Every member of a node is gone (the node stopped or was declared dead).
    NodeGone {
        node: NodeId,
    },
    /// Told by a bus to its own hub: nodes that may not know this node's presence appeared
    /// (a node joined, or came back after being declared gone): announce every presence
    /// entry of this node's members again. Never crosses nodes itself.
    Announce,
}

/// Carries channel events between nodes (see the module docs).
pub trait ChannelBus: Send + Sync + 'static {
    fn node(&self) -> &NodeId;
    /// Hands an event of this node to every other node.
    fn publish(&self, ev: ChannelEvent);
    /// The events other nodes publish. Called once, by the hub.
    fn subscribe(&self) -> mpsc::UnboundedReceiver<ChannelEvent>;
    /// Whether events reach the other nodes now; why not, when they cannot (new realtime
    /// connections are refused meanwhile, and `/ready` says so).
    fn available(&self) -> Result<(), String> {
        Ok(())
    }
    /// Tells the other nodes this one is stopping, so its members leave their presence at
    /// once instead of after the liveness timeout.
    fn leave(&self) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Nodes in one process: what a single server uses (one node, so nothing to carry), and what
/// tests use to run several hubs side by side.
#[derive(Clone, Default)]
pub struct MemoryBus {
    nodes: Arc<Mutex<Vec<Inbox>>>,
}

/// A node's receiving end: where other nodes' events go.
type Inbox = (NodeId, mpsc::UnboundedSender<ChannelEvent>);

impl MemoryBus {
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }

    /// A bus handle for one node of this process.
    pub fn attach(&self, node: NodeId) -> Arc<dyn ChannelBus> {
        Arc::new(MemoryNode { node, bus: self.clone() })
    }
}

struct MemoryNode {
    node: NodeId,
    bus: MemoryBus,
}

impl ChannelBus for MemoryNode {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn publish(&self, ev: ChannelEvent) {
        let mut nodes = self.bus.nodes.lock();
        // A node whose hub is gone has closed its receiver: forget it.
        nodes.retain(|(n, tx)| *n == self.node || !tx.is_closed());
        for (n, tx) in nodes.iter() {
            if *n != self.node {
                let _ = tx.send(ev.clone());
            }
        }
    }

    fn subscribe(&self) -> mpsc::UnboundedReceiver<ChannelEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.bus.nodes.lock().push((self.node.clone(), tx));
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_event_reaches_every_other_node_once_and_not_its_own() {
        let bus = MemoryBus::new();
        let (a, b, c) =
            (bus.attach(NodeId::new("a")), bus.attach(NodeId::new("b")), bus.attach(NodeId::new("c")));
        let (mut ra, mut rb, mut rc) = (a.subscribe(), b.subscribe(), c.subscribe());
        let ev = ChannelEvent::Untrack {
            channel: "x".into(),
            member: MemberId { node: a.node().clone(), conn: 1 },
        };
        a.publish(ev.clone());
        assert_eq!(rb.recv().await, Some(ev.clone()));
        assert_eq!(rc.recv().await, Some(ev));
        assert!(ra.try_recv().is_err());
        assert!(rb.try_recv().is_err());
    }
}
