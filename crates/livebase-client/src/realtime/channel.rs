//! Broadcast/presence channels.

use super::state::Command;
use crate::error::{Error, Result};
use crate::protocol::{PresenceEntry, PresenceMap};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// A message on a joined channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelMessage {
    /// `from` is the sender's connection id.
    Broadcast { event: String, payload: Value, from: Option<String> },
    /// Everyone present, sent after each (re)join.
    PresenceState(PresenceMap),
    /// Entries that joined and left.
    PresenceDiff { joins: PresenceMap, leaves: PresenceMap },
    /// The server refused to rejoin the channel after a reconnect; the stream ends.
    Error { code: String, message: String },
}

/// Who is present on a channel, maintained from `presence_state` and `presence_diff`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Presence {
    members: PresenceMap,
}

impl Presence {
    pub fn new() -> Presence {
        Presence::default()
    }

    /// Entries by key (a key may hold one entry per connection: a user with two tabs).
    pub fn members(&self) -> &PresenceMap {
        &self.members
    }

    /// The keys present.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    pub fn get(&self, key: &str) -> Option<&[PresenceEntry]> {
        self.members.get(key).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Applies a message; returns whether presence changed.
    pub fn apply(&mut self, msg: &ChannelMessage) -> bool {
        match msg {
            ChannelMessage::PresenceState(state) => {
                self.members = state.clone();
                self.members.retain(|_, v| !v.is_empty());
                true
            }
            ChannelMessage::PresenceDiff { joins, leaves } => {
                // Leaves first: re-tracking is a leave and a join of the same connection.
                for (key, gone) in leaves {
                    if let Some(entries) = self.members.get_mut(key) {
                        entries.retain(|e| !gone.iter().any(|g| g.conn_id == e.conn_id));
                        if entries.is_empty() {
                            self.members.remove(key);
                        }
                    }
                }
                for (key, came) in joins {
                    let entries = self.members.entry(key.clone()).or_default();
                    for e in came {
                        entries.retain(|x| x.conn_id != e.conn_id);
                        entries.push(e.clone());
                    }
                    if entries.is_empty() {
                        self.members.remove(key);
                    }
                }
                true
            }
            ChannelMessage::Broadcast { .. } | ChannelMessage::Error { .. } => false,
        }
    }
}

/// A joined channel: its messages and its presence view. Dropping it leaves the channel.
#[derive(Debug)]
pub struct Channel {
    name: String,
    gen: u64,
    rx: mpsc::UnboundedReceiver<ChannelMessage>,
    cmd: mpsc::UnboundedSender<Command>,
    presence: Presence,
}

impl Channel {
    pub(crate) fn new(
        name: String,
        gen: u64,
        rx: mpsc::UnboundedReceiver<ChannelMessage>,
        cmd: mpsc::UnboundedSender<Command>,
    ) -> Channel {
        Channel { name, gen, rx, cmd, presence: Presence::new() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next message (presence messages are applied to [`Channel::presence`] first);
    /// `None` once the channel was left or the connection closed.
    pub async fn next(&mut self) -> Option<ChannelMessage> {
        let msg = self.rx.recv().await?;
        self.presence.apply(&msg);
        Some(msg)
    }

    /// The next message if one is already queued.
    pub fn try_next(&mut self) -> Option<ChannelMessage> {
        let msg = self.rx.try_recv().ok()?;
        self.presence.apply(&msg);
        Some(msg)
    }

    /// Presence as of the messages returned so far.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    async fn request(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Command) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Tracks this connection's presence (see [`super::RealtimeHandle::track`]).
    pub async fn track(&self, key: Option<&str>, meta: Value) -> Result<()> {
        self.request(|reply| Command::Track {
            channel: self.name.clone(),
            key: key.map(str::to_string),
            meta,
            reply,
        })
        .await
    }

    pub async fn untrack(&self) -> Result<()> {
        self.request(|reply| Command::Untrack { channel: self.name.clone(), reply }).await
    }

    /// Broadcasts on this channel (fire and forget).
    pub async fn broadcast(&self, event: &str, payload: Value, self_: bool) -> Result<()> {
        self.request(Command::broadcast(&self.name, event, payload, self_, false)).await
    }

    /// Leaves the channel and waits for the server's `ok`.
    pub async fn leave(mut self) -> Result<()> {
        let gen = std::mem::take(&mut self.gen);
        self.request(|reply| Command::Leave {
            channel: self.name.clone(),
            gen: Some(gen),
            reply: Some(reply),
        })
        .await
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if self.gen != 0 {
            let _ = self.cmd.send(Command::Leave {
                channel: std::mem::take(&mut self.name),
                gen: Some(self.gen),
                reply: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries(v: Value) -> PresenceMap {
        serde_json::from_value(v).expect("presence map")
    }

    #[test]
    fn state_then_diffs() {
        let mut p = Presence::new();
        p.apply(&ChannelMessage::PresenceState(entries(json!({
            "u1": [{"conn_id": "c1", "meta": {"name": "Ada"}}],
            "u2": [{"conn_id": "c2", "meta": {}}]
        }))));
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["u1", "u2"]);
        // u1 opens a second tab.
        p.apply(&ChannelMessage::PresenceDiff {
            joins: entries(json!({"u1": [{"conn_id": "c3", "meta": {"name": "Ada"}}]})),
            leaves: PresenceMap::new(),
        });
        assert_eq!(p.get("u1").map(<[PresenceEntry]>::len), Some(2));
        // u2 re-tracks with new meta: a leave and a join in one diff.
        p.apply(&ChannelMessage::PresenceDiff {
            joins: entries(json!({"u2": [{"conn_id": "c2", "meta": {"away": true}}]})),
            leaves: entries(json!({"u2": [{"conn_id": "c2", "meta": {}}]})),
        });
        assert_eq!(p.get("u2").map(|e| e[0].meta.clone()), Some(json!({"away": true})));
        // The first tab closes, then u2 leaves.
        p.apply(&ChannelMessage::PresenceDiff {
            joins: PresenceMap::new(),
            leaves: entries(json!({"u1": [{"conn_id": "c1", "meta": {}}],
                "u2": [{"conn_id": "c2", "meta": {}}]})),
        });
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["u1"]);
        assert_eq!(p.get("u1").map(|e| e[0].conn_id.as_str()), Some("c3"));
        // A fresh state (after a rejoin) replaces everything.
        p.apply(&ChannelMessage::PresenceState(PresenceMap::new()));
        assert!(p.is_empty());
    }

    #[test]
    fn broadcasts_do_not_touch_presence() {
        let mut p = Presence::new();
        assert!(!p.apply(&ChannelMessage::Broadcast { event: "e".into(), payload: json!(1), from: None }));
    }
}
