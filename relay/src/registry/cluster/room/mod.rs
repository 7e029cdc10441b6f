//! Rooms in the cluster registry (docs/design.md, "Rooms across nodes"):
//! what a node holds of a room, and the guests' joins. The host's answers
//! (`admit`, `deny`, `remove`) are in `host`, what the nodes tell each other
//! about guests in `peers`.
//!
//! A room guest is `Member::Guest(id)` here (its id, from 1), where a
//! pairing's browser is `Member::Guest(0)`: each node names a guest the
//! same way, whatever node it is on.
//!
//! At the host's node a room holds the host's one pipe (every guest's
//! frames, tagged: the session's `Role::Mac` pipe) and the `outbound::Room`
//! of the admitted guests' pipes: a local guest's own pipe, or one sending
//! to the guest's node by the guest's lane. At a guest's node with the host
//! elsewhere, the guest's inbound pipe is fed from the host's node, and its
//! way to the host is a `GuestOut` over a pipe sending there by the lane
//! `(guest, to host)`, admitted only once the host's node says so.

mod confirm;
mod gone;
mod host;
mod host_move;
mod host_news;
mod peers;
mod rebuild;
mod resume;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use relay_protocol::{GuestId, ServerMessage};
use tracing::info;

use super::{ClusterRegistry, Here, Local};
use crate::cluster::envelope::{Control, GuestLane, Lane};
use crate::cluster::store::{NodeId, SideState};
use crate::outbound::{GuestOut, Outbound, Room};
use crate::pipe::{Peer, Pipe};
use crate::queue::{EventEffect, Limits};
use crate::registry::member::Member;
use crate::registry::{Join, Joined, Link, Refusal};
use relay_protocol::ErrorCode;

/// What a node holds of a room, besides the host's slot of its `Local`.
#[derive(Default)]
pub(super) struct RoomHere {
    /// The host's way to its admitted guests, on the host's node.
    pub(super) fanout: Option<Arc<Room>>,
    /// The guests this node knows: all of them on the host's node, those
    /// homed here elsewhere.
    pub(super) guests: BTreeMap<GuestId, Guest>,
}

/// One guest of a room as a node holds it.
pub(super) struct Guest {
    /// The guest's node.
    pub(super) node: Arc<str>,
    /// Its connection, if it is homed here (none while away).
    pub(super) here: Option<Here>,
    /// Frames toward it held here: on the host's node, the guest's own pipe
    /// (local guest) or one sending to its node (once admitted); on its
    /// node with the host elsewhere, fed from the host's node.
    pub(super) to_guest: Option<Arc<Pipe>>,
    /// A guest homed here: its way to the host.
    pub(super) out: Option<Arc<GuestOut>>,
    /// A guest homed here with the host elsewhere: the pipe under `out`.
    pub(super) out_pipe: Option<Arc<Pipe>>,
    /// Its token, held for its `joined` while it waits (on its node).
    pub(super) token: Option<String>,
    /// Admitted (false: waiting for the host).
    pub(super) admitted: bool,
    /// On the host's node, for a guest elsewhere: its node said it is away.
    pub(super) away: bool,
}

/// A guest's id as the tag on its frames to the host.
pub(super) fn tag(id: GuestId) -> Option<NonZeroU64> {
    NonZeroU64::new(id)
}

/// Guests with a count each (of frames taken, or to start after), as sent
/// to one node.
pub(super) type GuestCounts = Vec<(GuestId, u64)>;

/// Adds `item` to `node`'s list: one list, so one message, per node.
pub(super) fn push_by_node<T>(lists: &mut Vec<(Arc<str>, Vec<T>)>, node: Arc<str>, item: T) {
    match lists.iter_mut().find(|(n, _)| *n == node) {
        Some((_, list)) => list.push(item),
        None => lists.push((node, vec![item])),
    }
}

/// The lane of guest `guest`'s direction (toward the host or toward it).
pub(super) fn lane(guest: GuestId, to_host: bool) -> Lane {
    Lane::Guest(GuestLane { guest, to_host })
}

impl Local {
    /// A room's local state, if this session is a room here.
    pub(super) fn room(&self) -> Option<&RoomHere> {
        self.room.as_deref()
    }

    pub(super) fn room_mut(&mut self) -> Option<&mut RoomHere> {
        self.room.as_deref_mut()
    }

    /// The host of a room is homed here.
    pub(super) fn hosts_room(&self) -> bool {
        self.host.here.is_some() && self.room().is_some_and(|r| r.fanout.is_some())
    }

    /// Tells the room's host (homed here) something, through its pipe.
    pub(super) fn tell_host(&self, msg: &ServerMessage) {
        if self.host.here.is_some() {
            if let Some(p) = &self.host.to {
                p.push_event(ByteString::from(msg.to_text()), EventEffect::None);
            }
        }
    }

    /// Tells guest `id`, homed here, something through its pipe.
    pub(super) fn tell_guest(&self, id: GuestId, msg: &ServerMessage, effect: EventEffect) {
        let Some(g) = self.room().and_then(|r| r.guests.get(&id)) else {
            return;
        };
        if let (Some(_), Some(p)) = (&g.here, &g.to_guest) {
            p.push_event(ByteString::from(msg.to_text()), effect);
        }
    }

    /// The guests homed here.
    pub(super) fn guests_here(&self) -> Vec<GuestId> {
        self.room().map_or_else(Vec::new, |r| {
            r.guests
                .iter()
                .filter(|(_, g)| g.here.is_some())
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// The nodes other than `me` that hold guests of this room, once each.
    pub(super) fn guest_nodes(&self, me: &str) -> Vec<Arc<str>> {
        let mut nodes: Vec<Arc<str>> = Vec::new();
        for g in self.room().map(|r| r.guests.values()).into_iter().flatten() {
            if *g.node != *me && !nodes.contains(&g.node) {
                nodes.push(Arc::clone(&g.node));
            }
        }
        nodes
    }

    /// Tells every guest homed here something.
    pub(super) fn tell_guests(&self, msg: &ServerMessage, effect: EventEffect) {
        for id in self.guests_here() {
            self.tell_guest(id, msg, effect);
        }
    }

    /// Counts this room for `/metrics`, on its host's node (which knows
    /// every guest): the room, its guests by state, its size; and the
    /// session as waiting (no guest), paired (all connected) or away.
    pub(super) fn room_stats(&self, st: &mut crate::metrics::SessionStats) {
        let Some(room) = self.room() else { return };
        st.rooms += 1;
        let mut size = 0;
        let mut all_here = self.host.here.as_ref().is_some_and(|h| h.conn.is_some());
        for g in room.guests.values() {
            size += 1;
            let connected = match &g.here {
                Some(h) => h.conn.is_some(),
                None => !g.away,
            };
            all_here &= connected;
            match (g.admitted, connected) {
                (false, _) => st.guests_waiting += 1,
                (true, true) => st.guests_in += 1,
                (true, false) => st.guests_away += 1,
            }
        }
        st.room_guests_max = st.room_guests_max.max(size);
        if size == 0 {
            st.waiting += 1;
        } else if all_here {
            st.paired += 1;
        } else {
            st.away += 1;
        }
    }

    /// Guest `id`'s socket link, if it is homed here.
    pub(super) fn guest_link(&self, id: GuestId, written: u64) -> Option<Link> {
        let g = self.room()?.guests.get(&id)?;
        Some(Link {
            session_id: Arc::clone(&self.id),
            inbound: Arc::clone(g.to_guest.as_ref()?),
            outbound: Outbound::Guest(Arc::clone(g.out.as_ref()?)),
            member: Member::Guest(usize::try_from(id).ok()?),
            written,
        })
    }

    /// Drops guest `id` from what this node holds, closing its pipes; its
    /// connection, if any, is the caller's to tell.
    pub(super) fn drop_guest(&mut self, dir: &super::Directory, id: GuestId) -> Option<Guest> {
        let sid = Arc::clone(&self.id);
        let to_host = self.host.to.clone();
        let room = self.room_mut()?;
        let g = room.guests.remove(&id)?;
        if let Some(f) = &room.fanout {
            f.remove(id);
        }
        if let Some(out) = &g.out {
            // Whatever its socket still pushes is refused from now on.
            Outbound::Guest(Arc::clone(out)).fence(crate::conns::ConnId::next());
        }
        if let Some(p) = &g.to_guest {
            p.close();
        }
        if let Some(p) = &g.out_pipe {
            p.close();
        }
        dir.set(&sid, lane(id, false), None);
        dir.set(&sid, lane(id, true), None);
        if let (Some(t), Some(tag)) = (to_host, tag(id)) {
            t.unfeed_guest(tag);
        }
        Some(g)
    }

    /// Closes every pipe of the room this node holds.
    pub(super) fn close_room(&mut self, dir: &super::Directory) {
        let ids: Vec<GuestId> = self
            .room()
            .map_or_else(Vec::new, |r| r.guests.keys().copied().collect());
        for id in ids {
            self.drop_guest(dir, id);
        }
    }
}

/// Settings of a guest's pipe from the host: never paces the host (a guest
/// that falls behind is cut as a slow consumer instead).
pub(super) fn unpaced(limits: Limits) -> Limits {
    Limits {
        paced: false,
        ..limits
    }
}

impl ClusterRegistry {
    /// A handle to publish one direction of guest `guest` toward `node`.
    pub(super) fn guest_peer(
        &self,
        sid: &Arc<str>,
        guest: GuestId,
        to_host: bool,
        node: &Arc<str>,
    ) -> Peer {
        Peer {
            link: self.bus.link(node),
            sid: Arc::clone(sid),
            to: lane(guest, to_host),
        }
    }

    /// A room guest won a place in `sid` (the `join` script gave it `guest`):
    /// set it up here, and tell the host (here, or its node).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn guest_joined(
        &mut self,
        sid: &Arc<str>,
        guest: GuestId,
        admitted: bool,
        mac_node: NodeId,
        mac_state: SideState,
        msg: &Join,
        token: String,
        ctx: &mut Context<Self>,
    ) -> Result<Joined, Refusal> {
        let limits = self.settings.limits;
        let Some(t) = tag(guest) else {
            return Err(ErrorCode::InvalidCode.into());
        };
        let here = Here {
            conn: Some((msg.client.conn, msg.client.commands.clone())),
        };
        let host_here =
            *mac_node == *self.node && self.sessions.get(sid).is_some_and(Local::hosts_room);
        let written;
        if host_here {
            // The host is here: local pipes, as on one node.
            let local = self.sessions.get_mut(sid).ok_or(ErrorCode::InvalidCode)?;
            let to_host = local.host.to.clone().ok_or(ErrorCode::InvalidCode)?;
            let to_guest = Pipe::new(unpaced(limits));
            written = to_guest.attach(msg.client.receiver(), 0).unwrap_or(0);
            let out = GuestOut::new(to_host, t, admitted);
            let host_away = local.host.here.as_ref().is_some_and(|h| h.conn.is_none());
            let room = local.room_mut().ok_or(ErrorCode::InvalidCode)?;
            room.guests.insert(
                guest,
                Guest {
                    node: Arc::clone(&self.node),
                    here: Some(here),
                    to_guest: Some(Arc::clone(&to_guest)),
                    out: Some(out),
                    out_pipe: None,
                    token: (!admitted).then(|| token.clone()),
                    admitted,
                    away: false,
                },
            );
            local.tell_host(&ServerMessage::GuestJoined {
                guest_id: guest,
                name: msg.name.clone(),
            });
            if admitted {
                if let Some(f) = local.room().and_then(|r| r.fanout.clone()) {
                    f.add(guest, guest as usize, to_guest);
                }
                local.tell_host(&ServerMessage::GuestAdmitted { guest_id: guest });
                self.metrics
                    .room_decisions
                    .with_label_values(&["auto"])
                    .inc();
            }
            if host_away {
                local.tell_guest(guest, &ServerMessage::PeerDisconnected, EventEffect::None);
            }
            if !admitted {
                self.arm_admit_timeout(sid, guest, ctx);
            }
            info!(session = %sid, guest, conn = %msg.client.conn, "guest joined (host's node)");
        } else {
            // The host is on another node (or nowhere: its node died).
            let to_guest = Pipe::fed_from_peer(
                unpaced(limits),
                0,
                0,
                self.guest_peer(sid, guest, false, &mac_node),
            );
            written = to_guest.attach(msg.client.receiver(), 0).unwrap_or(0);
            // Published to the host's node even while the host is away
            // there: its pipe holds them (see `host_news`).
            let out_pipe =
                Pipe::sending_to_peer(limits, self.guest_peer(sid, guest, true, &mac_node), 0, 0);
            let out = GuestOut::new(Arc::clone(&out_pipe), t, admitted);
            let local = self.sessions.entry(Arc::clone(sid)).or_insert_with(|| {
                let mut l = Local::new(Arc::clone(sid));
                l.room = Some(Box::default());
                l
            });
            if local.room.is_none() {
                local.room = Some(Box::default());
            }
            local.set_node(relay_protocol::Role::Mac, Some(Arc::clone(&mac_node)));
            // A guest still waiting hears nothing of the room: the host's
            // frames reach its pipe only once it is admitted here
            // (`decide_here`), whatever the host's node did meanwhile.
            if admitted {
                self.dir.set(sid, lane(guest, false), Some(&to_guest));
            }
            self.dir.set(sid, lane(guest, true), Some(&out_pipe));
            let room = local.room_mut().ok_or(ErrorCode::InvalidCode)?;
            room.guests.insert(
                guest,
                Guest {
                    node: Arc::clone(&self.node),
                    here: Some(here),
                    to_guest: Some(to_guest),
                    out: Some(out),
                    out_pipe: Some(out_pipe),
                    token: (!admitted).then(|| token.clone()),
                    admitted,
                    away: false,
                },
            );
            if mac_state == SideState::Away {
                local.tell_guest(guest, &ServerMessage::PeerDisconnected, EventEffect::None);
            }
            if !admitted {
                self.arm_wait_bound(sid, guest, msg.client.conn, ctx);
            }
            self.send(
                &mac_node,
                Control::GuestJoined {
                    sid: sid.to_string(),
                    guest,
                    node: self.node.to_string(),
                    name: msg.name.clone(),
                    admitted,
                },
                ctx,
            );
            info!(session = %sid, guest, conn = %msg.client.conn, host_node = %mac_node, "guest joined (cross-node)");
        }
        let link = self
            .sessions
            .get(sid)
            .and_then(|l| l.guest_link(guest, written))
            .ok_or(ErrorCode::InvalidCode)?;
        Ok(Joined {
            resume_token: admitted.then_some(token),
            guest_id: Some(guest),
            link,
        })
    }
}
