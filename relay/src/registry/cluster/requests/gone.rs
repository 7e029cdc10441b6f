//! A side of this node leaves: away for its grace period (its peer told
//! once Redis agrees), or gone for good; and what every node does when a
//! side ended wherever it was.

use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{CloseCode, ErrorCode, PeerLeftReason, Role, ServerMessage};
use tracing::{info, warn};

use super::super::ClusterRegistry;
use super::*;
use crate::cluster::envelope::{Control, EndReason};
use crate::cluster::store::{AwayOutcome, Counter, EndOutcome, Expiry, Holder};
use crate::conns::ConnId;
use crate::queue::EventEffect;
use crate::registry::member::Member;
use crate::registry::{Departure, Gone, Overflowed, SessionId};
use relay_protocol::GuestId;

impl ClusterRegistry {
    /// A side of this node dropped: starts its grace period in Redis, and
    /// only then tells its peer `peer_disconnected` (through the peer's
    /// node if elsewhere). Once the peer heard it, Redis has the side away,
    /// so the side's resume, on any node, is a resume the peer hears of
    /// (`peer_resumed`), never taken for a silent takeover of a connection
    /// that looked open. A side that resumed before the script ran is not
    /// away at all: its peer is told nothing. If Redis fails, the side is
    /// away here all the same, and its peer is told.
    fn away_then_tell_peer(
        &self,
        id: SessionId,
        role: Role,
        conn: ConnId,
        ctx: &mut Context<Self>,
    ) {
        let store = Arc::clone(&self.store);
        let deadline = requests_deadline(self.settings.grace);
        let sid = Arc::clone(&id);
        let away = async move { store.away(&sid, role, conn, deadline).await };
        ctx.spawn(away.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(AwayOutcome::Away) => {}
                Ok(AwayOutcome::Stale) => return,
                Err(e) => {
                    warn!(session = %id, error = %e, "could not start the grace period in Redis");
                }
            }
            let Some(local) = act.sessions.get(&id) else {
                return;
            };
            if local.side(role).is_some_and(|h| h.conn.is_some()) {
                // Back on this node meanwhile.
                return;
            }
            if role == Role::Mac && local.room.is_some() {
                act.host_away_news(&id, ctx);
                return;
            }
            match local.node_of(role.peer()).cloned() {
                Some(pn) => {
                    let c = Control::Away {
                        sid: id.to_string(),
                        role,
                        node: Some(act.node.to_string()),
                    };
                    act.send(&pn, c, ctx);
                }
                None => local.tell(
                    role.peer(),
                    &ServerMessage::PeerDisconnected,
                    EventEffect::None,
                ),
            }
        }));
    }
}

impl Handler<Gone> for ClusterRegistry {
    type Result = ();

    fn handle(&mut self, msg: Gone, ctx: &mut Context<Self>) {
        if let Member::Guest(i) = msg.member {
            if self
                .sessions
                .get(&msg.session_id)
                .is_some_and(|l| l.room.is_some())
            {
                self.guest_gone(msg.session_id, i as GuestId, msg.conn, msg.how, ctx);
                return;
            }
        }
        let role = msg.member.role();
        let Some(local) = self.sessions.get_mut(&msg.session_id) else {
            return;
        };
        let Some(here) = local.side_mut(role) else {
            return;
        };
        if here.conn.as_ref().map(|(c, _)| *c) != Some(msg.conn) {
            return; // an older connection of a side that was taken over
        }
        here.conn = None;
        match msg.how {
            Departure::Left => self.end_here(msg.session_id, role, msg.conn, EndReason::Left, ctx),
            Departure::Closed => {
                self.end_here(msg.session_id, role, msg.conn, EndReason::Closed, ctx)
            }
            Departure::Dropped => {
                if let Some(p) = local.pipe(role) {
                    p.detach(msg.conn);
                }
                info!(session = %msg.session_id, role = role.as_str(), conn = %msg.conn, "side away");
                self.away_then_tell_peer(msg.session_id, role, msg.conn, ctx);
            }
        }
    }
}

impl ClusterRegistry {
    /// A side homed here ends for good (leave, close 1000): end it in Redis,
    /// then tell whoever holds the peer.
    fn end_here(
        &mut self,
        id: SessionId,
        role: Role,
        conn: ConnId,
        reason: EndReason,
        ctx: &mut Context<Self>,
    ) {
        let store = Arc::clone(&self.store);
        let sid = Arc::clone(&id);
        let end = async move { store.end_side(&sid, role, Holder::Conn(conn)).await };
        ctx.spawn(end.into_actor(self).map(move |res, act, ctx| match res {
            Ok(EndOutcome::Ended(facts)) => {
                act.side_ended(&id, role, reason, ctx);
                if let Some(peer_node) = facts.peer_node.filter(|n| **n != *act.node) {
                    let c = Control::Ended {
                        sid: id.to_string(),
                        role,
                        reason,
                    };
                    act.send(&peer_node, c, ctx);
                }
                if role == Role::Browser && !facts.live {
                    act.expire_unjoinable(&id, ctx);
                }
            }
            Ok(EndOutcome::Gone | EndOutcome::Stale) => act.side_ended(&id, role, reason, ctx),
            Err(e) => {
                warn!(session = %id, error = %e, "could not end the side in Redis; ending it here");
                act.side_ended(&id, role, reason, ctx);
            }
        }));
    }

    /// What this node does when side `role` of `id` ended for good, wherever
    /// it was: drop the side if it was here, tell its peer if the peer is here.
    pub(in crate::registry::cluster) fn side_ended(
        &mut self,
        id: &SessionId,
        role: Role,
        reason: EndReason,
        ctx: &mut Context<Self>,
    ) {
        let Some(mut local) = self.sessions.remove(id) else {
            return;
        };
        if role == Role::Mac && local.room.is_some() {
            // A room's host: its guests hear it as a browser hears its mac.
            if local.hosts_room() {
                self.host_ended_news(&local, reason, ctx);
            }
            let msg = ServerMessage::error(ErrorCode::MacDisconnected);
            self.guests_hear_of_host(&local, &msg);
        }
        let peer_here = local.side(role.peer()).is_some();
        if role == Role::Mac && local.side(Role::Mac).is_some() {
            // `sessions_live` counts sessions whose mac is homed on this node.
            self.metrics.sessions_live.dec();
        }
        local.set_side(role, None);
        local.set_node(role, None);
        match role {
            Role::Mac => {
                if peer_here {
                    let msg = ServerMessage::error(ErrorCode::MacDisconnected);
                    local.tell(
                        Role::Browser,
                        &msg,
                        EventEffect::Close(CloseCode::SessionOver),
                    );
                }
                self.sessions.insert(Arc::clone(id), local);
                self.forget(id);
            }
            Role::Browser => {
                if peer_here {
                    // The mac stays: no receiver for its frames until a new
                    // browser (changed in place: the mac's socket holds it).
                    if let Some(p) = local.pipe(Role::Browser) {
                        p.end_receiver();
                    }
                    if let Some(p) = local.pipe(Role::Mac) {
                        p.set_ack_to(None);
                    }
                    let left = match reason {
                        EndReason::Left => PeerLeftReason::Left,
                        EndReason::Closed => PeerLeftReason::Closed,
                        EndReason::Timeout => PeerLeftReason::Timeout,
                    };
                    local.tell(
                        Role::Mac,
                        &ServerMessage::PeerLeft { reason: left },
                        EventEffect::None,
                    );
                    if let Some(p) = local.pipe(Role::Browser) {
                        self.checkpoint(id, vec![(Counter::MacSendBase, p.accepted())]);
                    }
                }
                info!(session = %id, reason = ?reason, "browser left");
                self.sessions.insert(Arc::clone(id), local);
                self.forget_if_empty(id);
            }
        }
    }

    /// The browser left after the code expired: nobody can join any more, so
    /// the session ends and the mac is told `code_expired`.
    pub(in crate::registry::cluster) fn expire_unjoinable(
        &self,
        id: &SessionId,
        ctx: &mut Context<Self>,
    ) {
        self.run_expire(id, Expiry::Unjoinable, ctx);
    }
}

impl Handler<Overflowed> for ClusterRegistry {
    type Result = ();

    fn handle(&mut self, msg: Overflowed, ctx: &mut Context<Self>) {
        self.metrics.resume_buffer_overflows.inc();
        if let Member::Guest(i) = msg.member {
            if self
                .sessions
                .get(&msg.session_id)
                .is_some_and(|l| l.room.is_some())
            {
                self.guest_overflowed(msg.session_id, i as GuestId, ctx);
                return;
            }
        }
        let role = msg.member.role();
        warn!(session = %msg.session_id, role = role.as_str(), "resume buffer overflowed; ending side");
        // The absent side may be homed anywhere: end it unconditionally.
        let store = Arc::clone(&self.store);
        let id = msg.session_id;
        let sid = Arc::clone(&id);
        let end = async move { store.end_side(&sid, role, Holder::Any).await };
        ctx.spawn(end.into_actor(self).map(move |res, act, ctx| {
            act.side_ended(&id, role, EndReason::Timeout, ctx);
            if let Ok(EndOutcome::Ended(facts)) = res {
                let c = Control::Ended {
                    sid: id.to_string(),
                    role,
                    reason: EndReason::Timeout,
                };
                for n in [facts.peer_node, facts.node].into_iter().flatten() {
                    if *n != *act.node {
                        act.send(&n, c.clone(), ctx);
                    }
                }
                if role == Role::Browser && !facts.live {
                    act.expire_unjoinable(&id, ctx);
                }
            }
        }));
    }
}
