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
    /// Too many failed joins this minute, cluster-wide: every join is refused.
    Ceiling,
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
    /// as failed joins of `minute` (Unix minutes); once `limit` of them
    /// (0: no limit) are counted, every join of that minute is refused.
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
    ) -> Result<JoinOutcome, StoreError> {
        let mut inv = self.scripts.join.prepare_invoke();
        inv.key(format!("{PREFIX}code:{code}"))
            .key(format!("{PREFIX}xcode:{code}"))
            .key(format!("{PREFIX}failedjoins:{minute}"))
            .arg(PREFIX)
            .arg(token.hex())
            .arg(&*self.node)
            .arg(conn.0)
            .arg(ms(SESSION_TTL))
            .arg(limit);
        self.call(Op::Join, &inv, parse_join).await
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
        "ceiling" => JoinOutcome::Ceiling,
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
mod tests {
    use super::super::testing::{TestRedis, dump};
    use super::super::{Counter, EndOutcome, ExpireOutcome, Expiry, Holder};
    use super::*;

    fn token(n: u8) -> TokenHash {
        TokenHash::of(&format!("token-{n}"))
    }

    fn code(c: &str) -> SessionCode {
        SessionCode::parse(c).unwrap()
    }

    const TTL: Duration = Duration::from_secs(60);

    /// A session `s1` with code `ABCDEF`, its mac on `n1` (conn 1, token 1).
    async fn registered(r: &TestRedis) -> Store {
        let n1 = r.store("n1");
        let reg = n1
            .register("s1", "ABCDEF", &token(1), ConnId(1), TTL, 5_000)
            .await
            .unwrap();
        assert_eq!(reg, Registration::Created);
        n1
    }

    #[actix::test]
    async fn register_creates_the_session_once_per_code() {
        let r = TestRedis::start().await;
        let n1 = registered(&r).await;
        let s = dump(&r, "relay:s:s1").await;
        assert_eq!(s["code"], "ABCDEF");
        assert_eq!(s["live"], "1");
        assert_eq!(s["m_at"], "n1");
        assert_eq!(s["m_conn"], "1");
        assert_eq!(s["m_state"], "here");
        assert_eq!(s["m_tok"], token(1).hex());
        assert_eq!(r.get("relay:code:ABCDEF").await.as_deref(), Some("s1"));
        assert_eq!(r.zscore("relay:expiries", "s1").await, Some(5_000));
        assert!(r.is_member("relay:sides:n1", "s1|mac").await);
        let ttl: i64 = r.cmd(redis::cmd("PTTL").arg("relay:code:ABCDEF")).await;
        assert!(
            ttl > 60_000 && ttl <= 61_000,
            "code key lives the code's TTL and a second: {ttl}"
        );

        // The code is taken, by a live session or by an expired one.
        assert_eq!(
            n1.register("s2", "ABCDEF", &token(2), ConnId(2), TTL, 5_000)
                .await
                .unwrap(),
            Registration::CodeTaken
        );
        let _: () = r
            .cmd(redis::cmd("SET").arg("relay:xcode:GHJKLM").arg("1"))
            .await;
        assert_eq!(
            n1.register("s3", "GHJKLM", &token(3), ConnId(3), TTL, 5_000)
                .await
                .unwrap(),
            Registration::CodeTaken
        );
        assert!(dump(&r, "relay:s:s3").await.is_empty());
    }

    #[actix::test]
    async fn join_claims_the_browser_side_once() {
        let r = TestRedis::start().await;
        registered(&r).await;
        let n2 = r.store("n2");
        assert_eq!(
            n2.join(&code("abc-def"), &token(2), ConnId(7), 1, 0)
                .await
                .unwrap(),
            JoinOutcome::Joined {
                sid: Arc::from("s1"),
                mac_node: Arc::from("n1"),
                mac_state: SideState::Here,
            }
        );
        let s = dump(&r, "relay:s:s1").await;
        assert_eq!(
            (&*s["b_at"], &*s["b_conn"], &*s["b_state"], &*s["b_acc"]),
            ("n2", "7", "here", "0")
        );
        assert_eq!(s["b_tok"], token(2).hex());
        assert!(r.is_member("relay:sides:n2", "s1|browser").await);

        assert_eq!(
            n2.join(&code("ABCDEF"), &token(3), ConnId(8), 1, 0)
                .await
                .unwrap(),
            JoinOutcome::Taken
        );
        assert_eq!(dump(&r, "relay:s:s1").await["b_tok"], token(2).hex());
        assert_eq!(
            r.get("relay:failedjoins:1").await,
            None,
            "taken is not a failed join"
        );
    }

    #[actix::test]
    async fn join_reports_the_mac_away() {
        let r = TestRedis::start().await;
        let n1 = registered(&r).await;
        n1.away("s1", Role::Mac, ConnId(1), 9_000).await.unwrap();
        let JoinOutcome::Joined { mac_state, .. } = r
            .store("n2")
            .join(&code("ABCDEF"), &token(2), ConnId(7), 1, 0)
            .await
            .unwrap()
        else {
            panic!("not joined")
        };
        assert_eq!(mac_state, SideState::Away);
    }

    #[actix::test]
    async fn unknown_and_expired_codes_count_towards_the_ceiling() {
        let r = TestRedis::start().await;
        let n1 = registered(&r).await;
        let n2 = r.store("n2");
        let join = |c: &'static str, limit| {
            let n2 = &n2;
            async move {
                n2.join(&code(c), &token(9), ConnId(9), 42, limit)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(join("GHJKLM", 3).await, JoinOutcome::Invalid);
        // The code's timer fired: it is remembered as expired.
        assert_eq!(
            n1.expire_code("s1", Expiry::Due).await.unwrap(),
            ExpireOutcome::Ended {
                mac_node: Some(Arc::from("n1")),
                code: "ABCDEF".into(),
            }
        );
        assert_eq!(join("ABCDEF", 3).await, JoinOutcome::Expired);
        assert_eq!(r.get("relay:failedjoins:42").await.as_deref(), Some("2"));
        assert_eq!(join("GHJKLM", 3).await, JoinOutcome::Invalid);
        assert_eq!(join("GHJKLM", 3).await, JoinOutcome::Ceiling);
        assert_eq!(join("ABCDEF", 3).await, JoinOutcome::Ceiling);
        assert_eq!(r.get("relay:failedjoins:42").await.as_deref(), Some("3"));
        let ttl: i64 = r.cmd(redis::cmd("PTTL").arg("relay:failedjoins:42")).await;
        assert!(ttl > 0 && ttl <= 120_000, "{ttl}");
        // No limit: counted, never refused.
        assert_eq!(join("GHJKLM", 0).await, JoinOutcome::Invalid);
    }

    #[actix::test]
    async fn a_code_whose_session_is_no_longer_live_is_expired() {
        let r = TestRedis::start().await;
        registered(&r).await;
        let _: () = r
            .cmd(redis::cmd("HSET").arg("relay:s:s1").arg("live").arg("0"))
            .await;
        assert_eq!(
            r.store("n2")
                .join(&code("ABCDEF"), &token(2), ConnId(7), 1, 0)
                .await
                .unwrap(),
            JoinOutcome::Expired
        );
    }

    #[actix::test]
    async fn resume_moves_the_side_and_says_where_it_was() {
        let r = TestRedis::start().await;
        registered(&r).await;
        let n2 = r.store("n2");
        n2.join(&code("ABCDEF"), &token(2), ConnId(7), 1, 0)
            .await
            .unwrap();
        r.lease("n2").await;
        let n3 = r.store("n3");
        let out = n3
            .resume("s1", Role::Mac, &token(1), ConnId(11))
            .await
            .unwrap();
        let ResumeOutcome::Resumed(facts) = out else {
            panic!("not resumed: {out:?}")
        };
        assert_eq!(
            facts,
            ResumeFacts {
                old_node: Some(Arc::from("n1")),
                old_conn: Some(ConnId(1)),
                old_state: Some(SideState::Here),
                peer_node: Some(Arc::from("n2")),
                peer_state: Some(SideState::Here),
                acc_checkpoint: 0,
                m_rbase: 0,
                m_sbase: 0,
                old_alive: false,
                peer_alive: true,
                guests: Vec::new(),
            }
        );
        assert!(!facts.was_away() && !facts.peer_away());
        let s = dump(&r, "relay:s:s1").await;
        assert_eq!((&*s["m_at"], &*s["m_conn"]), ("n3", "11"));
        assert!(!r.is_member("relay:sides:n1", "s1|mac").await);
        assert!(r.is_member("relay:sides:n3", "s1|mac").await);

        // The counts written by checkpoints come back.
        n3.checkpoint(
            "s1",
            &[(Counter::MacReceiveBase, 5), (Counter::MacSendBase, 8)],
        )
        .await
        .unwrap();
        n3.away("s1", Role::Mac, ConnId(11), 9_000).await.unwrap();
        let out = n3
            .resume("s1", Role::Mac, &token(1), ConnId(12))
            .await
            .unwrap();
        let ResumeOutcome::Resumed(facts) = out else {
            panic!("not resumed: {out:?}")
        };
        assert_eq!((facts.m_rbase, facts.m_sbase), (5, 8));
        assert_eq!(facts.old_state, Some(SideState::Away));
        assert!(facts.was_away());
        assert_eq!(
            r.zscore("relay:grace", "s1|mac").await,
            None,
            "resume ends the grace period"
        );
    }

    #[actix::test]
    async fn resume_of_a_mac_alone_has_no_peer() {
        let r = TestRedis::start().await;
        registered(&r).await;
        let out = r
            .store("n1")
            .resume("s1", Role::Mac, &token(1), ConnId(2))
            .await;
        let ResumeOutcome::Resumed(facts) = out.unwrap() else {
            panic!("not resumed")
        };
        assert_eq!((&facts.peer_node, facts.peer_state), (&None, None));
        assert!(facts.peer_away() && !facts.peer_alive);
    }

    #[actix::test]
    async fn resume_with_a_wrong_token_is_invalid() {
        let r = TestRedis::start().await;
        registered(&r).await;
        let n2 = r.store("n2");
        let out = n2.resume("s1", Role::Mac, &token(2), ConnId(2)).await;
        assert_eq!(out.unwrap(), ResumeOutcome::Invalid);
        let out = n2.resume("nope", Role::Mac, &token(1), ConnId(2)).await;
        assert_eq!(out.unwrap(), ResumeOutcome::Invalid);
        assert_eq!(dump(&r, "relay:s:s1").await["m_at"], "n1", "nothing moved");
    }

    #[actix::test]
    async fn resume_of_an_ended_side_says_how_it_ended() {
        let r = TestRedis::start().await;
        let n1 = registered(&r).await;
        let n2 = r.store("n2");
        n2.join(&code("ABCDEF"), &token(2), ConnId(7), 1, 0)
            .await
            .unwrap();
        // The mac leaves: the browser's session is over.
        let ended = n1.end_side("s1", Role::Mac, Holder::Conn(ConnId(1)));
        assert!(matches!(ended.await.unwrap(), EndOutcome::Ended(_)));
        let out = n2.resume("s1", Role::Browser, &token(2), ConnId(8)).await;
        assert_eq!(out.unwrap(), ResumeOutcome::Ended(SideEnd::MacDisconnected));
        let out = n2.resume("s1", Role::Mac, &token(1), ConnId(8)).await;
        assert_eq!(out.unwrap(), ResumeOutcome::Ended(SideEnd::ResumeExpired));
        // Another token for an ended side is just invalid.
        let out = n2.resume("s1", Role::Mac, &token(2), ConnId(8)).await;
        assert_eq!(out.unwrap(), ResumeOutcome::Invalid);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let arr = |f: &[&str]| Value::Array(f.iter().map(|s| bulk(s)).collect());
        assert!(parse_register(&Value::Int(2)).is_err());
        assert!(parse_register(&bulk("1")).is_err());
        assert!(parse_join(&arr(&["maybe"])).is_err());
        assert!(
            parse_join(&arr(&["ok", "s1", "", "here"])).is_err(),
            "no mac node"
        );
        assert!(parse_join(&arr(&["ok", "s1", "n1", "there"])).is_err());
        assert!(parse_join(&arr(&["taken", "x"])).is_err(), "extra field");
        assert!(parse_resume(&arr(&["ended", "INVALID_CODE"])).is_err());
        let mut ok = vec![
            "ok", "n1", "1", "here", "", "", "ABCDEF", "1", "0", "0", "0", "1", "0",
        ];
        assert!(parse_resume(&arr(&ok)).is_ok());
        ok[8] = "-1";
        assert!(parse_resume(&arr(&ok)).is_err(), "a negative count");
        ok.truncate(12);
        assert!(parse_resume(&arr(&ok)).is_err(), "a field short");
    }
}
