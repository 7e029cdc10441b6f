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
    /// The connection whose frames it takes, once a resume fenced it (see
    /// `Pipe::fence`; the host's pipe is shared by every guest, so the
    /// guest's fence is here), held across each push.
    sender: Mutex<Option<ConnId>>,
    /// Frames the relay accepted from this guest (its resume `lastSeq`).
    accepted: AtomicU64,
    /// False while the guest waits for the host: its data is refused.
    admitted: AtomicBool,
}

impl GuestOut {
    /// Guest `id`'s way into `to_host`, admitted or waiting.
    pub fn new(to_host: Arc<Pipe>, id: NonZeroU64, admitted: bool) -> Arc<Self> {
        Self::resumed(to_host, id, admitted, 0)
    }

    /// As [`GuestOut::new`], for a guest whose frames the relay already
    /// accepted `accepted` of (it resumed on another node).
    pub fn resumed(to_host: Arc<Pipe>, id: NonZeroU64, admitted: bool, accepted: u64) -> Arc<Self> {
        Arc::new(GuestOut {
            to_host,
            id,
            sender: Mutex::new(None),
            accepted: AtomicU64::new(accepted),
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
    /// The host's frames numbered up to this one are not for it: its node
    /// took them before the host's node died (a rebuilt room; see
    /// [`Room::add_after`]).
    after: u64,
}

/// The admitted guests and the host connection whose frames they take.
#[derive(Default)]
struct Members {
    list: Vec<Member>,
    /// Once a resume fenced it (see `Pipe::fence`).
    sender: Option<ConnId>,
}

/// A room host's way to its admitted guests.
pub struct Room {
    guests: Mutex<Members>,
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
        Self::resumed(0)
    }

    /// As [`Room::new`], for a host whose frames the relay accepted
    /// `accepted` of (its room moved to another node).
    pub fn resumed(accepted: u64) -> Arc<Self> {
        Arc::new(Room {
            guests: Mutex::new(Members::default()),
            accepted: AtomicU64::new(accepted),
            gate: Gate::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Members> {
        // Every change leaves the list whole, so a poisoned lock's data is valid.
        self.guests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Guest `id` in `place`, reading `pipe`, now gets the host's frames.
    pub fn add(&self, id: GuestId, place: usize, pipe: Arc<Pipe>) {
        self.add_after(id, place, pipe, 0);
    }

    /// As [`Room::add`], for a guest whose node has the host's frames up to
    /// number `after`: those the host sends again after a rebuild (its
    /// `resumed.lastSeq` being lower) are dropped for it, not sent twice.
    pub fn add_after(&self, id: GuestId, place: usize, pipe: Arc<Pipe>, after: u64) {
        let m = Member {
            id,
            place,
            pipe,
            after,
        };
        self.lock().list.push(m);
    }

    /// Guest `id` gets no more of the host's frames.
    pub fn remove(&self, id: GuestId) {
        self.lock().list.retain(|m| m.id != id);
    }

    /// Whether guest `id` is admitted.
    pub fn has(&self, id: GuestId) -> bool {
        self.lock().list.iter().any(|m| m.id == id)
    }

    /// Takes frames from `conn` only, and returns the host's accepted count.
    fn fence(&self, conn: ConnId) -> u64 {
        let mut guests = self.lock();
        guests.sender = Some(conn);
        self.accepted.load(Ordering::SeqCst)
    }

    /// Pushes a host's frame from `conn` to the guests `to` names; counts it
    /// as accepted either way. Returns how many guests it reached (`None`:
    /// refused, `conn` was taken over) and calls `trouble` for each guest
    /// that must be cut or ended.
    fn push(
        &self,
        frame: Frame,
        to: Target,
        conn: ConnId,
        mut trouble: impl FnMut(Trouble),
    ) -> Option<usize> {
        let guests = self.lock();
        if guests.sender.is_some_and(|s| s != conn) {
            return None;
        }
        // The frame's number among the host's frames (see `Pipe::push_host`).
        let n = self.accepted.fetch_add(1, Ordering::SeqCst) + 1;
        let mut reached = 0;
        for m in guests
            .list
            .iter()
            .filter(|m| to.includes(m.id) && n > m.after)
        {
            match m.pipe.push_host(frame.clone(), n, conn, &self.gate) {
                Pushed::Queued { .. } | Pushed::Backlogged { .. } => reached += 1,
                Pushed::SlowConsumer(conn) => {
                    reached += 1;
                    trouble(Trouble::SlowConsumer(m.place, conn));
                }
                Pushed::Overflow => trouble(Trouble::Overflow(m.place)),
                Pushed::NotPaired | Pushed::Replaced => {}
            }
        }
        Some(reached)
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
    /// Pushes one data frame from the socket of connection `conn`; `to` is
    /// a room host's target, ignored otherwise.
    #[inline]
    pub fn push(
        &self,
        frame: Frame,
        to: Target,
        conn: ConnId,
        gate: &Arc<Gate>,
        trouble: impl FnMut(Trouble),
    ) -> Sent {
        match self {
            Outbound::Peer(p) => Sent::Pipe(p.push_as(frame, None, conn, gate)),
            Outbound::Guest(g) => {
                if !g.admitted.load(Ordering::SeqCst) {
                    return Sent::Pipe(Pushed::NotPaired);
                }
                let sender = g.sender.lock().unwrap_or_else(|p| p.into_inner());
                if sender.is_some_and(|s| s != conn) {
                    return Sent::Pipe(Pushed::Replaced);
                }
                let pushed = g.to_host.push_as(frame, Some(g.id), conn, gate);
                if !matches!(pushed, Pushed::NotPaired | Pushed::Replaced) {
                    g.accepted.fetch_add(1, Ordering::SeqCst);
                }
                drop(sender);
                Sent::Pipe(pushed)
            }
            Outbound::Host(r) => match r.push(frame, to, conn, trouble) {
                Some(reached) => Sent::Room(reached),
                None => Sent::Pipe(Pushed::Replaced),
            },
        }
    }

    /// Resuming this side on connection `conn`: frames from any earlier
    /// connection are refused from now on; returns the side's accepted
    /// count (its `resumed.lastSeq`), which they can no longer change.
    pub fn fence(&self, conn: ConnId) -> u64 {
        match self {
            Outbound::Peer(p) => p.fence(conn),
            Outbound::Guest(g) => {
                let mut sender = g.sender.lock().unwrap_or_else(|p| p.into_inner());
                *sender = Some(conn);
                g.accepted.load(Ordering::SeqCst)
            }
            Outbound::Host(r) => r.fence(conn),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Limits;
    use bytes::Bytes;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            max_buffered: 1 << 20,
            stall: Duration::from_secs(60),
            away_frames: 100,
            away_bytes: 1 << 20,
            paced: true,
        }
    }

    fn frame() -> Frame {
        Frame::Binary(Bytes::from_static(b"x"))
    }

    /// Pushes from `conn` and says whether the frame was taken.
    fn taken(o: &Outbound, conn: ConnId, gate: &Arc<Gate>) -> bool {
        match o.push(frame(), Target::All, conn, gate, |_| {}) {
            Sent::Pipe(Pushed::Replaced) => false,
            Sent::Pipe(_) | Sent::Room(_) => true,
        }
    }

    #[test]
    fn a_fence_refuses_the_old_connection_and_fixes_the_count() {
        let (old, new) = (ConnId::next(), ConnId::next());
        let gate = Gate::new();
        let to_host = Pipe::new(limits());
        to_host.reset_receiver();
        let room = Room::new();
        room.add(1, 0, Pipe::new(limits()));
        let sides = [
            Outbound::Peer(Pipe::new(limits())),
            Outbound::Guest(GuestOut::new(Arc::clone(&to_host), NonZeroU64::MIN, true)),
            Outbound::Host(room),
        ];
        for o in &sides {
            // Before any resume, any connection of the side may push.
            assert!(taken(o, old, &gate));
            let accepted = o.fence(new);
            assert!(!taken(o, old, &gate), "the old connection still pushes");
            assert_eq!(o.fence(new), accepted, "a refused frame was counted");
            assert!(taken(o, new, &gate));
        }
    }
}
