//! The in-memory registry of a single node (the embedded default): codes,
//! sessions, sides and their timers, in one actor. It never awaits a socket;
//! it tells them things through their pipes and `do_send` only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use relay_protocol::code::{ALPHABET, CODE_LEN};
use relay_protocol::{CloseCode, ErrorCode, PeerLeftReason, Role, ServerMessage, SessionCode};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::guessing::{CEILING_MESSAGE, FailedJoins, current_minute};
use super::member::Member;
use super::secret::{self, TokenHash};
use super::session::{Ended, Session, Side};
use super::timers::Timers;
use super::tombstones::Tombstones;
use super::{
    Departure, Gone, Join, Joined, Overflowed, Refusal, Register, Registered, Resume, Resumed,
    SessionId,
};
use crate::conns::ConnCommand;
use crate::metrics::Metrics;
use crate::queue::{EventEffect, Gap, Limits};

/// How long ended sessions and expired codes are remembered, so late clients
/// learn what happened (`RESUME_EXPIRED`, `EXPIRED_CODE`) rather than "unknown".
const REMEMBER_FOR: Duration = Duration::from_secs(600);

/// Most ended sides and expired codes remembered; beyond it the oldest are
/// forgotten (their clients then see `INVALID_RESUME` / `INVALID_CODE`).
const REMEMBER_MAX: usize = 100_000;

/// Attempts at drawing a code not in use before giving up with `UNAVAILABLE`.
/// With 4.8×10^8 codes this only fails when the code space is nearly full.
const CODE_ATTEMPTS: usize = 32;

/// How often sides are checked for a socket that vanished without `Gone`.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// How often idle rate-limiter entries are dropped.
const LIMITER_CLEANUP: Duration = Duration::from_secs(60);

/// Settings of the registry.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// How long a code is valid for joining.
    pub code_ttl: Duration,
    /// How long a dropped side is kept for resume.
    pub grace: Duration,
    /// Join attempts a minute per address; 0 = unlimited.
    pub join_rate: u32,
    /// Failed joins a minute (cluster-wide in a cluster); 0 = unlimited.
    pub failed_join_limit: u32,
    /// Bounds of every pipe.
    pub limits: Limits,
}

/// What a passed deadline does.
#[derive(Debug)]
enum Timer {
    /// The session's code can no longer be joined.
    Code(SessionId),
    /// The side stayed away for the whole grace period.
    Grace(SessionId, Member),
}

/// The single-node registry actor.
pub struct MemoryRegistry {
    settings: RegistrySettings,
    metrics: Arc<Metrics>,
    sessions: HashMap<SessionId, Session>,
    /// Live codes (joinable) to their session.
    codes: HashMap<SessionCode, SessionId>,
    expired_codes: Tombstones<SessionCode, ()>,
    ended: Tombstones<(SessionId, Role), Ended>,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// The ceiling on failed joins (code guessing).
    failed_joins: FailedJoins,
    timers: Timers<Timer>,
    /// The one actix timer, set for the earliest deadline.
    armed: Option<(Instant, SpawnHandle)>,
}

impl MemoryRegistry {
    /// A registry with no sessions.
    pub fn new(settings: RegistrySettings, metrics: Arc<Metrics>) -> Self {
        let limiter =
            NonZeroU32::new(settings.join_rate).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        let failed_joins = FailedJoins::new(settings.failed_join_limit);
        MemoryRegistry {
            settings,
            metrics,
            sessions: HashMap::new(),
            codes: HashMap::new(),
            expired_codes: Tombstones::new(REMEMBER_FOR, REMEMBER_MAX),
            ended: Tombstones::new(REMEMBER_FOR, REMEMBER_MAX),
            limiter,
            failed_joins,
            timers: Timers::default(),
            armed: None,
        }
    }

    /// Schedules `what` after `after` and returns its key.
    fn schedule(
        &mut self,
        after: Duration,
        what: Timer,
        ctx: &mut Context<Self>,
    ) -> super::timers::Key {
        let key = self.timers.insert(Instant::now() + after, what);
        self.arm(ctx);
        key
    }

    /// Sets the actix timer for the earliest deadline, if it is not set for it already.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(next) = self.timers.next() else {
            return;
        };
        if let Some((at, h)) = self.armed {
            if at <= next {
                return;
            }
            ctx.cancel_future(h);
        }
        let wait = next.saturating_duration_since(Instant::now());
        let h = ctx.run_later(wait, |act, ctx| {
            act.armed = None;
            act.fire(ctx);
        });
        self.armed = Some((next, h));
    }

    /// Acts on every passed deadline, then re-arms for the next.
    fn fire(&mut self, ctx: &mut Context<Self>) {
        for t in self.timers.take_due(Instant::now()) {
            match t {
                Timer::Code(id) => self.code_expired(&id),
                Timer::Grace(id, m) => {
                    if let Some(side) = self.sessions.get_mut(&id).and_then(|s| s.side_mut(m)) {
                        side.grace_timer = None;
                    }
                    debug!(session = %id, side = ?m, "grace period over");
                    self.end_side(&id, m, PeerLeftReason::Timeout);
                }
            }
        }
        self.arm(ctx);
    }

    fn new_code(&self) -> Option<SessionCode> {
        (0..CODE_ATTEMPTS).find_map(|_| {
            let drawn = nanoid::format(nanoid::rngs::default, &ALPHABET, CODE_LEN);
            let code = SessionCode::from_canonical(drawn).ok()?;
            // Recently expired codes are not reissued either: a person who
            // types an old code must not land in someone else's session.
            (!self.codes.contains_key(&code) && !self.expired_codes.contains(&code)).then_some(code)
        })
    }

    fn remember_ended(&mut self, id: &SessionId, role: Role, token: TokenHash, code: ErrorCode) {
        self.ended
            .insert((Arc::clone(id), role), Ended { token, code });
    }

    /// The code's joining window passed.
    fn code_expired(&mut self, id: &SessionId) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        s.code_timer = None;
        if !s.code_live {
            return;
        }
        s.code_live = false;
        self.codes.remove(&s.code);
        self.expired_codes.insert(s.code.clone(), ());
        debug!(session = %id, "code expired");
        if !s.has_guests() {
            // Counted only unjoined, so issued → joined → expired is a funnel.
            self.metrics.codes_expired.inc();
            self.end_session_code_expired(id);
        }
    }

    /// Ends a session whose code expired with no guest: the host may register again.
    fn end_session_code_expired(&mut self, id: &SessionId) {
        let Some(s) = self.sessions.remove(id) else {
            return;
        };
        let msg = ServerMessage::CodeExpired {
            code: s.code.to_string(),
        };
        s.tell(Member::Host, &msg, EventEffect::Detach);
        self.finish(s, ErrorCode::ResumeExpired);
    }

    /// Drops a removed session's timers and pipes; remembers its sides: the
    /// host with `host_code`, its guests as ended by the host.
    fn finish(&mut self, s: Session, host_code: ErrorCode) {
        if s.code_live {
            self.codes.remove(&s.code);
        }
        if let Some(k) = s.code_timer {
            self.timers.remove(k);
        }
        for (m, side) in s.sides() {
            if let Some(k) = side.grace_timer {
                self.timers.remove(k);
            }
            let code = match m {
                Member::Host => host_code,
                Member::Guest(_) => ErrorCode::MacDisconnected,
            };
            self.remember_ended(&s.id, m.role(), side.token, code);
        }
        for p in s.pipes() {
            p.close();
        }
        self.metrics.sessions_live.dec();
    }

    /// A side is gone for good.
    fn end_side(&mut self, id: &SessionId, m: Member, reason: PeerLeftReason) {
        match m {
            Member::Host => {
                let Some(s) = self.sessions.remove(id) else {
                    return;
                };
                info!(session = %id, reason = reason.as_str(), "mac left; session over");
                let msg = ServerMessage::error(ErrorCode::MacDisconnected);
                s.tell_others(m, &msg, EventEffect::Close(CloseCode::SessionOver));
                self.finish(s, ErrorCode::ResumeExpired);
            }
            Member::Guest(i) => {
                let Some(s) = self.sessions.get_mut(id) else {
                    return;
                };
                let Some(place) = s.places.get_mut(i) else {
                    return;
                };
                let Some(b) = place.guest.take() else { return };
                if let Some(k) = b.grace_timer {
                    self.timers.remove(k);
                }
                info!(session = %id, reason = reason.as_str(), "browser left");
                place.to_guest.end_receiver();
                s.tell(
                    Member::Host,
                    &ServerMessage::PeerLeft { reason },
                    EventEffect::None,
                );
                let unjoinable = !s.code_live && !s.has_guests();
                self.remember_ended(id, m.role(), b.token, ErrorCode::ResumeExpired);
                if unjoinable {
                    // No browser can join any more: the mac needs a new code.
                    self.end_session_code_expired(id);
                }
            }
        }
    }

    fn refuse_resume(&self, id: &str, role: Role, token: &str) -> Refusal {
        let key: (SessionId, Role) = (Arc::from(id), role);
        match self.ended.get(&key) {
            Some(e) if e.token.matches(token) => match e.code {
                ErrorCode::MacDisconnected => Refusal {
                    code: ErrorCode::MacDisconnected,
                    message: None,
                    close: Some(CloseCode::SessionOver),
                },
                code => code.into(),
            },
            _ => ErrorCode::InvalidResume.into(),
        }
    }

    fn join(&mut self, msg: Join) -> Result<Joined, Refusal> {
        if let Some(l) = &self.limiter {
            if l.check_key(&msg.client.addr).is_err() {
                self.metrics.rate_limited.with_label_values(&["join"]).inc();
                return Err(ErrorCode::RateLimited.into());
            }
        }
        let minute = current_minute();
        if self.failed_joins.refuses(minute) {
            self.metrics
                .rate_limited
                .with_label_values(&["failed_joins"])
                .inc();
            return Err(Refusal::with(ErrorCode::RateLimited, CEILING_MESSAGE));
        }
        let code = SessionCode::parse(&msg.code).map_err(|e| {
            Refusal::with(
                ErrorCode::InvalidCode,
                format!(
                    "That is not a session code ({e}). Codes are 6 letters and digits; type the code shown on the Mac."
                ),
            )
        })?;
        let Some(id) = self.codes.get(&code).cloned() else {
            self.failed_joins.failed(minute);
            return Err(if self.expired_codes.contains(&code) {
                ErrorCode::ExpiredCode.into()
            } else {
                ErrorCode::InvalidCode.into()
            });
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return Err(ErrorCode::InvalidCode.into());
        };
        let Some(i) = s.free_place() else {
            return Err(ErrorCode::AlreadyJoined.into());
        };
        let guest = Member::Guest(i);
        let token = secret::resume_token();
        let place = &mut s.places[i];
        place.to_guest.reset_receiver();
        let written = place.to_guest.attach(msg.client.receiver(), 0).unwrap_or(0);
        place.guest = Some(Side {
            token: TokenHash::of(&token),
            conn: Some((msg.client.conn, msg.client.commands.clone())),
            grace_timer: None,
        });
        // The host's count of what this guest sends starts at 0.
        s.to_host.reset_sender();
        s.tell(Member::Host, &ServerMessage::PeerJoined, EventEffect::None);
        if s.host.conn.is_none() {
            s.tell(guest, &ServerMessage::PeerDisconnected, EventEffect::None);
        }
        info!(session = %id, conn = %msg.client.conn, "browser joined");
        let link = s.link(guest, written).ok_or(ErrorCode::InvalidCode)?;
        Ok(Joined {
            resume_token: token,
            link,
        })
    }

    fn resume(&mut self, msg: Resume) -> Result<Resumed, Refusal> {
        let Resume {
            client,
            deadline: _,
            role,
            session_id,
            resume_token,
            last_seq,
        } = msg;
        let m = Member::from(role);
        let Some(s) = self.sessions.get_mut(session_id.as_str()) else {
            return Err(self.refuse_resume(&session_id, role, &resume_token));
        };
        let Some(side) = s
            .side_mut(m)
            .filter(|side| side.token.matches(&resume_token))
        else {
            return Err(self.refuse_resume(&session_id, role, &resume_token));
        };
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
        let result = match old {
            Some((old_conn, commands)) => {
                // The old connection still looked open: the token holder takes over.
                info!(session = %s.id, role = role.as_str(), old = %old_conn, new = %client.conn, "resume took over");
                commands.do_send(ConnCommand::Replaced);
                "takeover"
            }
            None => {
                info!(session = %s.id, role = role.as_str(), conn = %client.conn, "resumed");
                s.tell_others(m, &ServerMessage::PeerResumed, EventEffect::None);
                "ok"
            }
        };
        self.metrics.resumes.with_label_values(&[result]).inc();
        let accepted = s.accepted_from(m);
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
    fn reap_dead_connections(&mut self, ctx: &mut Context<Self>) {
        let dead: Vec<Gone> = self
            .sessions
            .values()
            .flat_map(|s| {
                s.sides().filter_map(move |(m, side)| {
                    let (conn, commands) = side.conn.as_ref()?;
                    (!commands.connected()).then(|| Gone {
                        session_id: Arc::clone(&s.id),
                        role: m.role(),
                        conn: *conn,
                        how: Departure::Dropped,
                    })
                })
            })
            .collect();
        for g in dead {
            debug!(session = %g.session_id, role = g.role.as_str(), conn = %g.conn, "reaped a vanished connection");
            self.gone(g, ctx);
        }
    }

    fn gone(&mut self, msg: Gone, ctx: &mut Context<Self>) {
        let m = Member::from(msg.role);
        let Some(s) = self.sessions.get_mut(&msg.session_id) else {
            return;
        };
        let Some(side) = s.side_mut(m) else {
            return;
        };
        if side.conn.as_ref().map(|(c, _)| *c) != Some(msg.conn) {
            return; // an older connection of a side that was taken over
        }
        side.conn = None;
        match msg.how {
            Departure::Left => self.end_side(&msg.session_id, m, PeerLeftReason::Left),
            Departure::Closed => self.end_side(&msg.session_id, m, PeerLeftReason::Closed),
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
                s.tell_others(m, &ServerMessage::PeerDisconnected, EventEffect::None);
                info!(session = %s.id, role = msg.role.as_str(), conn = %msg.conn, "side away");
            }
        }
    }
}

impl Actor for MemoryRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Sockets wait for set-up answers; a deep mailbox keeps bursts of
        // pairings from queueing at the sender side.
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(REAP_INTERVAL, |act, ctx| act.reap_dead_connections(ctx));
        ctx.run_interval(LIMITER_CLEANUP, |act, _| {
            if let Some(l) = &act.limiter {
                l.retain_recent();
                l.shrink_to_fit();
            }
            let now = Instant::now();
            act.ended.prune(now);
            act.expired_codes.prune(now);
        });
    }
}

fn unix_ms_in(d: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + d).as_millis() as u64
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
        // One guest place: a pairing.
        let s = Session::new(
            Arc::clone(&id),
            code.clone(),
            code_timer,
            host,
            1,
            self.settings.limits,
        );
        // unwrap-free: a new pipe accepts any receiver at 0.
        let written = s.to_host.attach(msg.client.receiver(), 0).unwrap_or(0);
        let link = s
            .link(Member::Host, written)
            .ok_or(ErrorCode::Unavailable)?;
        self.codes.insert(code.clone(), Arc::clone(&id));
        self.sessions.insert(Arc::clone(&id), s);
        self.metrics.codes_issued.inc();
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

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) -> Self::Result {
        let result = msg.deadline.check("join").and_then(|()| self.join(msg));
        let label = match &result {
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
        result
    }
}

impl Handler<Resume> for MemoryRegistry {
    type Result = Result<Resumed, Refusal>;

    fn handle(&mut self, msg: Resume, _: &mut Context<Self>) -> Self::Result {
        let result = msg.deadline.check("resume").and_then(|()| self.resume(msg));
        if let Err(r) = &result {
            let label = match r.code {
                ErrorCode::ResumeExpired => "resume_expired",
                ErrorCode::MacDisconnected => "mac_disconnected",
                ErrorCode::Unavailable => "unavailable",
                _ => "invalid_resume",
            };
            self.metrics.resumes.with_label_values(&[label]).inc();
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
        let m = Member::from(msg.role);
        if s.side_mut(m).is_none() {
            return;
        }
        // The pipe closed when it overflowed, so the side cannot have resumed since.
        self.metrics.resume_buffer_overflows.inc();
        warn!(session = %msg.session_id, role = msg.role.as_str(), "resume buffer overflowed; ending side");
        self.end_side(&msg.session_id, m, PeerLeftReason::Timeout);
    }
}

impl Handler<super::Stats> for MemoryRegistry {
    type Result = MessageResult<super::Stats>;

    fn handle(&mut self, _: super::Stats, _: &mut Context<Self>) -> Self::Result {
        let mut st = super::SessionStats::default();
        for s in self.sessions.values() {
            // Away when any side is: its peers wait for it.
            if !s.has_guests() {
                st.waiting += 1;
            } else if s.sides().all(|(_, side)| side.conn.is_some()) {
                st.paired += 1;
            } else {
                st.away += 1;
            }
            for p in s.pipes() {
                st.buffered_frames += p.held_entries() as i64;
                st.buffered_bytes += p.held_bytes() as i64;
            }
        }
        MessageResult(st)
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::registry::testing::{TestClient, settings, written};
    use crate::registry::{Deadline, Stats};

    /// A deadline that passed while the request waited in the mailbox.
    fn passed() -> Deadline {
        Deadline::at(Instant::now())
    }

    #[actix::test]
    async fn requests_past_their_deadline_are_refused_and_change_nothing() {
        let metrics = Arc::new(Metrics::new("memory-test").unwrap());
        let registry = MemoryRegistry::new(settings(), metrics).start();
        let mac = TestClient::start();
        let register = |deadline| Register {
            client: mac.client.clone(),
            deadline,
            client_id: None,
        };

        let late = registry.send(register(passed())).await.unwrap();
        assert_eq!(late.err().map(|r| r.code), Some(ErrorCode::Unavailable));
        assert_eq!(
            registry.send(Stats).await.unwrap().waiting,
            0,
            "no session made"
        );
        let r = registry
            .send(register(Deadline::for_request()))
            .await
            .unwrap()
            .unwrap();

        // A late join leaves the code to be joined in time.
        let browser = TestClient::start();
        let join = |deadline| Join {
            client: browser.client.clone(),
            deadline,
            code: r.code.clone(),
        };
        let late = registry.send(join(passed())).await.unwrap();
        assert_eq!(late.err().map(|r| r.code), Some(ErrorCode::Unavailable));
        let j = registry
            .send(join(Deadline::for_request()))
            .await
            .unwrap()
            .unwrap();

        // A late resume takes nothing over: the browser's pipe still delivers
        // to its connection, and the mac hears of no resume.
        let again = TestClient::start();
        let late = registry
            .send(Resume {
                client: again.client.clone(),
                deadline: passed(),
                role: Role::Browser,
                session_id: r.link.session_id.to_string(),
                resume_token: j.resume_token.clone(),
                last_seq: 0,
            })
            .await
            .unwrap();
        assert_eq!(late.err().map(|r| r.code), Some(ErrorCode::Unavailable));
        assert_eq!(written(&j.link, browser.conn()), Some(vec![]));
        assert_eq!(written(&r.link, mac.conn()).unwrap(), ["peer_joined"]);
        let stats = registry.send(Stats).await.unwrap();
        assert_eq!((stats.waiting, stats.paired, stats.away), (0, 1, 0));
        assert_eq!(browser.replaced(), 0);
    }
}
