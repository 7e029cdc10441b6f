//! One direction of a session, shared by the registry and the sockets: a
//! [`Queue`] behind a lock, and the I/O the queue asks for. The sending
//! socket pushes data frames into it, the receiving socket drains and
//! acknowledges them, and the registry changes who reads it (attach, away,
//! another node, end). This module wakes the reading socket, pauses and
//! releases the sender's [`Gate`], cuts a slow reader's connection, and
//! hands frames, acknowledgements, written reports and requests to resend
//! to the [`Link`] toward the other node of a cross-node direction; what
//! should happen is decided by the queue.
//!
//! The registry is never on the per-frame path.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;

use crate::conns::{ConnId, Killer};
use crate::frame::{Frame, Sender};
use crate::gate::Gate;
use crate::queue::{self, Drained, EventEffect, FromPeer, Gap, Limits, Queue, Status};

mod guests;
mod peer;
mod remote;
pub use peer::Peer;

/// How long a slow consumer's socket may still read its close frame before
/// the TCP connection is cut.
pub const SLOW_CONSUMER_LINGER: Duration = Duration::from_secs(2);

/// Wakes a receiving socket: there is something new in its pipe.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Wake;

/// The socket currently reading a pipe.
#[derive(Clone)]
pub struct Receiver {
    /// Its connection.
    pub conn: ConnId,
    /// Where to send [`Wake`].
    pub wake: Recipient<Wake>,
    /// Cuts its TCP socket if it stops reading.
    pub killer: Option<Arc<Killer>>,
}

/// What became of a pushed frame, as the sending socket sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the receiver (attached or away); `remote` when it was
    /// published to the receiver's node.
    Queued {
        /// Sent through Redis to another node.
        remote: bool,
    },
    /// Queued; the receiver is behind, so the sender's gate is now closed
    /// until it catches up.
    Backlogged {
        /// Sent through Redis to another node.
        remote: bool,
    },
    /// Queued; the receiver held more than allowed and is being closed (1013).
    SlowConsumer(ConnId),
    /// No receiver: the frame was refused (`NOT_PAIRED`).
    NotPaired,
    /// The absent receiver's buffer overflowed: the frame was dropped and its
    /// side must end (`RESUME_EXPIRED`). Reported once; later pushes see `NotPaired`.
    Overflow,
    /// The sending connection was taken over by a resume: its frame was
    /// refused (the new connection sends it again after `lastSeq`), and the
    /// socket is closing with 4001.
    Replaced,
}

struct Inner {
    queue: Queue,
    /// The socket reading the queue on this node, while the queue has one.
    reader: Option<Receiver>,
    /// The sender paused by this pipe's backlog, while the queue says so.
    /// (Several: the guests of a room share the pipe to their host.)
    blocked: Vec<Arc<Gate>>,
    /// Where frames are published while the reader is on another node.
    remote: Option<Peer>,
    /// For a pipe fed from another node: where acknowledgements, written
    /// reports and requests to resend go.
    ack_to: Option<Peer>,
    /// The only connection whose frames the pipe takes, once a resume
    /// fenced it (`None`: any). A takeover counts the side's frames while its
    /// old socket may still push; the fence, set under this lock before the
    /// count, refuses every frame the old socket pushes after it.
    sender: Option<ConnId>,
    /// For a room host's pipe: the nodes of the guests feeding it from
    /// there, where their acknowledgements and written reports go.
    guests: guests::GuestPeers,
    /// Fed from a room host's node: the host's number of the last frame taken.
    host_at: u64,
}

/// What the queue asked for, done once the lock is released.
#[must_use]
struct After {
    wake: Option<Recipient<Wake>>,
    cut: Option<Receiver>,
}

impl After {
    #[inline]
    fn run(self) {
        if let Some(w) = self.wake {
            w.do_send(Wake);
        }
        if let Some(rx) = self.cut {
            // The wake lets a running socket close itself with 1013; the kill
            // reaches one whose actor is stalled behind its full socket.
            rx.wake.do_send(Wake);
            if let Some(k) = &rx.killer {
                k.kill_after(SLOW_CONSUMER_LINGER);
            }
        }
    }
}

impl Inner {
    /// Brings the I/O in line with the queue after a change: releases a
    /// sender it no longer pauses, forgets a reader or remote node it no
    /// longer has, and says whom to wake or cut.
    #[inline]
    fn settle(&mut self) -> After {
        let release = !self.blocked.is_empty() && !self.queue.sender_paused();
        let gone_reader = self.reader.is_some() && self.queue.local_reader().is_none();
        let gone_remote = self.remote.is_some() && !self.queue.is_remote();
        if !(release || gone_reader || gone_remote || self.queue.wants_owner()) {
            // Nothing to do: the common case of a push under load.
            return After {
                wake: None,
                cut: None,
            };
        }
        if !self.queue.sender_paused() {
            for g in self.blocked.drain(..) {
                g.open();
            }
        }
        let wake = self
            .queue
            .take_wake()
            .then(|| self.reader.as_ref().map(|r| r.wake.clone()))
            .flatten();
        let cut = self
            .queue
            .take_cut()
            .and_then(|c| self.reader.clone().filter(|r| r.conn == c));
        if self.queue.local_reader().is_none() {
            self.reader = None;
        }
        if !self.queue.is_remote() {
            self.remote = None;
        }
        After { wake, cut }
    }

    fn pause(&mut self, gate: &Arc<Gate>) {
        // Closed under the lock, so the receiver's drain cannot open it first.
        gate.close();
        if !self.blocked.iter().any(|g| Arc::ptr_eq(g, gate)) {
            self.blocked.push(Arc::clone(gate));
        }
    }
}

/// One direction of a session. Shared by the registry and the two sockets.
pub struct Pipe {
    inner: Mutex<Inner>,
}

impl Pipe {
    fn with_queue(queue: Queue, remote: Option<Peer>, ack_to: Option<Peer>) -> Arc<Self> {
        Arc::new(Pipe {
            inner: Mutex::new(Inner {
                queue,
                reader: None,
                blocked: Vec::new(),
                remote,
                ack_to,
                sender: None,
                guests: guests::GuestPeers::default(),
                host_at: 0,
            }),
        })
    }

    /// A pipe with no receiver yet.
    pub fn new(limits: Limits) -> Arc<Self> {
        Self::with_queue(Queue::new(limits), None, None)
    }

    /// A pipe fed from another node, for a receiver that already has
    /// `last_seq` frames, the current pairing having started at `base`.
    /// It queues (away) until a receiver attaches.
    pub fn fed_from_peer(limits: Limits, last_seq: u64, base: u64, ack_to: Peer) -> Arc<Self> {
        Self::with_queue(
            Queue::fed_from_peer(limits, last_seq, base),
            None,
            Some(ack_to),
        )
    }

    /// A pipe that publishes to a receiver on another node, continuing a
    /// pairing of which `p` frames were already sent, the sender having
    /// `accepted` frames accepted in all.
    pub fn sending_to_peer(limits: Limits, peer: Peer, p: u64, accepted: u64) -> Arc<Self> {
        Self::with_queue(
            Queue::sending_to_peer(limits, p, accepted),
            Some(peer),
            None,
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every method leaves Inner consistent before it can panic, so the
        // data behind a poisoned lock is still valid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the queue, then does the I/O it asked for.
    #[inline]
    fn change<T>(&self, f: impl FnOnce(&mut Queue) -> T) -> T {
        let mut g = self.lock();
        let out = f(&mut g.queue);
        let after = g.settle();
        drop(g);
        after.run();
        out
    }

    /// Reads the queue.
    fn read<T>(&self, f: impl FnOnce(&Queue) -> T) -> T {
        f(&self.lock().queue)
    }

    /// For tests: [`Pipe::push_as`] from no connection in particular.
    #[cfg(test)]
    pub fn push(&self, frame: Frame, gate: &Arc<Gate>) -> Pushed {
        self.push_checked(frame, None, None, gate, 0)
    }

    /// Sender side: queues one data frame from connection `conn` toward the
    /// receiver, unless a resume fenced the pipe for another connection;
    /// `from` is the room guest it comes from (toward its host). `gate` is
    /// the sender's, closed here if the receiver falls behind (or, across
    /// nodes, if the link to its node is full).
    #[inline]
    pub fn push_as(&self, frame: Frame, from: Sender, conn: ConnId, gate: &Arc<Gate>) -> Pushed {
        self.push_checked(frame, from, Some(conn), gate, 0)
    }

    #[inline]
    fn push_checked(
        &self,
        frame: Frame,
        from: Sender,
        conn: Option<ConnId>,
        gate: &Arc<Gate>,
        host: u64,
    ) -> Pushed {
        let mut g = self.lock();
        if let (Some(fence), Some(conn)) = (g.sender, conn) {
            if fence != conn {
                return Pushed::Replaced;
            }
        }
        let queued = match host {
            0 => g.queue.push_from(frame, from),
            n => g.queue.push_host(frame, n),
        };
        let pushed = match queued {
            queue::Pushed::Queued { backlogged } => {
                if backlogged {
                    g.pause(gate);
                    Pushed::Backlogged { remote: false }
                } else {
                    Pushed::Queued { remote: false }
                }
            }
            queue::Pushed::Publish {
                p,
                frame,
                backlogged,
            } => {
                // Handed to the link under the lock, so frames reach it in
                // the queue's order, replays included.
                if let Some(peer) = &g.remote {
                    peer.frame(p, frame, gate, host);
                }
                if backlogged {
                    g.pause(gate);
                    Pushed::Backlogged { remote: true }
                } else {
                    Pushed::Queued { remote: true }
                }
            }
            queue::Pushed::Skipped => Pushed::Queued { remote: false },
            queue::Pushed::SlowConsumer(c) => Pushed::SlowConsumer(c),
            queue::Pushed::NotPaired => Pushed::NotPaired,
            queue::Pushed::Overflow => Pushed::Overflow,
        };
        let after = g.settle();
        drop(g);
        after.run();
        pushed
    }

    /// Sender side, while its gate is closed: cuts the receiver if it holds
    /// more than `max_buffered` and acknowledged nothing for the stall time.
    pub fn cut_if_stalled(&self) -> Option<ConnId> {
        self.change(|q| q.cut_if_stalled(Instant::now()))
    }

    /// Receiver side, fed from another node: cuts the receiver if it holds
    /// more than `max_buffered` and acknowledged nothing for the stall time
    /// (there is no local sender to notice).
    pub fn cut_if_stalled_receiver(&self) -> Option<ConnId> {
        self.change(|q| q.cut_if_stalled_fed(Instant::now()))
    }

    /// Registry side: queues a control message toward the receiver, ordered
    /// after every data frame pushed before it. Dropped if the pipe is closed.
    pub fn push_event(&self, text: ByteString, effect: EventEffect) {
        self.change(|q| q.push_event(text, effect));
    }

    /// Whether a receiver with `last_seq` frames could attach (read only).
    ///
    /// # Errors
    /// The [`Gap`] [`Pipe::attach`] would report.
    pub fn check(&self, last_seq: u64) -> Result<(), Gap> {
        self.read(|q| q.check(last_seq))
    }

    /// Registry side: `rx` reads the pipe from now on, having received
    /// `last_seq` data frames. Returns the position it has written up to.
    ///
    /// # Errors
    /// [`Gap`] when `last_seq` does not fit what was sent and acknowledged.
    pub fn attach(&self, rx: Receiver, last_seq: u64) -> Result<u64, Gap> {
        let mut g = self.lock();
        g.queue.renumber(last_seq);
        let written = g.queue.attach(rx.conn, last_seq, Instant::now())?;
        g.reader = Some(rx);
        g.report_guest_reads();
        let after = g.settle();
        drop(g);
        after.run();
        Ok(written)
    }

    /// Registry side: the receiver `conn` dropped; keep queueing within the
    /// away limits. Returns false if `conn` was not the attached receiver.
    pub fn detach(&self, conn: ConnId) -> bool {
        self.change(|q| q.detach(conn))
    }

    /// Registry side: the receiving side is gone for good; drop what was
    /// queued for it and refuse pushes until a new receiver is attached with
    /// [`Pipe::reset_receiver`] and [`Pipe::attach`].
    pub fn end_receiver(&self) {
        self.change(Queue::end_reader);
    }

    /// Registry side: a new receiver (a new browser) starts counting from 0.
    pub fn reset_receiver(&self) {
        self.change(Queue::reset_reader);
    }

    /// Registry side: a new sender (a new browser) starts counting from 0.
    pub fn reset_sender(&self) {
        let mut g = self.lock();
        g.sender = None;
        drop(g);
        self.change(Queue::reset_sender);
    }

    /// Registry side, resuming a side: takes frames from `conn` only (see
    /// `Inner::sender`) and returns the side's accepted count, which no
    /// earlier connection can change any more.
    pub fn fence(&self, conn: ConnId) -> u64 {
        let mut g = self.lock();
        g.sender = Some(conn);
        g.queue.accepted()
    }

    /// Registry side: the sender's count, when it moved here from another node.
    pub fn set_accepted(&self, accepted: u64) {
        self.change(|q| q.set_accepted(accepted));
    }

    /// Registry side: the session is over; nothing more is queued or written.
    pub fn close(&self) {
        self.change(Queue::close);
    }

    /// Receiver side of a cross-node direction: a frame published by the
    /// sender's node, with its pairing number `p`. Duplicates (a resend) are
    /// dropped; a gap means envelopes were lost, and the sender's node is
    /// asked to resend (once per gap: see [`FromPeer::Gap`]).
    pub fn push_from_peer(&self, p: u64, frame: Frame) -> FromPeer {
        let mut g = self.lock();
        let out = g.queue.push_from_peer(p, frame, Instant::now());
        if let Some(peer) = &g.ack_to {
            match out {
                FromPeer::Duplicate { ack: Some(p) } => peer.ack(p, g.queue.base()),
                FromPeer::Gap { next, ask: true } => peer.resend(next),
                _ => {}
            }
        }
        let after = g.settle();
        drop(g);
        after.run();
        out
    }

    /// Sender side of a cross-node direction: the remote receiver read every
    /// frame up to pairing number `p` (so its node wrote them too).
    pub fn ack_from_peer(&self, p: u64) {
        self.change(|q| q.ack_from_peer(p, Instant::now()));
    }

    /// Sender side of a cross-node direction: the receiver's node wrote
    /// every frame up to pairing number `p` to its socket.
    pub fn written_from_peer(&self, p: u64) {
        self.change(|q| q.written_from_peer(p));
    }

    /// Starts a new pairing on this direction: frames are numbered from 1
    /// again (`seq - base`), on both nodes.
    pub fn start_pairing(&self) {
        self.change(Queue::start_pairing);
    }

    /// Sets where acknowledgements of this (remotely fed) pipe are sent.
    pub fn set_ack_to(&self, peer: Option<Peer>) {
        let mut g = self.lock();
        g.queue.set_fed(peer.is_some());
        g.ack_to = peer;
    }

    /// A new pairing starts with its sender on `peer`'s node: frames are
    /// numbered from 1 again and acknowledged there (one step, so the new
    /// sender's first frames cannot come in between).
    pub fn start_pairing_fed_from(&self, peer: Peer) {
        let mut g = self.lock();
        g.queue.start_pairing();
        g.queue.set_fed(true);
        g.ack_to = Some(peer);
    }

    /// The sender moved to `peer`'s node: acknowledgements go there from now
    /// on. Returns the frames of the pairing received so far and those of
    /// them the reader has not acknowledged (for the sender's new node to
    /// hold), taken in the same step, so no frame from the old node falls
    /// between them and the acknowledgements.
    pub fn fed_from(&self, peer: Peer) -> (u64, Vec<(u64, Frame)>) {
        let mut g = self.lock();
        g.queue.set_fed(true);
        g.ack_to = Some(peer);
        (g.queue.pairing_count(), g.queue.unacknowledged())
    }

    /// Sender side, on a pipe toward a reader on another node: holds frames
    /// that reader's node already has, unacknowledged (handed over by the
    /// node the sender left), as the replay source should the reader move.
    pub fn hold_handed_over(&self, frames: Vec<(u64, Frame)>) {
        self.change(|q| q.hold_handed_over(frames));
    }

    /// The sender moved to this node: nothing is acknowledged elsewhere any
    /// more, and its count of accepted frames is `base` plus the frames of
    /// the pairing received so far, which this returns (one step, for the
    /// same reason as [`Pipe::fed_from`]).
    pub fn fed_here(&self, base: u64) -> u64 {
        let mut g = self.lock();
        g.queue.set_fed(false);
        g.ack_to = None;
        let received = g.queue.pairing_count();
        g.queue.set_accepted(base + received);
        received
    }

    /// Frames of the current pairing queued into this pipe so far.
    pub fn pairing_count(&self) -> u64 {
        self.read(Queue::pairing_count)
    }

    /// `seq` at the start of the current pairing.
    pub fn base(&self) -> u64 {
        self.read(Queue::base)
    }

    /// Takes the control messages queued for the receiver out of the pipe
    /// (to hand them to the node it moved to).
    pub fn take_events(&self, last_seq: u64) -> Vec<String> {
        self.change(|q| q.take_events(last_seq))
    }

    /// Registry side: this pipe's count came from a checkpoint (the node
    /// that knew it died), so the next receiver may be ahead of it.
    pub fn count_may_lag(&self) {
        self.change(Queue::count_may_lag);
    }

    /// Data frames accepted from the sending side so far.
    pub fn accepted(&self) -> u64 {
        self.read(Queue::accepted)
    }

    /// Receiver side: everything queued after position `after`, if `conn`
    /// still reads this pipe. Clears the pending-wake flag, so a later push
    /// wakes the receiver again, and lets a waiting sender go on; tells the
    /// sender's node what was written, when it is time to.
    #[inline]
    pub fn drain(&self, conn: ConnId, after: u64, out: &mut Drained) -> Status {
        let mut g = self.lock();
        let status = g.queue.drain(conn, after, out);
        if let Some((p, peer)) = out.report_written.zip(g.ack_to.as_ref()) {
            peer.written(p, g.queue.base());
        }
        g.guests.written(&out.guest_written);
        let settled = g.settle();
        drop(g);
        settled.run();
        status
    }

    /// Whether `conn` was cut from this pipe as a slow consumer.
    pub fn was_cut(&self, conn: ConnId) -> bool {
        self.read(|q| q.was_cut(conn))
    }

    /// Receiver side: the client read everything up to position `pos`.
    pub fn ack(&self, pos: u64) {
        let mut g = self.lock();
        // A remotely fed pipe tells the sender's node, which may then forget.
        if let Some((p, peer)) = g.queue.ack(pos, Instant::now()).zip(g.ack_to.as_ref()) {
            peer.ack(p, g.queue.base());
        }
        g.report_guest_reads();
        let after = g.settle();
        drop(g);
        after.run();
    }

    /// Bytes currently held (queued and unacknowledged), with overhead.
    pub fn held_bytes(&self) -> usize {
        self.read(Queue::held_bytes)
    }

    /// Entries currently held.
    pub fn held_entries(&self) -> usize {
        self.read(Queue::held_entries)
    }
}

#[cfg(test)]
mod tests;
