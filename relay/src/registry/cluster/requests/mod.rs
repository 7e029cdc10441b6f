//! The socket-facing messages of the cluster registry: register and join
//! here, resume in `resume`, a side's departure in `gone`. Each runs its
//! Redis script, then changes what this node holds and tells the other
//! nodes concerned.

mod gone;
mod resume;
mod resume_undo;
pub(in crate::registry::cluster) use resume::gap_refusal;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use relay_protocol::code::ALPHABET;
use relay_protocol::{ErrorCode, Role, ServerMessage, SessionCode};
use tracing::{info, warn};

use super::room::RoomHere;
use super::{ClusterRegistry, Here, Local};
use crate::client_key::ClientKey;
use crate::cluster::envelope::Control;
use crate::cluster::store::{
    Counter, EndOutcome, Holder, JoinOutcome, NodeId, Registration, RoomRules, SideState,
    StoreError,
};
use crate::conns::ConnId;
use crate::outbound::{Outbound, Room};
use crate::pipe::Pipe;
use crate::queue::EventEffect;
use crate::registry::guessing::{code_len, current_minute};
use crate::registry::member::Member;
use crate::registry::secret::{self, TokenHash};
use crate::registry::{Join, Joined, Link, Refusal, Register, Registered, SessionId};

/// Attempts at a free code before answering `UNAVAILABLE`.
const CODE_ATTEMPTS: usize = 8;

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// When a grace period starting now ends (unix ms), for Redis.
fn requests_deadline(grace: std::time::Duration) -> u64 {
    now_ms() + grace.as_millis() as u64
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
        let room = msg.room.map(|r| RoomRules {
            max_guests: r.max_guests,
            admit: r.admit,
        });
        // The gauge is this node's view of the attack flag (polled each second).
        let len = code_len(self.metrics.under_attack.get() == 1);
        let attempt = async move {
            let sid = secret::session_id();
            let token = secret::resume_token();
            let hash = TokenHash::of(&token);
            for _ in 0..CODE_ATTEMPTS {
                // No new session once the answer is late: nothing to undo.
                deadline.check("register")?;
                let code = nanoid::format(nanoid::rngs::default, &ALPHABET, len);
                let expires_at = now_ms() + ttl.as_millis() as u64;
                let made = match room {
                    None => {
                        store
                            .register(&sid, &code, &hash, conn, ttl, expires_at)
                            .await
                    }
                    Some(rules) => {
                        store
                            .register_room(&sid, &code, &hash, conn, ttl, expires_at, rules)
                            .await
                    }
                }
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
            local.set_pipe(&act.dir, Role::Mac, Some(Arc::clone(&to_mac)));
            local.set_side(Role::Mac, Some(Here { conn: Some((msg.client.conn, msg.client.commands.clone())) }));
            let link = if msg.room.is_some() {
                // A room: the host's frames go to its admitted guests.
                let fanout = Room::new();
                local.room = Some(Box::new(RoomHere { fanout: Some(Arc::clone(&fanout)), ..RoomHere::default() }));
                Link {
                    session_id: Arc::clone(&id),
                    inbound: to_mac,
                    outbound: Outbound::Host(fanout),
                    member: Member::Host,
                    written,
                }
            } else {
                local.set_pipe(&act.dir, Role::Browser, Some(Pipe::new(act.settings.limits)));
                local.link(Role::Mac, written).ok_or(ErrorCode::Unavailable)?
            };
            act.sessions.insert(id, local);
            act.metrics.code_issued(&code);
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
            .filter(|l| l.check_key(&ClientKey::of(msg.client.addr)).is_err())
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
                        "That is not a session code ({e}). Codes are 6 letters and digits (8 while the relay is under attack); type the code shown on the Mac."
                    ),
                )));
            }
            (None, Ok(c)) => c,
        };
        let store = Arc::clone(&self.store);
        let token = secret::resume_token();
        let hash = TokenHash::of(&token);
        let conn = msg.client.conn;
        let failed_join_limit = self.settings.failed_join_limit;
        let attack_for = self.settings.under_attack_for;
        let claim = async move {
            let outcome = store
                .join(
                    &code,
                    &hash,
                    conn,
                    current_minute(),
                    failed_join_limit,
                    attack_for,
                )
                .await
                .map_err(|e| unavailable(&e))?;
            match outcome {
                JoinOutcome::Joined {
                    sid,
                    mac_node,
                    mac_state,
                } => Ok((sid, None, mac_node, mac_state)),
                JoinOutcome::Guest {
                    sid,
                    guest_id,
                    admitted,
                    mac_node,
                    mac_state,
                } => Ok((sid, Some((guest_id, admitted)), mac_node, mac_state)),
                JoinOutcome::Expired => Err(ErrorCode::ExpiredCode.into()),
                JoinOutcome::Taken => Err(ErrorCode::AlreadyJoined.into()),
                JoinOutcome::Full => Err(ErrorCode::RoomFull.into()),
                JoinOutcome::Invalid => Err(ErrorCode::InvalidCode.into()),
            }
        };
        Box::pin(claim.into_actor(self).map(move |res, act, ctx| {
            let result = res.and_then(|(sid, guest, mac_node, mac_state)| {
                if let Err(r) = msg.deadline.check("join") {
                    // Neither the mac nor its node heard of this browser yet:
                    // free the session for a join that is answered in time.
                    match guest {
                        None => act.end_unseen(&sid, Role::Browser, conn, ctx),
                        Some((g, _)) => act.end_unseen_guest(&sid, g, conn, ctx),
                    }
                    return Err(r);
                }
                if let Some((g, admitted)) = guest {
                    return act
                        .guest_joined(&sid, g, admitted, mac_node, mac_state, &msg, token, ctx);
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
        let answer = result.as_ref().map(|_| ()).map_err(|r| r.code);
        self.metrics.join_answered(answer);
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
        let mac_here = *mac_node == *self.node
            && self
                .sessions
                .get(&id)
                .is_some_and(|l| l.side(Role::Mac).is_some());
        let rx = msg.client.receiver();
        let here = Here {
            conn: Some((msg.client.conn, msg.client.commands.clone())),
        };
        if mac_here {
            // A pair on one node: local pipes, as on a single node.
            let local = self.sessions.get_mut(&id).ok_or(ErrorCode::InvalidCode)?;
            let (to_b, to_m) = (
                local.pipe(Role::Browser).cloned(),
                local.pipe(Role::Mac).cloned(),
            );
            let (Some(to_b), Some(to_m)) = (to_b, to_m) else {
                return Err(ErrorCode::InvalidCode.into());
            };
            to_b.reset_receiver();
            let written = to_b.attach(rx, 0).unwrap_or(0);
            to_m.reset_sender();
            to_m.start_pairing();
            local.set_side(Role::Browser, Some(here));
            local.set_node(Role::Browser, None);
            local.tell(Role::Mac, &ServerMessage::PeerJoined, EventEffect::None);
            if local.side(Role::Mac).is_some_and(|m| m.conn.is_none()) {
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
                resume_token: Some(token),
                guest_id: None,
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
        local.set_side(Role::Browser, Some(here));
        local.set_node(Role::Mac, Some(Arc::clone(&mac_node)));
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
            resume_token: Some(token),
            guest_id: None,
            link,
        })
    }
}

#[cfg(test)]
mod tests;
