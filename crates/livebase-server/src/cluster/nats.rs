//! [`ChannelBus`] over NATS: every node publishes its channel events on one subject and
//! receives the other nodes' from it; NATS keeps one publisher's messages in order, which is
//! the order the port promises.
//!
//! Liveness is part of the bus: each node says it is alive every [`BEAT`] on a second subject.
//! A node not heard from for [`DEAD_AFTER`] is gone — the bus hands its own hub a
//! [`ChannelEvent::NodeGone`], so that node's presence leaves everyone's state. A node heard
//! for the first time (it started, or it came back, e.g. after a NATS outage) makes the bus
//! ask its hub to [`ChannelEvent::Announce`] its own presence, so the newcomer learns what it
//! missed. A node that stops cleanly says so, and the others forget it at once.
//!
//! What crosses is JSON: `{"node": "<id>", "ev": <ChannelEvent>}` on `livebase.channels`,
//! `{"node": "<id>", "state": "alive"|"gone"}` on `livebase.nodes`.

use crate::realtime::bus::{ChannelBus, ChannelEvent, NodeId};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often a node says it is alive.
pub const BEAT: Duration = Duration::from_secs(1);
/// A node silent this long is gone: its members leave every presence within this bound
/// (plus one [`BEAT`] of checking).
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

const EVENTS: &str = "livebase.channels";
const NODES: &str = "livebase.nodes";

#[derive(Serialize, Deserialize)]
struct Envelope {
    node: NodeId,
    ev: ChannelEvent,
}

#[derive(Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum State {
    Alive,
    /// Just (re)connected: whatever the others published meanwhile may be lost, so they
    /// announce their presence again.
    Hello,
    Gone,
}

#[derive(Serialize, Deserialize)]
struct Beat {
    node: NodeId,
    state: State,
}

/// What the publishing task sends, in order.
enum Out {
    Event(ChannelEvent),
    Beat(State),
}

pub struct NatsBus {
    node: NodeId,
    client: async_nats::Client,
    out: mpsc::UnboundedSender<Out>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<ChannelEvent>>>,
    connected: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NatsBus {
    /// Connects to `url` (reconnecting by itself whenever the connection drops) and starts
    /// beating. Fails when the first connection cannot be made.
    pub async fn connect(url: &str, node: NodeId) -> anyhow::Result<Arc<NatsBus>> {
        let connected = Arc::new(AtomicBool::new(false));
        let (to_hub, inbox) = mpsc::unbounded_channel();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Out>();
        let events = {
            let (connected, to_hub, hello) = (connected.clone(), to_hub.clone(), out.clone());
            move |e: async_nats::Event| {
                let (connected, to_hub, hello) = (connected.clone(), to_hub.clone(), hello.clone());
                async move {
                    match e {
                        async_nats::Event::Connected => {
                            connected.store(true, Ordering::Relaxed);
                            // What this node published while away may be lost: say it again,
                            // and ask the others to (what they said meanwhile may be lost too).
                            let _ = to_hub.send(ChannelEvent::Announce);
                            let _ = hello.send(Out::Beat(State::Hello));
                            tracing::info!("NATS connected");
                        }
                        async_nats::Event::Disconnected => {
                            connected.store(false, Ordering::Relaxed);
                            tracing::warn!("NATS connection lost; reconnecting");
                        }
                        other => tracing::debug!(event = %other, "NATS"),
                    }
                }
            }
        };
        let client = async_nats::ConnectOptions::new()
            .name(format!("livebase-{node}"))
            .event_callback(events)
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
        connected.store(true, Ordering::Relaxed);
        let mut channel_sub = client.subscribe(EVENTS).await?;
        let mut node_sub = client.subscribe(NODES).await?;
        // When each other node was last heard from (a beat or any event it sent).
        let seen: Arc<Mutex<HashMap<NodeId, Instant>>> = Default::default();
        let heard = {
            let (seen, to_hub) = (seen.clone(), to_hub.clone());
            move |n: &NodeId| {
                if seen.lock().insert(n.clone(), Instant::now()).is_none() {
                    tracing::info!(node = %n, "node joined");
                    let _ = to_hub.send(ChannelEvent::Announce);
                }
            }
        };

        let publisher = {
            let (client, node) = (client.clone(), node.clone());
            tokio::spawn(async move {
                while let Some(o) = out_rx.recv().await {
                    let (subject, body) = match o {
                        Out::Event(ev) => (EVENTS, serde_json::to_vec(&Envelope { node: node.clone(), ev })),
                        Out::Beat(state) => (NODES, serde_json::to_vec(&Beat { node: node.clone(), state })),
                    };
                    let Ok(body) = body else { continue };
                    // A publish while disconnected is buffered by the client; one refused
                    // (buffer full) is lost, and the announce after reconnecting repairs
                    // presence.
                    if let Err(e) = client.publish(subject, body.into()).await {
                        tracing::warn!(error = %e, "NATS publish failed");
                    }
                }
                let _ = client.flush().await;
            })
        };

        let receiver = {
            let (node, to_hub, heard) = (node.clone(), to_hub.clone(), heard.clone());
            tokio::spawn(async move {
                while let Some(m) = channel_sub.next().await {
                    match serde_json::from_slice::<Envelope>(&m.payload) {
                        Ok(env) if env.node == node => {}
                        // Only events of other nodes; an announce is never carried.
                        Ok(Envelope { ev: ChannelEvent::Announce, .. }) => {}
                        Ok(env) => {
                            heard(&env.node);
                            let _ = to_hub.send(env.ev);
                        }
                        Err(e) => tracing::warn!(error = %e, "unreadable channel event on NATS"),
                    }
                }
            })
        };

        let liveness = {
            let (node, out) = (node.clone(), out.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(BEAT);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let _ = out.send(Out::Beat(State::Alive));
                            let dead: Vec<NodeId> = {
                                let mut seen = seen.lock();
                                let dead: Vec<NodeId> =
                                    seen.iter().filter(|(_, t)| t.elapsed() > DEAD_AFTER).map(|(n, _)| n.clone()).collect();
                                for n in &dead {
                                    seen.remove(n);
                                }
                                dead
                            };
                            for n in dead {
                                tracing::warn!(node = %n, "node silent for {DEAD_AFTER:?}: gone");
                                let _ = to_hub.send(ChannelEvent::NodeGone { node: n });
                            }
                        }
                        m = node_sub.next() => {
                            let Some(m) = m else { break };
                            let Ok(beat) = serde_json::from_slice::<Beat>(&m.payload) else { continue };
                            if beat.node == node {
                                continue;
                            }
                            match beat.state {
                                State::Alive => heard(&beat.node),
                                State::Hello => {
                                    heard(&beat.node);
                                    let _ = to_hub.send(ChannelEvent::Announce);
                                }
                                State::Gone => {
                                    seen.lock().remove(&beat.node);
                                    let _ = to_hub.send(ChannelEvent::NodeGone { node: beat.node });
                                }
                            }
                        }
                    }
                }
            })
        };

        Ok(Arc::new(NatsBus {
            node,
            client,
            out,
            inbox: Mutex::new(Some(inbox)),
            connected,
            tasks: vec![publisher, receiver, liveness],
        }))
    }
}

impl NatsBus {
    /// The connection, for the cluster's other users of NATS (the shared log).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ChannelBus for NatsBus {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn publish(&self, ev: ChannelEvent) {
        if !matches!(ev, ChannelEvent::Announce) {
            let _ = self.out.send(Out::Event(ev));
        }
    }

    fn subscribe(&self) -> mpsc::UnboundedReceiver<ChannelEvent> {
        match self.inbox.lock().take() {
            Some(rx) => rx,
            // The hub subscribes once; a second caller gets a closed stream.
            None => mpsc::unbounded_channel().1,
        }
    }

    fn available(&self) -> Result<(), String> {
        match self.connected.load(Ordering::Relaxed) {
            true => Ok(()),
            false => {
                Err("the connection to NATS is down (reconnecting): other nodes cannot be reached".into())
            }
        }
    }

    fn leave(&self) -> futures_util::future::BoxFuture<'static, ()> {
        let (client, node) = (self.client.clone(), self.node.clone());
        Box::pin(async move {
            let Ok(body) = serde_json::to_vec(&Beat { node, state: State::Gone }) else { return };
            let said = async {
                let _ = client.publish(NODES, body.into()).await;
                let _ = client.flush().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), said).await;
        })
    }
}
