//! What sockets ask of the in-memory registry (register, join, resume) and
//! tell it (a side gone, a buffer overflowed).

use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{CloseCode, ErrorCode, GuestLeftReason, Role, ServerMessage, SessionCode};
use tracing::{debug, info, warn};

use super::super::guessing::current_minute;
use super::super::member::Member;
use super::super::secret::{self, TokenHash};
use super::super::session::{Change, RoomRules, Session, Side};
use super::super::{
    Departure, Gone, Join, Joined, Overflowed, Refusal, Register, Registered, Resume, Resumed,
    SessionId,
};
use super::{MemoryRegistry, Timer, unix_ms_in};
use crate::client_key::ClientKey;
use crate::conns::ConnCommand;
use crate::queue::{EventEffect, Gap};

impl MemoryRegistry {
    fn refuse_resume(&self, id: &str, role: Role, token: &str) -> Refusal {
        let key: (SessionId, Role, TokenHash) = (Arc::from(id), role, TokenHash::of(token));
        match self.ended.get(&key) {
            Some(e) if e.token.matches(token) => match e.code {
                code @ (ErrorCode::MacDisconnected | ErrorCode::Removed) => Refusal {
                    code,
                    message: None,
                    close: Some(CloseCode::SessionOver),
                },
                code => code.into(),
            },
            _ => ErrorCode::InvalidResume.into(),
        }
    }

    fn join(&mut self, msg: Join, ctx: &mut Context<Self>) -> Result<Joined, Refusal> {
        if let Some(l) = &self.limiter {
            if l.check_key(&ClientKey::of(msg.client.addr)).is_err() {
                self.metrics.rate_limited.with_label_values(&["join"]).inc();
                return Err(ErrorCode::RateLimited.into());
            }
        }
        let code = SessionCode::parse(&msg.code).map_err(|e| {
            Refusal::with(
                ErrorCode::InvalidCode,
                format!(
                    "That is not a session code ({e}). Codes are 6 letters and digits (8 while the relay is under attack); type the code shown on the Mac."
                ),
            )
        })?;
        let Some(id) = self.codes.get(&code).cloned() else {
            // No join is refused for guessing: past the limit new codes are long.
            let now = tokio::time::Instant::now();
            self.failed_joins.failed(current_minute(), now);
            self.note_attack(now);
            return Err(if self.expired_codes.contains(&code) {
                ErrorCode::ExpiredCode.into()
            } else {
                ErrorCode::InvalidCode.into()
            });
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return Err(ErrorCode::InvalidCode.into());
        };
        let token = secret::resume_token();
        let in_room = s.room.is_some();
        let Some(i) = s.take_place(msg.name, &token) else {
            return Err(if in_room {
                ErrorCode::RoomFull
            } else {
                ErrorCode::AlreadyJoined
            }
            .into());
        };
        let guest = Member::Guest(i);
        let place = &mut s.places[i];
        place.to_guest.reset_receiver();
        let written = place.to_guest.attach(msg.client.receiver(), 0).unwrap_or(0);
        place.guest = Some(Side {
            token: TokenHash::of(&token),
            conn: Some((msg.client.conn, msg.client.commands.clone())),
            grace_timer: None,
        });
        let seat = place.seat.as_ref().map(|seat| (seat.id, seat.admitted()));
        if !in_room {
            // The host's count of what this guest sends starts at 0.
            s.to_host.reset_sender();
        }
        s.announce(guest, Change::Joined);
        if s.host.conn.is_none() {
            s.tell(guest, &ServerMessage::PeerDisconnected, EventEffect::None);
        }
        info!(session = %id, conn = %msg.client.conn, guest = ?seat.map(|s| s.0), "browser joined");
        let link = s.link(guest, written).ok_or(ErrorCode::InvalidCode)?;
        match seat {
            None => Ok(Joined {
                resume_token: Some(token),
                guest_id: None,
                link,
            }),
            Some((guest_id, true)) => {
                s.admit(i);
                s.announce(guest, Change::Admitted);
                self.metrics
                    .room_decisions
                    .with_label_values(&["auto"])
                    .inc();
                Ok(Joined {
                    resume_token: Some(token),
                    guest_id: Some(guest_id),
                    link,
                })
            }
            Some((guest_id, false)) => {
                let timer = Timer::Admit(Arc::clone(&id), guest_id);
                let key = self.schedule_admit(timer, ctx);
                if let Some(seat) = self
                    .sessions
                    .get_mut(&id)
                    .and_then(|s| s.places.get_mut(i))
                    .and_then(|p| p.seat.as_mut())
                {
                    seat.admit_timer = Some(key);
                }
                Ok(Joined {
                    resume_token: None,
                    guest_id: Some(guest_id),
                    link,
                })
            }
        }
    }

    fn resume(&mut self, msg: Resume) -> Result<Resumed, Refusal> {
        let Resume {
            client,
            deadline: _,
            role,
            session_id,
            resume_token,
            last_seq,
            // One node keeps the merged order: `lastSeq` says it all.
            guest_seqs: _,
        } = msg;
        let Some(s) = self.sessions.get_mut(session_id.as_str()) else {
            return Err(self.refuse_resume(&session_id, role, &resume_token));
        };
        // A guest still waiting for its host has no token to resume with.
        let Some(m) = s
            .member_with_token(role, &resume_token)
            .filter(|&m| s.is_in(m))
        else {
            return Err(self.refuse_resume(&session_id, role, &resume_token));
        };
        let side = s.side_mut(m).expect("member found above");
        let old = side.conn.take();
        let grace = side.grace_timer.take();
        let attached = s
            .pipe_to(m)
            .ok_or(Gap::Closed)
            .and_then(|p| p.attach(client.receiver(), last_seq));
        let written = match attached {
            Ok(w) => w,
            Err(gap) => {
                // Put the side back as it was: a bad resume changes nothing.
                let side = s.side_mut(m).expect("side checked above");
                side.conn = old;
                side.grace_timer = grace;
                let why = match gap {
                    Gap::Closed => return Err(ErrorCode::ResumeExpired.into()),
                    Gap::Ahead { sent } => {
                        format!("lastSeq {last_seq} is more than the {sent} frames sent to you")
                    }
                    Gap::Behind { oldest } => format!(
                        "lastSeq {last_seq} is behind frames you already acknowledged (the oldest held is {oldest})"
                    ),
                };
                return Err(Refusal::with(
                    ErrorCode::InvalidResume,
                    format!("This session cannot be resumed: {why}. Start a new session."),
                ));
            }
        };
        let side = s.side_mut(m).expect("side checked above");
        side.conn = Some((client.conn, client.commands.clone()));
        if let Some(k) = grace {
            self.timers.remove(k);
        }
        let takeover = match old {
            Some((old_conn, commands)) => {
                // The old connection still looked open: the token holder takes over.
                info!(session = %s.id, role = role.as_str(), old = %old_conn, new = %client.conn, "resume took over");
                commands.do_send(ConnCommand::Replaced);
                true
            }
            None => {
                info!(session = %s.id, role = role.as_str(), conn = %client.conn, "resumed");
                s.announce(m, Change::Back);
                false
            }
        };
        self.metrics.resume_answered(Ok(takeover));
        let accepted = s.fence(m, client.conn);
        let link = s.link(m, written).ok_or(ErrorCode::ResumeExpired)?;
        Ok(Resumed {
            accepted,
            events: Vec::new(),
            link,
        })
    }

    /// Treats sides whose socket actor stopped without saying so as dropped.
    ///
    /// A socket that dies while waiting for an answer (its client vanished
    /// right after `join`) never learns it joined, so it never sends `Gone`.
    pub(super) fn reap_dead_connections(&mut self, ctx: &mut Context<Self>) {
        let dead: Vec<Gone> = self
            .sessions
            .values()
            .flat_map(|s| {
                s.sides().filter_map(move |(m, side)| {
                    let (conn, commands) = side.conn.as_ref()?;
                    (!commands.connected()).then(|| Gone {
                        session_id: Arc::clone(&s.id),
                        member: m,
                        conn: *conn,
                        how: Departure::Dropped,
                    })
                })
            })
            .collect();
        // Through the mailbox, behind the socket's own `Gone` (sent as it
        // stopped, before it counted as disconnected): acting here at once
        // took a socket that closed with 1000 for a dropped one, and its
        // session stayed away for the grace period instead of ending.
        let me = ctx.address();
        for g in dead {
            debug!(session = %g.session_id, side = ?g.member, conn = %g.conn, "reaped a vanished connection");
            me.do_send(g);
        }
    }

    pub(super) fn gone(&mut self, msg: Gone, ctx: &mut Context<Self>) {
        let m = msg.member;
        let Some(s) = self.sessions.get_mut(&msg.session_id) else {
            return;
        };
        let waiting = !s.is_in(m);
        let Some(side) = s.side_mut(m) else {
            return;
        };
        if side.conn.as_ref().map(|(c, _)| *c) != Some(msg.conn) {
            return; // an older connection of a side that was taken over
        }
        side.conn = None;
        match msg.how {
            Departure::Left => self.end_side(&msg.session_id, m, GuestLeftReason::Left),
            // A guest still waiting has no token: it cannot come back.
            Departure::Closed => self.end_side(&msg.session_id, m, GuestLeftReason::Closed),
            Departure::Dropped if waiting => {
                self.end_side(&msg.session_id, m, GuestLeftReason::Closed)
            }
            Departure::Dropped => {
                if let Some(p) = s.pipe_to(m) {
                    p.detach(msg.conn);
                }
                let timer = Timer::Grace(Arc::clone(&msg.session_id), m);
                let key = self.schedule(self.settings.grace, timer, ctx);
                let Some(s) = self.sessions.get_mut(&msg.session_id) else {
                    return;
                };
                let side = s.side_mut(m).expect("side checked above");
                side.grace_timer = Some(key);
                s.announce(m, Change::Away);
                info!(session = %s.id, side = ?m, conn = %msg.conn, "side away");
            }
        }
    }
}

impl Handler<Register> for MemoryRegistry {
    type Result = Result<Registered, Refusal>;

    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) -> Self::Result {
        // Checked and committed in one step: nothing to undo, ever.
        msg.deadline.check("register")?;
        let Some(code) = self.new_code() else {
            warn!(live = self.codes.len(), "no free code found");
            return Err(ErrorCode::Unavailable.into());
        };
        let id: SessionId = Arc::from(secret::session_id());
        let token = secret::resume_token();
        let code_timer = self.schedule(self.settings.code_ttl, Timer::Code(Arc::clone(&id)), ctx);
        let host = Side {
            token: TokenHash::of(&token),
            conn: Some((msg.client.conn, msg.client.commands.clone())),
            grace_timer: None,
        };
        let room = msg.room.map(|r| RoomRules {
            max_guests: r.max_guests as usize,
            admit: r.admit,
        });
        let s = Session::new(
            Arc::clone(&id),
            code.clone(),
            code_timer,
            host,
            room,
            self.settings.limits,
        );
        // unwrap-free: a new pipe accepts any receiver at 0.
        let written = s.to_host.attach(msg.client.receiver(), 0).unwrap_or(0);
        let link = s
            .link(Member::Host, written)
            .ok_or(ErrorCode::Unavailable)?;
        self.codes.insert(code.clone(), Arc::clone(&id));
        self.sessions.insert(Arc::clone(&id), s);
        self.metrics.code_issued(code.as_str());
        self.metrics.sessions_live.inc();
        info!(session = %id, conn = %msg.client.conn, client_id = msg.client_id.as_deref().unwrap_or(""), "registered");
        Ok(Registered {
            code: code.to_string(),
            expires_at: unix_ms_in(self.settings.code_ttl),
            resume_token: token,
            link,
        })
    }
}

impl Handler<Join> for MemoryRegistry {
    type Result = Result<Joined, Refusal>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        let result = msg
            .deadline
            .check("join")
            .and_then(|()| self.join(msg, ctx));
        let answer = result.as_ref().map(|_| ()).map_err(|r| r.code);
        self.metrics.join_answered(answer);
        result
    }
}

impl Handler<Resume> for MemoryRegistry {
    type Result = Result<Resumed, Refusal>;

    fn handle(&mut self, msg: Resume, _: &mut Context<Self>) -> Self::Result {
        let result = msg.deadline.check("resume").and_then(|()| self.resume(msg));
        if let Err(r) = &result {
            // Successes are counted where they are told from takeovers.
            self.metrics.resume_answered(Err(r.code));
        }
        result
    }
}

impl Handler<Gone> for MemoryRegistry {
    type Result = ();

    fn handle(&mut self, msg: Gone, ctx: &mut Context<Self>) {
        self.gone(msg, ctx);
    }
}

impl Handler<Overflowed> for MemoryRegistry {
    type Result = ();

    fn handle(&mut self, msg: Overflowed, _: &mut Context<Self>) {
        let Some(s) = self.sessions.get_mut(&msg.session_id) else {
            return;
        };
        let m = msg.member;
        if s.side_mut(m).is_none() {
            return;
        }
        // The pipe closed when it overflowed, so the side cannot have resumed
        // since; a pipe still open is a new guest's in a reused place.
        if s.pipe_to(m)
            .is_some_and(|p| !matches!(p.check(0), Err(Gap::Closed)))
        {
            return;
        }
        self.metrics.resume_buffer_overflows.inc();
        warn!(session = %msg.session_id, side = ?m, "resume buffer overflowed; ending side");
        self.end_side(&msg.session_id, m, GuestLeftReason::Timeout);
    }
}
