//! What the nodes of a room tell each other about its guests: a guest
//! joined, the host decided, a guest went away or ended.

use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{GuestId, GuestLeftReason, ServerMessage};
use tracing::{debug, info};

use super::super::ClusterRegistry;
use super::super::Here;
use super::{Guest, tag};
use crate::cluster::envelope::HeldFrame;
use crate::cluster::envelope::{Control, Verdict};
use crate::conns::ConnCommand;
use crate::registry::SessionId;

impl ClusterRegistry {
    /// A room's control message from another node (or this one).
    pub(in crate::registry::cluster) fn room_control(
        &mut self,
        c: Control,
        ctx: &mut Context<Self>,
    ) {
        match c {
            Control::GuestJoined {
                sid,
                guest,
                node,
                name,
                admitted,
            } => {
                let id: SessionId = Arc::from(sid.as_str());
                self.remote_guest_joined(&id, guest, &node, name, admitted);
                if !admitted && self.sessions.get(&id).is_some_and(|l| l.hosts_room()) {
                    self.arm_admit_timeout(&id, guest, ctx);
                }
            }
            Control::Decide {
                sid,
                guest,
                verdict,
                request,
            } => {
                let id: SessionId = Arc::from(sid.as_str());
                let done = self.decide_here(&id, guest, verdict);
                if let Some(host_node) = self
                    .sessions
                    .get(&id)
                    .and_then(|l| l.node_of(relay_protocol::Role::Mac))
                    .cloned()
                {
                    let c = Control::Decided {
                        sid,
                        guest,
                        done,
                        request,
                    };
                    self.send(&host_node, c, ctx);
                } else if verdict != Verdict::Admit || !done {
                    debug!(session = %id, guest, "decision for a guest not held here");
                }
            }
            Control::Decided {
                sid,
                guest,
                request,
                ..
            } => {
                if let Some(tx) = self.deciding.remove(&request) {
                    if tx.send(()).is_err() {
                        // Nobody waits any more: the host's node went on.
                        self.confirmed_late(&Arc::from(sid.as_str()), guest);
                    }
                }
            }
            Control::GuestAway { sid, guest } => {
                let id: SessionId = Arc::from(sid.as_str());
                if let Some(g) = self
                    .sessions
                    .get_mut(&id)
                    .and_then(|l| l.room_mut())
                    .and_then(|r| r.guests.get_mut(&guest))
                {
                    g.away = true;
                }
                if let Some(local) = self.sessions.get(&id) {
                    let g = local.room().and_then(|r| r.guests.get(&guest));
                    if let Some(p) = g.and_then(|g| g.to_guest.as_ref()) {
                        p.peer_away();
                    }
                    if g.is_some_and(|g| g.admitted) {
                        local.tell_host(&ServerMessage::GuestAway { guest_id: guest });
                    }
                }
            }
            Control::GuestEnded { sid, guest, reason } => {
                let id: SessionId = Arc::from(sid.as_str());
                if self.sessions.get(&id).is_some_and(|l| l.hosts_room()) {
                    self.guest_gone_at_host(&id, guest, reason);
                } else if let Some(local) = self.sessions.get_mut(&id) {
                    // Its grace period passed (nothing of it stays here), or
                    // the host's node gave up on confirming its admission:
                    // a guest still waiting here never got in, and is cut
                    // as a host that never answers cuts it.
                    if let Some(g) = local.room_mut().and_then(|r| r.guests.get_mut(&guest)) {
                        if !g.admitted {
                            if let Some((_, c)) = g.here.take().and_then(|h| h.conn) {
                                c.do_send(ConnCommand::Ended(relay_protocol::ErrorCode::Denied));
                            }
                        }
                    }
                    local.drop_guest(&self.dir, guest);
                    self.forget_if_empty(&id);
                }
            }
            Control::GuestMoved {
                sid,
                guest,
                node,
                p_last,
                was_away,
                request,
            } => {
                let id: SessionId = Arc::from(sid.as_str());
                let node: Arc<str> = Arc::from(node.as_str());
                let reply = self.guest_moved(&id, guest, &node, p_last, was_away, request);
                self.send(&node, reply, ctx);
            }
            c @ Control::GuestHandover { .. } => {
                if let Control::GuestHandover { request, .. } = &c {
                    let request = *request;
                    self.handover(request, c);
                }
            }
            Control::HostAt {
                sid,
                node,
                guests,
                was_away,
            } => self.host_now_at(
                &Arc::from(sid.as_str()),
                &Arc::from(node.as_str()),
                &guests,
                was_away,
            ),
            Control::HostRebuild {
                sid,
                node,
                guests,
                request,
            } => {
                let node: Arc<str> = Arc::from(node.as_str());
                let reply = self.host_rebuilt_at(&Arc::from(sid.as_str()), &node, &guests, request);
                self.send(&node, reply, ctx);
            }
            other => debug!(?other, "not a room's message"),
        }
    }

    /// On the host's node: guest `guest` joined on `node`.
    fn remote_guest_joined(
        &mut self,
        sid: &SessionId,
        guest: GuestId,
        node: &str,
        name: Option<String>,
        admitted: bool,
    ) {
        let node: Arc<str> = Arc::from(node);
        let Some(local) = self.sessions.get_mut(sid) else {
            return;
        };
        if !local.hosts_room() {
            return;
        }
        let Some(room) = local.room_mut() else { return };
        room.guests.insert(
            guest,
            Guest {
                node: Arc::clone(&node),
                here: None,
                to_guest: None,
                out: None,
                out_pipe: None,
                token: None,
                admitted: false,
                away: false,
            },
        );
        local.tell_host(&ServerMessage::GuestJoined {
            guest_id: guest,
            name,
        });
        if admitted {
            self.start_remote_guest(sid, guest, &node);
            if let Some(local) = self.sessions.get(sid) {
                local.tell_host(&ServerMessage::GuestAdmitted { guest_id: guest });
            }
            self.metrics
                .room_decisions
                .with_label_values(&["auto"])
                .inc();
        }
        info!(session = %sid, guest, guest_node = %node, "guest joined on another node");
    }

    /// Guest `guest` resumed on `node`, having `p_last` frames of its
    /// direction. On the host's node: its direction goes there (replayed
    /// after `p_last`), its frames come from there, and the host hears
    /// `guest_back` if it was away; on its old node: the old connection
    /// is replaced and what waited for it goes along. Returns the answer.
    fn guest_moved(
        &mut self,
        id: &SessionId,
        guest: GuestId,
        node: &Arc<str>,
        p_last: u64,
        was_away: bool,
        request: u64,
    ) -> Control {
        let mut received = None;
        let mut events = Vec::new();
        let mut unacknowledged = Vec::new();
        let mut error = None;
        let to_guest_peer = self.guest_peer(id, guest, false, node);
        let from_guest_peer = self.guest_peer(id, guest, true, node);
        let hosts = self.sessions.get(id).is_some_and(|l| l.hosts_room());
        // The host resumed here and its room is not built yet (a rebuild
        // or a move waits for other nodes): what this node would hand over
        // is not known yet, so the guest comes again.
        let not_yet = !hosts && self.sessions.get(id).is_some_and(|l| l.host.here.is_some());
        let mut drop_here = false;
        let mut came_back = was_away;
        if let Some(local) = self.sessions.get_mut(id) {
            let to_host = local.host.to.clone();
            match local.room_mut().and_then(|r| r.guests.get_mut(&guest)) {
                None if hosts => error = Some("the guest is not in the room".to_owned()),
                None => {}
                Some(g) => {
                    if let Some(Here {
                        conn: Some((_, cmd)),
                    }) = g.here.take()
                    {
                        cmd.do_send(ConnCommand::Replaced);
                    }
                    if let Some(p) = &g.to_guest {
                        if g.out.is_some() {
                            // It was homed here.
                            events = p.take_events(p_last);
                        }
                    }
                    if hosts {
                        if let Some(p) = &g.to_guest {
                            if let Err(gap) = p.send_to_peer(to_guest_peer, p_last) {
                                error = Some(format!("its frames cannot be replayed ({gap:?})"));
                            }
                        }
                        if let (Some(to_host), Some(t)) = (to_host, tag(guest)) {
                            match g.out.take() {
                                // It leaves the host's node: its frames come
                                // from its new node, after those taken here.
                                Some(out) => {
                                    // Its old socket, replaced, pushes no more.
                                    let have = crate::outbound::Outbound::Guest(out)
                                        .fence(crate::conns::ConnId::next());
                                    to_host.feed_guest(t, have, from_guest_peer);
                                    received = Some(have);
                                }
                                None => {
                                    if let Some((have, unread)) =
                                        to_host.guest_fed_from(t, from_guest_peer)
                                    {
                                        received = Some(have);
                                        unacknowledged = unread
                                            .iter()
                                            .map(|(p, f)| HeldFrame::new(*p, f))
                                            .collect();
                                    }
                                }
                            }
                        }
                        came_back |= g.away;
                        g.node = Arc::clone(node);
                        g.away = false;
                    } else {
                        drop_here = true;
                    }
                }
            }
            if hosts && came_back && error.is_none() {
                local.tell_host(&ServerMessage::GuestBack { guest_id: guest });
            }
            if drop_here {
                local.drop_guest(&self.dir, guest);
            }
        }
        if drop_here {
            self.forget_if_empty(id);
        }
        info!(session = %id, guest, node = %node, "guest moved");
        Control::GuestHandover {
            sid: id.to_string(),
            guest,
            received,
            events,
            unacknowledged,
            error,
            not_yet,
            request,
        }
    }

    /// On a guest's node: guest `guest`, homed here, ended for good
    /// (`reason`): drops it here and tells the host (here, or its node).
    pub(in crate::registry::cluster) fn guest_ended_here(
        &mut self,
        sid: &SessionId,
        guest: GuestId,
        reason: GuestLeftReason,
        ctx: &mut Context<Self>,
    ) {
        let Some(local) = self.sessions.get_mut(sid) else {
            return;
        };
        if local.hosts_room() {
            self.guest_gone_at_host(sid, guest, reason);
            return;
        }
        local.drop_guest(&self.dir, guest);
        let host_node = local.node_of(relay_protocol::Role::Mac).cloned();
        self.forget_if_empty(sid);
        if let Some(n) = host_node {
            let c = Control::GuestEnded {
                sid: sid.to_string(),
                guest,
                reason,
            };
            self.send(&n, c, ctx);
        }
    }
}
