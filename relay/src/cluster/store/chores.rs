//! The calls of the registry's periodic work: what is due (code expiries,
//! grace periods), expiring a code, taking a dead node's sides away, and
//! the list of nodes.

use std::sync::Arc;

use redis::Value;
use relay_protocol::{GuestId, Role};
use tracing::warn;

use super::reply::{Fields, Malformed, text, unknown_status};
use super::{NodeId, Op, REMEMBER, Store, StoreError, ms, role_from};
use crate::cluster::PREFIX;
use crate::registry::SessionId;

/// Why a code is expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Its timer fired: the node that claims its `expiries` entry expires
    /// it, so it happens once cluster-wide.
    Due,
    /// Its browser left after the code had expired: nobody can join any
    /// more, so a session without a browser ends.
    Unjoinable,
}

/// What `expire_code` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExpireOutcome {
    /// Another node claimed the expiry, or the session is gone.
    Skipped,
    /// The code can no longer be joined; the session goes on with its browser.
    Paired,
    /// There was no browser: the session ended.
    Ended {
        /// Where its mac was homed, to be told.
        mac_node: Option<NodeId>,
        /// The code that expired.
        code: String,
    },
}

/// A side of a dead node, marked away by `dead_node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadSide {
    /// Its session.
    pub(crate) sid: SessionId,
    /// Which side (a room guest's role is the browser's).
    pub(crate) role: Role,
    /// The room guest it is, if it is one.
    pub(crate) guest: Option<GuestId>,
    /// A room guest still waiting for its host: gone for good, not away
    /// (it never had its token).
    pub(crate) gone: bool,
    /// Where its peer is homed, if there is a peer (to be told).
    pub(crate) peer_node: Option<NodeId>,
}

/// What is due, from the `expiries` and `grace` sorted sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// Sessions whose code's time is up.
    pub(crate) codes: Vec<SessionId>,
    /// Sides whose grace period is over.
    pub(crate) graces: Vec<(SessionId, Role)>,
    /// Room guests whose grace period is over.
    pub(crate) guest_graces: Vec<(SessionId, GuestId)>,
}

impl Store {
    /// Expires the code of `sid` (see [`Expiry`]); ends the session if no
    /// browser is in it.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn expire_code(
        &self,
        sid: &str,
        why: Expiry,
    ) -> Result<ExpireOutcome, StoreError> {
        let claim = match why {
            Expiry::Due => "1",
            Expiry::Unjoinable => "0",
        };
        let mut inv = self.scripts.expire_code.prepare_invoke();
        inv.arg(PREFIX)
            .arg(sid)
            .arg(claim)
            .arg(ms(REMEMBER))
            .arg(ms(REMEMBER));
        self.call(Op::ExpireCode, &inv, parse_expire).await
    }

    /// Takes `node` out of the live set and marks its connected sides away,
    /// their grace periods ending at `grace_until_ms` (Unix ms). Only the
    /// first call for a node does anything: others get an empty list (as
    /// does a node that had no sides).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn dead_node(
        &self,
        node: &str,
        grace_until_ms: u64,
    ) -> Result<Vec<DeadSide>, StoreError> {
        let mut inv = self.scripts.dead_node.prepare_invoke();
        inv.arg(PREFIX).arg(node).arg(grace_until_ms);
        self.call(Op::DeadNode, &inv, parse_dead_node).await
    }

    /// Up to `limit` code expiries and up to `limit` grace periods due at
    /// `now_ms` (Unix ms). Claiming each is up to the script it goes to.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn due(&self, now_ms: u64, limit: usize) -> Result<Due, StoreError> {
        let mut pipe = redis::pipe();
        for set in ["expiries", "grace"] {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(format!("{PREFIX}{set}"))
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        self.call(Op::Due, &pipe, parse_due).await
    }

    /// The nodes in the live set.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails or answers something unexpected.
    pub(crate) async fn nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        let cmd = redis::cmd("SMEMBERS").arg(format!("{PREFIX}nodes")).clone();
        self.call(Op::Nodes, &cmd, parse_nodes).await
    }
}

fn parse_expire(reply: &Value) -> Result<ExpireOutcome, Malformed> {
    let mut f = Fields::of(reply)?;
    let outcome = match f.text("status")? {
        "skip" => ExpireOutcome::Skipped,
        "paired" => ExpireOutcome::Paired,
        "ended" => {
            let mac_node = f.node("mac node")?;
            f.state("mac state")?;
            let code = f
                .maybe("code")?
                .ok_or_else(|| Malformed("the session had no code".into()))?;
            ExpireOutcome::Ended {
                mac_node,
                code: code.to_owned(),
            }
        }
        other => return Err(unknown_status(other)),
    };
    f.end()?;
    Ok(outcome)
}

fn parse_dead_node(reply: &Value) -> Result<Vec<DeadSide>, Malformed> {
    // Flat: session, side, peer node, away or gone; for each side.
    let mut f = Fields::of(reply)?;
    let mut sides = Vec::new();
    while !f.is_empty() {
        let sid = f
            .maybe("session")?
            .ok_or_else(|| Malformed("a side without a session".into()))?;
        let (role, guest) = side_from(f.text("side")?)?;
        let peer_node = f.node("peer node")?;
        let gone = match f.text("how")? {
            "away" => false,
            "gone" => true,
            s => return Err(Malformed(format!("{s:?} is neither away nor gone"))),
        };
        sides.push(DeadSide {
            sid: Arc::from(sid),
            role,
            guest,
            gone,
            peer_node,
        });
    }
    Ok(sides)
}

fn parse_due(reply: &Value) -> Result<Due, Malformed> {
    let Value::Array(lists) = reply else {
        return Err(Malformed(format!("expected an array, got {reply:?}")));
    };
    let [codes, graces] = lists.as_slice() else {
        return Err(Malformed(format!(
            "expected two lists, got {}",
            lists.len()
        )));
    };
    fn members(v: &Value) -> Result<Vec<&str>, Malformed> {
        let Value::Array(items) = v else {
            return Err(Malformed(format!("expected a list, got {v:?}")));
        };
        items
            .iter()
            .map(|m| text(m).ok_or_else(|| Malformed(format!("a member is not text: {m:?}"))))
            .collect()
    }
    let codes = members(codes)?.into_iter().map(Arc::from).collect();
    let mut due = Due {
        codes,
        graces: Vec::new(),
        guest_graces: Vec::new(),
    };
    for member in members(graces)? {
        // One odd member must not stop every other grace period: it is
        // reported and left (only the scripts write `<sid>|<role>` there).
        let side = member
            .split_once('|')
            .ok_or_else(|| Malformed("no '|'".into()))
            .and_then(|(sid, side)| Ok((Arc::from(sid), side_from(side)?)));
        match side {
            Ok((sid, (_, Some(guest)))) => due.guest_graces.push((sid, guest)),
            Ok((sid, (role, None))) => due.graces.push((sid, role)),
            Err(Malformed(why)) => warn!(member, why, "malformed grace entry in Redis; left"),
        }
    }
    Ok(due)
}

/// A side's name as the scripts write it: a role, or a room guest `g<id>`
/// (whose role is the browser's).
fn side_from(s: &str) -> Result<(Role, Option<GuestId>), Malformed> {
    match s.strip_prefix('g') {
        Some(id) => id
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .map(|id| (Role::Browser, Some(id)))
            .ok_or_else(|| Malformed(format!("{s:?} is not a side"))),
        None => Ok((role_from(s)?, None)),
    }
}

fn parse_nodes(reply: &Value) -> Result<Vec<NodeId>, Malformed> {
    let mut f = Fields::of(reply)?;
    let mut nodes = Vec::new();
    while !f.is_empty() {
        nodes.push(Arc::from(f.text("node")?));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use relay_protocol::SessionCode;

    use super::super::testing::{TestRedis, dump};
    use super::super::{EndOutcome, Holder, JoinOutcome};
    use super::*;
    use crate::conns::ConnId;
    use crate::registry::secret::TokenHash;

    fn token(n: u8) -> TokenHash {
        TokenHash::of(&format!("token-{n}"))
    }

    /// Registers session `sid` with `code`, its mac on `node`.
    async fn register(r: &TestRedis, node: &str, sid: &str, code: &str) -> Store {
        let store = r.store(node);
        let ttl = Duration::from_secs(60);
        store
            .register(sid, code, &token(1), ConnId(1), ttl, 5_000)
            .await
            .unwrap();
        store
    }

    async fn join(store: &Store, code: &str) {
        let code = SessionCode::parse(code).unwrap();
        let joined = store
            .join(&code, &token(2), ConnId(2), 1, 0, Duration::from_secs(600))
            .await
            .unwrap();
        assert!(matches!(joined, JoinOutcome::Joined { .. }), "{joined:?}");
    }

    #[actix::test]
    async fn an_unjoined_code_expires_once_and_ends_its_session() {
        let r = TestRedis::start().await;
        let n1 = register(&r, "n1", "s1", "ABCDEF").await;
        let n2 = r.store("n2");
        let ended = n2.expire_code("s1", Expiry::Due).await.unwrap();
        assert_eq!(
            ended,
            ExpireOutcome::Ended {
                mac_node: Some(Arc::from("n1")),
                code: "ABCDEF".into()
            }
        );
        assert!(dump(&r, "relay:s:s1").await.is_empty());
        assert_eq!(r.get("relay:code:ABCDEF").await, None);
        assert_eq!(r.get("relay:xcode:ABCDEF").await.as_deref(), Some("1"));
        assert!(!r.is_member("relay:sides:n1", "s1|mac").await);
        let mark = r.get("relay:end:s1:mac").await.unwrap();
        assert_eq!(mark, format!("RESUME_EXPIRED|{}", token(1).hex()));
        // Claimed by n2: n1's timer finds nothing to do.
        assert_eq!(
            n1.expire_code("s1", Expiry::Due).await.unwrap(),
            ExpireOutcome::Skipped
        );
        let gone = n1.expire_code("s1", Expiry::Unjoinable).await.unwrap();
        assert_eq!(gone, ExpireOutcome::Skipped);
    }

    #[actix::test]
    async fn expiring_a_paired_session_only_closes_its_code() {
        let r = TestRedis::start().await;
        let n1 = register(&r, "n1", "s1", "ABCDEF").await;
        join(&r.store("n2"), "ABCDEF").await;
        assert_eq!(
            n1.expire_code("s1", Expiry::Due).await.unwrap(),
            ExpireOutcome::Paired
        );
        let s = dump(&r, "relay:s:s1").await;
        assert_eq!((&*s["live"], &*s["b_at"]), ("0", "n2"));
        assert_eq!(r.get("relay:code:ABCDEF").await, None);
        assert_eq!(r.get("relay:xcode:ABCDEF").await.as_deref(), Some("1"));
        assert_eq!(r.zscore("relay:expiries", "s1").await, None);

        // The browser leaves: nobody can join any more, the session ends.
        let left = n1.end_side("s1", Role::Browser, Holder::Any).await.unwrap();
        let EndOutcome::Ended(facts) = left else {
            panic!("not ended: {left:?}")
        };
        assert!(!facts.live);
        let ended = n1.expire_code("s1", Expiry::Unjoinable).await.unwrap();
        assert!(matches!(ended, ExpireOutcome::Ended { .. }), "{ended:?}");
        assert!(dump(&r, "relay:s:s1").await.is_empty());
    }

    #[actix::test]
    async fn a_dead_node_is_claimed_once() {
        let r = TestRedis::start().await;
        let n1 = register(&r, "n1", "s1", "ABCDEF").await;
        join(&r.store("n2"), "ABCDEF").await;
        // s2: a mac on n1 already away; s3: a mac that moved to n3.
        register(&r, "n1", "s2", "GHJKLM").await;
        n1.away("s2", Role::Mac, ConnId(1), 3_000).await.unwrap();
        register(&r, "n1", "s3", "NPQRTU").await;
        let n3 = r.store("n3");
        n3.resume("s3", Role::Mac, &token(1), ConnId(4))
            .await
            .unwrap();
        let _: () = r
            .cmd(redis::cmd("SADD").arg("relay:sides:n1").arg("s3|mac"))
            .await;
        let _: () = r.cmd(redis::cmd("SADD").arg("relay:nodes").arg("n1")).await;

        let mut dead = r.store("n2").dead_node("n1", 7_000).await.unwrap();
        dead.sort_by(|a, b| a.sid.cmp(&b.sid));
        assert_eq!(
            dead,
            [
                DeadSide {
                    sid: Arc::from("s1"),
                    role: Role::Mac,
                    guest: None,
                    gone: false,
                    peer_node: Some(Arc::from("n2"))
                },
                DeadSide {
                    sid: Arc::from("s2"),
                    role: Role::Mac,
                    guest: None,
                    gone: false,
                    peer_node: None
                },
            ]
        );
        assert_eq!(dump(&r, "relay:s:s1").await["m_state"], "away");
        assert_eq!(r.zscore("relay:grace", "s1|mac").await, Some(7_000));
        assert_eq!(
            r.zscore("relay:grace", "s2|mac").await,
            Some(3_000),
            "already away"
        );
        assert_eq!(
            dump(&r, "relay:s:s3").await["m_state"],
            "here",
            "moved away"
        );
        assert!(!r.is_member("relay:nodes", "n1").await);
        let left: i64 = r.cmd(redis::cmd("EXISTS").arg("relay:sides:n1")).await;
        assert_eq!(left, 0);
        // Every other node that saw the lease lapse gets nothing.
        assert!(
            r.store("n3")
                .dead_node("n1", 7_000)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[actix::test]
    async fn due_lists_what_is_due_up_to_the_limit() {
        let r = TestRedis::start().await;
        let n1 = r.store("n1");
        for (sid, at) in [("a", 10), ("b", 20), ("c", 30), ("later", 99)] {
            let _: () = r
                .cmd(redis::cmd("ZADD").arg("relay:expiries").arg(at).arg(sid))
                .await;
        }
        for (m, at) in [("a|mac", 5), ("odd", 6), ("b|toaster", 7), ("b|browser", 8)] {
            let _: () = r
                .cmd(redis::cmd("ZADD").arg("relay:grace").arg(at).arg(m))
                .await;
        }
        let due = n1.due(30, 2).await.unwrap();
        assert_eq!(due.codes, [Arc::from("a"), Arc::from("b")]);
        // The odd members are reported and left out.
        assert_eq!(due.graces, [(Arc::from("a"), Role::Mac)]);
        let due = n1.due(30, 10).await.unwrap();
        assert_eq!(due.codes.len(), 3);
        assert_eq!(
            due.graces,
            [(Arc::from("a"), Role::Mac), (Arc::from("b"), Role::Browser)]
        );
        assert_eq!(n1.due(1, 10).await.unwrap(), Due::default());
    }

    #[actix::test]
    async fn nodes_lists_the_live_set() {
        let r = TestRedis::start().await;
        let n1 = r.store("n1");
        assert!(n1.nodes().await.unwrap().is_empty());
        for n in ["n1", "n2"] {
            let _: () = r.cmd(redis::cmd("SADD").arg("relay:nodes").arg(n)).await;
        }
        let mut nodes = n1.nodes().await.unwrap();
        nodes.sort();
        assert_eq!(nodes, [Arc::from("n1"), Arc::from("n2")]);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let arr = |f: &[&str]| Value::Array(f.iter().map(|s| bulk(s)).collect());
        assert!(
            parse_expire(&arr(&["ended", "n1", "here", ""])).is_err(),
            "no code"
        );
        assert!(parse_expire(&arr(&["expired"])).is_err());
        assert!(
            parse_dead_node(&arr(&["s1", "mac"])).is_err(),
            "a field short"
        );
        assert!(parse_dead_node(&arr(&["s1", "both", ""])).is_err());
        assert!(parse_dead_node(&arr(&["s1", "g0", "", "away"])).is_err());
        assert!(parse_dead_node(&arr(&["s1", "mac", "", "later"])).is_err());
        let guest = parse_dead_node(&arr(&["s1", "g3", "n1", "gone"])).unwrap();
        assert_eq!(
            (guest[0].role, guest[0].guest, guest[0].gone),
            (Role::Browser, Some(3), true)
        );
        assert_eq!(parse_dead_node(&arr(&[])).unwrap(), []);
        assert!(parse_due(&arr(&["a"])).is_err());
        assert!(parse_due(&Value::Array(vec![arr(&[]), bulk("x")])).is_err());
        assert!(parse_nodes(&Value::Array(vec![Value::Int(1)])).is_err());
    }
}
