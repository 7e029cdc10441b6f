//! A room guest homed on this node leaves: away for its grace period, or
//! gone for good; the host (here, or on its node) is told once Redis agrees.

use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{GuestId, GuestLeftReason, ServerMessage};
use tracing::{info, warn};

use super::super::ClusterRegistry;
use super::super::requests::now_ms;
use crate::cluster::envelope::Control;
use crate::cluster::store::{AwayOutcome, EndOutcome, Holder};
use crate::conns::ConnId;
use crate::registry::{Departure, SessionId};

impl ClusterRegistry {
    /// Guest `guest`'s connection `conn` ended (`how`).
    pub(in crate::registry::cluster) fn guest_gone(
        &mut self,
        id: SessionId,
        guest: GuestId,
        conn: ConnId,
        how: Departure,
        ctx: &mut Context<Self>,
    ) {
        let Some(g) = self
            .sessions
            .get_mut(&id)
            .and_then(|l| l.room_mut())
            .and_then(|r| r.guests.get_mut(&guest))
        else {
            return;
        };
        let Some(here) = g.here.as_mut() else { return };
        if here.conn.as_ref().map(|(c, _)| *c) != Some(conn) {
            return; // an older connection of a guest that was taken over
        }
        here.conn = None;
        // A guest still waiting has no token: it cannot come back.
        let reason = match how {
            Departure::Left => Some(GuestLeftReason::Left),
            Departure::Closed => Some(GuestLeftReason::Closed),
            Departure::Dropped if !g.admitted => Some(GuestLeftReason::Closed),
            Departure::Dropped => None,
        };
        if let Some(p) = &g.to_guest {
            p.detach(conn);
        }
        let store = Arc::clone(&self.store);
        let sid = Arc::clone(&id);
        match reason {
            Some(reason) => {
                let end = async move { store.end_guest(&sid, guest, Holder::Conn(conn)).await };
                ctx.spawn(end.into_actor(self).map(move |res, act, ctx| {
                    if let Err(e) = &res {
                        warn!(session = %id, guest, error = %e, "could not end the guest in Redis; ending it here");
                    }
                    if !matches!(res, Ok(EndOutcome::Stale)) {
                        act.guest_ended_here(&id, guest, reason, ctx);
                    }
                }));
            }
            None => {
                info!(session = %id, guest, conn = %conn, "guest away");
                let until = now_ms() + self.settings.grace.as_millis() as u64;
                let away = async move { store.away_guest(&sid, guest, conn, until).await };
                ctx.spawn(away.into_actor(self).map(move |res, act, ctx| {
                    if matches!(res, Ok(AwayOutcome::Stale)) {
                        return;
                    }
                    let Some(local) = act.sessions.get(&id) else {
                        return;
                    };
                    if local.hosts_room() {
                        if let Some(p) = local
                            .room()
                            .and_then(|r| r.guests.get(&guest))
                            .and_then(|g| g.to_guest.as_ref())
                        {
                            p.peer_away();
                        }
                        local.tell_host(&ServerMessage::GuestAway { guest_id: guest });
                    } else if let Some(n) = local.node_of(relay_protocol::Role::Mac).cloned() {
                        let c = Control::GuestAway {
                            sid: id.to_string(),
                            guest,
                        };
                        act.send(&n, c, ctx);
                    }
                }));
            }
        }
    }

    /// On the host's node: frames for guest `guest`, away, overflowed its
    /// resume buffer: it ends (`guest_left` with `timeout`), and its node
    /// forgets it.
    pub(in crate::registry::cluster) fn guest_overflowed(
        &mut self,
        id: SessionId,
        guest: GuestId,
        ctx: &mut Context<Self>,
    ) {
        self.end_guest_at_host(id, guest, "its resume buffer overflowed", ctx);
    }

    /// On the host's node: guest `guest` ends (`why`): in Redis, at its
    /// node (which forgets it), and for the host (`guest_left`, `timeout`).
    pub(in crate::registry::cluster) fn end_guest_at_host(
        &mut self,
        id: SessionId,
        guest: GuestId,
        why: &'static str,
        ctx: &mut Context<Self>,
    ) {
        warn!(session = %id, guest, why, "ending a guest");
        let store = Arc::clone(&self.store);
        let sid = Arc::clone(&id);
        let end = async move { store.end_guest(&sid, guest, Holder::Any).await };
        ctx.spawn(end.into_actor(self).map(move |_, act, ctx| {
            let node = act
                .sessions
                .get(&id)
                .and_then(|l| l.room())
                .and_then(|r| r.guests.get(&guest))
                .map(|g| Arc::clone(&g.node));
            if let Some(n) = node.filter(|n| **n != *act.node) {
                // Its node forgets it.
                let c = Control::GuestEnded {
                    sid: id.to_string(),
                    guest,
                    reason: GuestLeftReason::Timeout,
                };
                act.send(&n, c, ctx);
            } else {
                act.decide_here(&id, guest, crate::cluster::envelope::Verdict::Remove);
            }
            act.guest_gone_at_host(&id, guest, GuestLeftReason::Timeout);
        }));
    }

    /// Ends guest `guest` of `sid`, which the `join` script placed on this
    /// node's connection `conn` but nobody was told of (its deadline passed).
    pub(in crate::registry::cluster) fn end_unseen_guest(
        &self,
        sid: &str,
        guest: GuestId,
        conn: ConnId,
        ctx: &mut Context<Self>,
    ) {
        let store = Arc::clone(&self.store);
        let sid: SessionId = Arc::from(sid);
        let end = async move { store.end_guest(&sid, guest, Holder::Conn(conn)).await };
        ctx.spawn(end.into_actor(self).map(move |res, _, _| {
            if let Err(e) = res {
                warn!(guest, error = %e, "could not end a guest nobody was told of");
            }
        }));
    }
}
