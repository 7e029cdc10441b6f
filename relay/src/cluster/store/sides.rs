//! The calls about a side already homed somewhere: it went away, it ended,
//! its grace period ran out, its node claims it back, and the counters a
//! node checkpoints for a later resume.

use redis::Value;
use relay_protocol::Role;

use super::reply::{Fields, Malformed, int, unknown_status};
use super::{NodeId, Op, REMEMBER, Store, StoreError, ms};
use crate::cluster::PREFIX;
use crate::conns::ConnId;

/// What `away` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AwayOutcome {
    /// The side is away, its grace period running.
    Away,
    /// The side is no longer this node's connection (it resumed elsewhere,
    /// or ended): nothing changed.
    Stale,
}

/// Which holder of a side `end_side` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Only if the side is still this connection of this node.
    Conn(ConnId),
    /// Whoever holds it, wherever.
    Any,
}

/// What `end_side` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndOutcome {
    /// The side ended (a mac's end ends its session).
    Ended(EndFacts),
    /// There is no such side (it ended already).
    Gone,
    /// The side is held by another connection: nothing changed.
    Stale,
}

/// What `grace_end` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GraceOutcome {
    /// The side was still away: it ended.
    Ended(EndFacts),
    /// Someone else ended the grace period, or the side came back or ended.
    Skipped,
}

/// The session as it was when one of its sides ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndFacts {
    /// Where the ended side was homed.
    pub(crate) node: Option<NodeId>,
    /// Where its peer is homed, if there is a peer.
    pub(crate) peer_node: Option<NodeId>,
    /// Whether the code could still be joined.
    pub(crate) live: bool,
    /// A room host's end: the nodes its guests were homed on, once per
    /// guest (empty for anything else).
    pub(crate) guest_nodes: Vec<NodeId>,
}

/// What `reclaim` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReclaimOutcome {
    /// The side is connected here again.
    Reclaimed {
        /// Where its peer is homed, if there is a peer.
        peer_node: Option<NodeId>,
    },
    /// The side resumed on another node meanwhile.
    Moved,
    /// The side ended meanwhile.
    Gone,
}

impl ReclaimOutcome {
    /// A word for logs.
    pub(crate) const fn as_str(&self) -> &'static str {
        match self {
            ReclaimOutcome::Reclaimed { .. } => "ok",
            ReclaimOutcome::Moved => "moved",
            ReclaimOutcome::Gone => "gone",
        }
    }
}

/// A counter of a session that a node checkpoints to Redis, for whichever
/// node resumes a side later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// The mac's receive count when the current browser joined (`m_rbase`).
    MacReceiveBase,
    /// The mac's send count when the current browser joined (`m_sbase`).
    MacSendBase,
}

impl Counter {
    /// Its field in the session's hash.
    const fn field(self) -> &'static str {
        match self {
            Counter::MacReceiveBase => "m_rbase",
            Counter::MacSendBase => "m_sbase",
        }
    }
}

/// What `checkpoint` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checkpointed {
    /// The counters are written.
    Written,
    /// The session is gone: nothing was written (nor recreated).
    NoSession,
}

impl Store {
    /// Marks side `role` of `sid` away, if it is still this node's
    /// connection `conn`, and starts its grace period until `grace_until_ms`
    /// (Unix ms).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn away(
        &self,
        sid: &str,
        role: Role,
        conn: ConnId,
        grace_until_ms: u64,
    ) -> Result<AwayOutcome, StoreError> {
        let mut inv = Self::side_call(&self.scripts.away, sid, role);
        inv.arg(&*self.node).arg(conn.0).arg(grace_until_ms);
        self.call(Op::Away, &inv, parse_away).await
    }

    /// Ends side `role` of `sid` for good, if `holder` still holds it; a
    /// mac's end ends the session (its browser is told `MAC_DISCONNECTED`
    /// on resuming).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn end_side(
        &self,
        sid: &str,
        role: Role,
        holder: Holder,
    ) -> Result<EndOutcome, StoreError> {
        let mut inv = Self::side_call(&self.scripts.end_side, sid, role);
        match holder {
            Holder::Conn(conn) => inv.arg(&*self.node).arg(conn.0),
            // The script takes an empty connection for "whoever holds it".
            Holder::Any => inv.arg("").arg(""),
        };
        inv.arg(ms(REMEMBER));
        self.call(Op::EndSide, &inv, parse_end).await
    }

    /// Ends side `role` of `sid` because its grace period is over: once
    /// cluster-wide, and only if it is still away.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn grace_end(
        &self,
        sid: &str,
        role: Role,
    ) -> Result<GraceOutcome, StoreError> {
        let mut inv = Self::side_call(&self.scripts.grace_end, sid, role);
        inv.arg(ms(REMEMBER));
        self.call(Op::GraceEnd, &inv, parse_grace).await
    }

    /// Claims side `role` of `sid` back for this node's connection `conn`
    /// after other nodes took this node for dead, if no other node took the
    /// side meanwhile.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn reclaim(
        &self,
        sid: &str,
        role: Role,
        conn: ConnId,
    ) -> Result<ReclaimOutcome, StoreError> {
        let mut inv = Self::side_call(&self.scripts.reclaim, sid, role);
        inv.arg(&*self.node).arg(conn.0);
        self.call(Op::Reclaim, &inv, parse_reclaim).await
    }

    /// Writes `counters` of `sid`, if the session still exists. Nothing to
    /// write is written without asking Redis.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn checkpoint(
        &self,
        sid: &str,
        counters: &[(Counter, u64)],
    ) -> Result<Checkpointed, StoreError> {
        if counters.is_empty() {
            // HSET with no field is an error in the script.
            return Ok(Checkpointed::Written);
        }
        let mut inv = self.scripts.checkpoint.key(format!("{PREFIX}s:{sid}"));
        for (counter, value) in counters {
            inv.arg(counter.field()).arg(value);
        }
        self.call(Op::Checkpoint, &inv, parse_checkpoint).await
    }
}

pub(super) fn parse_away(reply: &Value) -> Result<AwayOutcome, Malformed> {
    let mut f = Fields::of(reply)?;
    let outcome = match f.text("status")? {
        "ok" => {
            f.skip("peer node")?;
            f.skip("peer state")?;
            AwayOutcome::Away
        }
        "stale" => AwayOutcome::Stale,
        other => return Err(unknown_status(other)),
    };
    f.end()?;
    Ok(outcome)
}

/// The end of a side, as the shared `END_SIDE` Lua reports it after `ok`.
fn end_facts(f: &mut Fields<'_>) -> Result<EndFacts, Malformed> {
    let peer_node = f.node("peer node")?;
    f.state("peer state")?;
    let live = f.flag("live")?;
    f.skip("code")?;
    let node = f.node("node")?;
    let mut guest_nodes = Vec::new();
    while !f.is_empty() {
        guest_nodes.extend(f.node("guest node")?);
    }
    Ok(EndFacts {
        node,
        peer_node,
        live,
        guest_nodes,
    })
}

pub(super) fn parse_end(reply: &Value) -> Result<EndOutcome, Malformed> {
    let mut f = Fields::of(reply)?;
    let outcome = match f.text("status")? {
        "ok" => EndOutcome::Ended(end_facts(&mut f)?),
        "gone" => EndOutcome::Gone,
        "stale" => EndOutcome::Stale,
        other => return Err(unknown_status(other)),
    };
    f.end()?;
    Ok(outcome)
}

pub(super) fn parse_grace(reply: &Value) -> Result<GraceOutcome, Malformed> {
    let mut f = Fields::of(reply)?;
    let outcome = match f.text("status")? {
        "ok" => GraceOutcome::Ended(end_facts(&mut f)?),
        "skip" => GraceOutcome::Skipped,
        other => return Err(unknown_status(other)),
    };
    f.end()?;
    Ok(outcome)
}

fn parse_reclaim(reply: &Value) -> Result<ReclaimOutcome, Malformed> {
    let mut f = Fields::of(reply)?;
    let outcome = match f.text("status")? {
        "ok" => {
            let peer_node = f.node("peer node")?;
            f.state("peer state")?;
            ReclaimOutcome::Reclaimed { peer_node }
        }
        "moved" => ReclaimOutcome::Moved,
        "gone" => ReclaimOutcome::Gone,
        other => return Err(unknown_status(other)),
    };
    f.end()?;
    Ok(outcome)
}

fn parse_checkpoint(reply: &Value) -> Result<Checkpointed, Malformed> {
    match int(reply)? {
        1 => Ok(Checkpointed::Written),
        0 => Ok(Checkpointed::NoSession),
        n => Err(Malformed(format!("expected 0 or 1, got {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testing::{TestRedis, dump};
    use super::super::{ResumeOutcome, SideEnd};
    use super::*;
    use crate::registry::secret::TokenHash;

    fn token(n: u8) -> TokenHash {
        TokenHash::of(&format!("token-{n}"))
    }

    /// Session `s1`: its mac on `n1` (conn 1, token 1) and, if `paired`, its
    /// browser on `n2` (conn 2, token 2). Returns the stores of n1 and n2.
    async fn session(r: &TestRedis, paired: bool) -> (Store, Store) {
        let (n1, n2) = (r.store("n1"), r.store("n2"));
        let ttl = std::time::Duration::from_secs(60);
        n1.register("s1", "ABCDEF", &token(1), ConnId(1), ttl, 5_000)
            .await
            .unwrap();
        if paired {
            let code = relay_protocol::SessionCode::parse("ABCDEF").unwrap();
            n2.join(
                &code,
                &token(2),
                ConnId(2),
                1,
                0,
                std::time::Duration::from_secs(600),
            )
            .await
            .unwrap();
        }
        (n1, n2)
    }

    #[actix::test]
    async fn away_starts_the_grace_period_of_its_own_connection_only() {
        let r = TestRedis::start().await;
        let (n1, n2) = session(&r, true).await;
        // Another connection, or another node: stale news.
        let stale = n1.away("s1", Role::Mac, ConnId(9), 7_000).await.unwrap();
        assert_eq!(stale, AwayOutcome::Stale);
        let stale = n2.away("s1", Role::Mac, ConnId(1), 7_000).await.unwrap();
        assert_eq!(stale, AwayOutcome::Stale);
        assert_eq!(dump(&r, "relay:s:s1").await["m_state"], "here");
        assert_eq!(r.zscore("relay:grace", "s1|mac").await, None);

        let away = n1.away("s1", Role::Mac, ConnId(1), 7_000).await.unwrap();
        assert_eq!(away, AwayOutcome::Away);
        assert_eq!(dump(&r, "relay:s:s1").await["m_state"], "away");
        assert_eq!(r.zscore("relay:grace", "s1|mac").await, Some(7_000));
        let gone = n1.away("nope", Role::Mac, ConnId(1), 7_000).await.unwrap();
        assert_eq!(gone, AwayOutcome::Stale);
    }

    #[actix::test]
    async fn a_browser_ends_alone() {
        let r = TestRedis::start().await;
        let (n1, n2) = session(&r, true).await;
        let stale = n2.end_side("s1", Role::Browser, Holder::Conn(ConnId(9)));
        assert_eq!(stale.await.unwrap(), EndOutcome::Stale);
        let ended = n2.end_side("s1", Role::Browser, Holder::Conn(ConnId(2)));
        assert_eq!(
            ended.await.unwrap(),
            EndOutcome::Ended(EndFacts {
                node: Some(Arc::from("n2")),
                peer_node: Some(Arc::from("n1")),
                live: true,
                guest_nodes: Vec::new(),
            })
        );
        let s = dump(&r, "relay:s:s1").await;
        assert!(s.keys().all(|k| !k.starts_with("b_")), "{s:?}");
        assert_eq!(s["m_at"], "n1");
        assert!(!r.is_member("relay:sides:n2", "s1|browser").await);
        let mark = r.get("relay:end:s1:browser").await.unwrap();
        assert_eq!(mark, format!("RESUME_EXPIRED|{}", token(2).hex()));
        let again = n2.end_side("s1", Role::Browser, Holder::Any);
        assert_eq!(again.await.unwrap(), EndOutcome::Gone);
        // The mac stays.
        let out = n1
            .resume("s1", Role::Mac, &token(1), ConnId(3))
            .await
            .unwrap();
        assert!(matches!(out, ResumeOutcome::Resumed(_)));
    }

    #[actix::test]
    async fn a_mac_ends_its_session_and_its_browser() {
        let r = TestRedis::start().await;
        let (_n1, n2) = session(&r, true).await;
        // Whoever holds it: from a node that does not.
        let ended = n2.end_side("s1", Role::Mac, Holder::Any).await.unwrap();
        assert_eq!(
            ended,
            EndOutcome::Ended(EndFacts {
                node: Some(Arc::from("n1")),
                peer_node: Some(Arc::from("n2")),
                live: true,
                guest_nodes: Vec::new(),
            })
        );
        assert!(dump(&r, "relay:s:s1").await.is_empty());
        assert_eq!(r.get("relay:code:ABCDEF").await, None);
        assert_eq!(r.zscore("relay:expiries", "s1").await, None);
        assert!(!r.is_member("relay:sides:n1", "s1|mac").await);
        assert!(!r.is_member("relay:sides:n2", "s1|browser").await);
        let out = n2.resume("s1", Role::Browser, &token(2), ConnId(3)).await;
        assert_eq!(out.unwrap(), ResumeOutcome::Ended(SideEnd::MacDisconnected));
        let out = n2.resume("s1", Role::Mac, &token(1), ConnId(3)).await;
        assert_eq!(out.unwrap(), ResumeOutcome::Ended(SideEnd::ResumeExpired));
    }

    #[actix::test]
    async fn a_lone_mac_ends_with_no_peer() {
        let r = TestRedis::start().await;
        let (n1, _) = session(&r, false).await;
        let ended = n1.end_side("s1", Role::Mac, Holder::Conn(ConnId(1)));
        let EndOutcome::Ended(facts) = ended.await.unwrap() else {
            panic!("not ended")
        };
        assert_eq!((facts.peer_node, facts.live), (None, true));
        assert_eq!(r.get("relay:end:s1:browser").await, None);
    }

    #[actix::test]
    async fn grace_ends_an_away_side_once() {
        let r = TestRedis::start().await;
        let (n1, n2) = session(&r, true).await;
        // Not in its grace period.
        assert_eq!(
            n1.grace_end("s1", Role::Browser).await.unwrap(),
            GraceOutcome::Skipped
        );
        n2.away("s1", Role::Browser, ConnId(2), 7_000)
            .await
            .unwrap();
        let ended = r.store("n3").grace_end("s1", Role::Browser).await.unwrap();
        assert_eq!(
            ended,
            GraceOutcome::Ended(EndFacts {
                node: Some(Arc::from("n2")),
                peer_node: Some(Arc::from("n1")),
                live: true,
                guest_nodes: Vec::new(),
            })
        );
        assert_eq!(
            n1.grace_end("s1", Role::Browser).await.unwrap(),
            GraceOutcome::Skipped
        );
        assert!(r.get("relay:end:s1:browser").await.is_some());
    }

    #[actix::test]
    async fn grace_skips_a_side_that_is_back() {
        let r = TestRedis::start().await;
        let (n1, _) = session(&r, true).await;
        // A grace entry left behind for a connected side: claimed, not ended.
        let _: () = r
            .cmd(redis::cmd("ZADD").arg("relay:grace").arg(1).arg("s1|mac"))
            .await;
        assert_eq!(
            n1.grace_end("s1", Role::Mac).await.unwrap(),
            GraceOutcome::Skipped
        );
        assert_eq!(r.zscore("relay:grace", "s1|mac").await, None);
        assert_eq!(dump(&r, "relay:s:s1").await["m_state"], "here");
    }

    #[actix::test]
    async fn reclaim_takes_back_what_is_still_ours() {
        let r = TestRedis::start().await;
        let (n1, n2) = session(&r, true).await;
        // Other nodes took n1 for dead: its mac is away.
        let _: () = r.cmd(redis::cmd("SADD").arg("relay:nodes").arg("n1")).await;
        let dead = n2.dead_node("n1", 7_000).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dump(&r, "relay:s:s1").await["m_state"], "away");
        let back = n1.reclaim("s1", Role::Mac, ConnId(5)).await.unwrap();
        assert_eq!(
            back,
            ReclaimOutcome::Reclaimed {
                peer_node: Some(Arc::from("n2"))
            }
        );
        let s = dump(&r, "relay:s:s1").await;
        assert_eq!((&*s["m_state"], &*s["m_conn"]), ("here", "5"));
        assert_eq!(r.zscore("relay:grace", "s1|mac").await, None);
        assert!(r.is_member("relay:sides:n1", "s1|mac").await);

        // The browser resumed on n3 meanwhile; then it ended.
        let n3 = r.store("n3");
        n3.resume("s1", Role::Browser, &token(2), ConnId(6))
            .await
            .unwrap();
        let moved = n2.reclaim("s1", Role::Browser, ConnId(2)).await.unwrap();
        assert_eq!(moved, ReclaimOutcome::Moved);
        n3.end_side("s1", Role::Browser, Holder::Any).await.unwrap();
        let gone = n3.reclaim("s1", Role::Browser, ConnId(6)).await.unwrap();
        assert_eq!(gone, ReclaimOutcome::Gone);
        assert_eq!((moved.as_str(), gone.as_str()), ("moved", "gone"));
    }

    #[actix::test]
    async fn checkpoint_writes_only_to_a_live_session() {
        let r = TestRedis::start().await;
        let (n1, _) = session(&r, false).await;
        let counters = [(Counter::MacReceiveBase, 4), (Counter::MacSendBase, 9)];
        assert_eq!(
            n1.checkpoint("s1", &counters).await.unwrap(),
            Checkpointed::Written
        );
        let s = dump(&r, "relay:s:s1").await;
        assert_eq!((&*s["m_rbase"], &*s["m_sbase"]), ("4", "9"));
        let missing = n1.checkpoint("nope", &counters).await.unwrap();
        assert_eq!(missing, Checkpointed::NoSession);
        assert!(dump(&r, "relay:s:nope").await.is_empty(), "not recreated");
        assert_eq!(
            n1.checkpoint("s1", &[]).await.unwrap(),
            Checkpointed::Written
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let arr = |f: &[&str]| Value::Array(f.iter().map(|s| bulk(s)).collect());
        assert!(parse_away(&arr(&["ok", "n1"])).is_err());
        assert!(parse_away(&arr(&["gone"])).is_err());
        assert!(
            parse_end(&arr(&["ok", "n2", "here", "2", "ABCDEF", "n1"])).is_err(),
            "live 2"
        );
        assert!(parse_end(&arr(&["ok", "n2", "there", "1", "ABCDEF", "n1"])).is_err());
        assert!(parse_end(&arr(&["ok", "n2", "here", "1", "ABCDEF", "n1"])).is_ok());
        assert!(parse_grace(&arr(&["stale"])).is_err());
        assert!(parse_reclaim(&arr(&["ok"])).is_err());
        assert!(parse_checkpoint(&Value::Int(5)).is_err());
        assert!(parse_checkpoint(&Value::Nil).is_err());
    }
}
