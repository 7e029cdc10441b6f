//! The socket-facing messages of the cluster registry: register, join,
//! resume, gone, overflowed. Each runs its Lua script, then changes what this
//! node holds and tells the other nodes concerned.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use relay_protocol::code::{ALPHABET, CODE_LEN};
use relay_protocol::{CloseCode, ErrorCode, PeerLeftReason, Role, ServerMessage, SessionCode};
use tracing::{debug, info, warn};

use super::{ClusterRegistry, HANDOVER_WAIT, Here, Local, Pending};
use crate::cluster::envelope::{Control, EndReason};
use crate::cluster::store::{
    AwayOutcome, Counter, EndOutcome, Expiry, Holder, JoinOutcome, NodeId, Registration, ResumeFacts,
    ResumeOutcome, SideEnd, SideState, StoreError,
};
use crate::conns::{ConnCommand, ConnId};
use crate::pipe::Pipe;
use crate::queue::{EventEffect, Gap};
use crate::registry::deadline::too_late;
use crate::registry::guessing::{CEILING_MESSAGE, current_minute};
use crate::registry::secret::{self, TokenHash};
use crate::registry::{
    Departure, Gone, Join, Joined, Overflowed, REQUEST_BUDGET, Refusal, Register, Registered,
    Resume, Resumed, SessionId,
};

/// Attempts at a free code before answering `UNAVAILABLE`.
const CODE_ATTEMPTS: usize = 8;

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn unavailable(e: &StoreError) -> Refusal {
    warn!(error = %e, "Redis command failed");
    ErrorCode::Unavailable.into()
}

impl ClusterRegistry {
    /// Whether new sessions can be taken (Redis reachable, bus listening).
    fn healthy(&self) -> bool {
        self.redis.is_up() && self.bus.is_listening()
    }
}

impl Handler<Register> for ClusterRegistry {
    type Result = ResponseActFuture<Self, Result<Registered, Refusal>>;

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> Self::Result {
        if let Err(r) = msg.deadline.check("register") {
            return Box::pin(fut::ready(Err(r)));
        }
        if !self.healthy() {
            return Box::pin(fut::ready(Err(ErrorCode::Unavailable.into())));
        }
        let store = Arc::clone(&self.store);
        let ttl = self.settings.code_ttl;
        let conn = msg.client.conn;
        let deadline = msg.deadline;
        let attempt = async move {
            let sid = secret::session_id();
            let token = secret::resume_token();
            let hash = TokenHash::of(&token);
            for _ in 0..CODE_ATTEMPTS {
                // No new session once the answer is late: nothing to undo.
                deadline.check("register")?;
                let code = nanoid::format(nanoid::rngs::default, &ALPHABET, CODE_LEN);
                let expires_at = now_ms() + ttl.as_millis() as u64;
                let made = store
                    .register(&sid, &code, &hash, conn, ttl, expires_at)
                    .await
                    .map_err(|e| unavailable(&e))?;
                if made == Registration::Created {
                    return Ok((sid, token, code, expires_at));
                }
            }
            warn!("no free code found");
            Err::<(String, String, String, u64), Refusal>(ErrorCode::Unavailable.into())
        };
        Box::pin(attempt.into_actor(self).map(move |res, act, ctx| {
            let (sid, token, code, expires_at) = res?;
            if let Err(r) = msg.deadline.check("register") {
                // Nobody has seen the code: end the session it made.
                act.end_unseen(&sid, Role::Mac, conn, ctx);
                return Err(r);
            }
            let id: SessionId = Arc::from(sid.as_str());
            let mut local = Local::new(Arc::clone(&id));
            let to_mac = Pipe::new(act.settings.limits);
            let written = to_mac.attach(msg.client.receiver(), 0).unwrap_or(0);
            local.set_pipe(&act.dir, Role::Mac, Some(to_mac));
            local.set_pipe(&act.dir, Role::Browser, Some(Pipe::new(act.settings.limits)));
            local.mac = Some(Here { conn: Some((msg.client.conn, msg.client.commands.clone())) });
            let link = local.link(Role::Mac, written).ok_or(ErrorCode::Unavailable)?;
            act.sessions.insert(id, local);
            act.metrics.codes_issued.inc();
            act.metrics.sessions_live.inc();
            info!(session = %sid, conn = %msg.client.conn, client_id = msg.client_id.as_deref().unwrap_or(""), "registered");
            Ok(Registered { code, expires_at, resume_token: token, link })
        }))
    }
}

impl Handler<Join> for ClusterRegistry {
    type Result = ResponseActFuture<Self, Result<Joined, Refusal>>;

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) -> Self::Result {
        if let Err(r) = msg.deadline.check("join") {
            return self.join_done(Err(r));
        }
        let early = if let Some(l) = self
            .limiter
            .as_ref()
            .filter(|l| l.check_key(&msg.client.addr).is_err())
        {
            let _ = l;
            self.metrics.rate_limited.with_label_values(&["join"]).inc();
            Some(Refusal::from(ErrorCode::RateLimited))
        } else if !self.healthy() {
            Some(ErrorCode::Unavailable.into())
        } else {
            None
        };
        let code = match (early, SessionCode::parse(&msg.code)) {
            (Some(r), _) => return self.join_done(Err(r)),
            (None, Err(e)) => {
                return self.join_done(Err(Refusal::with(
                    ErrorCode::InvalidCode,
                    format!(
                        "That is not a session code ({e}). Codes are 6 letters and digits; type the code shown on the Mac."
                    ),
                )));
            }
            (None, Ok(c)) => c,
        };
        let store = Arc::clone(&self.store);
        let token = secret::resume_token();
        let hash = TokenHash::of(&token);
        let conn = msg.client.conn;
        let metrics = Arc::clone(&self.metrics);
        let failed_join_limit = self.settings.failed_join_limit;
        let claim = async move {
            let outcome = store
                .join(&code, &hash, conn, current_minute(), failed_join_limit)
                .await
                .map_err(|e| unavailable(&e))?;
            match outcome {
                JoinOutcome::Joined {
                    sid,
                    mac_node,
                    mac_state,
                } => Ok((sid, mac_node, mac_state)),
                JoinOutcome::Ceiling => {
                    metrics
                        .rate_limited
                        .with_label_values(&["failed_joins"])
                        .inc();
                    Err(Refusal::with(ErrorCode::RateLimited, CEILING_MESSAGE))
                }
                JoinOutcome::Expired => Err(ErrorCode::ExpiredCode.into()),
                JoinOutcome::Taken => Err(ErrorCode::AlreadyJoined.into()),
                JoinOutcome::Invalid => Err(ErrorCode::InvalidCode.into()),
            }
        };
        Box::pin(claim.into_actor(self).map(move |res, act, ctx| {
            let result = res.and_then(|(sid, mac_node, mac_state)| {
                if let Err(r) = msg.deadline.check("join") {
                    // Neither the mac nor its node heard of this browser yet:
                    // free the session for a join that is answered in time.
                    act.end_unseen(&sid, Role::Browser, conn, ctx);
                    return Err(r);
                }
                act.joined(&sid, mac_node, mac_state, &msg, token, ctx)
            });
            act.count_join(&result);
            result
        }))
    }
}

impl ClusterRegistry {
    fn count_join(&self, result: &Result<Joined, Refusal>) {
        let label = match result {
            Ok(_) => "ok",
            Err(r) => match r.code {
                ErrorCode::InvalidCode => "invalid_code",
                ErrorCode::ExpiredCode => "expired_code",
                ErrorCode::AlreadyJoined => "already_joined",
                ErrorCode::RateLimited => "rate_limited",
                _ => "unavailable",
            },
        };
        self.metrics.joins.with_label_values(&[label]).inc();
    }

    /// Ends side `role` of `sid`, which a script gave connection `conn` of
    /// this node but nobody was told of (its request's deadline passed
    /// before the commit): a mac's session goes with it; a browser's code
    /// can be joined again while it is live, and if it is not, the session
    /// ends as any whose browser left after its code expired.
    fn end_unseen(&self, sid: &str, role: Role, conn: ConnId, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let id: SessionId = Arc::from(sid);
        let sid = Arc::clone(&id);
        let end = async move { store.end_side(&sid, role, Holder::Conn(conn)).await };
        ctx.spawn(end.into_actor(self).map(move |res, act, ctx| match res {
            Ok(EndOutcome::Ended(facts)) => {
                if role == Role::Browser && !facts.live {
                    act.expire_unjoinable(&id, ctx);
                }
            }
            Ok(EndOutcome::Gone | EndOutcome::Stale) => {}
            Err(e) => {
                warn!(session = %id, role = role.as_str(), error = %e, "could not end a side nobody was told of");
            }
        }));
    }

    fn join_done(
        &self,
        r: Result<Joined, Refusal>,
    ) -> ResponseActFuture<Self, Result<Joined, Refusal>> {
        self.count_join(&r);
        Box::pin(fut::ready(r))
    }

    /// The browser won the session `sid`: set it up here.
    fn joined(
        &mut self,
        sid: &SessionId,
        mac_node: NodeId,
        mac_state: SideState,
        msg: &Join,
        token: String,
        ctx: &mut Context<Self>,
    ) -> Result<Joined, Refusal> {
        let id = Arc::clone(sid);
        let limits = self.settings.limits;
        let mac_here =
            *mac_node == *self.node && self.sessions.get(&id).is_some_and(|l| l.mac.is_some());
        let rx = msg.client.receiver();
        let here = Here {
            conn: Some((msg.client.conn, msg.client.commands.clone())),
        };
        if mac_here {
            // A pair on one node: local pipes, as on a single node.
            let local = self.sessions.get_mut(&id).ok_or(ErrorCode::InvalidCode)?;
            let (to_b, to_m) = (local.to_browser.clone(), local.to_mac.clone());
            let (Some(to_b), Some(to_m)) = (to_b, to_m) else {
                return Err(ErrorCode::InvalidCode.into());
            };
            to_b.reset_receiver();
            let written = to_b.attach(rx, 0).unwrap_or(0);
            to_m.reset_sender();
            to_m.start_pairing();
            local.browser = Some(here);
            local.browser_node = None;
            local.tell(Role::Mac, &ServerMessage::PeerJoined, EventEffect::None);
            if local.mac.as_ref().is_some_and(|m| m.conn.is_none()) {
                local.tell(
                    Role::Browser,
                    &ServerMessage::PeerDisconnected,
                    EventEffect::None,
                );
            }
            let link = local
                .link(Role::Browser, written)
                .ok_or(ErrorCode::InvalidCode)?;
            let counters = vec![
                (Counter::MacReceiveBase, to_m.base()),
                (Counter::MacSendBase, to_b.accepted()),
            ];
            self.checkpoint(&id, counters);
            info!(session = %sid, conn = %msg.client.conn, "browser joined (same node)");
            return Ok(Joined {
                resume_token: token,
                link,
            });
        }
        // The mac is on another node (or nowhere: its node died).
        let mut local = self
            .sessions
            .remove(&id)
            .unwrap_or_else(|| Local::new(Arc::clone(&id)));
        let to_b = Pipe::fed_from_peer(limits, 0, 0, self.peer(&id, Role::Browser, &mac_node));
        let written = to_b.attach(rx, 0).unwrap_or(0);
        let to_m = Pipe::sending_to_peer(limits, self.peer(&id, Role::Mac, &mac_node), 0, 0);
        if mac_state == SideState::Away {
            to_m.peer_away();
        }
        local.set_pipe(&self.dir, Role::Browser, Some(to_b));
        local.set_pipe(&self.dir, Role::Mac, Some(to_m));
        local.browser = Some(here);
        local.mac_node = Some(Arc::clone(&mac_node));
        if mac_state == SideState::Away {
            local.tell(
                Role::Browser,
                &ServerMessage::PeerDisconnected,
                EventEffect::None,
            );
        }
        let link = local
            .link(Role::Browser, written)
            .ok_or(ErrorCode::InvalidCode)?;
        self.sessions.insert(Arc::clone(&id), local);
        self.send(
            &mac_node,
            Control::Joined {
                sid: sid.to_string(),
                node: self.node.to_string(),
            },
            ctx,
        );
        info!(session = %sid, conn = %msg.client.conn, mac_node = %mac_node, "browser joined (cross-node)");
        Ok(Joined {
            resume_token: token,
            link,
        })
    }
}

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
            match outcome {
                ResumeOutcome::Resumed(facts) => Ok(facts),
                ResumeOutcome::Ended(end @ SideEnd::MacDisconnected) => Err(Refusal {
                    code: end.code(),
                    message: None,
                    close: Some(CloseCode::SessionOver),
                }),
                ResumeOutcome::Ended(end @ SideEnd::ResumeExpired) => Err(end.code().into()),
                ResumeOutcome::Invalid => Err(ErrorCode::InvalidResume.into()),
            }
        };
        Box::pin(claim.into_actor(self).then(move |res, act, ctx| {
            let step: ResponseActFuture<Self, Result<Resumed, Refusal>> = match res {
                Err(r) => {
                    let res = Err(r);
                    act.count_resume(&res, false);
                    Box::pin(fut::ready(res))
                }
                Ok(facts) => {
                    // The side still looked connected: this resume takes it over.
                    let takeover = !facts.was_away();
                    Box::pin(act.resume_here(msg, facts, ctx).map(move |res, act, _| {
                        act.count_resume(&res, takeover);
                        res
                    }))
                }
            };
            step
        }))
    }
}

fn gap_refusal(gap: Gap, last_seq: u64) -> Refusal {
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
    fn count_resume(&self, res: &Result<Resumed, Refusal>, takeover: bool) {
        let label = match res {
            Ok(_) if takeover => "takeover",
            Ok(_) => "ok",
            Err(r) => match r.code {
                ErrorCode::ResumeExpired => "resume_expired",
                ErrorCode::MacDisconnected => "mac_disconnected",
                ErrorCode::Unavailable => "unavailable",
                _ => "invalid_resume",
            },
        };
        self.metrics.resumes.with_label_values(&[label]).inc();
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
            }) = local.side_mut(role).take()
            {
                if Some(c) == facts.old_conn && c != msg.client.conn {
                    cmd.do_send(ConnCommand::Replaced);
                }
            }
        } else {
            *local.side_mut(role) = None;
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
        *local.side_mut(role) = Some(Here {
            conn: Some((msg.client.conn, msg.client.commands.clone())),
        });
        self.sessions.insert(Arc::clone(&id), local);

        let request = self.next_request;
        self.next_request += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.insert(
            request,
            Pending {
                waiting: ask.len(),
                replies: Vec::new(),
                done: Some(tx),
            },
        );
        if ask.is_empty() {
            self.finish_pending(request);
        }
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
        let wait = async move { tokio::time::timeout_at(until, rx).await };
        Box::pin(wait.into_actor(self).map(move |replies, act, ctx| {
            let partial = act.pending.remove(&request).map(|p| p.replies).unwrap_or_default();
            let replies = match replies {
                Ok(Ok(r)) => r,
                _ if msg.deadline.has_passed() => partial,
                _ => {
                    warn!(session = %id, "handover did not come in time; going on with what is here");
                    partial
                }
            };
            act.resumed(msg, facts, replies, sbase, p_last, ctx)
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
        for r in replies {
            if let Control::Handover {
                received: rec,
                events: ev,
                error,
                ..
            } = r
            {
                if let Some(e) = error {
                    warn!(session = %id, error = %e, "peer node cannot replay");
                    self.side_lost(&id, role, &msg, ctx);
                    return Err(Refusal::with(
                        ErrorCode::InvalidResume,
                        format!("This session cannot be resumed: {e}. Start a new session."),
                    ));
                }
                events.extend(ev);
                received = received.or(rec);
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
        let peer_here = local.side(role.peer()).is_some();
        let accepted_p;
        if peer_here {
            // The peer is here: the pipe toward the side is local now.
            let to_side = local.pipe(role).cloned().ok_or(ErrorCode::ResumeExpired)?;
            let to_peer = local
                .pipe(role.peer())
                .cloned()
                .ok_or(ErrorCode::ResumeExpired)?;
            to_peer.set_ack_to(None);
            accepted_p = to_peer.pairing_count();
            to_peer.set_accepted(sbase + accepted_p);
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
        let received = received.or(local.peer_read.take());
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
                if facts.peer_away() {
                    out.peer_away();
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

    /// A resume that moved the side here, and told the other nodes so, did
    /// not commit in time. The side stays homed here but away, as if its new
    /// connection had dropped as it attached: its grace period runs, its
    /// peer hears `peer_disconnected` (a peer on another node first heard
    /// `peer_resumed` from the move, unless the side had been connected),
    /// and it can resume again, here or anywhere. Nothing is undone if the
    /// side is no longer this resume's (a resume elsewhere took it).
    fn abandon_resume(
        &mut self,
        id: &SessionId,
        role: Role,
        conn: ConnId,
        facts: &ResumeFacts,
        ctx: &mut Context<Self>,
    ) {
        let Some(local) = self.sessions.get_mut(id) else {
            return;
        };
        if local.side(role).and_then(|h| h.conn.as_ref()).map(|(c, _)| *c) != Some(conn) {
            return;
        }
        *local.side_mut(role) = Some(Here { conn: None });
        if let Some(p) = local.pipe(role) {
            if p.remote_node().is_some() {
                // Toward the side's old node, which gave it up: hold frames
                // within the away limits instead.
                p.peer_away();
            } else if let Some(old) = facts.old_conn {
                // A takeover here replaced the old connection, which never
                // says it is gone.
                p.detach(old);
            }
        }
        match local.node_of(role.peer()).cloned() {
            Some(peer_node) => {
                let c = Control::Away {
                    sid: id.to_string(),
                    role,
                };
                self.send(&peer_node, c, ctx);
            }
            // A peer here heard nothing of a takeover; of a side that was
            // away it heard `peer_disconnected` already.
            None if !facts.was_away() => local.tell(
                role.peer(),
                &ServerMessage::PeerDisconnected,
                EventEffect::None,
            ),
            None => {}
        }
        warn!(session = %id, role = role.as_str(), conn = %conn, "resume not committed by its deadline; the side is away");
        self.mark_away(id, role, conn, ctx);
    }

    /// A resume failed after the script moved the side here: mark it away
    /// again so its grace period runs.
    fn side_lost(&mut self, id: &SessionId, role: Role, msg: &Resume, ctx: &mut Context<Self>) {
        if let Some(local) = self.sessions.get_mut(id) {
            *local.side_mut(role) = None;
        }
        self.forget_if_empty(id);
        self.mark_away(id, role, msg.client.conn, ctx);
    }

    /// Collects a handover reply; finishes the resume when all are in.
    pub(super) fn handover(&mut self, request: u64, reply: Control) {
        let Some(p) = self.pending.get_mut(&request) else {
            return;
        };
        p.replies.push(reply);
        p.waiting = p.waiting.saturating_sub(1);
        if p.waiting == 0 {
            self.finish_pending(request);
        }
    }

    fn finish_pending(&mut self, request: u64) {
        if let Some(p) = self.pending.get_mut(&request) {
            if let Some(done) = p.done.take() {
                let _ = done.send(std::mem::take(&mut p.replies));
            }
        }
    }

    /// Runs the away script for a side of this node, starting its grace period.
    pub(super) fn mark_away(
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
            match local.node_of(role.peer()).cloned() {
                Some(pn) => {
                    let c = Control::Away {
                        sid: id.to_string(),
                        role,
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

fn requests_deadline(grace: std::time::Duration) -> u64 {
    now_ms() + grace.as_millis() as u64
}

impl Handler<Gone> for ClusterRegistry {
    type Result = ();

    fn handle(&mut self, msg: Gone, ctx: &mut Context<Self>) {
        let Some(local) = self.sessions.get_mut(&msg.session_id) else {
            return;
        };
        let Some(here) = local.side_mut(msg.role).as_mut() else {
            return;
        };
        if here.conn.as_ref().map(|(c, _)| *c) != Some(msg.conn) {
            return; // an older connection of a side that was taken over
        }
        here.conn = None;
        match msg.how {
            Departure::Left => {
                self.end_here(msg.session_id, msg.role, msg.conn, EndReason::Left, ctx)
            }
            Departure::Closed => {
                self.end_here(msg.session_id, msg.role, msg.conn, EndReason::Closed, ctx)
            }
            Departure::Dropped => {
                let role = msg.role;
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
    pub(super) fn side_ended(
        &mut self,
        id: &SessionId,
        role: Role,
        reason: EndReason,
        _: &mut Context<Self>,
    ) {
        let Some(mut local) = self.sessions.remove(id) else {
            return;
        };
        let peer_here = local.side(role.peer()).is_some();
        if role == Role::Mac && local.mac.is_some() {
            // `sessions_live` counts sessions whose mac is homed on this node.
            self.metrics.sessions_live.dec();
        }
        *local.side_mut(role) = None;
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
                    if let Some(p) = &local.to_browser {
                        p.end_receiver();
                    }
                    if let Some(p) = &local.to_mac {
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
                    if let Some(p) = &local.to_browser {
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
    pub(super) fn expire_unjoinable(&self, id: &SessionId, ctx: &mut Context<Self>) {
        self.run_expire(id, Expiry::Unjoinable, ctx);
    }
}

impl Handler<Overflowed> for ClusterRegistry {
    type Result = ();

    fn handle(&mut self, msg: Overflowed, ctx: &mut Context<Self>) {
        self.metrics.resume_buffer_overflows.inc();
        warn!(session = %msg.session_id, role = msg.role.as_str(), "resume buffer overflowed; ending side");
        // The absent side may be homed anywhere: end it unconditionally.
        let store = Arc::clone(&self.store);
        let role = msg.role;
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

#[cfg(test)]
mod tests;
