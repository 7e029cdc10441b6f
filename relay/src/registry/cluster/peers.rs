//! What other nodes tell this node's registry: a browser joined, a side went
//! away, moved, ended; a code expired; a node died or lost messages.

use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{Role, ServerMessage};
use tracing::{info, warn};

use super::requests::now_ms;
use super::{ClusterRegistry, FromPeerNode, Here, NodeDead, Resubscribed};
use crate::cluster::envelope::{Control, HeldFrame, Lane};
use crate::cluster::store::{Counter, ReclaimOutcome};
use crate::conns::ConnCommand;
use crate::pipe::Pipe;
use crate::queue::{EventEffect, Gap};
use crate::registry::SessionId;

impl Handler<FromPeerNode> for ClusterRegistry {
    type Result = ();

    fn handle(&mut self, FromPeerNode(c): FromPeerNode, ctx: &mut Context<Self>) {
        match c {
            Control::Joined { sid, node } => self.peer_joined(&sid, node),
            Control::Away { sid, role, node } => self.peer_away(&sid, role, node.as_deref()),
            Control::Moved {
                sid,
                role,
                node,
                p_last,
                was_away,
                request,
            } => self.side_moved(&sid, role, node, p_last, was_away, request, ctx),
            c @ Control::Handover { .. } => {
                if let Control::Handover { request, .. } = &c {
                    let request = *request;
                    self.handover(request, c);
                }
            }
            Control::Ended { sid, role, reason } => {
                self.side_ended(&Arc::from(sid.as_str()), role, reason, ctx)
            }
            Control::CodeExpired { sid, code } => {
                self.code_expired_here(&Arc::from(sid.as_str()), &code)
            }
            Control::Resend { sid, to, from } => {
                // The receiver's node saw a gap in what this node published.
                if let Some(p) = self.dir_get(&sid, to) {
                    p.resend_to_peer(from);
                }
            }
            Control::GuestResend { sid, lane, from } => {
                // A guest's node saw a gap in one room direction.
                if let Some(p) = self.dir.get(&sid, Lane::Guest(lane)) {
                    p.resend_to_peer(from);
                }
            }
            c @ (Control::GuestJoined { .. }
            | Control::Decide { .. }
            | Control::Decided { .. }
            | Control::GuestAway { .. }
            | Control::GuestEnded { .. }
            | Control::GuestMoved { .. }
            | Control::GuestHandover { .. }
            | Control::HostAt { .. }
            | Control::HostRebuild { .. }) => self.room_control(c, ctx),
            c @ (Control::HostHandover { .. } | Control::HostRebuilt { .. }) => {
                if let Control::HostHandover { request, .. }
                | Control::HostRebuilt { request, .. } = &c
                {
                    let request = *request;
                    self.handover(request, c);
                }
            }
            Control::Resync { node } => {
                let node: Arc<str> = Arc::from(node.as_str());
                for p in self.dir.all() {
                    if p.remote_node().as_deref() == Some(&*node) {
                        p.resend_to_peer(0);
                    }
                }
            }
        }
    }
}

impl ClusterRegistry {
    fn dir_get(&self, sid: &str, to: Role) -> Option<Arc<Pipe>> {
        self.sessions
            .get(&Arc::from(sid) as &SessionId)
            .and_then(|l| l.pipe(to).cloned())
    }

    /// On the mac's node: a browser joined the mac's session on `node`.
    fn peer_joined(&mut self, sid: &str, node: String) {
        let id: SessionId = Arc::from(sid);
        let node: Arc<str> = Arc::from(node.as_str());
        let Some(mut local) = self.sessions.remove(&id) else {
            return;
        };
        if local.side(Role::Mac).is_none() {
            self.sessions.insert(id, local);
            return;
        }
        let Some(to_b) = local.pipe(Role::Browser).cloned() else {
            self.sessions.insert(id, local);
            return;
        };
        let accepted = to_b.accepted();
        // The browser's frames to the mac: a new pairing, fed from its node.
        let to_m = local.pipe(Role::Mac).cloned();
        let Some(to_m) = to_m else {
            self.sessions.insert(id, local);
            return;
        };
        to_m.start_pairing_fed_from(self.peer(&id, Role::Mac, &node));
        // The mac's frames to the browser: published to its node, from 1.
        // Changed in place: the mac's socket holds this pipe.
        to_b.reset_receiver();
        let _ = to_b.send_to_peer(self.peer(&id, Role::Browser, &node), 0);
        local.set_side(Role::Browser, None);
        local.set_node(Role::Browser, Some(Arc::clone(&node)));
        local.tell(Role::Mac, &ServerMessage::PeerJoined, EventEffect::None);
        let counters = vec![
            (Counter::MacReceiveBase, to_m.base()),
            (Counter::MacSendBase, accepted),
        ];
        self.checkpoint(&id, counters);
        info!(session = %id, browser_node = %node, "browser joined on another node");
        self.sessions.insert(id, local);
    }

    /// On the node of a side's peer: that side went away from `from`.
    fn peer_away(&mut self, sid: &str, role: Role, from: Option<&str>) {
        let id: SessionId = Arc::from(sid);
        let Some(local) = self.sessions.get(&id) else {
            return;
        };
        if role == Role::Mac && local.room.is_some() && !local.hosts_room() {
            self.guests_hear_of_host(local, &ServerMessage::PeerDisconnected);
            return;
        }
        if local.side(role).is_some_and(|h| h.conn.is_some()) {
            // Stale news: the side is connected here (this node was taken for dead).
            return;
        }
        if let (Some(from), Some(now)) = (from, local.node_of(role)) {
            if **now != *from {
                // Stale news: the side resumed on another node, whose
                // `Moved` came first (the node it left published this
                // before, on another connection). Heeded, it would hold
                // the peer's frames away from the side's new node for good.
                info!(session = %id, role = role.as_str(), from, now = %now, "away news from a node the side already left; ignored");
                return;
            }
        }
        if let Some(p) = local.pipe(role) {
            p.peer_away();
        }
        local.tell(
            role.peer(),
            &ServerMessage::PeerDisconnected,
            EventEffect::None,
        );
    }

    /// On the side's old node and/or its peer's node: the side moved to `node`.
    #[allow(clippy::too_many_arguments)]
    fn side_moved(
        &mut self,
        sid: &str,
        role: Role,
        node: String,
        p_last: u64,
        was_away: bool,
        request: u64,
        ctx: &mut Context<Self>,
    ) {
        let id: SessionId = Arc::from(sid);
        let node: Arc<str> = Arc::from(node.as_str());
        let mut events = Vec::new();
        let mut received = None;
        let mut unacknowledged = Vec::new();
        let mut error = None;
        if role == Role::Mac
            && self
                .sessions
                .get(&id)
                .is_some_and(|l| l.room.is_some() && !l.hosts_room())
        {
            self.host_moved_news(&id, &node, was_away);
            return;
        }
        if role == Role::Mac
            && *node != *self.node
            && self.sessions.get(&id).is_some_and(|l| l.hosts_room())
        {
            // The room moves with its host.
            let reply = self.host_moved_away(&id, &node, p_last, request);
            self.send(&node, reply, ctx);
            return;
        }
        if let Some(mut local) = self.sessions.remove(&id) {
            let side_here = local.side(role).is_some();
            let peer_here = local.side(role.peer()).is_some();
            if side_here {
                if let Some(Here {
                    conn: Some((_, cmd)),
                }) = local.set_side(role, None)
                {
                    cmd.do_send(ConnCommand::Replaced);
                }
                if let Some(p) = local.pipe(role) {
                    events = p.take_events(p.base() + p_last);
                }
            }
            if peer_here {
                // Frames toward the side are replayed to its new node.
                if let Some(p) = local.pipe(role).cloned() {
                    if let Err(gap) = p.send_to_peer(self.peer(&id, role, &node), p_last) {
                        error = Some(replay_gap(gap, p_last));
                    }
                } else {
                    // The local side's resume makes that pipe when it is done:
                    // from this count, not from the checkpoint's.
                    local.peer_read = Some(p_last);
                }
                if let Some(p) = local.pipe(role.peer()) {
                    let (count, held) = p.fed_from(self.peer(&id, role.peer(), &node));
                    received = Some(count);
                    unacknowledged = held.iter().map(|(p, f)| HeldFrame::new(*p, f)).collect();
                }
                local.set_node(role, Some(Arc::clone(&node)));
                // A side whose frames cannot be replayed is refused: it is
                // not back (its new node tells of a takeover's old connection).
                if was_away && error.is_none() {
                    local.tell(role.peer(), &ServerMessage::PeerResumed, EventEffect::None);
                }
                self.sessions.insert(Arc::clone(&id), local);
            } else {
                // Nothing of the session stays here.
                self.sessions.insert(Arc::clone(&id), local);
                self.forget(&id);
            }
        }
        let reply = Control::Handover {
            sid: sid.to_owned(),
            role,
            received,
            events,
            unacknowledged,
            error,
            request,
        };
        self.send(&node, reply, ctx);
    }

    /// On the mac's node: its code expired with no browser; the session is over.
    pub(super) fn code_expired_here(&mut self, id: &SessionId, code: &str) {
        let Some(local) = self.sessions.get(id) else {
            return;
        };
        local.tell(
            Role::Mac,
            &ServerMessage::CodeExpired {
                code: code.to_owned(),
            },
            EventEffect::Detach,
        );
        if local.side(Role::Mac).is_some() {
            self.metrics.sessions_live.dec();
        }
        self.forget(id);
    }
}

impl Handler<NodeDead> for ClusterRegistry {
    type Result = ();

    fn handle(&mut self, NodeDead(dead): NodeDead, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let deadline = now_ms() + self.settings.grace.as_millis() as u64;
        let node = dead.clone();
        let reap = async move { store.dead_node(&node, deadline).await };
        ctx.spawn(reap.into_actor(self).map(move |res, act, ctx| {
            let Ok(sides) = res else { return };
            if sides.is_empty() {
                return; // another node cleaned up, or nothing was there
            }
            act.metrics.nodes_reaped.inc();
            warn!(node = %dead, sides = sides.len(), "node died; its sides are away");
            for side in sides {
                let Some(peer_node) = side.peer_node else {
                    continue;
                };
                if let Some(guest) = side.guest {
                    // A room guest: its host's node hears it as a guest's.
                    let sid = side.sid.to_string();
                    let c = if side.gone {
                        Control::GuestEnded {
                            sid,
                            guest,
                            reason: relay_protocol::GuestLeftReason::Closed,
                        }
                    } else {
                        Control::GuestAway { sid, guest }
                    };
                    act.send(&peer_node, c, ctx);
                    continue;
                }
                let c = Control::Away {
                    sid: side.sid.to_string(),
                    role: side.role,
                    node: Some(dead.to_string()),
                };
                act.send(&peer_node, c, ctx);
            }
        }));
    }
}

impl Handler<Resubscribed> for ClusterRegistry {
    type Result = ();

    fn handle(&mut self, _: Resubscribed, ctx: &mut Context<Self>) {
        // Messages published to us while we were not listening are lost: ask
        // every node to send again what it holds for us.
        let store = Arc::clone(&self.store);
        let bus = Arc::clone(&self.bus);
        let me = Arc::clone(&self.node);
        let ask = async move {
            let nodes = store.nodes().await.unwrap_or_default();
            for n in nodes {
                if n != me {
                    bus.link(&n).control(Control::Resync {
                        node: me.to_string(),
                    });
                }
            }
        };
        ctx.spawn(ask.into_actor(self));
    }
}

impl Handler<super::Reclaim> for ClusterRegistry {
    type Result = ();

    /// Other nodes took this one for dead and marked its sides away: claim
    /// every connected side back, and have each peer's node point its pipe
    /// here again (a resume the node makes on its clients' behalf).
    fn handle(&mut self, _: super::Reclaim, ctx: &mut Context<Self>) {
        let mut sides = Vec::new();
        for (id, local) in &self.sessions {
            for role in [Role::Mac, Role::Browser] {
                if let Some(Here { conn: Some((c, _)) }) = local.side(role) {
                    let p_last = local.pipe(role).map_or(0, |p| p.pairing_count());
                    sides.push((Arc::clone(id), role, *c, p_last));
                }
            }
        }
        for (id, role, conn, p_last) in sides {
            let store = Arc::clone(&self.store);
            let sid = Arc::clone(&id);
            let claim = async move { store.reclaim(&sid, role, conn).await };
            ctx.spawn(claim.into_actor(self).map(move |res, act, ctx| {
                let Ok(outcome) = res else { return };
                let ReclaimOutcome::Reclaimed { peer_node } = outcome else {
                    warn!(session = %id, role = role.as_str(), status = outcome.as_str(), "could not reclaim a side");
                    return;
                };
                let Some(peer_node) = peer_node.filter(|n| **n != *act.node) else {
                    return;
                };
                let c = Control::Moved {
                    sid: id.to_string(),
                    role,
                    node: act.node.to_string(),
                    p_last,
                    was_away: true,
                    // No resume waits for this answer.
                    request: 0,
                };
                act.send(&peer_node, c, ctx);
            }));
        }
    }
}

impl Handler<crate::registry::Stats> for ClusterRegistry {
    type Result = MessageResult<crate::registry::Stats>;

    fn handle(&mut self, _: crate::registry::Stats, _: &mut Context<Self>) -> Self::Result {
        let mut st = crate::registry::SessionStats::default();
        for local in self.sessions.values() {
            if local.room.is_some() {
                // Rooms count on their host's node.
                if local.hosts_room() {
                    local.room_stats(&mut st);
                }
                continue;
            }
            // Sessions count on their mac's node.
            if let Some(mac) = local.side(Role::Mac) {
                let browser = local.side(Role::Browser);
                let browser_node = local.node_of(Role::Browser);
                let browser_gone = browser.is_none() && browser_node.is_none();
                let browser_away = match (browser, local.pipe(Role::Browser)) {
                    (Some(b), _) => b.conn.is_none(),
                    (None, Some(p)) => browser_node.is_some() && p.remote_node().is_none(),
                    _ => false,
                };
                if browser_gone {
                    st.waiting += 1;
                } else if mac.conn.is_none() || browser_away {
                    st.away += 1;
                } else {
                    st.paired += 1;
                }
            }
        }
        for p in self.dir.all() {
            st.buffered_frames += p.held_entries() as i64;
            st.buffered_bytes += p.held_bytes() as i64;
        }
        MessageResult(st)
    }
}

/// Why the frames toward a side that moved cannot be replayed, for its
/// client (counted within the pairing, as the nodes count them).
fn replay_gap(gap: Gap, p_last: u64) -> String {
    match gap {
        Gap::Ahead { sent } => {
            format!("it claims more frames than the {sent} of this pairing sent to it")
        }
        Gap::Behind { oldest } => format!(
            "frames after {p_last} of this pairing are no longer held (the oldest held is {oldest})"
        ),
        Gap::Closed => "the session is over".to_owned(),
    }
}
