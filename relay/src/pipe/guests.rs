//! A room host's pipe fed by guests on other nodes (see `queue::guests`):
//! their frames go into the host's one queue with their tags, and what the
//! host read or wrote of each guest's frames goes back to that guest's
//! node, which holds them until then.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::time::Instant;

use super::{Inner, Peer, Pipe};
use crate::frame::Frame;
use crate::queue::{FromPeer, GuestReport};

/// Acknowledgements and written reports of a guest's direction carry no
/// pairing of their own: its numbers only grow while the guest is in.
const GUEST_PAIRING: u64 = 0;

/// The nodes of the guests feeding a host's pipe, by guest.
#[derive(Default)]
pub(super) struct GuestPeers(HashMap<NonZeroU64, Peer>);

impl GuestPeers {
    /// Tells each guest's node what the host's socket took to write.
    #[inline]
    pub(super) fn written(&self, reports: &[GuestReport]) {
        for r in reports {
            if let Some(peer) = self.0.get(&r.guest) {
                peer.written(r.p, GUEST_PAIRING);
            }
        }
    }
}

impl Inner {
    /// Tells each guest's node how far the host read that guest's frames.
    #[inline]
    pub(super) fn report_guest_reads(&mut self) {
        if !self.queue.has_guest_feeds() {
            return;
        }
        for r in self.queue.take_guest_reads() {
            if let Some(peer) = self.guests.0.get(&r.guest) {
                peer.ack(r.p, GUEST_PAIRING);
            }
        }
    }
}

impl Pipe {
    /// A room host's pipe on the node that takes its room over, for a
    /// host that has `last_seq` data frames already.
    pub fn for_host_at(limits: crate::queue::Limits, last_seq: u64) -> std::sync::Arc<Self> {
        let p = Self::with_queue(
            crate::queue::Queue::fed_from_peer(limits, last_seq, 0),
            None,
            None,
        );
        p.fed_here(0);
        p
    }

    /// Frames of this direction sent so far, and those not acknowledged
    /// (by number), for a handover.
    pub fn sent_and_held(&self) -> (u64, Vec<(u64, Frame)>) {
        let g = self.lock();
        (g.queue.pairing_count(), g.queue.unacknowledged())
    }

    /// Frames of guest `guest` held here after the host's data frame `seq`.
    pub fn guest_frames_after(&self, guest: NonZeroU64, seq: u64) -> u64 {
        self.lock().queue.guest_entries_after(guest, seq)
    }

    /// Guest `guest`'s frames come from `peer`'s node from now on (its
    /// direction toward the host), the host having read `have` of them;
    /// acknowledgements, written reports and asks to resend go there.
    pub fn feed_guest(&self, guest: NonZeroU64, have: u64, peer: Peer) {
        let mut g = self.lock();
        g.queue.feed_guest(guest, have);
        g.guests.0.insert(guest, peer);
    }

    /// Guest `guest`'s direction moved to `peer`'s node (it resumed
    /// there): acknowledgements, written reports and asks to resend go
    /// there from now on. Returns how many of its frames were taken and
    /// those the host has not read, for that node to hold (taken in the
    /// same step, so no frame from the old node falls between them and
    /// the acknowledgements); `None` if it fed nothing here.
    pub fn guest_fed_from(
        &self,
        guest: NonZeroU64,
        peer: Peer,
    ) -> Option<(u64, Vec<(u64, Frame)>)> {
        let mut g = self.lock();
        let moved = g.queue.guest_unread(guest)?;
        g.guests.0.insert(guest, peer);
        Some(moved)
    }

    /// Guest `guest` no longer feeds this pipe from another node; returns
    /// how many of its frames were taken (in its direction's numbers).
    pub fn unfeed_guest(&self, guest: NonZeroU64) -> Option<u64> {
        let mut g = self.lock();
        g.guests.0.remove(&guest);
        g.queue.unfeed_guest(guest)
    }

    /// A frame of guest `guest` from its node, numbered `p` in its
    /// direction: queued with the guest's tag if next (see
    /// [`crate::queue::Queue::push_from_guest`]); a duplicate the host
    /// read is acknowledged again, and a gap asks that node to resend.
    pub fn push_from_guest(&self, guest: NonZeroU64, p: u64, frame: Frame) -> FromPeer {
        let mut g = self.lock();
        let out = g.queue.push_from_guest(guest, p, frame, Instant::now());
        if let Some(peer) = g.guests.0.get(&guest) {
            match out {
                FromPeer::Duplicate { ack: Some(p) } => peer.ack(p, GUEST_PAIRING),
                FromPeer::Gap { next, ask: true } => peer.resend(next),
                _ => {}
            }
        }
        let after = g.settle();
        drop(g);
        after.run();
        out
    }
}
