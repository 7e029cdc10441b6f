//! The registry: who owns which code, session and side. Socket actors talk to
//! it only through [`RegistryHandle`] and the messages below, so the storage
//! behind it (in memory on one node now, Redis for a cluster later) can change
//! without touching them. It is asked at set-up time (register, join, resume)
//! and told when sides leave; it is never on the per-frame path.
//!
//! Each set-up request carries its [`Deadline`]; how the socket's wait and
//! the registry's own waits relate to it is in `deadline`.

mod cluster;
mod deadline;
pub(crate) mod guessing;
pub(crate) mod member;
mod memory;
pub(crate) mod secret;
mod session;
#[cfg(test)]
mod testing;
mod timers;
mod tombstones;

use std::net::IpAddr;
use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{CloseCode, ErrorCode, Role};

pub use cluster::ClusterRegistry;
pub use deadline::{Deadline, REQUEST_BUDGET};
pub use memory::{MemoryRegistry, RegistrySettings};

pub use member::Member;

use crate::conns::{ConnCommand, ConnId, Killer};
use crate::outbound::Outbound;
use crate::pipe::{Pipe, Receiver, Wake};

/// Identifies a session; sent to clients as `sessionId`.
pub type SessionId = Arc<str>;

/// The connection asking, as the registry needs to know it.
#[derive(Clone)]
pub struct Client {
    /// The connection.
    pub conn: ConnId,
    /// Its address (join rates count it as a [`crate::client_key::ClientKey`]).
    pub addr: IpAddr,
    /// Where its pipe sends [`Wake`].
    pub wake: Recipient<Wake>,
    /// Where the registry sends [`ConnCommand`] (replaced by a resume).
    pub commands: Recipient<ConnCommand>,
    /// Cuts its TCP socket if it stops reading.
    pub killer: Option<Arc<Killer>>,
}

impl Client {
    /// This client as the reader of a pipe.
    pub fn receiver(&self) -> Receiver {
        Receiver {
            conn: self.conn,
            wake: self.wake.clone(),
            killer: self.killer.clone(),
        }
    }
}

/// A socket's place in a session, handed out by register, join and resume.
#[derive(Clone)]
pub struct Link {
    /// The session.
    pub session_id: SessionId,
    /// Frames toward this socket.
    pub inbound: Arc<Pipe>,
    /// Where frames from this socket go.
    pub outbound: Outbound,
    /// Who this socket is in the session.
    pub member: Member,
    /// Position in `inbound` the client already has; write what follows.
    pub written: u64,
}

/// A refused request: the error for the client, and whether to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The protocol error code.
    pub code: ErrorCode,
    /// A specific sentence, or `None` for the code's standard one.
    pub message: Option<String>,
    /// Close the connection with this code after the error.
    pub close: Option<CloseCode>,
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Refusal {
            code,
            message: None,
            close: None,
        }
    }
}

impl Refusal {
    /// A refusal with a specific sentence.
    pub fn with(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: Some(message.into()),
            close: None,
        }
    }
}

/// Mac: asks for a code.
#[derive(Message)]
#[rtype(result = "Result<Registered, Refusal>")]
pub struct Register {
    /// Who asks.
    pub client: Client,
    /// When the answer is due.
    pub deadline: Deadline,
    /// The app's optional id, only logged.
    pub client_id: Option<String>,
    /// A room host's room; `None` for a pairing.
    pub room: Option<RoomRequest>,
}

/// What a room host asks for (checked against the relay's ceiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomRequest {
    /// Guests at once, at least 1.
    pub max_guests: u32,
    /// How guests are admitted.
    pub admit: relay_protocol::AdmitMode,
}

/// Answer to [`Register`].
pub struct Registered {
    /// The code to show.
    pub code: String,
    /// When the code stops being valid for joining (unix ms).
    pub expires_at: u64,
    /// Secret for resume, sent to the client once.
    pub resume_token: String,
    /// The socket's place in the session.
    pub link: Link,
}

/// Browser: joins with a code as typed.
#[derive(Message)]
#[rtype(result = "Result<Joined, Refusal>")]
pub struct Join {
    /// Who asks.
    pub client: Client,
    /// When the answer is due.
    pub deadline: Deadline,
    /// The code as typed.
    pub code: String,
    /// A room guest's name for the host.
    pub name: Option<String>,
}

/// Answer to [`Join`].
pub struct Joined {
    /// Secret for resume, sent to the client once; `None` while a room
    /// guest waits for the host (its `joined` comes through its pipe).
    pub resume_token: Option<String>,
    /// The guest's id, in a room.
    pub guest_id: Option<relay_protocol::GuestId>,
    /// The socket's place in the session.
    pub link: Link,
}

/// What a room host does to one of its guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomOp {
    /// Let a waiting guest in.
    Admit,
    /// Turn a waiting guest away.
    Deny,
    /// End a guest at once, waiting or admitted.
    Remove,
}

/// A room host's `admit`, `deny` or `remove`.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct Host {
    /// The host's session.
    pub session_id: SessionId,
    /// The host's connection (only the current one may act).
    pub conn: ConnId,
    /// What to do.
    pub op: RoomOp,
    /// To whom.
    pub guest_id: relay_protocol::GuestId,
}

/// Either side: takes its session back.
#[derive(Message)]
#[rtype(result = "Result<Resumed, Refusal>")]
pub struct Resume {
    /// Who asks.
    pub client: Client,
    /// When the answer is due.
    pub deadline: Deadline,
    /// The endpoint it came in on.
    pub role: Role,
    /// `sessionId` it was given.
    pub session_id: String,
    /// `resumeToken` it was given.
    pub resume_token: String,
    /// Data frames it has received.
    pub last_seq: u64,
    /// A room host's `guestSeqs`: what it received from each guest, which
    /// only a room rebuilt after its node died goes by (empty otherwise).
    pub guest_seqs: relay_protocol::GuestSeqs,
}

impl Resume {
    /// `guestSeqs` if it can be gone by: its counts add up to `lastSeq`
    /// (docs/protocol-notes.md, Rooms: otherwise it reads as not given).
    /// Whether it names only guests of the room is for the caller to check.
    pub fn sound_guest_seqs(&self) -> Option<&relay_protocol::GuestSeqs> {
        let mut sum: u64 = 0;
        for &n in self.guest_seqs.values() {
            sum = sum.checked_add(n)?;
        }
        (!self.guest_seqs.is_empty() && sum == self.last_seq).then_some(&self.guest_seqs)
    }
}

/// Answer to [`Resume`].
pub struct Resumed {
    /// Data frames the relay accepted from this side.
    pub accepted: u64,
    /// Control messages to write right after `resumed` (what happened while
    /// the side was away, when it comes back on another node).
    pub events: Vec<String>,
    /// The socket's place in the session.
    pub link: Link,
}

/// How a side's connection ended, as the socket saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It sent `leave`: gone for good at once.
    Left,
    /// It closed with 1000: gone for good at once.
    Closed,
    /// It dropped: keep its session for the grace period.
    Dropped,
}

/// A socket that held a session ended.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Gone {
    /// The session.
    pub session_id: SessionId,
    /// The side.
    pub member: Member,
    /// The connection; ignored unless it is still the side's current one.
    pub conn: ConnId,
    /// How it ended.
    pub how: Departure,
}

/// Frames for an absent side overflowed its resume buffer: end that side.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Overflowed {
    /// The session.
    pub session_id: SessionId,
    /// The absent side.
    pub member: Member,
}

/// The registry as the sockets see it: one recipient per message, so any
/// actor that handles them all can stand behind it.
#[derive(Clone)]
pub struct RegistryHandle {
    register: Recipient<Register>,
    join: Recipient<Join>,
    resume: Recipient<Resume>,
    gone: Recipient<Gone>,
    overflowed: Recipient<Overflowed>,
    stats: Recipient<Stats>,
    host: Recipient<Host>,
}

/// Asks the registry for counts, for `/metrics`.
#[derive(Message)]
#[rtype(result = "SessionStats")]
pub struct Stats;

pub use crate::metrics::SessionStats;

impl RegistryHandle {
    /// A handle to any registry actor.
    pub fn new<A>(addr: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<Register>
            + Handler<Join>
            + Handler<Resume>
            + Handler<Gone>
            + Handler<Overflowed>
            + Handler<Stats>
            + Handler<Host>,
    {
        RegistryHandle {
            register: addr.clone().recipient(),
            join: addr.clone().recipient(),
            resume: addr.clone().recipient(),
            gone: addr.clone().recipient(),
            overflowed: addr.clone().recipient(),
            stats: addr.clone().recipient(),
            host: addr.clone().recipient(),
        }
    }

    /// A room host's `admit`, `deny` or `remove`; `UNAVAILABLE` if the
    /// registry does not answer within a request's budget.
    pub async fn host(&self, msg: Host) -> Result<(), Refusal> {
        let wait = Deadline::for_request().reply_wait();
        flatten(self.host.send(msg).timeout(wait).await)
    }

    /// Asks for a code; `UNAVAILABLE` if the registry does not answer by
    /// the request's deadline plus [`REPLY_SLACK`](deadline::REPLY_SLACK).
    pub async fn register(&self, msg: Register) -> Result<Registered, Refusal> {
        let wait = msg.deadline.reply_wait();
        flatten(self.register.send(msg).timeout(wait).await)
    }

    /// Joins; `UNAVAILABLE` if the registry does not answer by the request's
    /// deadline plus [`REPLY_SLACK`](deadline::REPLY_SLACK).
    pub async fn join(&self, msg: Join) -> Result<Joined, Refusal> {
        let wait = msg.deadline.reply_wait();
        flatten(self.join.send(msg).timeout(wait).await)
    }

    /// Resumes; `UNAVAILABLE` if the registry does not answer by the
    /// request's deadline plus [`REPLY_SLACK`](deadline::REPLY_SLACK).
    pub async fn resume(&self, msg: Resume) -> Result<Resumed, Refusal> {
        let wait = msg.deadline.reply_wait();
        flatten(self.resume.send(msg).timeout(wait).await)
    }

    /// Tells the registry a side's socket ended.
    pub fn gone(&self, msg: Gone) {
        self.gone.do_send(msg);
    }

    /// Counts sessions by state and buffered frames; zeros if the registry
    /// does not answer in time.
    pub async fn stats(&self) -> SessionStats {
        self.stats
            .send(Stats)
            .timeout(REQUEST_BUDGET)
            .await
            .unwrap_or_default()
    }

    /// Tells the registry an absent side's buffer overflowed.
    pub fn overflowed(&self, msg: Overflowed) {
        self.overflowed.do_send(msg);
    }
}

fn flatten<T>(r: Result<Result<T, Refusal>, MailboxError>) -> Result<T, Refusal> {
    match r {
        Ok(inner) => inner,
        Err(e) => {
            // Past the deadline and the slack: the registry is jammed, and
            // will refuse this request on its own deadline check.
            tracing::warn!(error = %e, "registry did not answer");
            Err(ErrorCode::Unavailable.into())
        }
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    fn resume(last_seq: u64, seqs: &[(u64, u64)]) -> Resume {
        Resume {
            client: testing::TestClient::start().client,
            deadline: Deadline::for_request(),
            role: Role::Mac,
            session_id: "s".into(),
            resume_token: "t".into(),
            last_seq,
            guest_seqs: seqs.iter().copied().collect(),
        }
    }

    #[actix::test]
    async fn guest_seqs_count_only_when_they_add_up_to_last_seq() {
        assert!(resume(12, &[(1, 7), (3, 5)]).sound_guest_seqs().is_some());
        assert!(resume(0, &[(1, 0)]).sound_guest_seqs().is_some());
        assert!(resume(12, &[(1, 7), (3, 4)]).sound_guest_seqs().is_none());
        assert!(resume(12, &[(1, 13)]).sound_guest_seqs().is_none());
        assert!(resume(0, &[]).sound_guest_seqs().is_none());
        let overflow = resume(5, &[(1, u64::MAX), (2, 6)]);
        assert!(overflow.sound_guest_seqs().is_none());
    }
}
