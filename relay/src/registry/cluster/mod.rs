//! The cluster registry: the same messages as the in-memory registry, with
//! the shared state in Redis (read and changed only through `cluster::store`,
//! which runs the `cluster::scripts`) and node-to-node messages on the bus.
//!
//! Each node holds, per session, only what concerns the sides homed on it:
//! - a side's inbound pipe: delivery to its socket, fed by a local sender or
//!   by the sender's node over the bus;
//! - a side's outbound pipe toward a peer on another node: frames are
//!   published there and kept until the peer acknowledges them, so the peer
//!   can be replayed to wherever it resumes, even if its node dies.
//!
//! A pair on one node is two local pipes, exactly as in the in-memory
//! registry, and never touches Redis for its frames.
//!
//! Modules: `requests` answers the sockets (register, join, resume, gone),
//! `peers` handles what other nodes say, `chores` runs the periodic work
//! (code expiry, grace periods, dead nodes, resends, checkpoints).

mod chores;
#[cfg(test)]
mod dispatch_tests;
#[cfg(test)]
mod moves_tests;
mod peers;
mod requests;
mod room;
#[cfg(test)]
pub(crate) mod test_node;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use relay_protocol::{Role, ServerMessage};
use tokio::sync::oneshot;

use super::member::Member;
use super::{Link, RegistrySettings, SessionId};
use crate::client_key::ClientKey;
use crate::cluster::Redis;
use crate::cluster::bus::{Bus, Dispatch};
use crate::cluster::envelope::{Control, Envelope, GuestLane, Lane};
use crate::cluster::lease::{self, Lease};
use crate::cluster::store::{Counter, Store};
use crate::conns::{ConnCommand, ConnId};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::pipe::{Peer, Pipe};
use crate::queue::{EventEffect, FromPeer};

/// How long a resuming node waits for the other nodes' handover.
const HANDOVER_WAIT: Duration = Duration::from_secs(2);

/// The pipes of this node, by session and the side they deliver to: what the
/// bus dispatcher looks up for every frame and ack, without the registry.
#[derive(Default, Clone)]
pub struct Directory {
    pipes: Arc<Mutex<PipeMap>>,
}

/// Pipes by session and the direction they deliver (a pairing's side, or
/// a room's guest direction).
type PipeMap = HashMap<(SessionId, Lane), Arc<Pipe>>;

impl Directory {
    fn get(&self, sid: &str, to: impl Into<Lane>) -> Option<Arc<Pipe>> {
        let map = self.pipes.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(Arc::from(sid), to.into())).cloned()
    }

    fn set(&self, sid: &SessionId, to: impl Into<Lane>, pipe: Option<&Arc<Pipe>>) {
        let mut map = self.pipes.lock().unwrap_or_else(|p| p.into_inner());
        let key = (Arc::clone(sid), to.into());
        match pipe {
            Some(p) => map.insert(key, Arc::clone(p)),
            None => map.remove(&key),
        };
    }

    fn all(&self) -> Vec<Arc<Pipe>> {
        let map = self.pipes.lock().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }
}

/// A side homed on this node.
struct Here {
    /// Its open connection, if any (none while away).
    conn: Option<(ConnId, Recipient<ConnCommand>)>,
}

/// One side of a session as this node holds it.
#[derive(Default)]
struct Slot {
    /// The side, if homed here.
    here: Option<Here>,
    /// Where it is homed, if elsewhere and its peer is here.
    node: Option<Arc<str>>,
    /// The pipe toward it held on this node (see the module docs).
    to: Option<Arc<Pipe>>,
}

/// What this node holds of one session: its host and the places its
/// guests take, as `registry::member` names them (a pairing has one place;
/// the protocol's roles address them, the mac the host and the browser the
/// guest of place 0).
struct Local {
    id: SessionId,
    host: Slot,
    places: Vec<Slot>,
    /// Frames of the pairing that the peer has read, as its new node said
    /// when it moved there while a local side's resume was still gathering
    /// (no pipe toward the peer existed yet to replay).
    peer_read: Option<u64>,
    /// A room's guests as this node holds them (`None` for a pairing;
    /// boxed: a pairing pays one pointer for it).
    room: Option<Box<room::RoomHere>>,
}

impl Local {
    fn new(id: SessionId) -> Self {
        Local {
            id,
            host: Slot::default(),
            // One guest place: a pairing.
            places: vec![Slot::default()],
            peer_read: None,
            room: None,
        }
    }

    fn slot(&self, role: Role) -> Option<&Slot> {
        match Member::from(role) {
            Member::Host => Some(&self.host),
            Member::Guest(i) => self.places.get(i),
        }
    }

    fn slot_mut(&mut self, role: Role) -> Option<&mut Slot> {
        match Member::from(role) {
            Member::Host => Some(&mut self.host),
            Member::Guest(i) => self.places.get_mut(i),
        }
    }

    fn side(&self, role: Role) -> Option<&Here> {
        self.slot(role)?.here.as_ref()
    }

    /// Makes `role` homed here (with `here`) or not (`None`); returns what it was.
    fn set_side(&mut self, role: Role, here: Option<Here>) -> Option<Here> {
        let slot = self.slot_mut(role)?;
        std::mem::replace(&mut slot.here, here)
    }

    fn side_mut(&mut self, role: Role) -> Option<&mut Here> {
        self.slot_mut(role)?.here.as_mut()
    }

    fn pipe(&self, role: Role) -> Option<&Arc<Pipe>> {
        self.slot(role)?.to.as_ref()
    }

    fn node_of(&self, role: Role) -> Option<&Arc<str>> {
        self.slot(role)?.node.as_ref()
    }

    fn set_node(&mut self, role: Role, node: Option<Arc<str>>) {
        if let Some(slot) = self.slot_mut(role) {
            slot.node = node;
        }
    }

    /// Sets the pipe toward `role`, in the session and the directory.
    fn set_pipe(&mut self, dir: &Directory, role: Role, pipe: Option<Arc<Pipe>>) {
        dir.set(&self.id, role, pipe.as_ref());
        if let Some(slot) = self.slot_mut(role) {
            slot.to = pipe;
        }
    }

    fn is_empty(&self) -> bool {
        self.host.here.is_none()
            && self.places.iter().all(|p| p.here.is_none())
            && self.guests_here().is_empty()
    }

    fn link(&self, role: Role, written: u64) -> Option<Link> {
        Some(Link {
            session_id: Arc::clone(&self.id),
            inbound: Arc::clone(self.pipe(role)?),
            outbound: Outbound::Peer(Arc::clone(self.pipe(role.peer())?)),
            member: Member::from(role),
            written,
        })
    }

    /// Tells a side homed here something, through its pipe (in order with its data).
    fn tell(&self, role: Role, msg: &ServerMessage, effect: EventEffect) {
        if self.side(role).is_some() {
            if let Some(p) = self.pipe(role) {
                p.push_event(ByteString::from(msg.to_text()), effect);
            }
        }
    }
}

/// A resume waiting for other nodes' handovers.
struct Pending {
    waiting: usize,
    replies: Vec<Control>,
    done: Option<oneshot::Sender<Vec<Control>>>,
}

/// The registry of a cluster node.
pub struct ClusterRegistry {
    settings: RegistrySettings,
    metrics: Arc<Metrics>,
    node: Arc<str>,
    redis: Arc<Redis>,
    bus: Arc<Bus>,
    /// The shared state in Redis, as this node sees it.
    store: Arc<Store>,
    dir: Directory,
    sessions: HashMap<SessionId, Local>,
    limiter: Option<DefaultKeyedRateLimiter<ClientKey>>,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    /// Sessions with a resume in flight here, each with the resumes queued
    /// behind it: two resumes of one session (its two sides, after their
    /// node died) must not rebuild its local state at the same time.
    resuming: HashMap<SessionId, VecDeque<tokio::sync::oneshot::Sender<()>>>,
    /// A room host's decisions waiting for the guest's node, by request.
    deciding: HashMap<u64, oneshot::Sender<()>>,
}

/// A message from another node, for the registry.
#[derive(Message)]
#[rtype(result = "()")]
struct FromPeerNode(Control);

/// A node's lease lapsed.
#[derive(Message)]
#[rtype(result = "()")]
struct NodeDead(String);

/// Other nodes took this one for dead: claim its sides back.
#[derive(Message)]
#[rtype(result = "()")]
struct Reclaim;

/// This node's subscription came back after a break.
#[derive(Message)]
#[rtype(result = "()")]
struct Resubscribed;

impl ClusterRegistry {
    /// Starts the registry of `node`, with its bus and lease (the lease's
    /// handle is for the node to give it up when it leaves).
    pub fn start(
        settings: RegistrySettings,
        metrics: Arc<Metrics>,
        node: Arc<str>,
        redis: Arc<Redis>,
        lease_ttl: Duration,
    ) -> (Addr<Self>, Arc<Bus>, Lease) {
        let dir = Directory::default();
        let limiter =
            NonZeroU32::new(settings.join_rate).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        let mut bus_out = None;
        let mut lease_out = None;
        let addr = ClusterRegistry::create(|ctx| {
            let addr = ctx.address();
            let dispatch = dispatcher(dir.clone(), addr.clone(), Arc::clone(&metrics));
            let resub = addr.clone();
            let bus = Bus::start(
                Arc::clone(&node),
                Arc::clone(&redis),
                Arc::clone(&metrics),
                dispatch,
                Arc::new(move || resub.do_send(Resubscribed)),
            );
            let dead = addr.clone();
            let back = addr.clone();
            lease_out = Some(lease::start(
                Arc::clone(&node),
                lease_ttl,
                Arc::clone(&redis),
                Arc::clone(&metrics),
                Arc::new(move |n| dead.do_send(NodeDead(n))),
                Arc::new(move || back.do_send(Reclaim)),
            ));
            bus_out = Some(Arc::clone(&bus));
            let store = Arc::new(Store::new(Arc::clone(&redis), Arc::clone(&node)));
            ClusterRegistry {
                settings,
                metrics,
                node,
                redis,
                bus,
                store,
                dir,
                sessions: HashMap::new(),
                limiter,
                pending: HashMap::new(),
                next_request: 1,
                resuming: HashMap::new(),
                deciding: HashMap::new(),
            }
        });
        // unwrap-free: `create` runs the closure before returning.
        let bus = bus_out.expect("the registry closure ran");
        let lease = lease_out.expect("the registry closure ran");
        (addr, bus, lease)
    }

    /// A handle to publish toward `role` of `sid` on `node`.
    fn peer(&self, sid: &SessionId, role: Role, node: &Arc<str>) -> Peer {
        Peer {
            link: self.bus.link(node),
            sid: Arc::clone(sid),
            to: role.into(),
        }
    }

    /// Sends a control message to `node` (handled here if it is this node).
    fn send(&self, node: &Arc<str>, c: Control, ctx: &mut Context<Self>) {
        if *node == self.node {
            ctx.notify(FromPeerNode(c));
        } else {
            self.bus.link(node).control(c);
        }
    }

    /// Forgets a session on this node, closing what it held.
    fn forget(&mut self, sid: &SessionId) {
        if let Some(mut local) = self.sessions.remove(sid) {
            for role in [Role::Mac, Role::Browser] {
                if let Some(p) = local.pipe(role) {
                    p.close();
                }
                local.set_pipe(&self.dir, role, None);
            }
            local.close_room(&self.dir);
        }
    }

    /// Forgets the sessions this node no longer holds any side of.
    fn forget_if_empty(&mut self, sid: &SessionId) {
        if self.sessions.get(sid).is_some_and(Local::is_empty) {
            self.forget(sid);
        }
    }

    /// Writes counters of a session to Redis (fire and forget).
    fn checkpoint(&self, sid: &SessionId, counters: Vec<(Counter, u64)>) {
        let store = Arc::clone(&self.store);
        let sid = Arc::clone(sid);
        actix::spawn(async move {
            let _ = store.checkpoint(&sid, &counters).await;
        });
    }
}

impl Actor for ClusterRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        chores::schedule(self, ctx);
        // A previous process with this node id may have died within its
        // lease (a quick restart): its sides are not here any more.
        ctx.notify(NodeDead(self.node.to_string()));
    }
}

/// Handles what arrives on this node's channel: frames and acks straight into
/// the pipes, control messages to the registry.
fn dispatcher(dir: Directory, registry: Addr<ClusterRegistry>, metrics: Arc<Metrics>) -> Dispatch {
    Arc::new(move |env| match env {
        Envelope::Frame { sid, to, p, frame } => {
            deliver(&dir, &registry, &metrics, &sid, Lane::Pair(to), p, |pipe| {
                pipe.push_from_peer(p, frame)
            });
        }
        Envelope::RoomFrame {
            sid,
            host,
            lanes,
            frame,
        } => {
            // One host frame for several guests here: each direction takes
            // it at its own number, in the order named.
            for (guest, p) in lanes {
                let lane = Lane::Guest(GuestLane {
                    guest,
                    to_host: false,
                });
                deliver(&dir, &registry, &metrics, &sid, lane, p, |pipe| {
                    pipe.push_from_host(p, frame.clone(), host)
                });
            }
        }
        Envelope::Ack { sid, to, p } => {
            if let Some(pipe) = dir.get(&sid, to) {
                pipe.ack_from_peer(p);
            }
        }
        Envelope::GuestAck { sid, lane, p } => {
            if let Some(pipe) = dir.get(&sid, Lane::Guest(lane)) {
                pipe.ack_from_peer(p);
            }
        }
        Envelope::Written { sid, to, p } => {
            if let Some(pipe) = dir.get(&sid, to) {
                pipe.written_from_peer(p);
            }
        }
        Envelope::GuestWritten { sid, lane, p } => {
            if let Some(pipe) = dir.get(&sid, Lane::Guest(lane)) {
                pipe.written_from_peer(p);
            }
        }
        Envelope::GuestFrame {
            sid,
            guest,
            p,
            frame,
        } => {
            // Into the host's one pipe, tagged, if that guest feeds it
            // from another node (`Pipe::feed_guest`); dropped otherwise.
            let host = Lane::Pair(Role::Mac);
            match std::num::NonZeroU64::new(guest) {
                Some(g) => deliver(&dir, &registry, &metrics, &sid, host, p, |pipe| {
                    pipe.push_from_guest(g, p, frame)
                }),
                None => tracing::debug!(session = %sid, p, "frame from guest 0 dropped"),
            }
        }
        Envelope::Control(c) => registry.do_send(FromPeerNode(c)),
        Envelope::Probe { .. } => {}
    })
}

/// Hands a frame (numbered `p`) from another node to the pipe of `lane`,
/// if held here, with `push`.
fn deliver(
    dir: &Directory,
    registry: &Addr<ClusterRegistry>,
    metrics: &Metrics,
    sid: &str,
    lane: Lane,
    p: u64,
    push: impl FnOnce(&Pipe) -> FromPeer,
) {
    let Some(pipe) = dir.get(sid, lane) else {
        tracing::debug!(session = %sid, ?lane, p, "frame for a session not held here");
        return;
    };
    match push(&pipe) {
        FromPeer::Queued => {}
        FromPeer::Duplicate { .. } | FromPeer::Dropped => {
            tracing::debug!(session = %sid, ?lane, p, "frame from another node dropped (duplicate or no receiver)");
        }
        FromPeer::Gap { next, ask } => {
            // Envelopes were lost (a publish failed, a link dropped
            // them, or our subscription broke): the pipe asked the
            // sender's node to resend, once for the gap.
            tracing::debug!(session = %sid, ?lane, p, next, ask, "gap in frames from another node");
            metrics.bus_gaps.inc();
        }
        FromPeer::Cut(conn) => match lane {
            Lane::Pair(to) => registry.do_send(super::Gone {
                session_id: Arc::from(sid),
                member: super::Member::from(to),
                conn,
                how: super::Departure::Dropped,
            }),
            // A room guest homed here stopped reading: cut, as on one node.
            Lane::Guest(g) => match usize::try_from(g.guest) {
                Ok(i) if !g.to_host => registry.do_send(super::Gone {
                    session_id: Arc::from(sid),
                    member: super::Member::Guest(i),
                    conn,
                    how: super::Departure::Dropped,
                }),
                _ => {
                    tracing::debug!(session = %sid, ?lane, conn = %conn, "cut on a guest's way to its host")
                }
            },
        },
    }
}
