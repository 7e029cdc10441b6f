//! The calls that home a side on this node: register (a mac with a new
//! code), join (a browser by code) and resume (a side with its token).

use std::sync::Arc;
use std::time::Duration;

use redis::{ScriptInvocation, Value};
use relay_protocol::{GuestId, Role, SessionCode};

use super::reply::{Fields, Malformed, int, unknown_status};
use super::{CODE_KEY_SLACK, NodeId, Op, SESSION_TTL, SideEnd, SideState, Store, StoreError, ms};
use crate::cluster::PREFIX;
use crate::conns::ConnId;
use crate::registry::SessionId;
use crate::registry::secret::TokenHash;

/// What `register` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registration {
    /// The session exists with its code, its mac homed on this node.
    Created,
    /// The code is in use or recently expired: try another.
    CodeTaken,
}

/// What `join` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JoinOutcome {
    /// The browser side is this node's now.
    Joined {
        /// The session joined.
        sid: SessionId,
        /// Where its mac is homed.
        mac_node: NodeId,
        /// Whether its mac is connected.
        mac_state: SideState,
    },
    /// The code existed but can no longer be joined.
    Expired,
    /// A room guest joined: the guest `guest_id` is this node's now.
    Guest {
        /// The session joined.
        sid: SessionId,
        /// The id the room gave the guest.
        guest_id: GuestId,
        /// Whether it is in at once (the room admits automatically).
        admitted: bool,
        /// Where the host is homed.
        mac_node: NodeId,
        /// Whether the host is connected.
        mac_state: SideState,
    },
    /// The room holds as many guests as its host allowed.
    Full,
    /// A browser already joined.
    Taken,
    /// No such code.
    Invalid,
}

/// What `resume` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResumeOutcome {
    /// The side is this node's now; here is what Redis knew of it.
    Resumed(ResumeFacts),
    /// The side ended (recently), and this was its token.
    Ended(SideEnd),
    /// No side with this token (or it ended long ago).
    Invalid,
    /// The session is a room and this a browser's token: a guest's, for
    /// `resume_guest` (nothing changed).
    Room,
}

/// The session as `resume` found it, before moving the side here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResumeFacts {
    /// Where the side was homed.
    pub(crate) old_node: Option<NodeId>,
    /// Its connection there.
    pub(crate) old_conn: Option<ConnId>,
    /// Whether it was connected there.
    pub(crate) old_state: Option<SideState>,
    /// Where the peer is homed, if there is a peer.
    pub(crate) peer_node: Option<NodeId>,
    /// Whether the peer is connected.
    pub(crate) peer_state: Option<SideState>,
    /// The checkpoint of frames accepted from the side.
    pub(crate) acc_checkpoint: u64,
    /// The mac's receive count when the current browser joined.
    pub(crate) m_rbase: u64,
    /// The mac's send count when the current browser joined.
    pub(crate) m_sbase: u64,
    /// Whether the side's old node holds a live lease.
    pub(crate) old_alive: bool,
    /// Whether the peer's node holds a live lease.
    pub(crate) peer_alive: bool,
    /// A room host's guests, waiting or in (empty for anything else).
    pub(crate) guests: Vec<super::room::RoomGuest>,
}

impl ResumeFacts {
    /// Whether the side was not connected (so this is not a takeover).
    pub(crate) fn was_away(&self) -> bool {
        self.old_state != Some(SideState::Here)
    }

    /// Whether the peer is not connected (or there is none).
    pub(crate) fn peer_away(&self) -> bool {
        self.peer_state != Some(SideState::Here)
    }
}

impl Store {
    /// Creates session `sid` with `code`, its mac (token `token`, connection
    /// `conn`) homed here, the code joinable until `expires_at_ms` (Unix ms,
    /// `code_ttl` from now).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn register(
        &self,
        sid: &str,
        code: &str,
        token: &TokenHash,
        conn: ConnId,
        code_ttl: Duration,
        expires_at_ms: u64,
    ) -> Result<Registration, StoreError> {
        let inv = self.register_call(sid, code, token, conn, code_ttl, expires_at_ms);
        self.call(Op::Register, &inv, parse_register).await
    }

    /// The `register` script's invocation; a room adds its rules.
    pub(super) fn register_call(
        &self,
        sid: &str,
        code: &str,
        token: &TokenHash,
        conn: ConnId,
        code_ttl: Duration,
        expires_at_ms: u64,
    ) -> ScriptInvocation<'_> {
        let node = &*self.node;
        let mut inv = self.scripts.register.prepare_invoke();
        inv.key(format!("{PREFIX}code:{code}"))
            .key(format!("{PREFIX}xcode:{code}"))
            .key(format!("{PREFIX}s:{sid}"))
            .key(format!("{PREFIX}expiries"))
            .key(format!("{PREFIX}sides:{node}"))
            .arg(sid)
            .arg(code)
            .arg(token.hex())
            .arg(node)
            .arg(conn.0)
            .arg(ms(code_ttl + CODE_KEY_SLACK))
            .arg(expires_at_ms)
            .arg(ms(SESSION_TTL));
        inv
    }

    /// Claims the browser side of the session with `code` for this node
    /// (token `token`, connection `conn`). Unknown and expired codes count
    /// as failed joins of `minute` (Unix minutes); from `limit` of them on
    /// (0: never), each sets the cluster under attack for `attack_for`.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn join(
        &self,
        code: &SessionCode,
        token: &TokenHash,
        conn: ConnId,
        minute: u64,
        limit: u32,
        attack_for: Duration,
    ) -> Result<JoinOutcome, StoreError> {
        let mut inv = self.scripts.join.prepare_invoke();
        inv.key(format!("{PREFIX}code:{code}"))
            .key(format!("{PREFIX}xcode:{code}"))
            .key(format!("{PREFIX}failedjoins:{minute}"))
            .key(format!("{PREFIX}attack"))
            .arg(PREFIX)
            .arg(token.hex())
            .arg(&*self.node)
            .arg(conn.0)
            .arg(ms(SESSION_TTL))
            .arg(limit)
            .arg(ms(attack_for));
        self.call(Op::Join, &inv, parse_join).await
    }

    /// Whether the cluster is under a guessing attack (new codes are long).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn under_attack(&self) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(format!("{PREFIX}attack"));
        self.call(Op::Attack, &cmd, |v| int(v).map(|n| n == 1))
            .await
    }

    /// Takes side `role` of `sid` over for this node's connection `conn`, if
    /// `token` is the side's.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn resume(
        &self,
        sid: &str,
        role: Role,
        token: &TokenHash,
        conn: ConnId,
    ) -> Result<ResumeOutcome, StoreError> {
        let mut inv = Self::side_call(&self.scripts.resume, sid, role);
        inv.arg(token.hex())
            .arg(&*self.node)
            .arg(conn.0)
            .arg(ms(SESSION_TTL));
        self.call(Op::Resume, &inv, parse_resume).await
    }
}

pub(super) fn parse_register(reply: &Value) -> Result<Registration, Malformed> {
    match int(reply)? {
        1 => Ok(Registration::Created),
        0 => Ok(Registration::CodeTaken),
        n => Err(Malformed(format!("expected 0 or 1, got {n}"))),
    }
}

fn parse_join(reply: &Value) -> Result<JoinOutcome, Malformed> {
    let mut f = Fields::of(reply)?;
    let outcome = match f.text("status")? {
        "ok" => {
            let sid = f.text("session")?;
            if sid.is_empty() {
                return Err(Malformed("the session id is empty".into()));
            }
            let sid = Arc::from(sid);
            // A joinable session always has its mac (register homes it).
            let mac_node = f
                .node("mac node")?
                .ok_or_else(|| Malformed("the mac has no node".into()))?;
            let mac_state = f
                .state("mac state")?
                .ok_or_else(|| Malformed("the mac has no state".into()))?;
            JoinOutcome::Joined {
                sid,
                mac_node,
                mac_state,
            }
        }
        "guest" => super::room::guest_joined(&mut f)?,
        "full" => JoinOutcome::Full,
        "expired" => JoinOutcome::Expired,
        "taken" => JoinOutcome::Taken,
        "invalid" => JoinOutcome::Invalid,
        other => return Err(unknown_status(other)),
    };
    f.end()?;
    Ok(outcome)
}

fn parse_resume(reply: &Value) -> Result<ResumeOutcome, Malformed> {
    let mut f = Fields::of(reply)?;
    let outcome = match f.text("status")? {
        "ok" => {
            let old_node = f.node("node")?;
            let old_conn = f.conn("conn")?;
            let old_state = f.state("state")?;
            let peer_node = f.node("peer node")?;
            let peer_state = f.state("peer state")?;
            f.skip("code")?;
            f.skip("live")?;
            ResumeOutcome::Resumed(ResumeFacts {
                old_node,
                old_conn,
                old_state,
                peer_node,
                peer_state,
                acc_checkpoint: f.count("acc")?,
                m_rbase: f.count("m_rbase")?,
                m_sbase: f.count("m_sbase")?,
                old_alive: f.flag("node alive")?,
                peer_alive: f.flag("peer node alive")?,
                guests: super::room::room_guests(&mut f)?,
            })
        }
        "ended" => ResumeOutcome::Ended(f.text("how")?.parse()?),
        "invalid" => ResumeOutcome::Invalid,
        "room" => ResumeOutcome::Room,
        other => return Err(unknown_status(other)),
    };
    f.end()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests;
