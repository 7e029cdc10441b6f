//! Resume on the cluster: a side takes its session back on this node,
//! whichever node it was on; the nodes that held it hand over (its frames,
//! its count, the events it missed), in turn with other resumes of the
//! session and within the request's deadline.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{CloseCode, ErrorCode, Role, ServerMessage};
use tracing::{debug, info, warn};

use super::super::{ClusterRegistry, HANDOVER_WAIT, Here, Local, Pending};
use super::*;
use crate::cluster::envelope::{Control, HeldFrame};
use crate::cluster::store::{GuestResume, ResumeFacts, ResumeOutcome, SideEnd};
use crate::conns::{ConnCommand, ConnId};
use crate::pipe::Pipe;
use crate::queue::{EventEffect, Gap};
use crate::registry::deadline::too_late;
use crate::registry::secret::TokenHash;
use crate::registry::{REQUEST_BUDGET, Refusal, Resume, Resumed, SessionId};

impl Handler<Resume> for ClusterRegistry {
    type Result = ResponseActFuture<Self, Result<Resumed, Refusal>>;

    fn handle(&mut self, msg: Resume, _: &mut Context<Self>) -> Self::Result {
        if let Err(r) = msg.deadline.check("resume") {
            return self.resume_done(Err(r));
        }
        if !self.healthy() {
            return self.resume_done(Err(ErrorCode::Unavailable.into()));
        }
        let id: SessionId = Arc::from(msg.session_id.as_str());
        let Some(queue) = self.resuming.get_mut(&id) else {
            self.resuming.insert(Arc::clone(&id), VecDeque::new());
            return self.resume_in_turn(msg, id);
        };
        // The session's other side (or this side again) is resuming here:
        // wait for it to finish, then start from the state it left. A turn
        // that comes later than the latest start could not give a silent
        // node its handover wait before the deadline: refuse before then,
        // with nothing changed, rather than start what must be undone.
        let (tx, rx) = tokio::sync::oneshot::channel();
        queue.push_back(tx);
        let latest = msg.deadline.latest_start(HANDOVER_WAIT);
        debug!(session = %id, role = msg.role.as_str(), conn = %msg.client.conn, "resume waits for another resume of its session");
        let wait = async move { tokio::time::timeout_at(latest, rx).await };
        Box::pin(wait.into_actor(self).then(move |turn, act, _| {
            let step: ResponseActFuture<Self, Result<Resumed, Refusal>> = match turn {
                Ok(Ok(())) => act.resume_in_turn(msg, id),
                _ => {
                    warn!(session = %id, role = msg.role.as_str(), conn = %msg.client.conn, "another resume of this session took too much of this one's deadline; refusing it");
                    act.resume_done(Err(too_late()))
                }
            };
            step
        }))
    }
}

// A resume queued behind one whose handover waits for a silent node still
// gets its turn: its queue wait (the budget less one handover wait) outlasts
// the other's handover wait. See `registry::deadline`.
const _: () = assert!(HANDOVER_WAIT.as_millis() * 2 < REQUEST_BUDGET.as_millis());

impl ClusterRegistry {
    /// Runs a resume that holds its session's turn, and passes the turn on
    /// when it is over, whatever its outcome.
    fn resume_in_turn(
        &mut self,
        msg: Resume,
        id: SessionId,
    ) -> ResponseActFuture<Self, Result<Resumed, Refusal>> {
        let run = self.start_resume(msg);
        Box::pin(run.map(move |res, act, _| {
            act.next_resume(&id);
            res
        }))
    }

    /// Gives the session's turn to the next queued resume still waiting, or frees it.
    fn next_resume(&mut self, id: &SessionId) {
        if let Some(queue) = self.resuming.get_mut(id) {
            while let Some(tx) = queue.pop_front() {
                // A send fails only for a waiter that gave up; try the next.
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        self.resuming.remove(id);
    }

    fn start_resume(&mut self, msg: Resume) -> ResponseActFuture<Self, Result<Resumed, Refusal>> {
        if !self.healthy() {
            return self.resume_done(Err(ErrorCode::Unavailable.into()));
        }
        // A side homed here can have its lastSeq checked before anything changes.
        let id: SessionId = Arc::from(msg.session_id.as_str());
        if let Some(local) = self.sessions.get(&id) {
            if local.side(msg.role).is_some() && local.node_of(msg.role.peer()).is_none() {
                if let Some(pipe) = local.pipe(msg.role) {
                    if let Err(gap) = pipe.check(msg.last_seq) {
                        return self.resume_done(Err(gap_refusal(gap, msg.last_seq)));
                    }
                }
            }
        }
        let store = Arc::clone(&self.store);
        let hash = TokenHash::of(&msg.resume_token);
        let (sid, role, conn) = (msg.session_id.clone(), msg.role, msg.client.conn);
        let claim = async move {
            let outcome = store
                .resume(&sid, role, &hash, conn)
                .await
                .map_err(|e| unavailable(&e))?;
            let end = match outcome {
                ResumeOutcome::Resumed(facts) => return Ok(Claimed::Side(facts)),
                ResumeOutcome::Ended(end) => end,
                // A room guest's token: found by a second script.
                ResumeOutcome::Room => {
                    match store
                        .resume_guest(&sid, &hash, conn)
                        .await
                        .map_err(|e| unavailable(&e))?
                    {
                        GuestResume::Resumed { guest_id, facts } => {
                            return Ok(Claimed::Guest(guest_id, facts));
                        }
                        GuestResume::Ended(end) => end,
                        GuestResume::Invalid => return Err(ErrorCode::InvalidResume.into()),
                    }
                }
                ResumeOutcome::Invalid => return Err(ErrorCode::InvalidResume.into()),
            };
            Err(match end {
                SideEnd::MacDisconnected => Refusal {
                    code: end.code(),
                    message: None,
                    close: Some(CloseCode::SessionOver),
                },
                SideEnd::ResumeExpired | SideEnd::Removed => end.code().into(),
            })
        };
        Box::pin(claim.into_actor(self).then(move |res, act, ctx| {
            let step: ResponseActFuture<Self, Result<Resumed, Refusal>> = match res {
                Err(r) => {
                    let res = Err(r);
                    act.count_resume(&res, false);
                    Box::pin(fut::ready(res))
                }
                Ok(claimed) => {
                    let (facts, guest) = match claimed {
                        Claimed::Side(f) => (f, None),
                        Claimed::Guest(g, f) => (f, Some(g)),
                    };
                    // The side still looked connected: this resume takes it over.
                    let takeover = !facts.was_away();
                    let run = match guest {
                        None => act.resume_here(msg, facts, ctx),
                        Some(g) => act.resume_guest_here(msg, g, facts, ctx),
                    };
                    Box::pin(run.map(move |res, act, _| {
                        act.count_resume(&res, takeover);
                        res
                    }))
                }
            };
            step
        }))
    }
}

/// What the resume scripts gave this node.
enum Claimed {
    /// A pairing's side, or a room's host.
    Side(ResumeFacts),
    /// A room's guest.
    Guest(relay_protocol::GuestId, ResumeFacts),
}

pub(in crate::registry::cluster) fn gap_refusal(gap: Gap, last_seq: u64) -> Refusal {
    let why = match gap {
        Gap::Closed => return ErrorCode::ResumeExpired.into(),
        Gap::Ahead { sent } => {
            format!("lastSeq {last_seq} is more than the {sent} frames sent to you")
        }
        Gap::Behind { oldest } => format!(
            "lastSeq {last_seq} is behind frames you already acknowledged (the oldest held is {oldest})"
        ),
    };
    Refusal::with(
        ErrorCode::InvalidResume,
        format!("This session cannot be resumed: {why}. Start a new session."),
    )
}

impl ClusterRegistry {
    pub(in crate::registry::cluster) fn count_resume(
        &self,
        res: &Result<Resumed, Refusal>,
        takeover: bool,
    ) {
        let answer = res.as_ref().map(|_| takeover).map_err(|r| r.code);
        self.metrics.resume_answered(answer);
    }

    fn resume_done(
        &self,
        r: Result<Resumed, Refusal>,
    ) -> ResponseActFuture<Self, Result<Resumed, Refusal>> {
        self.count_resume(&r, false);
        Box::pin(fut::ready(r))
    }

    /// The resume script gave side `msg.role` to this node: gather its frames.
    fn resume_here(
        &mut self,
        msg: Resume,
        facts: ResumeFacts,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Resumed, Refusal>> {
        let id: SessionId = Arc::from(msg.session_id.as_str());
        let role = msg.role;
        let me = Arc::clone(&self.node);
        let was_away = facts.was_away();
        let old_node = facts.old_node.clone();
        let peer_node = facts.peer_node.clone();
        let rbase = if role == Role::Mac { facts.m_rbase } else { 0 };
        let sbase = if role == Role::Mac { facts.m_sbase } else { 0 };
        let p_last = msg.last_seq.saturating_sub(rbase);

        let mut local = self
            .sessions
            .remove(&id)
            .unwrap_or_else(|| Local::new(Arc::clone(&id)));
        // Only a move heard from now on is news to this resume.
        local.peer_read = None;
        // The old connection, if it is on this node and still open, is replaced.
        if old_node.as_deref() == Some(&*me) {
            if let Some(Here {
                conn: Some((c, cmd)),
            }) = local.set_side(role, None)
            {
                if Some(c) == facts.old_conn && c != msg.client.conn {
                    cmd.do_send(ConnCommand::Replaced);
                }
            }
        } else {
            local.set_side(role, None);
        }
        let peer_here = local.side(role.peer()).is_some();
        local.set_node(role, None);
        if role == Role::Mac && old_node.as_deref() != Some(&*me) {
            self.metrics.sessions_live.inc();
        }

        // Nodes that must hand over: the side's old node and the peer's node.
        // A node without a live lease is dead: waiting for it would only delay.
        let mut ask: Vec<Arc<str>> = Vec::new();
        let candidates = [(&old_node, facts.old_alive), (&peer_node, facts.peer_alive)];
        for (n, alive) in candidates {
            let Some(n) = n else { continue };
            if alive && **n != *me && !ask.contains(n) {
                ask.push(Arc::clone(n));
            }
        }
        // Frames toward the side: local pipe if the peer is here, else one fed
        // by the peer's node (which replays from p_last).
        if !peer_here {
            if let Some(pn) = peer_node.as_ref().filter(|n| ***n != *me) {
                // Acks of what the side reads go to the peer's node, about `role`.
                let fed = Pipe::fed_from_peer(
                    self.settings.limits,
                    msg.last_seq,
                    rbase,
                    self.peer(&id, role, pn),
                );
                local.set_pipe(&self.dir, role, Some(fed));
                local.set_node(role.peer(), Some(Arc::clone(pn)));
            } else if local.pipe(role).is_none() {
                // No peer (a mac alone): an empty pipe at the side's count.
                let p = Pipe::new(self.settings.limits);
                p.reset_receiver();
                local.set_pipe(&self.dir, role, Some(p));
            }
        }
        local.set_side(
            role,
            Some(Here {
                conn: Some((msg.client.conn, msg.client.commands.clone())),
            }),
        );
        self.sessions.insert(Arc::clone(&id), local);

        let (request, rx) = self.open_pending(ask.len());
        for n in &ask {
            self.send(
                n,
                Control::Moved {
                    sid: msg.session_id.clone(),
                    role,
                    node: me.to_string(),
                    p_last,
                    was_away,
                    request,
                },
                ctx,
            );
        }
        // Cut short by the deadline, the wait ends in the check before the
        // commit, which undoes the move.
        let until = msg.deadline.bound(HANDOVER_WAIT);
        // A host whose old node is gone (its lease, or a node killed within
        // its lease that did not answer) cannot have its room handed over:
        // is it a room? (Asked only then: a pairing's resume costs nothing more.)
        let moved = role == Role::Mac && old_node.as_deref().is_some_and(|n| *n != *me);
        let old_alive = facts.old_alive;
        let store = Arc::clone(&self.store);
        let sid = msg.session_id.clone();
        let wait = async move {
            let replies = tokio::time::timeout_at(until, rx).await;
            let orphan = moved && (!old_alive || replies.is_err());
            let room = orphan && store.is_room(&sid).await.unwrap_or(false);
            (replies, room)
        };
        Box::pin(wait.into_actor(self).then(move |(replies, room), act, ctx| {
            let partial = act.pending.remove(&request).map(|p| p.replies).unwrap_or_default();
            if room {
                // Its room died with that node: rebuilt from its guests' nodes.
                return act.rebuild_room(msg, facts, ctx);
            }
            let replies = match replies {
                Ok(Ok(r)) => r,
                _ if msg.deadline.has_passed() => partial,
                _ => {
                    warn!(session = %id, "handover did not come in time; going on with what is here");
                    partial
                }
            };
            let done = act.resumed(msg, facts, replies, sbase, p_last, ctx);
            Box::pin(fut::ready(done))
        }))
    }

    /// All handovers are in (or the wait is over): finish the resume.
    #[allow(clippy::too_many_arguments)]
    fn resumed(
        &mut self,
        msg: Resume,
        facts: ResumeFacts,
        replies: Vec<Control>,
        sbase: u64,
        p_last: u64,
        ctx: &mut Context<Self>,
    ) -> Result<Resumed, Refusal> {
        let id: SessionId = Arc::from(msg.session_id.as_str());
        let role = msg.role;
        if let Err(r) = msg.deadline.check("resume") {
            // The socket may have given up: no attach, no peer_resumed.
            self.abandon_resume(&id, role, msg.client.conn, &facts, ctx);
            return Err(r);
        }
        let mut events = Vec::new();
        let mut received = None;
        let mut unacknowledged = Vec::new();
        if role == Role::Mac {
            let moved = replies.iter().find_map(|r| match r {
                Control::HostHandover {
                    accepted, guests, ..
                } => Some((*accepted, guests.clone())),
                _ => None,
            });
            if let Some((accepted, guests)) = moved {
                return self.host_taken_over(&msg, accepted, guests, &facts, ctx);
            }
        }
        for r in replies {
            if let Control::Handover {
                received: rec,
                events: ev,
                unacknowledged: held,
                error,
                ..
            } = r
            {
                if let Some(e) = error {
                    warn!(session = %id, error = %e, "peer node cannot replay");
                    self.side_lost(&id, role, &msg, &facts, ctx);
                    return Err(Refusal::with(
                        ErrorCode::InvalidResume,
                        format!("This session cannot be resumed: {e}. Start a new session."),
                    ));
                }
                events.extend(ev);
                if rec.is_some() && received.is_none() {
                    // Only the peer's node counts what it received, and
                    // only it holds frames of the side's it has not had acknowledged.
                    received = rec;
                    unacknowledged = held;
                }
            }
        }
        let limits = self.settings.limits;
        let peer_node = self
            .sessions
            .get(&id)
            .and_then(|l| l.node_of(role.peer()).cloned());
        let Some(local) = self.sessions.get_mut(&id) else {
            return Err(ErrorCode::ResumeExpired.into());
        };
        if local
            .side(role)
            .and_then(|h| h.conn.as_ref())
            .map(|(c, _)| *c)
            != Some(msg.client.conn)
        {
            // Something ended or replaced the side while the handover ran.
            return Err(ErrorCode::ResumeExpired.into());
        }
        if role == Role::Mac && local.hosts_room() {
            return self.host_resumed_here(&msg, facts.was_away(), events, ctx);
        }
        let peer_here = local.side(role.peer()).is_some();
        let accepted_p;
        if peer_here {
            // The peer is here: the pipe toward the side is local now.
            let to_side = local.pipe(role).cloned().ok_or(ErrorCode::ResumeExpired)?;
            let to_peer = local
                .pipe(role.peer())
                .cloned()
                .ok_or(ErrorCode::ResumeExpired)?;
            // A takeover's old socket here may still push: fenced out first.
            to_peer.fence(msg.client.conn);
            accepted_p = to_peer.fed_here(sbase);
            let written = to_side
                .attach(msg.client.receiver(), msg.last_seq)
                .map_err(|g| gap_refusal(g, msg.last_seq))?;
            if facts.was_away() {
                local.tell(role.peer(), &ServerMessage::PeerResumed, EventEffect::None);
            }
            let link = local.link(role, written).ok_or(ErrorCode::ResumeExpired)?;
            info!(session = %id, role = role.as_str(), last_seq = msg.last_seq, accepted = sbase + accepted_p, "resumed (peer on this node)");
            return Ok(Resumed {
                accepted: sbase + accepted_p,
                events,
                link,
            });
        }
        // The peer is elsewhere (or there is none).
        let to_side = local.pipe(role).cloned().ok_or(ErrorCode::ResumeExpired)?;
        // The peer moved while this resume ran, having read this many frames.
        let peer_read = local.peer_read.take();
        let received = received.or(peer_read);
        match peer_node {
            Some(pn) => {
                accepted_p = received.unwrap_or_else(|| facts.acc_checkpoint.saturating_sub(sbase));
                let out = Pipe::sending_to_peer(
                    limits,
                    self.peer(&id, role.peer(), &pn),
                    accepted_p,
                    sbase + accepted_p,
                );
                if received.is_none() {
                    // No handover: the count is the checkpoint's, and the
                    // peer may have read more of this side's frames.
                    out.count_may_lag();
                }
                let held: Option<Vec<(u64, crate::frame::Frame)>> = unacknowledged
                    .into_iter()
                    .map(HeldFrame::into_frame)
                    .collect();
                match held {
                    Some(held) => out.hold_handed_over(held),
                    None => {
                        warn!(session = %id, "a handover's frames did not decode; the peer's node keeps them alone")
                    }
                }
                if facts.peer_away() {
                    out.peer_away();
                }
                if let Some(p_last) = peer_read {
                    // Its node's `Moved` found no pipe here to replay from,
                    // and the handover may have brought frames it lacks
                    // (the side's old node held them): replay now, else
                    // it waits for them for good.
                    if let Err(gap) = out.send_to_peer(self.peer(&id, role.peer(), &pn), p_last) {
                        warn!(session = %id, ?gap, p_last, "the peer moved during this resume and its frames cannot be replayed");
                    }
                }
                if let Some(local) = self.sessions.get_mut(&id) {
                    local.set_pipe(&self.dir, role.peer(), Some(out));
                }
            }
            None => {
                // A mac alone: frames it sends are refused until a browser joins.
                accepted_p = 0;
                let out = Pipe::new(limits);
                out.set_accepted(sbase.max(facts.acc_checkpoint));
                if let Some(local) = self
                    .sessions
                    .get_mut(&id)
                    .filter(|l| l.pipe(role.peer()).is_none())
                {
                    local.set_pipe(&self.dir, role.peer(), Some(out));
                }
            }
        }
        let local = self.sessions.get(&id).ok_or(ErrorCode::ResumeExpired)?;
        let written = to_side
            .attach(msg.client.receiver(), msg.last_seq)
            .map_err(|g| gap_refusal(g, msg.last_seq))?;
        let link = local.link(role, written).ok_or(ErrorCode::ResumeExpired)?;
        let accepted = local
            .pipe(role.peer())
            .map_or(sbase + accepted_p, |p| p.accepted());
        info!(session = %id, role = role.as_str(), last_seq = msg.last_seq, p_last, accepted, "resumed");
        Ok(Resumed {
            accepted,
            events,
            link,
        })
    }

    /// Collects a handover reply; finishes the resume when all are in.
    pub(in crate::registry::cluster) fn handover(&mut self, request: u64, reply: Control) {
        let Some(p) = self.pending.get_mut(&request) else {
            return;
        };
        p.replies.push(reply);
        p.waiting = p.waiting.saturating_sub(1);
        if p.waiting == 0 {
            self.finish_pending(request);
        }
    }

    /// A request waiting for `waiting` nodes' replies; done at once if none.
    pub(in crate::registry::cluster) fn open_pending(
        &mut self,
        waiting: usize,
    ) -> (u64, tokio::sync::oneshot::Receiver<Vec<Control>>) {
        let request = self.next_request;
        self.next_request += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.insert(
            request,
            Pending {
                waiting,
                replies: Vec::new(),
                done: Some(tx),
            },
        );
        if waiting == 0 {
            self.finish_pending(request);
        }
        (request, rx)
    }

    pub(in crate::registry::cluster) fn finish_pending(&mut self, request: u64) {
        if let Some(p) = self.pending.get_mut(&request) {
            if let Some(done) = p.done.take() {
                let _ = done.send(std::mem::take(&mut p.replies));
            }
        }
    }

    /// Runs the away script for a side of this node, starting its grace period.
    pub(in crate::registry::cluster) fn mark_away(
        &self,
        id: &SessionId,
        role: Role,
        conn: ConnId,
        _: &mut Context<Self>,
    ) {
        let store = Arc::clone(&self.store);
        let deadline = requests_deadline(self.settings.grace);
        let sid = Arc::clone(id);
        actix::spawn(async move {
            if let Err(e) = store.away(&sid, role, conn, deadline).await {
                warn!(session = %sid, error = %e, "could not start the grace period in Redis");
            }
        });
    }
}
