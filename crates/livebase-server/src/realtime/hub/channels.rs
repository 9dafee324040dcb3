//! Channels: membership, broadcast and presence.
//!
//! Membership is per node (which of this node's connections receive a channel's messages);
//! presence is cluster-wide (every node keeps the whole table). An event that starts here is
//! applied here and published on the [`ChannelBus`](crate::realtime::bus::ChannelBus); an
//! event from another node arrives through [`Hub::apply_remote`] and goes through the same
//! code, so both kinds look the same to members.

use super::registry::{ConnId, Registry};
use super::Hub;
use crate::auth::Principal;
use crate::realtime::bus::{ChannelEvent, MemberId, NodeId};
use crate::realtime::codec::{Delivery, PerCodec, PresenceEntry, PresenceMap};
use crate::realtime::protocol::{ProtoError, Ref};
use serde_json::Value;

/// A broadcast as a client asked for it.
pub struct BroadcastReq<'a> {
    pub reference: &'a Ref,
    pub channel: &'a str,
    pub event: &'a str,
    pub payload: &'a Value,
    pub include_self: bool,
    pub ack: bool,
}

/// A presence track as a client asked for it; `key` defaults to the connection's name.
pub struct TrackReq<'a> {
    pub reference: &'a Ref,
    pub channel: &'a str,
    pub key: Option<&'a str>,
    pub meta: &'a Value,
}

fn entry(member: &MemberId, meta: &Value) -> PresenceEntry {
    PresenceEntry { conn_id: member.name(), meta: meta.clone() }
}

fn valid_channel(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255
}

fn not_joined(reference: &Ref, what: &str, channel: &str) -> ProtoError {
    ProtoError::new(reference, "not_joined", format!("join '{channel}' before {what}"))
}

impl Hub {
    pub fn join(&self, conn: ConnId, reference: &Ref, channel: &str) -> Result<(), ProtoError> {
        if !valid_channel(channel) {
            return Err(ProtoError::new(reference, "bad_request", "channel names are 1 to 255 bytes"));
        }
        let Some(who) = self.principal_of(conn) else { return Ok(()) };
        if !self.may_join(&who, channel) {
            return Err(ProtoError::new(reference, "forbidden", format!("not allowed to join '{channel}'")));
        }
        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let limit = self.inner.limits.max_channels;
        let Some(c) = reg.conns.get_mut(&conn) else { return Ok(()) };
        if !c.channels.contains(channel) && c.channels.len() >= limit {
            return Err(ProtoError::new(
                reference,
                "too_many_channels",
                format!("a connection joins at most {limit} channels"),
            ));
        }
        c.channels.insert(channel.to_string());
        reg.members.entry(channel.to_string()).or_default().insert(conn);
        let mut state = PresenceMap::new();
        for (k, entries) in reg.presence.get(channel).into_iter().flatten() {
            state.insert(k.clone(), entries.iter().map(|(m, meta)| entry(m, meta)).collect());
        }
        c.send(Delivery::Ok { reference });
        c.send(Delivery::PresenceState { channel, state: &state });
        Ok(())
    }

    /// May `who` join `channel`? (What [`Hub::join`] checks first, for a protocol that
    /// answers a join before it becomes a member.)
    pub fn may_join(&self, who: &Principal, channel: &str) -> bool {
        valid_channel(channel) && self.access().channel_allowed(who, channel)
    }

    /// A broadcast sent by `who` from outside any connection (a REST call): to every member
    /// of the channel, on every node. Refused when `who` may not use the channel.
    pub fn broadcast_as(
        &self,
        who: &Principal,
        channel: &str,
        event: &str,
        payload: &Value,
    ) -> Result<(), ProtoError> {
        if !self.may_join(who, channel) {
            return Err(ProtoError::new(
                &None,
                "forbidden",
                format!("not allowed to broadcast on '{channel}'"),
            ));
        }
        let from = MemberId { node: self.node().clone(), conn: 0 };
        let ev = Self::local_broadcast(&self.inner.reg.lock(), channel, event, payload, from, None);
        self.inner.bus.publish(ev);
        Ok(())
    }

    /// Delivers a broadcast to this node's members of `channel` (but `skip`); returns the
    /// event that carries it to the other nodes (published once the lock is released).
    fn local_broadcast(
        reg: &Registry,
        channel: &str,
        event: &str,
        payload: &Value,
        from: MemberId,
        skip: Option<ConnId>,
    ) -> ChannelEvent {
        Self::deliver_broadcast(reg, channel, event, payload, &from, skip);
        ChannelEvent::Broadcast {
            channel: channel.to_string(),
            event: event.to_string(),
            payload: payload.clone(),
            from,
            include_self: skip.is_none(),
        }
    }

    pub fn leave(&self, conn: ConnId, reference: &Ref, channel: &str) -> Result<(), ProtoError> {
        let mut reg = self.inner.reg.lock();
        if !reg.conns.get(&conn).is_some_and(|c| c.channels.contains(channel)) {
            return Err(ProtoError::new(reference, "not_joined", format!("not a member of '{channel}'")));
        }
        self.leave_channel(&mut reg, conn, channel);
        self.inner.metrics.set_presence_members(reg.presence_members);
        Ok(())
    }

    /// Takes a connection out of a channel: its presence leaves (told to everyone else),
    /// then its membership.
    pub(super) fn leave_channel(&self, reg: &mut Registry, conn: ConnId, channel: &str) {
        if let Some(member) = reg.conns.get(&conn).map(|c| c.member.clone()) {
            if Self::apply_untrack(reg, channel, &member, Some(conn)) {
                self.inner.bus.publish(ChannelEvent::Untrack { channel: channel.to_string(), member });
            }
        }
        if let Some(c) = reg.conns.get_mut(&conn) {
            c.channels.remove(channel);
        }
        if let Some(m) = reg.members.get_mut(channel) {
            m.remove(&conn);
            if m.is_empty() {
                reg.members.remove(channel);
            }
        }
    }

    pub fn broadcast(&self, conn: ConnId, b: BroadcastReq<'_>) -> Result<(), ProtoError> {
        let reg = self.inner.reg.lock();
        let Some(c) = reg.conns.get(&conn).filter(|c| c.channels.contains(b.channel)) else {
            return Err(not_joined(b.reference, "broadcasting", b.channel));
        };
        let skip = (!b.include_self).then_some(conn);
        let ev = Self::local_broadcast(&reg, b.channel, b.event, b.payload, c.member.clone(), skip);
        if b.ack {
            c.send(Delivery::Ok { reference: b.reference });
        }
        drop(reg);
        self.inner.bus.publish(ev);
        Ok(())
    }

    /// One delivery to every member of the channel on this node (but `skip`), encoded once
    /// per codec. `live_only`: not to connections whose token expired.
    fn to_members(reg: &Registry, channel: &str, skip: Option<ConnId>, live_only: bool, d: Delivery<'_>) {
        let Some(members) = reg.members.get(channel) else { return };
        let mut frames = PerCodec::new(d);
        for m in members {
            if Some(*m) == skip {
                continue;
            }
            let Some(c) = reg.conns.get(m).filter(|c| !(live_only && c.expired)) else { continue };
            if let Some(f) = frames.frame(&c.handle.codec) {
                let _ = c.handle.tx.try_send(f);
            }
        }
    }

    fn deliver_broadcast(
        reg: &Registry,
        channel: &str,
        event: &str,
        payload: &Value,
        from: &MemberId,
        skip: Option<ConnId>,
    ) {
        let from = from.name();
        Self::to_members(
            reg,
            channel,
            skip,
            true,
            Delivery::Broadcast { channel, event, payload, from: &from },
        );
    }

    pub fn track(&self, conn: ConnId, t: TrackReq<'_>) -> Result<(), ProtoError> {
        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        let Some(c) = reg.conns.get(&conn).filter(|c| c.channels.contains(t.channel)) else {
            return Err(not_joined(t.reference, "tracking presence", t.channel));
        };
        let key = t.key.map(str::to_string).unwrap_or_else(|| c.name.to_string());
        if key.is_empty() || key.len() > 256 {
            return Err(ProtoError::new(t.reference, "bad_request", "presence key must be 1 to 256 bytes"));
        }
        let member = c.member.clone();
        c.send(Delivery::Ok { reference: t.reference });
        Self::apply_track(reg, t.channel, &key, &member, t.meta);
        self.inner.metrics.set_presence_members(reg.presence_members);
        self.inner.bus.publish(ChannelEvent::Track {
            channel: t.channel.to_string(),
            key,
            member,
            meta: t.meta.clone(),
        });
        Ok(())
    }

    pub fn untrack(&self, conn: ConnId, reference: &Ref, channel: &str) -> Result<(), ProtoError> {
        let mut reg = self.inner.reg.lock();
        let Some(c) = reg.conns.get(&conn).filter(|c| c.channels.contains(channel)) else {
            return Err(ProtoError::new(reference, "not_joined", format!("not a member of '{channel}'")));
        };
        c.send(Delivery::Ok { reference });
        let member = c.member.clone();
        if Self::apply_untrack(&mut reg, channel, &member, Some(conn)) {
            self.inner.bus.publish(ChannelEvent::Untrack { channel: channel.to_string(), member });
        }
        self.inner.metrics.set_presence_members(reg.presence_members);
        Ok(())
    }

    /// A channel event published by another node.
    pub fn apply_remote(&self, ev: ChannelEvent) {
        let mut reg = self.inner.reg.lock();
        let reg = &mut *reg;
        match ev {
            ChannelEvent::Broadcast { channel, event, payload, from, .. } => {
                Self::deliver_broadcast(reg, &channel, &event, &payload, &from, None);
            }
            ChannelEvent::Track { channel, key, member, meta } => {
                Self::apply_track(reg, &channel, &key, &member, &meta);
            }
            ChannelEvent::Untrack { channel, member } => {
                Self::apply_untrack(reg, &channel, &member, None);
            }
            ChannelEvent::NodeGone { node } => Self::forget_node(reg, &node),
            ChannelEvent::Announce => self.announce(reg),
        }
        self.inner.metrics.set_presence_members(reg.presence_members);
    }

    /// Publishes every presence entry of this node's members again (for nodes that joined or
    /// came back); receivers that already hold an entry leave it as it is.
    fn announce(&self, reg: &Registry) {
        let me = self.node();
        for (channel, table) in &reg.presence {
            for (key, entries) in table {
                for (member, meta) in entries.iter().filter(|(m, _)| &m.node == me) {
                    self.inner.bus.publish(ChannelEvent::Track {
                        channel: channel.clone(),
                        key: key.clone(),
                        member: member.clone(),
                        meta: meta.clone(),
                    });
                }
            }
        }
    }

    /// Records `member` under `key` (replacing what it tracked before in the channel) and
    /// tells this node's members.
    fn apply_track(reg: &mut Registry, channel: &str, key: &str, member: &MemberId, meta: &Value) {
        let table = reg.presence.entry(channel.to_string()).or_default();
        // The same entry again (an announce): nothing changed, nobody is told.
        if table.get(key).is_some_and(|e| e.iter().any(|(m, v)| m == member && v == meta)) {
            return;
        }
        let mut leaves = PresenceMap::new();
        for (k, entries) in table.iter_mut() {
            if let Some(pos) = entries.iter().position(|(m, _)| m == member) {
                let (m, old) = entries.remove(pos);
                leaves.insert(k.clone(), vec![entry(&m, &old)]);
                reg.presence_members -= 1;
            }
        }
        table.retain(|_, e| !e.is_empty());
        table.entry(key.to_string()).or_default().push((member.clone(), meta.clone()));
        reg.presence_members += 1;
        let joins = PresenceMap::from([(key.to_string(), vec![entry(member, meta)])]);
        Self::tell_members(reg, channel, &joins, &leaves, None);
    }

    /// Removes a member's presence in a channel and tells this node's members (but `skip`).
    /// Returns whether it had any.
    fn apply_untrack(reg: &mut Registry, channel: &str, member: &MemberId, skip: Option<ConnId>) -> bool {
        let Some(table) = reg.presence.get_mut(channel) else { return false };
        let mut leaves = PresenceMap::new();
        for (k, entries) in table.iter_mut() {
            if let Some(pos) = entries.iter().position(|(m, _)| m == member) {
                let (m, meta) = entries.remove(pos);
                leaves.insert(k.clone(), vec![entry(&m, &meta)]);
            }
        }
        if leaves.is_empty() {
            return false;
        }
        table.retain(|_, e| !e.is_empty());
        if table.is_empty() {
            reg.presence.remove(channel);
        }
        reg.presence_members -= leaves.len() as i64;
        Self::tell_members(reg, channel, &PresenceMap::new(), &leaves, skip);
        true
    }

    /// Every presence entry of a node that is gone leaves, in every channel.
    fn forget_node(reg: &mut Registry, node: &NodeId) {
        let mut gone: Vec<(String, MemberId)> = Vec::new();
        for (channel, table) in &reg.presence {
            for (m, _) in table.values().flatten() {
                if &m.node == node {
                    gone.push((channel.clone(), m.clone()));
                }
            }
        }
        for (channel, member) in gone {
            Self::apply_untrack(reg, &channel, &member, None);
        }
    }

    fn tell_members(
        reg: &Registry,
        channel: &str,
        joins: &PresenceMap,
        leaves: &PresenceMap,
        skip: Option<ConnId>,
    ) {
        Self::to_members(reg, channel, skip, false, Delivery::PresenceDiff { channel, joins, leaves });
    }
}
