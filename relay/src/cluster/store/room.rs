//! The calls of rooms (docs/design.md, "Rooms across nodes"): a host that
//! registers a room, a guest's resume by its token, and the host's answers
//! (`admit`, `deny`, `remove`). A guest's join is `join` (pairing.rs), whose
//! script takes a guest id when the code is a room's; a guest's away, end
//! and grace are the side calls of sides.rs under the guest's name `g<id>`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use relay_protocol::{AdmitMode, GuestId};

use super::pairing::{JoinOutcome, Registration, ResumeFacts, parse_register};
use super::reply::{Fields, Malformed, unknown_status};
use super::sides::{
    AwayOutcome, EndOutcome, GraceOutcome, Holder, parse_away, parse_end, parse_grace,
};
use super::{NodeId, Op, REMEMBER, SESSION_TTL, SideEnd, SideState, Store, StoreError, ms};
use crate::cluster::PREFIX;
use crate::conns::ConnId;
use crate::registry::secret::TokenHash;

/// A room host's rules, as `register` writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomRules {
    /// Guests waiting or in, at most.
    pub(crate) max_guests: u32,
    /// Whether the host answers each guest.
    pub(crate) admit: AdmitMode,
}

impl RoomRules {
    /// The `r_admit` value.
    const fn admit_str(self) -> &'static str {
        match self.admit {
            AdmitMode::Ask => "ask",
            AdmitMode::Auto => "auto",
        }
    }
}

/// A room guest as its host's resume finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomGuest {
    /// Its id.
    pub(crate) id: GuestId,
    /// Its node.
    pub(crate) node: Option<NodeId>,
    /// Still waiting for the host's answer.
    pub(crate) waiting: bool,
    /// Connected to its node (not away, not waiting).
    pub(crate) here: bool,
}

/// What `resume_guest` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GuestResume {
    /// Guest `guest_id` is this node's now; `facts` as for a pairing's
    /// browser (its peer is the host; the mac's bases are 0).
    Resumed {
        /// Which guest the token is.
        guest_id: GuestId,
        /// What Redis knew of it.
        facts: ResumeFacts,
    },
    /// The guest ended (recently), and this was its token.
    Ended(SideEnd),
    /// No guest with this token (or it is still waiting, and so never had it).
    Invalid,
}

/// The host's answer to a waiting guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Let it in.
    Admit,
    /// Turn it away (it is gone; it never had its token).
    Deny,
}

/// Where a guest the host answered or removed is, for the caller to tell
/// its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestAt {
    /// Its node.
    pub(crate) node: Option<NodeId>,
    /// Its connection there.
    pub(crate) conn: Option<ConnId>,
}

/// What `decide` or `remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GuestAnswer {
    /// Done; the guest was at `GuestAt` (and, for `remove`, was waiting).
    Done(GuestAt, bool),
    /// No such guest waiting (decide) or in the room (remove): already
    /// answered, left, removed, or never there.
    Unknown,
}

/// A room guest's side name in Redis (`g<id>`), as the side scripts take it.
pub(crate) fn guest_side(id: GuestId) -> String {
    let mut s = String::with_capacity(8);
    // unwrap-free: writing to a String cannot fail.
    let _ = write!(s, "g{id}");
    s
}

impl Store {
    /// Creates session `sid` as `register` does, as a room with `rules`.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn register_room(
        &self,
        sid: &str,
        code: &str,
        token: &TokenHash,
        conn: ConnId,
        code_ttl: Duration,
        expires_at_ms: u64,
        rules: RoomRules,
    ) -> Result<Registration, StoreError> {
        let mut inv = self.register_call(sid, code, token, conn, code_ttl, expires_at_ms);
        inv.arg(rules.max_guests).arg(rules.admit_str());
        self.call(Op::Register, &inv, parse_register).await
    }

    /// Takes the room guest whose token is `token` over for this node's
    /// connection `conn` (the cluster's `resume` answered `Room` for it).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn resume_guest(
        &self,
        sid: &str,
        token: &TokenHash,
        conn: ConnId,
    ) -> Result<GuestResume, StoreError> {
        let mut inv = self.scripts.resume_guest.prepare_invoke();
        inv.arg(PREFIX)
            .arg(sid)
            .arg(token.hex())
            .arg(&*self.node)
            .arg(conn.0)
            .arg(ms(SESSION_TTL));
        self.call(Op::ResumeGuest, &inv, parse_resume_guest).await
    }

    /// Admits or denies guest `id` of `sid`, if it is waiting.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn decide(
        &self,
        sid: &str,
        id: GuestId,
        decision: Decision,
    ) -> Result<GuestAnswer, StoreError> {
        let mut inv = self.scripts.decide.prepare_invoke();
        inv.arg(PREFIX).arg(sid).arg(id).arg(match decision {
            Decision::Admit => "admit",
            Decision::Deny => "deny",
        });
        inv.arg(ms(REMEMBER));
        self.call(Op::Decide, &inv, |r| parse_answer(r, false))
            .await
    }

    /// Marks guest `id` of `sid` away, as `away` does a side.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn away_guest(
        &self,
        sid: &str,
        id: GuestId,
        conn: ConnId,
        grace_until_ms: u64,
    ) -> Result<AwayOutcome, StoreError> {
        let mut inv = Self::guest_call(&self.scripts.away, sid, id);
        inv.arg(&*self.node).arg(conn.0).arg(grace_until_ms);
        self.call(Op::Away, &inv, parse_away).await
    }

    /// Ends guest `id` of `sid` for good (it left, or closed), as
    /// `end_side` does a side: its place is free and its token is
    /// remembered as ended (`RESUME_EXPIRED`).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn end_guest(
        &self,
        sid: &str,
        id: GuestId,
        holder: Holder,
    ) -> Result<EndOutcome, StoreError> {
        let mut inv = Self::guest_call(&self.scripts.end_side, sid, id);
        match holder {
            Holder::Conn(conn) => inv.arg(&*self.node).arg(conn.0),
            Holder::Any => inv.arg("").arg(""),
        };
        inv.arg(ms(REMEMBER));
        self.call(Op::EndSide, &inv, parse_end).await
    }

    /// Ends guest `id` of `sid` whose grace period is over, as `grace_end`
    /// does a side.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn grace_end_guest(
        &self,
        sid: &str,
        id: GuestId,
    ) -> Result<GraceOutcome, StoreError> {
        let mut inv = Self::guest_call(&self.scripts.grace_end, sid, id);
        inv.arg(ms(REMEMBER));
        self.call(Op::GraceEnd, &inv, parse_grace).await
    }

    /// A side script's invocation for guest `id` (the side `g<id>`).
    fn guest_call<'s>(
        script: &'s redis::Script,
        sid: &str,
        id: GuestId,
    ) -> redis::ScriptInvocation<'s> {
        let mut inv = script.prepare_invoke();
        inv.arg(PREFIX).arg(sid).arg(guest_side(id));
        inv
    }

    /// Whether session `sid` is a room (its hash has room fields).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn is_room(&self, sid: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("HEXISTS");
        cmd.arg(format!("{PREFIX}s:{sid}")).arg("r_max");
        self.call(Op::IsRoom, &cmd, |v| match v {
            Value::Int(n) => Ok(*n == 1),
            other => Err(Malformed(format!("HEXISTS answered {other:?}"))),
        })
        .await
    }

    /// Removes guest `id` of `sid`, waiting or in: its token resumes no
    /// more (`REMOVED`, remembered as ended sides are).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn remove(&self, sid: &str, id: GuestId) -> Result<GuestAnswer, StoreError> {
        self.end_guest_as(sid, id, SideEnd::Removed).await
    }

    /// Ends guest `id` of `sid`, waiting or in, wherever it is: its token
    /// is refused with `end` from now on (remembered as ended sides are).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn end_guest_as(
        &self,
        sid: &str,
        id: GuestId,
        end: SideEnd,
    ) -> Result<GuestAnswer, StoreError> {
        let mut inv = self.scripts.remove.prepare_invoke();
        inv.arg(PREFIX).arg(sid).arg(id).arg(ms(REMEMBER));
        inv.arg(end.code().as_str());
        self.call(Op::Remove, &inv, |r| parse_answer(r, true)).await
    }
}

/// A `join` reply's fields after `guest`: the guest's session, id and
/// standing, and its host's node and state.
pub(super) fn guest_joined(f: &mut Fields<'_>) -> Result<JoinOutcome, Malformed> {
    let sid = f.text("session")?;
    if sid.is_empty() {
        return Err(Malformed("the session id is empty".into()));
    }
    let guest_id = f.count("guest id")?;
    let admitted = match f.text("guest state")? {
        "wait" => false,
        "here" => true,
        s => return Err(Malformed(format!("{s:?} is not a joining guest's state"))),
    };
    let mac_node = f
        .node("mac node")?
        .ok_or_else(|| Malformed("the host has no node".into()))?;
    let mac_state = f
        .state("mac state")?
        .ok_or_else(|| Malformed("the host has no state".into()))?;
    Ok(JoinOutcome::Guest {
        sid: Arc::from(sid),
        guest_id,
        admitted,
        mac_node,
        mac_state,
    })
}

fn parse_resume_guest(reply: &Value) -> Result<GuestResume, Malformed> {
    let mut f = Fields::of(reply)?;
    let outcome = match f.text("status")? {
        "ok" => {
            let guest_id = f.count("guest id")?;
            let old_node = f.node("node")?;
            let old_conn = f.conn("conn")?;
            let old_state = f.state("state")?;
            let peer_node = f.node("host node")?;
            let peer_state = f.state("host state")?;
            GuestResume::Resumed {
                guest_id,
                facts: ResumeFacts {
                    old_node,
                    old_conn,
                    old_state,
                    peer_node,
                    peer_state,
                    acc_checkpoint: f.count("acc")?,
                    m_rbase: 0,
                    m_sbase: 0,
                    old_alive: f.flag("node alive")?,
                    peer_alive: f.flag("host node alive")?,
                    guests: Vec::new(),
                },
            }
        }
        "ended" => GuestResume::Ended(f.text("how")?.parse()?),
        "invalid" => GuestResume::Invalid,
        other => return Err(unknown_status(other)),
    };
    f.end()?;
    Ok(outcome)
}

/// The rest of a host's `resume` reply: its guests, three fields each.
pub(super) fn room_guests(f: &mut Fields<'_>) -> Result<Vec<RoomGuest>, Malformed> {
    let mut guests = Vec::new();
    while !f.is_empty() {
        let id = f.count("guest id")?;
        let node = f.node("guest node")?;
        let (waiting, here) = match f.text("guest state")? {
            "wait" => (true, false),
            s => {
                let state: SideState = s
                    .parse()
                    .map_err(|e| Malformed(format!("guest state: {e}")))?;
                (false, state == SideState::Here)
            }
        };
        guests.push(RoomGuest {
            id,
            node,
            waiting,
            here,
        });
    }
    Ok(guests)
}

fn parse_answer(reply: &Value, with_state: bool) -> Result<GuestAnswer, Malformed> {
    let mut f = Fields::of(reply)?;
    let outcome = match f.text("status")? {
        "ok" => {
            let at = GuestAt {
                node: f.node("node")?,
                conn: f.conn("conn")?,
            };
            let waiting = if with_state {
                match f.text("state")? {
                    "wait" => true,
                    s => {
                        s.parse::<SideState>()
                            .map_err(|e| Malformed(format!("guest state: {e}")))?;
                        false
                    }
                }
            } else {
                true
            };
            GuestAnswer::Done(at, waiting)
        }
        "unknown" => GuestAnswer::Unknown,
        other => return Err(unknown_status(other)),
    };
    f.end()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests;
