//! A pipe whose other end is on another node: publishing there (replays
//! included), and, fed from a room host's node, the host's number of the
//! last frame taken: what the room's rebuild goes by should the host's node
//! die (docs/design.md, "Rooms across nodes").

use std::sync::Arc;
use std::time::Instant;

use super::{Peer, Pipe, Pushed};
use crate::conns::ConnId;
use crate::frame::Frame;
use crate::gate::Gate;
use crate::queue::{FromPeer, Gap, Queue};

impl Pipe {
    /// Sender side: the receiver is (now) on another node and has every
    /// frame up to pairing number `p_last`; send it the rest, then keep
    /// publishing there.
    ///
    /// # Errors
    /// [`Gap`] when `p_last` does not fit what was sent and acknowledged.
    pub fn send_to_peer(&self, peer: Peer, p_last: u64) -> Result<(), Gap> {
        let mut g = self.lock();
        let at = g.queue.base() + p_last;
        g.queue.renumber(at);
        g.queue.send_to_peer(p_last, Instant::now())?;
        // Under the lock: before any frame the sender pushes from now on.
        peer.replay(g.queue.resend_numbered(0));
        g.remote = Some(peer);
        let after = g.settle();
        drop(g);
        after.run();
        Ok(())
    }

    /// Sender side: publishes again every held frame from pairing number
    /// `from` on (envelopes were lost; the receiver drops what it has).
    pub fn resend_to_peer(&self, from: u64) {
        let g = self.lock();
        if let Some(peer) = &g.remote {
            // Under the lock, so the link gets them in order with new pushes.
            peer.replay(g.queue.resend_numbered(from));
        }
    }

    /// The node this pipe publishes to, if its receiver is remote.
    pub fn remote_node(&self) -> Option<Arc<str>> {
        self.lock().remote.as_ref().map(|p| Arc::clone(p.node()))
    }

    /// Sender side: the remote receiver went away; keep its frames within
    /// the away limits until it comes back somewhere.
    pub fn peer_away(&self) {
        self.change(Queue::peer_away);
    }

    /// Sender side, on a room host's way to one guest: queues the host's
    /// frame numbered `host` among its frames (from connection `conn`,
    /// unless a resume fenced the pipe for another), published with that
    /// number when the guest is on another node.
    #[inline]
    pub fn push_host(&self, frame: Frame, host: u64, conn: ConnId, gate: &Arc<Gate>) -> Pushed {
        self.push_checked(frame, None, Some(conn), gate, host)
    }

    /// Receiver side, fed from a room host's node: as
    /// [`Pipe::push_from_peer`], the frame being the host's number `host`
    /// (if its node said), remembered once taken.
    pub fn push_from_host(&self, p: u64, frame: Frame, host: Option<u64>) -> FromPeer {
        let out = self.push_from_peer(p, frame);
        if let (FromPeer::Queued, Some(n)) = (out, host) {
            let mut g = self.lock();
            g.host_at = g.host_at.max(n);
        }
        out
    }

    /// Receiver side, fed from a room host's node: the host's number of the
    /// last frame taken (0: none known), and this direction's count.
    pub fn host_at(&self) -> (u64, u64) {
        let g = self.lock();
        (g.host_at, g.queue.pairing_count())
    }

    /// Sender side, on a guest's way to its room host: the host's node died
    /// and its room is rebuilt elsewhere. Where that node's copy of this
    /// direction starts: after `from` (the host's own count of this guest's
    /// frames) if given and this pipe can replay from there, else after
    /// what the host acknowledged (it may have read some of the frames
    /// after that: they come again).
    pub fn rebuilt_host_start(&self, from: Option<u64>) -> u64 {
        let g = self.lock();
        let acked = g.queue.acknowledged();
        match from {
            Some(f) if g.queue.check(g.queue.base() + f).is_ok() && f >= acked => f,
            _ => acked,
        }
    }

    /// Toward a room guest whose count died with its node: frames held are
    /// numbered after the count it brings back (`Queue::number_on_return`).
    pub fn number_on_return(&self) {
        self.change(Queue::number_on_return);
    }

    /// Sender side: the pairing number up to which the reader acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.lock().queue.acknowledged()
    }
}
