//! A room host's resume on another node while the node that held its room
//! is up: the room moves with the host. The old node answers the resume's
//! `Moved` with `HostHandover`: for each guest, where its direction stands
//! (frames sent, those not acknowledged) and how many of its frames the
//! host has (exactly: those within the host's `lastSeq`). It forgets the
//! room, closing its own guests with 1012 to resume (their frames the host
//! had not read were only there; they send them again after their
//! `resumed.lastSeq`). The new node builds the room from that, and tells
//! each other guest's node (`HostAt`) to send there after that count; its
//! own guests, held as another node's until now, are closed to resume as
//! well, so every guest's way to the host is made afresh.

use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{ErrorCode, GuestId, Role, ServerMessage};
use tracing::{info, warn};

use super::super::{ClusterRegistry, Local};
use super::{Guest, GuestCounts, RoomHere, lane, push_by_node, tag, unpaced};
use crate::cluster::envelope::{Control, HandedGuest, HeldFrame};
use crate::conns::{ConnCommand, ConnId};
use crate::frame::Frame;
use crate::outbound::{Outbound, Room};
use crate::pipe::Pipe;
use crate::queue::EventEffect;
use crate::registry::member::Member;
use crate::registry::{Link, Refusal, Resume, Resumed, SessionId};

impl ClusterRegistry {
    /// On the node holding a room: its host resumed on `node`, having
    /// `last_seq` data frames. Hands the room over and forgets it.
    pub(in crate::registry::cluster) fn host_moved_away(
        &mut self,
        id: &SessionId,
        node: &Arc<str>,
        last_seq: u64,
        request: u64,
    ) -> Control {
        let mut guests = Vec::new();
        let mut accepted = 0;
        let mut evicted = Vec::new();
        if let Some(local) = self.sessions.get_mut(id) {
            if let Some(here) = local.host.here.take() {
                if let Some((_, cmd)) = here.conn {
                    cmd.do_send(ConnCommand::Replaced);
                }
            }
            self.metrics.sessions_live.dec();
            let to_host = local.host.to.clone();
            if let Some(room) = local.room() {
                if let Some(f) = &room.fanout {
                    // Its old socket, replaced, pushes no more.
                    accepted = Outbound::Host(Arc::clone(f)).fence(ConnId::next());
                }
                for (&gid, g) in &room.guests {
                    let (sent, held) = g
                        .to_guest
                        .as_ref()
                        .map(|p| p.sent_and_held())
                        .unwrap_or_default();
                    let t = tag(gid);
                    // What came in of it: a local guest's pushes, or its feed.
                    let received = match (&g.out, &to_host, t) {
                        (Some(out), _, _) => Outbound::Guest(Arc::clone(out)).fence(ConnId::next()),
                        (None, Some(h), Some(t)) => h.unfeed_guest(t).unwrap_or(0),
                        _ => 0,
                    };
                    let unread = match (&to_host, t) {
                        (Some(h), Some(t)) => h.guest_frames_after(t, last_seq),
                        _ => 0,
                    };
                    if let Some((conn, cmd)) = g.here.as_ref().and_then(|h| h.conn.as_ref()) {
                        // Resumes wherever it reconnects, as in a drain.
                        cmd.do_send(ConnCommand::Drain);
                        evicted.push((gid, *conn));
                    }
                    guests.push(HandedGuest {
                        id: gid,
                        node: g.node.to_string(),
                        admitted: g.admitted,
                        sent,
                        held: held.iter().map(|(p, f)| HeldFrame::new(*p, f)).collect(),
                        have: received.saturating_sub(unread),
                    });
                }
            }
        }
        self.away_in_redis(id, evicted);
        // Frames in flight for this session are dropped here from now on.
        self.forget(id);
        info!(session = %id, node = %node, guests = guests.len(), "room host moved to another node");
        Control::HostHandover {
            sid: id.to_string(),
            accepted,
            guests,
            request,
        }
    }

    /// Guests closed to resume are away in Redis: their grace period runs
    /// (they end if they do not come back), and their resume is `back`.
    /// A guest that resumed before this ran is not changed (its connection
    /// is another).
    pub(super) fn away_in_redis(&self, id: &SessionId, guests: Vec<(GuestId, ConnId)>) {
        if guests.is_empty() {
            return;
        }
        let store = Arc::clone(&self.store);
        let sid = Arc::clone(id);
        let until = super::super::requests::now_ms() + self.settings.grace.as_millis() as u64;
        actix::spawn(async move {
            for (g, conn) in guests {
                if let Err(e) = store.away_guest(&sid, g, conn, until).await {
                    warn!(session = %sid, guest = g, error = %e, "could not start a guest's grace period");
                }
            }
        });
    }

    /// On the host's new node: the room's old node handed it over. Builds
    /// the room here and attaches the host.
    pub(in crate::registry::cluster) fn host_taken_over(
        &mut self,
        msg: &Resume,
        accepted: u64,
        guests: Vec<HandedGuest>,
        facts: &crate::cluster::store::ResumeFacts,
        ctx: &mut Context<Self>,
    ) -> Result<Resumed, Refusal> {
        let was_away = facts.was_away();
        let id: SessionId = Arc::from(msg.session_id.as_str());
        let limits = self.settings.limits;
        let me = Arc::clone(&self.node);
        let to_host = Pipe::for_host_at(limits, msg.last_seq);
        let fanout = Room::resumed(accepted);
        Outbound::Host(Arc::clone(&fanout)).fence(msg.client.conn);
        // This node's own guests of the room, held as another node's until
        // now: closed to resume, their way to the host made afresh.
        let mine: Vec<GuestId> = self
            .sessions
            .get(&id)
            .map(Local::guests_here)
            .unwrap_or_default();
        let mut evicted = Vec::new();
        for g in mine {
            let local = self.sessions.get_mut(&id).ok_or(ErrorCode::ResumeExpired)?;
            if let Some((conn, cmd)) = local
                .room()
                .and_then(|r| r.guests.get(&g))
                .and_then(|g| g.here.as_ref())
                .and_then(|h| h.conn.as_ref())
                .map(|(c, cmd)| (*c, cmd.clone()))
            {
                cmd.do_send(ConnCommand::Drain);
                evicted.push((g, conn));
            }
            local.drop_guest(&self.dir, g);
        }
        self.away_in_redis(&id, evicted);
        let mut room = RoomHere {
            fanout: Some(Arc::clone(&fanout)),
            ..RoomHere::default()
        };
        let mut tell: Vec<(Arc<str>, GuestCounts)> = Vec::new();
        for hg in guests {
            let node: Arc<str> = Arc::from(hg.node.as_str());
            let mut guest = Guest {
                node: Arc::clone(&node),
                here: None,
                to_guest: None,
                out: None,
                out_pipe: None,
                token: None,
                admitted: hg.admitted,
                away: false,
            };
            let Some(t) = tag(hg.id) else { continue };
            if !hg.admitted {
                room.guests.insert(hg.id, guest);
                self.arm_admit_timeout(&id, hg.id, ctx);
                continue;
            }
            // Closed to resume if it was on the old node or this one.
            let resumes = *node == *me || facts.old_node.as_deref() == Some(&*node);
            let p = Pipe::sending_to_peer(
                unpaced(limits),
                self.guest_peer(&id, hg.id, false, &node),
                hg.sent,
                hg.sent,
            );
            let held: Option<Vec<(u64, Frame)>> =
                hg.held.into_iter().map(HeldFrame::into_frame).collect();
            if let Some(held) = held {
                p.hold_handed_over(held);
            }
            if resumes {
                // Held for it until it resumes somewhere.
                p.peer_away();
            }
            // Away until it resumes (its host hears `guest_away` now and
            // `guest_back` then).
            guest.away = resumes;
            fanout.add(hg.id, hg.id as usize, Arc::clone(&p));
            self.dir.set(&id, lane(hg.id, false), Some(&p));
            to_host.feed_guest(t, hg.have, self.guest_peer(&id, hg.id, true, &node));
            guest.to_guest = Some(p);
            room.guests.insert(hg.id, guest);
            if !resumes {
                push_by_node(&mut tell, node, (hg.id, hg.have));
            }
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
        info!(session = %id, last_seq = msg.last_seq, accepted, "room host resumed; its room moved here");
        Ok(self.room_opened_here(
            id,
            tell,
            was_away,
            accepted,
            (to_host, fanout, written),
            ctx,
        ))
    }

    /// The end of a host's resume that built its room here (a move or a
    /// rebuild): each guest's node hears where the host is now, and the host
    /// its link: `(to_host, fanout, written)`.
    pub(super) fn room_opened_here(
        &mut self,
        id: SessionId,
        tell: Vec<(Arc<str>, GuestCounts)>,
        was_away: bool,
        accepted: u64,
        (to_host, fanout, written): (Arc<Pipe>, Arc<Room>, u64),
        ctx: &mut Context<Self>,
    ) -> Resumed {
        for (node, guests) in tell {
            let c = Control::HostAt {
                sid: id.to_string(),
                node: self.node.to_string(),
                guests,
                was_away,
            };
            self.send(&node, c, ctx);
        }
        Resumed {
            accepted,
            events: Vec::new(),
            link: Link {
                session_id: id,
                inbound: to_host,
                outbound: Outbound::Host(fanout),
                member: Member::Host,
                written,
            },
        }
    }

    /// On a guest's node: the room's host is on `node` now; each guest
    /// named sends there after the count given, and acknowledges there.
    pub(in crate::registry::cluster) fn host_now_at(
        &mut self,
        id: &SessionId,
        node: &Arc<str>,
        guests: &[(GuestId, u64)],
        was_away: bool,
    ) {
        let mut peers = Vec::new();
        for &(g, have) in guests {
            peers.push((
                g,
                have,
                self.guest_peer(id, g, true, node),
                self.guest_peer(id, g, false, node),
            ));
        }
        let Some(local) = self.sessions.get_mut(id) else {
            return;
        };
        local.set_node(Role::Mac, Some(Arc::clone(node)));
        for (g, have, to_host, from_host) in peers {
            let Some(guest) = local.room().and_then(|r| r.guests.get(&g)) else {
                continue;
            };
            if let Some(p) = &guest.out_pipe {
                if let Err(gap) = p.send_to_peer(to_host, have) {
                    warn!(session = %id, guest = g, ?gap, "a guest's frames cannot go to its host's new node");
                }
            }
            if let Some(p) = &guest.to_guest {
                p.set_ack_to(Some(from_host));
            }
            if was_away {
                local.tell_guest(g, &ServerMessage::PeerResumed, EventEffect::None);
            }
        }
    }
}
