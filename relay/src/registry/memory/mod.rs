//! The in-memory registry of a single node (the embedded default): codes,
//! sessions, sides and their timers, in one actor. It never awaits a socket;
//! it tells them things through their pipes and `do_send` only.

mod requests;
mod room;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timer_tests;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use relay_protocol::code::ALPHABET;
use relay_protocol::{
    CloseCode, ErrorCode, GuestId, GuestLeftReason, Role, ServerMessage, SessionCode,
};
use tokio::time::Instant;
use tracing::{debug, info};

use super::SessionId;
use super::guessing::{FailedJoins, code_len, note_attack};
use super::member::Member;
use super::secret::TokenHash;
use super::session::{Change, Ended, Session};
use super::timers::Timers;
use super::tombstones::Tombstones;
use crate::client_key::ClientKey;
use crate::conns::ConnCommand;
use crate::metrics::Metrics;
use crate::queue::{EventEffect, Limits};

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
    /// Failed joins a minute (cluster-wide in a cluster) past which the relay
    /// is under attack (long codes); 0 = never.
    pub failed_join_limit: u32,
    /// How long the relay stays under attack after the limit was passed.
    pub under_attack_for: Duration,
    /// Bounds of every pipe.
    pub limits: Limits,
    /// How long a room guest waits for its host's answer.
    pub admit_timeout: Duration,
}

/// What a passed deadline does.
#[derive(Debug)]
enum Timer {
    /// The session's code can no longer be joined.
    Code(SessionId),
    /// The side stayed away for the whole grace period.
    Grace(SessionId, Member),
    /// The room's host did not answer this guest's join in time.
    Admit(SessionId, GuestId),
}

/// The single-node registry actor.
pub struct MemoryRegistry {
    settings: RegistrySettings,
    metrics: Arc<Metrics>,
    sessions: HashMap<SessionId, Session>,
    /// Live codes (joinable) to their session.
    codes: HashMap<SessionCode, SessionId>,
    expired_codes: Tombstones<SessionCode, ()>,
    /// Ended sides by session, endpoint and token (a room has many guests).
    ended: Tombstones<(SessionId, Role, TokenHash), Ended>,
    limiter: Option<DefaultKeyedRateLimiter<ClientKey>>,
    /// Failed joins this minute, and the attack they make (code guessing).
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
        let failed_joins = FailedJoins::new(settings.failed_join_limit, settings.under_attack_for);
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
                    self.end_side(&id, m, GuestLeftReason::Timeout);
                }
                Timer::Admit(id, guest_id) => {
                    let Some(s) = self.sessions.get_mut(&id) else {
                        continue;
                    };
                    let Some(i) = s.place_of(guest_id) else {
                        continue;
                    };
                    if let Some(seat) = s.places[i].seat.as_mut() {
                        seat.admit_timer = None;
                    }
                    debug!(session = %id, guest_id, "host did not answer a join in time");
                    self.metrics
                        .room_decisions
                        .with_label_values(&["timeout"])
                        .inc();
                    self.end_guest(&id, i, ErrorCode::Denied, GuestLeftReason::Timeout);
                }
            }
        }
        self.arm(ctx);
    }

    fn new_code(&mut self) -> Option<SessionCode> {
        let len = code_len(self.note_attack(Instant::now()));
        (0..CODE_ATTEMPTS).find_map(|_| {
            let drawn = nanoid::format(nanoid::rngs::default, &ALPHABET, len);
            let code = SessionCode::from_canonical(drawn).ok()?;
            // Recently expired codes are not reissued either: a person who
            // types an old code must not land in someone else's session.
            (!self.codes.contains_key(&code) && !self.expired_codes.contains(&code)).then_some(code)
        })
    }

    /// Whether the relay is under attack at `now`, kept in the gauge too.
    fn note_attack(&self, now: Instant) -> bool {
        let on = self.failed_joins.under_attack(now);
        note_attack(&self.metrics.under_attack, on);
        on
    }

    fn remember_ended(&mut self, id: &SessionId, role: Role, token: TokenHash, code: ErrorCode) {
        self.ended
            .insert((Arc::clone(id), role, token), Ended { token, code });
    }

    /// Schedules a waiting guest's denial after the admit timeout.
    fn schedule_admit(&mut self, timer: Timer, ctx: &mut Context<Self>) -> super::timers::Key {
        self.schedule(self.settings.admit_timeout, timer, ctx)
    }

    /// The room's host ended the guest in place `i` (or its join timed
    /// out): its socket is told `code` and closed at once, the host hears
    /// `reason`, and its token no longer resumes.
    fn end_guest(&mut self, id: &SessionId, i: usize, code: ErrorCode, reason: GuestLeftReason) {
        let Some(s) = self.sessions.get(id) else {
            return;
        };
        if let Some((_, commands)) = s.side(Member::Guest(i)).and_then(|g| g.conn.as_ref()) {
            commands.do_send(ConnCommand::Ended(code));
        }
        self.end_side(id, Member::Guest(i), reason);
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
    fn end_side(&mut self, id: &SessionId, m: Member, reason: GuestLeftReason) {
        match m {
            Member::Host => {
                let Some(s) = self.sessions.remove(id) else {
                    return;
                };
                info!(session = %id, ?reason, "mac left; session over");
                let msg = ServerMessage::error(ErrorCode::MacDisconnected);
                s.tell_others(m, &msg, EventEffect::Close(CloseCode::SessionOver));
                self.finish(s, ErrorCode::ResumeExpired);
            }
            Member::Guest(i) => {
                let Some(s) = self.sessions.get_mut(id) else {
                    return;
                };
                if s.side(m).is_none() {
                    return;
                }
                // Told before the place is freed: the host hears the guest's id.
                s.announce(m, Change::Left(reason));
                let admit_timer = s.places[i].seat.as_ref().and_then(|x| x.admit_timer);
                let Some(b) = s.free_place(i) else { return };
                for k in [b.grace_timer, admit_timer].into_iter().flatten() {
                    self.timers.remove(k);
                }
                info!(session = %id, side = ?m, ?reason, "browser left");
                let unjoinable = !s.code_live && !s.has_guests();
                let code = match reason {
                    GuestLeftReason::Removed => ErrorCode::Removed,
                    GuestLeftReason::Denied => ErrorCode::Denied,
                    _ => ErrorCode::ResumeExpired,
                };
                self.remember_ended(id, m.role(), b.token, code);
                if unjoinable {
                    // No browser can join any more: the mac needs a new code.
                    self.end_session_code_expired(id);
                }
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
        ctx.run_interval(REAP_INTERVAL, |act, ctx| {
            act.reap_dead_connections(ctx);
            // The gauge falls back once the attack is over, registers or not.
            act.note_attack(Instant::now());
        });
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
            if s.room.is_some() {
                st.rooms += 1;
                let mut size = 0;
                for (m, side) in s.sides().filter(|(m, _)| *m != Member::Host) {
                    size += 1;
                    match (s.is_in(m), side.conn.is_some()) {
                        (false, _) => st.guests_waiting += 1,
                        (true, true) => st.guests_in += 1,
                        (true, false) => st.guests_away += 1,
                    }
                }
                st.room_guests_max = st.room_guests_max.max(size);
            }
        }
        MessageResult(st)
    }
}
