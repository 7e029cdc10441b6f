//! The registry's typed door to Redis. It owns how the registry's scripts
//! (`cluster::scripts`) and its few plain queries are called: the keys and
//! arguments of each, the lifetimes of what Redis remembers, the metric label
//! of each call, and the parsing of every reply into enums and structs. Every
//! reply is read here, once per script; a reply of the wrong shape is a
//! [`StoreError::Malformed`], never a panic or a silent default.
//!
//! It never decides anything about sockets or pipes: the registry acts on
//! what the store returns. The connection itself (timeouts, reconnects,
//! marking Redis down) is `cluster::redis`.
//!
//! Files: `pairing` (register, join, resume), `sides` (away, end, grace,
//! reclaim, checkpoint), `chores` (code expiry, dead nodes, the due poll,
//! the node list), `reply` (reading a reply field by field), and for tests
//! `testing` (a throwaway `redis-server`).

mod chores;
mod pairing;
mod reply;
mod room;
mod sides;
#[cfg(test)]
pub(crate) mod testing;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use redis::{ScriptInvocation, Value};
use relay_protocol::{ErrorCode, Role};
use tracing::warn;

// What the registry names; the other reply types it only takes apart.
pub(crate) use self::chores::{ExpireOutcome, Expiry};
pub(crate) use self::pairing::{JoinOutcome, Registration, ResumeFacts, ResumeOutcome};
use self::reply::Malformed;
pub(crate) use self::room::{Decision, GuestAnswer, GuestResume, RoomRules};
pub(crate) use self::sides::{
    AwayOutcome, Counter, EndOutcome, GraceOutcome, Holder, ReclaimOutcome,
};
use super::Redis;
use super::scripts::Scripts;

/// A node's id, as its sides are homed under it in Redis.
pub(crate) type NodeId = Arc<str>;

/// How long ended sides (for `MAC_DISCONNECTED`/`RESUME_EXPIRED` answers to a
/// late resume) and expired codes (for `EXPIRED_CODE`) are remembered: long
/// enough for a client that was away to come back and be told why.
const REMEMBER: Duration = Duration::from_secs(600);

/// Lifetime of a session's hash in Redis, refreshed on every change: a
/// session no node touches for this long (every node died) is forgotten.
const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// How much longer a code's key lives than the code: the expiry poll, not
/// Redis, ends a code, so a late join finds it expired (`EXPIRED_CODE`)
/// rather than unknown.
const CODE_KEY_SLACK: Duration = Duration::from_secs(1);

/// Whether a side is connected to its node, as Redis records it (`state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SideState {
    /// Connected to the node it is homed on.
    Here,
    /// Disconnected, in its grace period (or its node died).
    Away,
}

impl SideState {
    /// The value in Redis (written by the scripts as `'here'`/`'away'`).
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            SideState::Here => "here",
            SideState::Away => "away",
        }
    }
}

/// A `state` value that is neither `here` nor `away`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a side state (here or away)")]
pub(crate) struct UnknownState(String);

impl FromStr for SideState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [SideState::Here, SideState::Away]
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// How a side ended, as its `end:<sid>:<role>` key remembers it: what a late
/// resume of that side is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SideEnd {
    /// The side itself ended (left, closed, or its grace period ran out).
    ResumeExpired,
    /// The browser's session ended because the mac ended.
    MacDisconnected,
    /// The room's host removed the guest.
    Removed,
}

impl SideEnd {
    /// The error code a resume of the ended side gets; its name is the
    /// value the scripts write.
    pub(crate) const fn code(self) -> ErrorCode {
        match self {
            SideEnd::ResumeExpired => ErrorCode::ResumeExpired,
            SideEnd::MacDisconnected => ErrorCode::MacDisconnected,
            SideEnd::Removed => ErrorCode::Removed,
        }
    }
}

impl FromStr for SideEnd {
    type Err = Malformed;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            SideEnd::ResumeExpired,
            SideEnd::MacDisconnected,
            SideEnd::Removed,
        ]
        .into_iter()
        .find(|e| e.code().as_str() == s)
        .ok_or_else(|| Malformed(format!("{s:?} is not how a side ends")))
    }
}

/// Every call the store makes: named in errors, labelled in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// The `register` script.
    Register,
    /// The `join` script.
    Join,
    /// The `resume` script.
    Resume,
    /// The `away` script.
    Away,
    /// The `end_side` script.
    EndSide,
    /// The `grace_end` script.
    GraceEnd,
    /// The `expire_code` script.
    ExpireCode,
    /// The `dead_node` script.
    DeadNode,
    /// The `reclaim` script.
    Reclaim,
    /// The `checkpoint` script.
    Checkpoint,
    /// The `resume_guest` script.
    ResumeGuest,
    /// The `decide` script (admit or deny).
    Decide,
    /// The `remove` script.
    Remove,
    /// The poll of due code expiries and grace periods.
    Due,
    /// The list of nodes.
    Nodes,
    /// The poll of the attack flag.
    Attack,
    /// Whether a session is a room.
    IsRoom,
}

impl Op {
    /// The operation's name, for errors and logs.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Op::IsRoom => "is_room",
            Op::Register => "register",
            Op::Join => "join",
            Op::Resume => "resume",
            Op::Away => "away",
            Op::EndSide => "end_side",
            Op::GraceEnd => "grace_end",
            Op::ExpireCode => "expire_code",
            Op::DeadNode => "dead_node",
            Op::Reclaim => "reclaim",
            Op::Checkpoint => "checkpoint",
            Op::ResumeGuest => "resume_guest",
            Op::Decide => "decide",
            Op::Remove => "remove",
            Op::Due => "due",
            Op::Nodes => "nodes",
            Op::Attack => "attack",
        }
    }

    /// The `op` label of the `relay_redis_*` metrics. These are the labels
    /// the registry used before the store, kept so dashboards and alerts
    /// still match; hence some operations share one.
    const fn label(self) -> &'static str {
        match self {
            Op::EndSide => "end",
            Op::GraceEnd => "grace",
            Op::ExpireCode | Op::Due => "expire",
            Op::DeadNode | Op::Reclaim => "reap",
            Op::ResumeGuest => "resume",
            Op::Decide | Op::Remove => "room",
            op => op.name(),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a store call has no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// Redis failed, timed out or is not connected (see `Redis::query`).
    #[error("Redis {op} failed: {source}")]
    Redis {
        /// The call.
        op: Op,
        /// Redis's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered something the call never returns: the Lua and this
    /// module disagree, or something else wrote the keys.
    #[error("Redis answered {op} with a malformed reply ({why}): {reply}")]
    Malformed {
        /// The call.
        op: Op,
        /// What is wrong with the reply.
        why: String,
        /// The reply, shortened.
        reply: String,
    },
}

/// The longest excerpt of a malformed reply kept in its error.
const REPLY_EXCERPT: usize = 200;

impl StoreError {
    fn malformed(op: Op, why: Malformed, reply: &Value) -> Self {
        let mut reply = format!("{reply:?}");
        if reply.len() > REPLY_EXCERPT {
            let mut end = REPLY_EXCERPT;
            while !reply.is_char_boundary(end) {
                end -= 1;
            }
            reply.truncate(end);
            reply.push('…');
        }
        StoreError::Malformed {
            op,
            why: why.0,
            reply,
        }
    }
}

/// The registry's shared state in Redis, as seen from one node: every call
/// that homes a side somewhere homes it on this node.
pub(crate) struct Store {
    redis: Arc<Redis>,
    scripts: Scripts,
    /// This node; fixed after construction.
    node: NodeId,
}

impl Store {
    /// The store of `node`, over the connection `redis`.
    pub(crate) fn new(redis: Arc<Redis>, node: NodeId) -> Self {
        Store {
            redis,
            scripts: Scripts::new(),
            node,
        }
    }

    /// Runs one script or command and parses its reply with `parse`.
    async fn call<T>(
        &self,
        op: Op,
        cmd: &impl super::redis::Queryable,
        parse: impl FnOnce(&Value) -> Result<T, Malformed>,
    ) -> Result<T, StoreError> {
        let reply: Value = self
            .redis
            .query(op.label(), cmd)
            .await
            .map_err(|source| StoreError::Redis { op, source })?;
        parse(&reply).map_err(|why| {
            let e = StoreError::malformed(op, why, &reply);
            // Logged here because some callers only skip a failed call, and
            // this one means the Lua and this module disagree.
            warn!(op = op.name(), error = %e, "malformed Redis reply");
            e
        })
    }

    /// A script invocation of one of the scripts that read a side (resume,
    /// away, end, grace, reclaim), with the arguments they all start with.
    fn side_call<'s>(script: &'s redis::Script, sid: &str, role: Role) -> ScriptInvocation<'s> {
        let mut inv = script.prepare_invoke();
        inv.arg(super::PREFIX).arg(sid).arg(role.as_str());
        inv
    }
}

/// `d` in whole milliseconds, as the scripts take lifetimes.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A role as the scripts write it (`mac`/`browser`).
fn role_from(s: &str) -> Result<Role, Malformed> {
    [Role::Mac, Role::Browser]
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| Malformed(format!("{s:?} is not a role")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_ends_read_back_what_they_write() {
        for s in [SideState::Here, SideState::Away] {
            assert_eq!(s.as_str().parse::<SideState>().unwrap(), s);
        }
        assert!("gone".parse::<SideState>().is_err());
        assert!("".parse::<SideState>().is_err());
        for e in [
            SideEnd::ResumeExpired,
            SideEnd::MacDisconnected,
            SideEnd::Removed,
        ] {
            assert_eq!(e.code().as_str().parse::<SideEnd>().unwrap(), e);
        }
        assert!("INVALID_CODE".parse::<SideEnd>().is_err());
        assert_eq!(role_from("mac").unwrap(), Role::Mac);
        assert_eq!(role_from("browser").unwrap(), Role::Browser);
        assert!(role_from("Mac").is_err());
    }

    #[test]
    fn labels_are_the_ones_dashboards_know() {
        let labels: Vec<_> = [
            Op::Register,
            Op::Join,
            Op::Resume,
            Op::Away,
            Op::EndSide,
            Op::GraceEnd,
            Op::ExpireCode,
            Op::DeadNode,
            Op::Reclaim,
            Op::Checkpoint,
            Op::Due,
            Op::Nodes,
            Op::ResumeGuest,
            Op::Decide,
            Op::Remove,
            Op::Attack,
        ]
        .into_iter()
        .map(Op::label)
        .collect();
        assert_eq!(
            labels,
            [
                "register",
                "join",
                "resume",
                "away",
                "end",
                "grace",
                "expire",
                "reap",
                "reap",
                "checkpoint",
                "expire",
                "nodes",
                "resume",
                "room",
                "room",
                "attack"
            ]
        );
    }

    #[test]
    fn a_long_malformed_reply_is_shortened() {
        let long = Value::BulkString(vec![b'x'; 1000]);
        let StoreError::Malformed { reply, why, op } =
            StoreError::malformed(Op::Join, Malformed("odd".into()), &long)
        else {
            panic!("not malformed")
        };
        assert_eq!((op, why.as_str()), (Op::Join, "odd"));
        assert!(reply.chars().count() <= REPLY_EXCERPT + 1, "{reply}");
    }
}
