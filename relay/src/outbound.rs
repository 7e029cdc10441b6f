//! Where a socket's data frames go: in a pairing, its peer's pipe; for a
//! room guest, its host's pipe, tagged with the guest; for a room host, the
//! pipes of its admitted guests, all of them or one. The registry builds and
//! changes these at set-up time (admit, remove, leave); the socket pushes
//! through them per frame without asking the registry.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use relay_protocol::GuestId;

use crate::conns::ConnId;
use crate::frame::Frame;
use crate::gate::Gate;
use crate::pipe::{Pipe, Pushed};

/// Where a socket's data frames go.
#[derive(Clone)]
pub enum Outbound {
    /// A side of a pairing (or a cross-node direction): its peer's pipe.
    Peer(Arc<Pipe>),
    /// A room guest: its host's pipe.
    Guest(Arc<GuestOut>),
    /// A room host: its admitted guests.
    Host(Arc<Room>),
}

/// A room guest's way to its host.
pub struct GuestOut {
    to_host: Arc<Pipe>,
    id: NonZeroU64,
    /// Frames the relay accepted from this guest (its resume `lastSeq`).
    accepted: AtomicU64,
    /// False while the guest waits for the host: its data is refused.
    admitted: AtomicBool,
}

impl GuestOut {
    /// Guest `id`'s way into `to_host`, admitted or waiting.
    pub fn new(to_host: Arc<Pipe>, id: NonZeroU64, admitted: bool) -> Arc<Self> {
        Arc::new(GuestOut {
            to_host,
            id,
            accepted: AtomicU64::new(0),
            admitted: AtomicBool::new(admitted),
        })
    }

    /// Lets the guest's frames through.
    pub fn admit(&self) {
        self.admitted.store(true, Ordering::SeqCst);
    }
}

/// One admitted guest as the host's frames reach it.
struct Member {
    id: GuestId,
    /// The guest's place in its session (what the registry calls it by).
    place: usize,
    pipe: Arc<Pipe>,
}

/// A room host's way to its admitted guests.
pub struct Room {
    guests: Mutex<Vec<Member>>,
    /// Frames the relay accepted from the host (its resume `lastSeq`).
    accepted: AtomicU64,
    /// Given to the guests' pipes, which never close it: they are not paced
    /// (see `Limits::paced`), so no guest can pause the host.
    gate: Arc<Gate>,
}

/// Which guests a room host's data frames go to: what its last `to` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Every admitted guest (no `to`, or `to` without a guest).
    #[default]
    All,
    /// One guest.
    Guest(GuestId),
    /// No one: the last `to` could not be read, so frames meant for one
    /// guest must not reach any other.
    Nobody,
}

impl Target {
    fn includes(self, id: GuestId) -> bool {
        match self {
            Target::All => true,
            Target::Guest(g) => g == id,
            Target::Nobody => false,
        }
    }
}

/// What became of a host's frame at one guest that needs acting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// The guest in this place holds too much unread: it is being cut.
    SlowConsumer(usize, ConnId),
    /// The absent guest in this place overflowed its resume buffer.
    Overflow(usize),
}

impl Room {
    /// A room with no guests admitted yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Room {
            guests: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            gate: Gate::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Member>> {
        // Every change leaves the list whole, so a poisoned lock's data is valid.
        self.guests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Guest `id` in `place`, reading `pipe`, now gets the host's frames.
    pub fn add(&self, id: GuestId, place: usize, pipe: Arc<Pipe>) {
        self.lock().push(Member { id, place, pipe });
    }

    /// Guest `id` gets no more of the host's frames.
    pub fn remove(&self, id: GuestId) {
        self.lock().retain(|m| m.id != id);
    }

    /// Whether guest `id` is admitted.
    pub fn has(&self, id: GuestId) -> bool {
        self.lock().iter().any(|m| m.id == id)
    }

    /// Pushes a host's frame to the guests `to` names; counts it as
    /// accepted either way. Returns how many guests it reached and calls
    /// `trouble` for each that must be cut or ended.
    fn push(&self, frame: Frame, to: Target, mut trouble: impl FnMut(Trouble)) -> usize {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        let guests = self.lock();
        let mut reached = 0;
        for m in guests.iter().filter(|m| to.includes(m.id)) {
            match m.pipe.push(frame.clone(), &self.gate) {
                Pushed::Queued { .. } | Pushed::Backlogged { .. } => reached += 1,
                Pushed::SlowConsumer(conn) => {
                    reached += 1;
                    trouble(Trouble::SlowConsumer(m.place, conn));
                }
                Pushed::Overflow => trouble(Trouble::Overflow(m.place)),
                Pushed::NotPaired => {}
            }
        }
        reached
    }
}

/// What became of a pushed frame, as the sending socket sees it.
pub enum Sent {
    /// The peer's pipe said this.
    Pipe(Pushed),
    /// A room host's frame reached this many guests.
    Room(usize),
}

impl Outbound {
    /// Pushes one data frame from the socket; `to` is a room host's
    /// target, ignored otherwise.
    #[inline]
    pub fn push(
        &self,
        frame: Frame,
        to: Target,
        gate: &Arc<Gate>,
        trouble: impl FnMut(Trouble),
    ) -> Sent {
        match self {
            Outbound::Peer(p) => Sent::Pipe(p.push(frame, gate)),
            Outbound::Guest(g) => {
                if !g.admitted.load(Ordering::SeqCst) {
                    return Sent::Pipe(Pushed::NotPaired);
                }
                let pushed = g.to_host.push_from(frame, Some(g.id), gate);
                if !matches!(pushed, Pushed::NotPaired) {
                    g.accepted.fetch_add(1, Ordering::SeqCst);
                }
                Sent::Pipe(pushed)
            }
            Outbound::Host(r) => Sent::Room(r.push(frame, to, trouble)),
        }
    }

    /// Frames the relay accepted from this socket's side (its `lastSeq`).
    pub fn accepted(&self) -> u64 {
        match self {
            Outbound::Peer(p) => p.accepted(),
            Outbound::Guest(g) => g.accepted.load(Ordering::SeqCst),
            Outbound::Host(r) => r.accepted.load(Ordering::SeqCst),
        }
    }

    /// The peer's pipe in a pairing or toward a room host (what a paused
    /// sender watches); `None` for a room host.
    pub fn pipe(&self) -> Option<&Arc<Pipe>> {
        match self {
            Outbound::Peer(p) => Some(p),
            Outbound::Guest(g) => Some(&g.to_host),
            Outbound::Host(_) => None,
        }
    }
}
