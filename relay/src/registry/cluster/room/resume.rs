//! A room guest's resume, on any node: the `resume_guest` script homed it
//! here; the host's node points the guest's direction here and replays
//! what the guest has not read (it holds every frame until the guest
//! acknowledged it), and says how many of the guest's frames it took,
//! which is the guest's `resumed.lastSeq`; the guest's old node closes the
//! old connection and gives back the events queued for it. As a pairing's
//! browser is handed over (`requests/resume.rs`), with `GuestMoved` and
//! `GuestHandover`.
//!
//! The guest's place here is taken before the handover wait, so a
//! `remove` that reaches this node meanwhile finds it and cuts it: a
//! removed guest is never let back in.

use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{ErrorCode, GuestId, ServerMessage};
use tracing::{info, warn};

use super::super::{ClusterRegistry, HANDOVER_WAIT, Here, Local};
use super::{Guest, tag, unpaced};
use crate::cluster::envelope::{Control, HeldFrame};
use crate::cluster::store::ResumeFacts;
use crate::conns::ConnCommand;
use crate::frame::Frame;
use crate::outbound::{GuestOut, Outbound};
use crate::pipe::Pipe;
use crate::registry::{Departure, Refusal, Resume, Resumed, SessionId};

type Answer = ResponseActFuture<ClusterRegistry, Result<Resumed, Refusal>>;

/// What the other nodes handed over for a guest's resume.
#[derive(Default)]
struct Handed {
    received: Option<u64>,
    events: Vec<String>,
    held: Vec<HeldFrame>,
    error: Option<String>,
    /// The host's node held it away (closed to resume by a host's move).
    marked_away: bool,
    /// The host's node has no room to hand over from yet (it is rebuilding
    /// it, or it is moving there): the guest comes again.
    not_yet: bool,
}

impl ClusterRegistry {
    /// The resume script gave guest `guest` to this node.
    pub(in crate::registry::cluster) fn resume_guest_here(
        &mut self,
        msg: Resume,
        guest: GuestId,
        facts: ResumeFacts,
        ctx: &mut Context<Self>,
    ) -> Answer {
        let id: SessionId = Arc::from(msg.session_id.as_str());
        let me = Arc::clone(&self.node);
        let was_away = facts.was_away();
        let Some(host_node) = facts.peer_node.clone() else {
            return Box::pin(fut::ready(Err(ErrorCode::ResumeExpired.into())));
        };
        let host_here = *host_node == *me && self.sessions.get(&id).is_some_and(Local::hosts_room);
        let limits = self.settings.limits;
        let from_host = self.guest_peer(&id, guest, false, &host_node);
        // Take the place now (see the module docs).
        let local = self.sessions.entry(Arc::clone(&id)).or_insert_with(|| {
            let mut l = Local::new(Arc::clone(&id));
            l.room = Some(Box::default());
            l
        });
        if local.room.is_none() {
            local.room = Some(Box::default());
        }
        if !host_here {
            local.set_node(relay_protocol::Role::Mac, Some(Arc::clone(&host_node)));
        }
        let new_here = Here {
            conn: Some((msg.client.conn, msg.client.commands.clone())),
        };
        let Some(room) = local.room_mut() else {
            return Box::pin(fut::ready(Err(ErrorCode::ResumeExpired.into())));
        };
        let mut marked_away = false;
        match room.guests.get_mut(&guest) {
            Some(g) => {
                if let Some(Here {
                    conn: Some((c, cmd)),
                }) = g.here.replace(new_here)
                {
                    if Some(c) == facts.old_conn && c != msg.client.conn {
                        cmd.do_send(ConnCommand::Replaced);
                    }
                }
                marked_away = g.away;
                g.node = Arc::clone(&me);
                g.away = false;
            }
            None => {
                room.guests.insert(
                    guest,
                    Guest {
                        node: Arc::clone(&me),
                        here: Some(new_here),
                        to_guest: None,
                        out: None,
                        out_pipe: None,
                        token: None,
                        admitted: true,
                        away: false,
                    },
                );
            }
        }
        if !host_here {
            // Frames from the host come from its node, which replays what
            // follows `last_seq` (a pipe already fed from there, the guest
            // being back on this node, keeps its place: the replay's
            // duplicates are dropped).
            let g = local.room_mut().and_then(|r| r.guests.get_mut(&guest));
            if let Some(g) = g.filter(|g| g.to_guest.is_none()) {
                let fed = Pipe::fed_from_peer(unpaced(limits), msg.last_seq, 0, from_host);
                self.dir.set(&id, super::lane(guest, false), Some(&fed));
                g.to_guest = Some(fed);
            }
        }
        // Who hands over: the host's node and the guest's old node.
        let mut ask: Vec<Arc<str>> = Vec::new();
        let candidates = [
            (&facts.peer_node, facts.peer_alive),
            (&facts.old_node, facts.old_alive),
        ];
        for (n, alive) in candidates {
            let Some(n) = n else { continue };
            if alive && **n != *me && !ask.contains(n) {
                ask.push(Arc::clone(n));
            }
        }
        let (request, rx) = self.open_pending(ask.len());
        for n in &ask {
            let c = Control::GuestMoved {
                sid: msg.session_id.clone(),
                guest,
                node: me.to_string(),
                p_last: msg.last_seq,
                was_away,
                request,
            };
            self.send(n, c, ctx);
        }
        let until = msg.deadline.bound(HANDOVER_WAIT);
        let wait = async move { tokio::time::timeout_at(until, rx).await };
        Box::pin(wait.into_actor(self).map(move |replies, act, ctx| {
            let partial = act.pending.remove(&request).map(|p| p.replies).unwrap_or_default();
            let replies = match replies {
                Ok(Ok(r)) => r,
                _ => {
                    warn!(session = %id, guest, "a guest's handover did not come in time; going on with what is here");
                    partial
                }
            };
            let mut handed = Handed {
                marked_away,
                ..Handed::default()
            };
            for r in replies {
                if let Control::GuestHandover {
                    received,
                    events,
                    unacknowledged,
                    error,
                    not_yet,
                    ..
                } = r
                {
                    handed.not_yet |= not_yet;
                    handed.events.extend(events);
                    if received.is_some() {
                        handed.received = received;
                        handed.held = unacknowledged;
                    }
                    handed.error = handed.error.or(error);
                }
            }
            act.guest_resumed(&msg, guest, &facts, host_here, handed, ctx)
        }))
    }

    /// The handovers are in: attach the guest, or refuse if it was removed
    /// or replaced meanwhile.
    fn guest_resumed(
        &mut self,
        msg: &Resume,
        guest: GuestId,
        facts: &ResumeFacts,
        host_here: bool,
        handed: Handed,
        ctx: &mut Context<Self>,
    ) -> Result<Resumed, Refusal> {
        let id: SessionId = Arc::from(msg.session_id.as_str());
        if let Err(r) = msg.deadline.check("resume") {
            // The socket may have given up: the guest, homed here now, is
            // away as if this connection dropped as it attached (its grace
            // period runs, the host hears `guest_away`), to resume again.
            self.guest_gone(
                Arc::clone(&id),
                guest,
                msg.client.conn,
                Departure::Dropped,
                ctx,
            );
            return Err(r);
        }
        if let Some(e) = handed.error {
            warn!(session = %id, guest, error = %e, "the host's node cannot replay");
            return Err(Refusal::with(
                ErrorCode::InvalidResume,
                format!("This session cannot be resumed: {e}. Start a new session."),
            ));
        }
        if handed.not_yet || self.host_left_it(&id, guest, host_here) {
            return Err(self.come_again(&id, guest, msg.client.conn));
        }
        let limits = self.settings.limits;
        let t = tag(guest).ok_or(ErrorCode::InvalidResume)?;
        let host_node = facts.peer_node.clone().ok_or(ErrorCode::ResumeExpired)?;
        let me = Arc::clone(&self.node);
        let from_host = self.guest_peer(&id, guest, true, &host_node);
        let local = self.sessions.get_mut(&id).ok_or(ErrorCode::Removed)?;
        let to_host = local.host.to.clone();
        let room = local.room_mut().ok_or(ErrorCode::Removed)?;
        let fanout = room.fanout.clone();
        let g = room.guests.get_mut(&guest).ok_or(ErrorCode::Removed)?;
        if g.here
            .as_ref()
            .and_then(|h| h.conn.as_ref())
            .map(|(c, _)| *c)
            != Some(msg.client.conn)
        {
            // Removed, or resumed again, while the handover ran.
            return Err(ErrorCode::Removed.into());
        }
        let old_here = facts.old_node.as_deref() == Some(&*me) && g.out.is_some();
        let accepted = match (&g.out, old_here, to_host) {
            // Back on the node it was on: its own count, final once fenced.
            (Some(out), true, _) => Outbound::Guest(Arc::clone(out)).fence(msg.client.conn),
            // From another node to the host's: what the host's pipe took.
            (_, false, Some(to_host)) if host_here => {
                let accepted = to_host.unfeed_guest(t).unwrap_or(0);
                let out = GuestOut::resumed(to_host, t, true, accepted);
                Outbound::Guest(Arc::clone(&out)).fence(msg.client.conn);
                g.out = Some(out);
                self.dir.set(&id, super::lane(guest, false), None);
                self.dir.set(&id, super::lane(guest, true), None);
                if g.to_guest.is_none() {
                    let p = Pipe::new(unpaced(limits));
                    if let Some(f) = &fanout {
                        f.add(guest, guest as usize, Arc::clone(&p));
                    }
                    g.to_guest = Some(p);
                }
                accepted
            }
            // From another node, the host elsewhere: what the host's node took.
            _ => {
                let accepted = handed.received.unwrap_or(facts.acc_checkpoint);
                let out_pipe = Pipe::sending_to_peer(limits, from_host, accepted, accepted);
                if handed.received.is_none() {
                    out_pipe.count_may_lag();
                }
                let held: Option<Vec<(u64, Frame)>> =
                    handed.held.into_iter().map(HeldFrame::into_frame).collect();
                match held {
                    Some(held) => out_pipe.hold_handed_over(held),
                    None => warn!(session = %id, guest, "a handover's frames did not decode"),
                }
                let out = GuestOut::resumed(Arc::clone(&out_pipe), t, true, accepted);
                Outbound::Guest(Arc::clone(&out)).fence(msg.client.conn);
                self.dir.set(&id, super::lane(guest, true), Some(&out_pipe));
                g.out = Some(out);
                g.out_pipe = Some(out_pipe);
                accepted
            }
        };
        g.admitted = true;
        let to_guest = g.to_guest.clone().ok_or(ErrorCode::ResumeExpired)?;
        let written = to_guest
            .attach(msg.client.receiver(), msg.last_seq)
            .map_err(|gap| super::super::requests::gap_refusal(gap, msg.last_seq))?;
        if host_here && (facts.was_away() || handed.marked_away) {
            local.tell_host(&ServerMessage::GuestBack { guest_id: guest });
        }
        let link = local
            .guest_link(guest, written)
            .ok_or(ErrorCode::ResumeExpired)?;
        info!(session = %id, guest, last_seq = msg.last_seq, accepted, "guest resumed");
        Ok(Resumed {
            accepted,
            events: handed.events,
            link,
        })
    }

    /// Whether the host's room was rebuilt on another node while this
    /// resume waited: the rebuild's question found it under way and took
    /// its way from the host, made toward the dead node (`host_rebuilt_at`).
    fn host_left_it(&self, id: &SessionId, guest: GuestId, host_here: bool) -> bool {
        !host_here
            && self
                .sessions
                .get(id)
                .and_then(|l| l.room())
                .and_then(|r| r.guests.get(&guest))
                .is_some_and(|g| g.to_guest.is_none())
    }

    /// Refuses a guest's resume that found its host's room not yet where
    /// the host is (a host resuming after its node died, or moving): the
    /// client comes again (`SHUTTING_DOWN` and 1012, as from a draining
    /// node), by when the room is there. Its connection is no longer the guest's here.
    fn come_again(
        &mut self,
        id: &SessionId,
        guest: GuestId,
        conn: crate::conns::ConnId,
    ) -> Refusal {
        let g = self
            .sessions
            .get_mut(id)
            .and_then(|l| l.room_mut())
            .and_then(|r| r.guests.get_mut(&guest));
        if let Some(g) = g {
            if g.here
                .as_ref()
                .and_then(|h| h.conn.as_ref())
                .map(|(c, _)| *c)
                == Some(conn)
            {
                g.here = None;
            }
        }
        info!(session = %id, guest, "the host's room is being rebuilt; the guest is to resume again");
        let mut r = Refusal::with(
            ErrorCode::ShuttingDown,
            "The room's host is resuming on another node; resume again.".to_owned(),
        );
        // Closed as a draining node closes (1012): clients resume again.
        r.close = Some(relay_protocol::CloseCode::Draining);
        r
    }
}
