//! A room host's `admit`, `deny` and `remove` in a cluster: the script
//! decides (atomic cluster-wide), then the guest's node is told (this node
//! itself, or its node with `Decide`), and the host's socket reads on only
//! once that node confirmed: no frame it sends after a `remove` reaches the
//! removed guest, and none after an `admit` overtakes the guest's `joined`.
//! A node that does not confirm within `HANDOVER_WAIT` is asked again
//! while the host reads on (`confirm`); a waiting guest's node takes no
//! frame of the room for it before the admission reaches it
//! (`decide_here`), so a guest never hears a room it is not in.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use relay_protocol::{ErrorCode, GuestId, GuestLeftReason, ServerMessage};
use tracing::{info, warn};

use super::super::{ClusterRegistry, HANDOVER_WAIT};
use super::confirm::DECIDE_TRIES;
use super::{lane, tag, unpaced};
use crate::cluster::envelope::{Control, Verdict};
use crate::cluster::store::{Decision, GuestAnswer};
use crate::conns::ConnCommand;
use crate::pipe::Pipe;
use crate::queue::EventEffect;
use crate::registry::{Host, Refusal, RoomOp, SessionId};

/// Why a socket that holds no room here may not act on guests.
const NOT_A_HOST: &str = "admit, deny and remove are for a room host (register with maxGuests).";

type Answer = ResponseActFuture<ClusterRegistry, Result<(), Refusal>>;

fn ready(r: Result<(), Refusal>) -> Answer {
    Box::pin(fut::ready(r))
}

fn unknown(guest_id: GuestId, what: &str) -> Refusal {
    Refusal::with(
        ErrorCode::UnknownGuest,
        format!("No guest {guest_id} is {what}; it may have left or been answered already."),
    )
}

impl Handler<Host> for ClusterRegistry {
    type Result = ResponseActFuture<Self, Result<(), Refusal>>;

    fn handle(&mut self, msg: Host, _: &mut Context<Self>) -> Self::Result {
        let Host {
            session_id,
            conn,
            op,
            guest_id,
        } = msg;
        let is_host = self.sessions.get(&session_id).is_some_and(|l| {
            l.hosts_room()
                && l.host
                    .here
                    .as_ref()
                    .and_then(|h| h.conn.as_ref())
                    .is_some_and(|(c, _)| *c == conn)
        });
        if !is_host {
            return Box::pin(fut::ready(Err(Refusal::with(
                ErrorCode::InvalidMessage,
                NOT_A_HOST,
            ))));
        }
        let store = Arc::clone(&self.store);
        let sid = Arc::clone(&session_id);
        let decide = async move {
            match op {
                RoomOp::Admit => store.decide(&sid, guest_id, Decision::Admit).await,
                RoomOp::Deny => store.decide(&sid, guest_id, Decision::Deny).await,
                RoomOp::Remove => store.remove(&sid, guest_id).await,
            }
        };
        Box::pin(
            decide
                .into_actor(self)
                .then(move |res, act, ctx| {
                    let answer = match res {
                        Ok(GuestAnswer::Done(at, _)) => at,
                        Ok(GuestAnswer::Unknown) => {
                            let what = match op {
                                RoomOp::Remove => "in the room",
                                _ => "waiting to be let in",
                            };
                            return ready(Err(unknown(guest_id, what)));
                        }
                        Err(e) => {
                            warn!(session = %session_id, error = %e, "Redis command failed");
                            return ready(Err(ErrorCode::Unavailable.into()));
                        }
                    };
                    let verdict = match op {
                        RoomOp::Admit => Verdict::Admit,
                        RoomOp::Deny => Verdict::Deny,
                        RoomOp::Remove => Verdict::Remove,
                    };
                    act.count_decision(verdict, &session_id, guest_id);
                    let node = answer.node.filter(|n| **n != *act.node);
                    let Some(node) = node else {
                        // The guest is here (or nowhere): decided at once.
                        act.decide_here(&session_id, guest_id, verdict);
                        act.decided_at_host(&session_id, guest_id, verdict, None);
                        return ready(Ok(()));
                    };
                    let (request, rx) = act.tell_decision(&session_id, guest_id, verdict, &node, ctx);
                    let wait = async move { tokio::time::timeout(HANDOVER_WAIT, rx).await };
                    Box::pin(wait.into_actor(act).map(move |res, act, ctx| {
                        // Not confirmed: its entry is still there (a late
                        // `Decided` removes it).
                        let unconfirmed =
                            !matches!(res, Ok(Ok(_))) && act.deciding.contains_key(&request);
                        if unconfirmed {
                            // Decided in Redis all the same, so the host
                            // reads on as if confirmed: its frames for an
                            // admitted guest are held here until the
                            // guest's node, asked again, takes them after
                            // `joined` (docs/protocol-notes.md, Rooms).
                            warn!(session = %session_id, guest_id, node = %node, "the guest's node did not confirm in time; asking again");
                            act.ask_again(session_id.clone(), guest_id, verdict, node.clone(), request, DECIDE_TRIES, ctx);
                        }
                        act.decided_at_host(&session_id, guest_id, verdict, Some(node));
                        if unconfirmed && verdict == Verdict::Admit {
                            act.hold_unconfirmed(&session_id, guest_id);
                        }
                        Ok(())
                    }))
                }),
        )
    }
}

impl ClusterRegistry {
    /// On the host's node: guest `guest` waits for the host. If it still
    /// does after `RELAY_ADMIT_TIMEOUT`, it is denied (its node says
    /// `DENIED`, the host hears `guest_left` with `timeout`), as on one node.
    pub(in crate::registry::cluster) fn arm_admit_timeout(
        &self,
        sid: &SessionId,
        guest: GuestId,
        ctx: &mut Context<Self>,
    ) {
        let sid = Arc::clone(sid);
        ctx.run_later(self.settings.admit_timeout, move |act, ctx| {
            act.admit_timed_out(sid, guest, ctx);
        });
    }

    fn admit_timed_out(&mut self, sid: SessionId, guest: GuestId, ctx: &mut Context<Self>) {
        let waiting = self
            .sessions
            .get(&sid)
            .filter(|l| l.hosts_room())
            .and_then(|l| l.room())
            .and_then(|r| r.guests.get(&guest))
            .is_some_and(|g| !g.admitted);
        if !waiting {
            return;
        }
        let store = Arc::clone(&self.store);
        let id = Arc::clone(&sid);
        let deny = async move { store.decide(&id, guest, Decision::Deny).await };
        ctx.spawn(deny.into_actor(self).map(move |res, act, ctx| {
            // Answered (or gone) meanwhile: nothing to do.
            let Ok(GuestAnswer::Done(at, _)) = res else {
                return;
            };
            act.metrics
                .room_decisions
                .with_label_values(&["timeout"])
                .inc();
            info!(session = %sid, guest, "host did not answer a join in time");
            match at.node.filter(|n| **n != *act.node) {
                Some(node) => {
                    // No host waits for the answer, but the guest must
                    // hear it: asked again until its node confirms.
                    let (request, _) = act.tell_decision(&sid, guest, Verdict::Deny, &node, ctx);
                    act.ask_again(
                        Arc::clone(&sid),
                        guest,
                        Verdict::Deny,
                        node,
                        request,
                        DECIDE_TRIES,
                        ctx,
                    );
                }
                None => {
                    act.decide_here(&sid, guest, Verdict::Deny);
                }
            }
            act.guest_gone_at_host(&sid, guest, GuestLeftReason::Timeout);
        }));
    }

    fn count_decision(&self, verdict: Verdict, sid: &SessionId, guest_id: GuestId) {
        let label = match verdict {
            Verdict::Admit => "admitted",
            Verdict::Deny => "denied",
            Verdict::Remove => "removed",
        };
        self.metrics
            .room_decisions
            .with_label_values(&[label])
            .inc();
        info!(session = %sid, guest_id, decision = label, "host decided");
    }

    /// On a guest's node (host's node included): the host decided about
    /// guest `guest`, homed here. An admitted guest gets `joined` with its
    /// token (through its pipe, before anything the host sends it) and its
    /// frames go through; a denied or removed one is cut at once. Returns
    /// whether the guest was here.
    pub(in crate::registry::cluster) fn decide_here(
        &mut self,
        sid: &SessionId,
        guest: GuestId,
        verdict: Verdict,
    ) -> bool {
        let Some(local) = self.sessions.get_mut(sid) else {
            return false;
        };
        let here = local
            .room()
            .and_then(|r| r.guests.get(&guest))
            .is_some_and(|g| g.here.is_some());
        if !here {
            return false;
        }
        match verdict {
            Verdict::Admit => {
                let id = Arc::clone(&local.id);
                let host_node = local.node_of(relay_protocol::Role::Mac).cloned();
                let Some(g) = local.room_mut().and_then(|r| r.guests.get_mut(&guest)) else {
                    return false;
                };
                if g.admitted {
                    // The host's node asked again (our answer was late or
                    // lost): it has its `joined` already.
                    return true;
                }
                let token = g.token.take().unwrap_or_default();
                g.admitted = true;
                let joined = ServerMessage::Joined {
                    session_id: id.to_string(),
                    resume_token: token,
                    guest_id: Some(guest),
                };
                if let Some(p) = &g.to_guest {
                    p.push_event(ByteString::from(joined.to_text()), EventEffect::None);
                }
                if let Some(o) = &g.out {
                    o.admit();
                }
                if let (Some(p), Some(node), true) = (&g.to_guest, host_node, g.out_pipe.is_some())
                {
                    // The host elsewhere: its frames reach this guest from
                    // now on, after `joined`. Those its node published
                    // before (it goes ahead when this answer is slow or
                    // lost) were dropped here; it holds them until we
                    // acknowledge, so ask for them from the first.
                    self.dir.set(&id, lane(guest, false), Some(p));
                    self.bus.link(&node).control(Control::GuestResend {
                        sid: id.to_string(),
                        lane: crate::cluster::envelope::GuestLane {
                            guest,
                            to_host: false,
                        },
                        from: 1,
                    });
                }
            }
            Verdict::Deny | Verdict::Remove => {
                let code = if verdict == Verdict::Deny {
                    ErrorCode::Denied
                } else {
                    ErrorCode::Removed
                };
                // Not the host's guest list: the host's side of it follows.
                let g = local.room_mut().and_then(|r| r.guests.get_mut(&guest));
                if let Some((_, commands)) = g.and_then(|g| g.here.take()).and_then(|h| h.conn) {
                    commands.do_send(ConnCommand::Ended(code));
                }
                if !local.hosts_room() {
                    local.drop_guest(&self.dir, guest);
                    self.forget_if_empty(sid);
                }
            }
        }
        true
    }

    /// On the host's node, once guest `guest`'s node (`node`, `None` for
    /// this one) acted on the host's decision: the host's side of it.
    fn decided_at_host(
        &mut self,
        sid: &SessionId,
        guest: GuestId,
        verdict: Verdict,
        node: Option<Arc<str>>,
    ) {
        match verdict {
            Verdict::Admit => {
                if let Some(node) = node {
                    self.start_remote_guest(sid, guest, &node);
                } else if let Some(local) = self.sessions.get(sid) {
                    let g = local.room().and_then(|r| r.guests.get(&guest));
                    let (Some(f), Some(p)) = (
                        local.room().and_then(|r| r.fanout.clone()),
                        g.and_then(|g| g.to_guest.clone()),
                    ) else {
                        return;
                    };
                    f.add(guest, guest as usize, p);
                }
                if let Some(local) = self.sessions.get_mut(sid) {
                    if let Some(g) = local.room_mut().and_then(|r| r.guests.get_mut(&guest)) {
                        g.admitted = true;
                    }
                    local.tell_host(&ServerMessage::GuestAdmitted { guest_id: guest });
                }
            }
            Verdict::Deny | Verdict::Remove => {
                let reason = if verdict == Verdict::Deny {
                    GuestLeftReason::Denied
                } else {
                    GuestLeftReason::Removed
                };
                self.guest_gone_at_host(sid, guest, reason);
            }
        }
    }

    /// On the host's node: guest `guest` is gone for good; the host hears
    /// `guest_left` with `reason`.
    pub(in crate::registry::cluster) fn guest_gone_at_host(
        &mut self,
        sid: &SessionId,
        guest: GuestId,
        reason: GuestLeftReason,
    ) {
        let Some(local) = self.sessions.get_mut(sid) else {
            return;
        };
        if !local.hosts_room() {
            return;
        }
        if local.drop_guest(&self.dir, guest).is_some() {
            local.tell_host(&ServerMessage::GuestLeft {
                guest_id: guest,
                reason,
            });
            info!(session = %sid, guest, ?reason, "guest left");
        }
    }

    /// On the host's node: guest `guest`, on `node`, is in: the host's
    /// frames go to its node by its lane, and its frames come in from there.
    pub(in crate::registry::cluster) fn start_remote_guest(
        &mut self,
        sid: &SessionId,
        guest: GuestId,
        node: &Arc<str>,
    ) {
        let limits = unpaced(self.settings.limits);
        let to_guest =
            Pipe::sending_to_peer(limits, self.guest_peer(sid, guest, false, node), 0, 0);
        let from_guest = self.guest_peer(sid, guest, true, node);
        let Some(local) = self.sessions.get_mut(sid) else {
            return;
        };
        let (Some(to_host), Some(t)) = (local.host.to.clone(), tag(guest)) else {
            return;
        };
        let Some(room) = local.room_mut() else { return };
        let Some(g) = room.guests.get_mut(&guest) else {
            return;
        };
        g.to_guest = Some(Arc::clone(&to_guest));
        g.admitted = true;
        if let Some(f) = &room.fanout {
            f.add(guest, guest as usize, Arc::clone(&to_guest));
        }
        self.dir.set(sid, lane(guest, false), Some(&to_guest));
        to_host.feed_guest(t, 0, from_guest.clone());
        // Frames the guest sent before this feed existed were dropped here
        // (an auto room's guest may send at once): its node holds them all
        // until acknowledged, so ask for them from the first.
        self.bus.link(node).control(Control::GuestResend {
            sid: sid.to_string(),
            lane: crate::cluster::envelope::GuestLane {
                guest,
                to_host: true,
            },
            from: 1,
        });
    }
}
