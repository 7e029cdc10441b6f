//! A room whose host's node died, rebuilt where the host resumed
//! (docs/design.md, "Rooms across nodes", "A room whose host's node
//! died"). The host's new
//! node asks each node holding guests where they stand (`HostRebuild`,
//! answered with `HostRebuilt`: what the node took of the host's frames,
//! the host's number of the last of them, and where the guest's frames to
//! the host start: after the host's own count, `guestSeqs`, when it sent
//! one), builds the room from the answers, and then tells those nodes to
//! send there (`HostAt`, as when a room moves with its host): so no frame
//! reaches the new node before the room it goes into.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{ErrorCode, GuestId, GuestLeftReason, Role, ServerMessage};
use tracing::{info, warn};

use super::super::{ClusterRegistry, HANDOVER_WAIT};
use super::{Guest, GuestCounts, RoomHere, lane, push_by_node, tag, unpaced};
use crate::cluster::envelope::{Control, EndReason, HeldFrame, RebuiltGuest};
use crate::cluster::store::{ResumeFacts, SideEnd};
use crate::conns::ConnCommand;
use crate::frame::Frame;
use crate::outbound::{Outbound, Room};
use crate::pipe::Pipe;
use crate::registry::{Refusal, Resume, Resumed, SessionId};

impl ClusterRegistry {
    /// On a node holding guests of room `id`: its host's node died and the
    /// host resumed on `node`. Answers where each named guest held here
    /// stands; `HostAt` follows once the room is built there.
    pub(in crate::registry::cluster) fn host_rebuilt_at(
        &mut self,
        id: &SessionId,
        node: &Arc<str>,
        guests: &[(GuestId, Option<u64>)],
        request: u64,
    ) -> Control {
        let mut answer = Vec::new();
        if let Some(local) = self.sessions.get_mut(id) {
            local.set_node(Role::Mac, Some(Arc::clone(node)));
            for &(g, from) in guests {
                let Some(guest) = local.room_mut().and_then(|r| r.guests.get_mut(&g)) else {
                    continue;
                };
                let (Some(out), Some(fed)) = (&guest.out_pipe, &guest.to_guest) else {
                    // Its resume here is under way, toward the dead node:
                    // closed to resume again, it finds the host's new node
                    // (the new node holds it as away meanwhile). Its way
                    // from the dead node goes, so the resume under way is
                    // refused rather than made toward it (`host_left_it`).
                    if let Some((_, cmd)) = guest.here.as_ref().and_then(|h| h.conn.as_ref()) {
                        cmd.do_send(ConnCommand::Drain);
                    }
                    if guest.to_guest.take().is_some() {
                        self.dir.set(id, lane(g, false), None);
                    }
                    continue;
                };
                let from = out.rebuilt_host_start(from);
                let (host_at, _) = fed.host_at();
                let (took, held) = fed.sent_and_held();
                answer.push(RebuiltGuest {
                    id: g,
                    took,
                    host_at,
                    from,
                    held: held.iter().map(|(p, f)| HeldFrame::new(*p, f)).collect(),
                });
            }
        }
        info!(session = %id, node = %node, guests = answer.len(), "room host's node died; told its new node where its guests here stand");
        Control::HostRebuilt {
            sid: id.to_string(),
            node: self.node.to_string(),
            guests: answer,
            request,
        }
    }
}

/// The host's `guestSeqs` if it can be gone by (adding up to its
/// `lastSeq`), empty otherwise. It may name guests the room no longer
/// holds (the Rust client counts gone ones too, so its values add up):
/// only the counts of the guests rebuilt are read.
fn guest_seqs(msg: &Resume) -> relay_protocol::GuestSeqs {
    msg.sound_guest_seqs().cloned().unwrap_or_default()
}

/// The guests a node is asked about, each with the host's count of its frames.
type Asks = Vec<(GuestId, Option<u64>)>;

/// Where one guest's directions stand as the room is rebuilt.
struct Standing {
    /// Frames of the host's direction its node took (0 when unknown).
    took: u64,
    /// The host's number of the last of them (0: unknown).
    host_at: u64,
    /// Frames of it the host has, or will get from its node after this.
    have: u64,
    /// Frames its node took and it has not acknowledged.
    held: Vec<HeldFrame>,
    /// Its count of the host's direction died with a node: numbered when it
    /// comes back.
    lost: bool,
}

impl ClusterRegistry {
    /// On the host's new node: the host resumed here after the node that
    /// held its room died. Asks every other live node holding guests where
    /// they stand (`HostRebuild`), for at most the handover wait, then
    /// builds the room here from the answers (`rebuilt`).
    pub(in crate::registry::cluster) fn rebuild_room(
        &mut self,
        msg: Resume,
        facts: ResumeFacts,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Resumed, Refusal>> {
        let id: SessionId = Arc::from(msg.session_id.as_str());
        let seqs = guest_seqs(&msg);
        let mut ask: Vec<(Arc<str>, Asks)> = Vec::new();
        for g in &facts.guests {
            let Some(node) = &g.node else { continue };
            if facts.old_node.as_ref() == Some(node) || *node == self.node {
                continue;
            }
            let i = match ask.iter().position(|(n, _)| n == node) {
                Some(i) => i,
                None => {
                    ask.push((Arc::clone(node), Vec::new()));
                    ask.len() - 1
                }
            };
            // A waiting guest's node is asked too, so it answers the host's
            // decisions here; it has nothing to send yet.
            if !g.waiting {
                ask[i].1.push((g.id, seqs.get(&g.id).copied()));
            }
        }
        let (request, rx) = self.open_pending(ask.len());
        for (node, guests) in ask {
            let c = Control::HostRebuild {
                sid: id.to_string(),
                node: self.node.to_string(),
                guests,
                request,
            };
            self.send(&node, c, ctx);
        }
        let until = msg.deadline.bound(HANDOVER_WAIT);
        let wait = async move { tokio::time::timeout_at(until, rx).await };
        Box::pin(wait.into_actor(self).map(move |replies, act, ctx| {
            let partial = act
                .pending
                .remove(&request)
                .map(|p| p.replies)
                .unwrap_or_default();
            let replies = match replies {
                Ok(Ok(r)) => r,
                _ => {
                    warn!(session = %id, "not every node holding guests answered the rebuild in time; their guests resume as the dead node's do");
                    partial
                }
            };
            act.rebuilt(&msg, &facts, replies, ctx)
        }))
    }

    /// The answers are in (or the wait is over): builds the room here and
    /// attaches the host. See docs/design.md, "Rooms across nodes".
    fn rebuilt(
        &mut self,
        msg: &Resume,
        facts: &ResumeFacts,
        replies: Vec<Control>,
        ctx: &mut Context<Self>,
    ) -> Result<Resumed, Refusal> {
        let id: SessionId = Arc::from(msg.session_id.as_str());
        if let Err(r) = msg.deadline.check("resume") {
            self.abandon_resume(&id, Role::Mac, msg.client.conn, facts, ctx);
            return Err(r);
        }
        let ours = self.sessions.get(&id).is_some_and(|l| {
            l.host
                .here
                .as_ref()
                .and_then(|h| h.conn.as_ref())
                .map(|c| c.0)
                == Some(msg.client.conn)
        });
        if !ours {
            // Something ended or replaced the host while the nodes answered.
            return Err(ErrorCode::ResumeExpired.into());
        }
        let seqs = guest_seqs(msg);
        let mut standing: BTreeMap<GuestId, Standing> = BTreeMap::new();
        let mut tell: Vec<(Arc<str>, GuestCounts)> = Vec::new();
        let node_of = |g: GuestId| {
            facts
                .guests
                .iter()
                .find(|rg| rg.id == g)
                .and_then(|rg| rg.node.clone())
        };
        let mut answered: Vec<Arc<str>> = Vec::new();
        for r in replies {
            if let Control::HostRebuilt { guests, node, .. } = r {
                answered.push(Arc::from(node.as_str()));
                for g in guests {
                    if let Some(node) = node_of(g.id) {
                        push_by_node(&mut tell, node, (g.id, g.from));
                    }
                    let s = Standing {
                        took: g.took,
                        host_at: g.host_at,
                        have: g.from,
                        held: g.held,
                        lost: false,
                    };
                    standing.insert(g.id, s);
                }
            }
        }
        standing.extend(self.close_own_guests(&id, &seqs));
        // What the host sends again starts after the lowest number any
        // guest's node has; each guest drops what its node had.
        let accepted = standing
            .values()
            .map(|s| s.host_at)
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(facts.acc_checkpoint);
        let limits = self.settings.limits;
        let to_host = Pipe::for_host_at(limits, msg.last_seq);
        let fanout = Room::resumed(accepted);
        Outbound::Host(Arc::clone(&fanout)).fence(msg.client.conn);
        let mut room = RoomHere {
            fanout: Some(Arc::clone(&fanout)),
            ..RoomHere::default()
        };
        let mut unanswered: Vec<(Arc<str>, Vec<GuestId>)> = Vec::new();
        for rg in &facts.guests {
            let Some(node) = rg.node.clone() else {
                continue;
            };
            let dead = facts.old_node.as_ref() == Some(&node);
            let mut guest = Guest {
                node: Arc::clone(&node),
                here: None,
                to_guest: None,
                out: None,
                out_pipe: None,
                token: None,
                admitted: !rg.waiting,
                away: false,
            };
            let Some(t) = tag(rg.id) else { continue };
            if rg.waiting {
                if !dead {
                    room.guests.insert(rg.id, guest);
                    self.arm_admit_timeout(&id, rg.id, ctx);
                }
                continue;
            }
            if !dead && *node != *self.node && !answered.contains(&node) {
                // Its node did not answer (a node of before, which skips
                // the question, or a stalled one) and still points it at
                // the dead node: it ends, as the whole room did before.
                push_by_node(&mut unanswered, Arc::clone(&node), rg.id);
                continue;
            }
            // A guest of the dead node (or one whose resume its node was
            // still making): it resumes, bringing its own count of the
            // host's direction.
            let s = standing.remove(&rg.id).unwrap_or(Standing {
                took: 0,
                host_at: 0,
                have: seqs.get(&rg.id).copied().unwrap_or(0),
                held: Vec::new(),
                lost: true,
            });
            let p = Pipe::sending_to_peer(
                unpaced(limits),
                self.guest_peer(&id, rg.id, false, &node),
                s.took,
                s.took,
            );
            let held: Option<Vec<(u64, Frame)>> =
                s.held.into_iter().map(HeldFrame::into_frame).collect();
            if let Some(held) = held {
                p.hold_handed_over(held);
            }
            guest.away = s.lost || *node == *self.node || !rg.here;
            if guest.away {
                p.peer_away();
            }
            if s.lost {
                p.number_on_return();
            }
            fanout.add_after(rg.id, rg.id as usize, Arc::clone(&p), s.host_at);
            self.dir.set(&id, lane(rg.id, false), Some(&p));
            to_host.feed_guest(t, s.have, self.guest_peer(&id, rg.id, true, &node));
            guest.to_guest = Some(p);
            room.guests.insert(rg.id, guest);
        }
        let local = self.sessions.get_mut(&id).ok_or(ErrorCode::ResumeExpired)?;
        local.room = Some(Box::new(room));
        local.set_node(Role::Mac, None);
        local.set_pipe(&self.dir, Role::Mac, Some(Arc::clone(&to_host)));
        let written = to_host
            .attach(msg.client.receiver(), msg.last_seq)
            .map_err(|g| super::super::requests::gap_refusal(g, msg.last_seq))?;
        for (&gid, g) in local.room().map(|r| r.guests.iter()).into_iter().flatten() {
            if g.away {
                local.tell_host(&ServerMessage::GuestAway { guest_id: gid });
            }
        }
        for &g in unanswered.iter().flat_map(|(_, list)| list) {
            local.tell_host(&ServerMessage::GuestLeft {
                guest_id: g,
                reason: GuestLeftReason::Timeout,
            });
        }
        self.end_unanswered(&id, unanswered, ctx);
        info!(session = %id, last_seq = msg.last_seq, accepted, "room host resumed after its room's node died; the room is rebuilt here");
        // Its guests elsewhere send here now, after the counts they gave,
        // and hear the host is back.
        Ok(self.room_opened_here(id, tell, true, accepted, (to_host, fanout, written), ctx))
    }

    /// The room's guests homed on this node, held as another node's until
    /// now: where each stands, and closed to resume (1012), their way to the
    /// host made afresh, as when a room moves here (`host_taken_over`).
    /// Their frames the host had not read were only in their way to the
    /// dead node: they send them again after their `resumed.lastSeq`,
    /// which is the host's count (`guestSeqs`) or what it acknowledged.
    fn close_own_guests(
        &mut self,
        id: &SessionId,
        seqs: &relay_protocol::GuestSeqs,
    ) -> Vec<(GuestId, Standing)> {
        let mut out = Vec::new();
        let mut evicted = Vec::new();
        let Some(local) = self.sessions.get_mut(id) else {
            return out;
        };
        let mine: Vec<GuestId> = local
            .room()
            .map(|r| r.guests.keys().copied().collect())
            .unwrap_or_default();
        for gid in mine {
            // Read before the guest is dropped: that closes its pipes.
            let pipes = local
                .room()
                .and_then(|r| r.guests.get(&gid))
                .and_then(|g| g.to_guest.clone().zip(g.out_pipe.clone()));
            if let Some((fed, way)) = pipes {
                let (host_at, _) = fed.host_at();
                let (took, held) = fed.sent_and_held();
                let acked = way.acknowledged();
                let have = match seqs.get(&gid) {
                    Some(&n) if n >= acked && n <= way.pairing_count() => n,
                    _ => acked,
                };
                let s = Standing {
                    took,
                    host_at,
                    have,
                    held: held.iter().map(|(p, f)| HeldFrame::new(*p, f)).collect(),
                    lost: false,
                };
                out.push((gid, s));
            }
            let Some(g) = local.drop_guest(&self.dir, gid) else {
                continue;
            };
            if let Some((conn, cmd)) = g.here.as_ref().and_then(|h| h.conn.as_ref()) {
                cmd.do_send(ConnCommand::Drain);
                evicted.push((gid, *conn));
            }
        }
        self.away_in_redis(id, evicted);
        out
    }

    /// Guests whose node did not answer the rebuild end for good: in Redis
    /// (their places free, their tokens refused with `MAC_DISCONNECTED`, as
    /// when the host ends), and on their
    /// node, told as when the host ends (`MAC_DISCONNECTED`).
    fn end_unanswered(
        &mut self,
        id: &SessionId,
        unanswered: Vec<(Arc<str>, Vec<GuestId>)>,
        ctx: &mut Context<Self>,
    ) {
        if unanswered.is_empty() {
            return;
        }
        warn!(session = %id, nodes = unanswered.len(), "nodes holding guests did not answer the rebuild; their guests end");
        let mut guests = Vec::new();
        for (node, list) in unanswered {
            let c = Control::Ended {
                sid: id.to_string(),
                role: Role::Mac,
                reason: EndReason::Timeout,
            };
            self.send(&node, c, ctx);
            guests.extend(list);
        }
        let store = Arc::clone(&self.store);
        let sid = Arc::clone(id);
        actix::spawn(async move {
            for g in guests {
                // Refused as when their host ends: what they were told.
                if let Err(e) = store.end_guest_as(&sid, g, SideEnd::MacDisconnected).await {
                    warn!(session = %sid, guest = g, error = %e, "could not end a guest whose node did not answer");
                }
            }
        });
    }
}
