//! One direction of a session: the frames one side sends toward the other.
//!
//! A pipe is the replay buffer and the delivery queue at once. The sending
//! socket pushes data frames into it and wakes the receiving socket, which
//! writes them out; frames stay until the receiver proves it read them (a
//! WebSocket ping carrying the entry position is answered only after
//! everything before it was read). So a frame survives its receiver's
//! connection dropping, and the same bytes bound a slow reader.
//!
//! Flow control: when more than the backlog limit waits to be written (the
//! receiver's socket is not taking data), the sender's [`Gate`] closes and it
//! stops reading its client until the receiver drains. A receiver that holds
//! more than `max_buffered` unread and acknowledges nothing for the stall
//! time is cut as a slow consumer (1013).
//!
//! The registry creates pipes and changes their state (attach, away, end);
//! the sockets only push, drain and acknowledge. The registry is never on the
//! per-frame path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use relay_protocol::CloseCode;

use crate::cluster::bus::Bus;
use crate::cluster::envelope::Envelope;
use crate::conns::{ConnId, Killer};
use relay_protocol::Role;

/// One data frame in this many is timed for the latency histogram.
pub const LATENCY_SAMPLE: u64 = 16;

fn stamp(seq: u64) -> Option<Instant> {
    (seq % LATENCY_SAMPLE == 0).then(Instant::now)
}

/// Bookkeeping bytes charged per queued entry, so a flood of tiny frames is
/// bounded by memory actually used, not only by payload bytes.
pub const ENTRY_OVERHEAD: usize = 64;

/// How long a slow consumer's socket may still read its close frame before
/// the TCP connection is cut.
pub const SLOW_CONSUMER_LINGER: Duration = Duration::from_secs(2);

/// A data frame, relayed verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A binary frame.
    Binary(Bytes),
    /// A `data` text frame, exactly as the sender wrote it.
    Text(ByteString),
}

impl Frame {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Binary(b) => b.len(),
            Frame::Text(t) => t.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a control event does to the receiving socket once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventEffect {
    /// Nothing; the client is only told.
    None,
    /// The socket's session is over but the socket stays (mac after `code_expired`).
    Detach,
    /// The socket closes with this code after the message.
    Close(CloseCode),
}

/// One queued item toward the receiver.
#[derive(Debug, Clone)]
pub enum Item {
    /// A data frame with its per-direction sequence number.
    Data {
        /// 1-based count of data frames toward this receiver.
        seq: u64,
        /// The frame.
        frame: Frame,
    },
    /// A control message (JSON text), ordered with the data frames around it.
    Event {
        /// The message text.
        text: ByteString,
        /// What the socket does after writing it.
        effect: EventEffect,
    },
}

#[derive(Debug)]
struct Entry {
    /// Position in this pipe, strictly increasing; what ack markers carry.
    pos: u64,
    /// For data: its seq. For events: the seq of the last data frame before it.
    seq: u64,
    item: Item,
    /// When it entered the pipe, for one data frame in [`LATENCY_SAMPLE`]
    /// (the latency histogram): a clock read per frame would cost more than
    /// the rest of the frame's bookkeeping.
    at: Option<Instant>,
}

impl Entry {
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + match &self.item {
                Item::Data { frame, .. } => frame.len(),
                Item::Event { text, .. } => text.len(),
            }
    }
}

/// Wakes a receiving socket: there is something new in its pipe.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Wake;

/// A sender's valve: while closed, the socket reads nothing more from its client.
#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    /// An open gate.
    pub fn new() -> Arc<Self> {
        Arc::new(Gate::default())
    }

    /// Closes the gate: the reader stops at its next frame.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Opens the gate and wakes the reader waiting on it.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Ready when the gate is open; otherwise remembers `cx` to be woken.
    pub fn poll_open(&self, cx: &mut TaskContext<'_>) -> Poll<()> {
        if !self.is_closed() {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        // It may have opened between the check and storing the waker.
        if self.is_closed() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

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

enum State {
    /// No receiver on that side (no browser yet, or it left): pushes are refused.
    NoReceiver,
    /// A socket reads the pipe.
    Attached(Receiver),
    /// The receiver dropped and may resume; pushes are queued within limits.
    Away {
        /// Frames pushed since it went away.
        frames: usize,
        /// Bytes pushed since it went away.
        bytes: usize,
    },
    /// The session is over; pushes are refused.
    Closed,
    /// The receiver is on another node: frames are published to it and
    /// kept here until it acknowledges them (the replay source if it moves).
    Remote(Peer),
}

/// The other node of a cross-node direction, and how to reach it.
#[derive(Clone)]
pub struct Peer {
    /// The bus to publish on.
    pub bus: Arc<Bus>,
    /// The node on the other end.
    pub node: Arc<str>,
    /// The session.
    pub sid: Arc<str>,
    /// The side this pipe delivers to.
    pub to: Role,
}

/// Bounds of one pipe.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes a receiver may hold unread before it may be cut as a slow consumer.
    pub max_buffered: usize,
    /// How long a receiver over `max_buffered` may go without acknowledging
    /// anything before it is cut.
    pub stall: Duration,
    /// Frames queued for an absent receiver before its session ends.
    pub away_frames: usize,
    /// Bytes queued for an absent receiver before its session ends.
    pub away_bytes: usize,
}

impl Limits {
    /// Bytes waiting to be written beyond which the sender is paused.
    fn backlog(&self) -> usize {
        (self.max_buffered / 4).max(64 * 1024)
    }

    /// Bytes a receiving node hands to its socket between two reports of
    /// what it wrote to the sender's node: a fraction of the backlog, so a
    /// paused sender hears of progress long before the receiver runs dry.
    fn report_every(&self) -> usize {
        self.backlog() / 8
    }

    /// Bytes held unacknowledged toward another node beyond which the sender
    /// pauses whatever was written there: twice the receiving node's
    /// [`Limits::hard_cap`], which cuts a receiver that stopped reading long
    /// before, so this only guards against a receiving node gone wrong.
    fn remote_cap(&self) -> usize {
        self.hard_cap().saturating_mul(2)
    }

    /// Bytes held beyond which a receiver is cut at once, acknowledging or not.
    ///
    /// Held bytes include what sits in kernel buffers on both ends (several
    /// MiB on a fast link), so a reading client can exceed `max_buffered`
    /// briefly; this cap only stops growth whose acknowledgements cannot
    /// arrive (the receiver's own reading is paused by flow control).
    fn hard_cap(&self) -> usize {
        self.max_buffered.saturating_mul(4)
    }
}

/// What became of a pushed frame.
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
}

/// What became of a frame from another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromPeer {
    /// Queued for the receiver.
    Queued,
    /// Already had it (a resend).
    Duplicate,
    /// Frames before it are missing; ask the sender's node to resend from `next`.
    Gap {
        /// The pairing number expected next.
        next: u64,
    },
    /// The receiver's side is over; nothing to deliver to.
    Dropped,
    /// Queued, and the receiver was cut as a slow consumer.
    Cut(ConnId),
}

fn data_envelope(peer: &Peer, p: u64, item: &Item) -> Envelope {
    let frame = match item {
        Item::Data { frame, .. } => frame.clone(),
        Item::Event { text, .. } => Frame::Text(text.clone()),
    };
    Envelope::Frame {
        sid: peer.sid.to_string(),
        to: peer.to,
        p,
        frame,
    }
}

/// Why a receiver could not attach at the `lastSeq` it gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// It claims frames that were never sent.
    Ahead {
        /// Data frames sent toward it so far.
        sent: u64,
    },
    /// It claims to miss frames it already acknowledged.
    Behind {
        /// Oldest frame still held.
        oldest: u64,
    },
    /// The pipe is closed (the session, or this side of it, ended).
    Closed,
}

/// A receiver's standing toward its pipe, as seen when it drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It is the attached receiver.
    Reading,
    /// The session is over; write what is left, then stop.
    Closed,
    /// It was cut as a slow consumer: close with 1013.
    Cut,
    /// Another connection reads the pipe now (or none does).
    NotMine,
}

/// What a receiver took out of its pipe in one drain.
#[derive(Debug, Default)]
pub struct Drained {
    /// Items to write, in order, with their positions and, for sampled data
    /// frames, when they were queued.
    pub items: Vec<(u64, Item, Option<Instant>)>,
    /// The pipe is fed from another node (for the latency histogram's path).
    pub remote: bool,
}

struct Inner {
    /// Data frames accepted from the sending side (its resume `lastSeq`).
    accepted: u64,
    /// Data frames queued toward the receiving side so far.
    seq: u64,
    /// Position of the next entry.
    next_pos: u64,
    entries: VecDeque<Entry>,
    /// Cost of `entries` (held: unwritten and unacknowledged).
    bytes: usize,
    /// Cost of the entries not yet handed to the receiver (for a receiver on
    /// another node: not yet reported written there). What flow control
    /// weighs: it never waits for acknowledgements, which travel in the
    /// receiver's own stream and may queue behind its paused sending.
    unwritten: usize,
    state: State,
    /// A [`Wake`] is in the receiver's mailbox and not yet handled.
    wake_pending: bool,
    /// The receiver cut as a slow consumer, until another one attaches.
    cut: Option<ConnId>,
    /// The sender waiting for the receiver to catch up.
    blocked: Option<Arc<Gate>>,
    /// When the receiver last acknowledged something (or attached).
    last_ack: Instant,
    /// `seq` when the current pairing started: a frame's pairing number is
    /// `seq - base`, the same on both nodes of a cross-node direction.
    base: u64,
    /// For a pipe fed from another node: where the sender's node waits for acks.
    ack_to: Option<Peer>,
    /// Highest position handed to a socket to write: an event at or before it
    /// was probably received, even if not yet acknowledged.
    drained_pos: u64,
    /// `seq` came from a checkpoint because the node that knew it died: a
    /// receiver may have read more than `seq`, and the sender will send
    /// those frames again (it was told the checkpoint as its `lastSeq`).
    seq_may_lag: bool,
    /// Frames the sender sends again that the receiver already has: dropped.
    skip: u64,
    /// For a pipe toward another node: the receiver's node wrote every
    /// frame up to this `seq` to its socket (acknowledged ones included).
    peer_written: u64,
    /// For a pipe fed from another node: the last `seq` reported written
    /// to the sender's node, and the cost handed to the socket since.
    reported: u64,
    unreported: usize,
}

impl Inner {
    fn open_blocked(&mut self) {
        if let Some(g) = self.blocked.take() {
            g.open();
        }
    }

    /// Whether a receiver that has `last_seq` frames can take this pipe:
    /// every frame after it is still held. A count that may lag (see
    /// [`Inner::catch_up`]) takes any receiver ahead of it.
    fn fits(&self, last_seq: u64) -> Result<(), Gap> {
        if matches!(self.state, State::Closed) {
            return Err(Gap::Closed);
        }
        if last_seq > self.seq && !self.seq_may_lag {
            return Err(Gap::Ahead { sent: self.seq });
        }
        let oldest = self.oldest_held();
        if last_seq + 1 < oldest {
            return Err(Gap::Behind { oldest });
        }
        Ok(())
    }

    /// The number of the oldest data frame held (unacknowledged), or the
    /// next one's when none is: the receiver has every frame before it.
    fn oldest_held(&self) -> u64 {
        self.entries
            .iter()
            .find_map(|e| matches!(e.item, Item::Data { .. }).then_some(e.seq))
            .unwrap_or(self.seq + 1)
    }

    /// A receiver with `last_seq` frames is taking this pipe. If the count
    /// came from a checkpoint and the receiver read more (frames the count
    /// lost with a dead node), the sender will send those again: move the
    /// count up to the receiver's and drop them when they come.
    fn catch_up(&mut self, last_seq: u64) {
        if self.seq_may_lag && last_seq > self.seq {
            self.skip += last_seq - self.seq;
            self.seq = last_seq;
            self.entries
                .retain(|e| !matches!(e.item, Item::Data { .. }));
            // Events queued since the crash are new to the receiver: they
            // come after everything it has.
            for e in &mut self.entries {
                e.seq = last_seq;
            }
            self.bytes = self.entries.iter().map(Entry::cost).sum();
        }
        self.seq_may_lag = false;
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.unwritten = 0;
        self.wake_pending = false;
        self.open_blocked();
    }
}

/// One direction of a session. Shared by the registry and the two sockets.
pub struct Pipe {
    inner: Mutex<Inner>,
    limits: Limits,
}

impl Pipe {
    /// A pipe with no receiver yet.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Pipe {
            inner: Mutex::new(Inner {
                accepted: 0,
                seq: 0,
                next_pos: 1,
                entries: VecDeque::new(),
                bytes: 0,
                unwritten: 0,
                state: State::NoReceiver,
                wake_pending: false,
                cut: None,
                blocked: None,
                last_ack: Instant::now(),
                base: 0,
                ack_to: None,
                drained_pos: 0,
                seq_may_lag: false,
                skip: 0,
                peer_written: 0,
                reported: 0,
                unreported: 0,
            }),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every method leaves Inner consistent before it can panic, so the
        // data behind a poisoned lock is still valid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sender side: queues one data frame toward the receiver. `gate` is the
    /// sender's, closed here if the receiver falls behind.
    pub fn push(&self, frame: Frame, gate: &Arc<Gate>) -> Pushed {
        let mut g = self.lock();
        let cost = ENTRY_OVERHEAD + frame.len();
        match &mut g.state {
            State::NoReceiver | State::Closed => return Pushed::NotPaired,
            State::Away { frames, bytes } => {
                if *frames + 1 > self.limits.away_frames || *bytes + cost > self.limits.away_bytes {
                    // The absent side has been gone too long to hold more: end
                    // it rather than drop frames silently.
                    g.state = State::Closed;
                    g.accepted += 1;
                    return Pushed::Overflow;
                }
                *frames += 1;
                *bytes += cost;
            }
            State::Attached(_) | State::Remote(_) => {}
        }
        g.accepted += 1;
        if g.skip > 0 {
            // A frame the receiver read before the crash, sent again.
            g.skip -= 1;
            return Pushed::Queued { remote: false };
        }
        g.seq += 1;
        let (pos, seq) = (g.next_pos, g.seq);
        g.next_pos += 1;
        g.bytes += cost;
        g.unwritten += cost;
        let item = Item::Data { seq, frame };
        if let State::Remote(peer) = &g.state {
            let env = data_envelope(peer, seq - g.base, &item);
            let peer = peer.clone();
            g.entries.push_back(Entry {
                pos,
                seq,
                item,
                at: stamp(seq),
            });
            // Paced by what the receiver's node wrote, as a local backlog is.
            let backlogged =
                g.unwritten > self.limits.backlog() || g.bytes > self.limits.remote_cap();
            if backlogged {
                gate.close();
                g.blocked = Some(Arc::clone(gate));
            }
            drop(g);
            if !peer.bus.send(&peer.node, env) {
                peer.bus.hold(gate);
            }
            return if backlogged {
                Pushed::Backlogged { remote: true }
            } else {
                Pushed::Queued { remote: true }
            };
        }
        g.entries.push_back(Entry {
            pos,
            seq,
            item,
            at: stamp(seq),
        });

        if !matches!(g.state, State::Attached(_)) {
            return Pushed::Queued { remote: false };
        }
        if g.bytes > self.limits.hard_cap() {
            if let State::Attached(rx) = &g.state {
                let rx = rx.clone();
                return Pushed::SlowConsumer(self.cut(g, rx));
            }
        }
        let backlogged = g.unwritten > self.limits.backlog();
        if backlogged {
            // Closed under the lock, so the receiver's drain cannot open it first.
            gate.close();
            g.blocked = Some(Arc::clone(gate));
        }
        // Only the push that finds no wake-up pending sends one (and pays for
        // cloning the receiver's address); the others ride on it.
        if !g.wake_pending {
            g.wake_pending = true;
            if let State::Attached(rx) = &g.state {
                let wake = rx.wake.clone();
                drop(g);
                wake.do_send(Wake);
            }
        }
        if backlogged {
            Pushed::Backlogged { remote: false }
        } else {
            Pushed::Queued { remote: false }
        }
    }

    /// Cuts the attached receiver as a slow consumer; returns its connection.
    fn cut(&self, mut g: MutexGuard<'_, Inner>, rx: Receiver) -> ConnId {
        // From now on frames count against the away limits, so memory stays
        // bounded while the socket is cut.
        g.state = State::Away {
            frames: 0,
            bytes: 0,
        };
        g.wake_pending = true;
        g.cut = Some(rx.conn);
        g.open_blocked();
        drop(g);
        // The wake lets a running socket close itself with 1013; the kill
        // reaches one whose actor is stalled behind its full socket.
        rx.wake.do_send(Wake);
        if let Some(k) = &rx.killer {
            k.kill_after(SLOW_CONSUMER_LINGER);
        }
        rx.conn
    }

    /// Sender side, while its gate is closed: cuts the receiver if it holds
    /// more than `max_buffered` and acknowledged nothing for the stall time.
    pub fn cut_if_stalled(&self) -> Option<ConnId> {
        let g = self.lock();
        let State::Attached(rx) = &g.state else {
            return None;
        };
        if g.bytes <= self.limits.max_buffered || g.last_ack.elapsed() < self.limits.stall {
            return None;
        }
        let rx = rx.clone();
        Some(self.cut(g, rx))
    }

    /// Registry side: queues a control message toward the receiver, ordered
    /// after every data frame pushed before it. Dropped if the pipe is closed.
    pub fn push_event(&self, text: ByteString, effect: EventEffect) {
        let mut g = self.lock();
        if matches!(g.state, State::Closed) {
            return;
        }
        let (pos, seq) = (g.next_pos, g.seq);
        g.next_pos += 1;
        let entry = Entry {
            pos,
            seq,
            item: Item::Event { text, effect },
            at: None,
        };
        g.bytes += entry.cost();
        g.unwritten += entry.cost();
        g.entries.push_back(entry);
        self.wake_locked(g);
    }

    fn wake_locked(&self, mut g: MutexGuard<'_, Inner>) {
        if let State::Attached(rx) = &g.state {
            if !g.wake_pending {
                let wake = rx.wake.clone();
                g.wake_pending = true;
                drop(g);
                wake.do_send(Wake);
            }
        }
    }

    /// Whether a receiver with `last_seq` frames could attach (read only).
    ///
    /// # Errors
    /// The [`Gap`] [`Pipe::attach`] would report.
    pub fn check(&self, last_seq: u64) -> Result<(), Gap> {
        self.lock().fits(last_seq)
    }

    /// Registry side: `rx` reads the pipe from now on, having received
    /// `last_seq` data frames. Returns the position it has written up to.
    ///
    /// # Errors
    /// [`Gap`] when `last_seq` does not fit what was sent and acknowledged.
    pub fn attach(&self, rx: Receiver, last_seq: u64) -> Result<u64, Gap> {
        let mut g = self.lock();
        g.fits(last_seq)?;
        g.catch_up(last_seq);
        // The client has every data frame up to last_seq and, by TCP order,
        // every event queued before the last of those.
        while let Some(front) = g.entries.front() {
            // An event right after the last frame it has was received if it was
            // written out (so a resumed client does not hear it twice).
            let received = match front.item {
                Item::Data { seq, .. } => seq <= last_seq,
                Item::Event { .. } => {
                    front.seq < last_seq || (front.seq == last_seq && front.pos <= g.drained_pos)
                }
            };
            if !received {
                break;
            }
            let cost = front.cost();
            g.entries.pop_front();
            g.bytes -= cost;
        }
        let written = g.entries.front().map_or(g.next_pos, |e| e.pos) - 1;
        // Everything still held is unwritten for the new connection.
        g.unwritten = g.bytes;
        g.state = State::Attached(rx);
        g.wake_pending = false;
        g.cut = None;
        g.last_ack = Instant::now();
        self.wake_locked(g);
        Ok(written)
    }

    /// Registry side: the receiver `conn` dropped; keep queueing within the
    /// away limits. Returns false if `conn` was not the attached receiver.
    pub fn detach(&self, conn: ConnId) -> bool {
        let mut g = self.lock();
        match &g.state {
            State::Attached(rx) if rx.conn == conn => {
                g.state = State::Away {
                    frames: 0,
                    bytes: 0,
                };
                g.wake_pending = false;
                g.open_blocked();
                true
            }
            _ => false,
        }
    }

    /// Registry side: the receiving side is gone for good; drop what was
    /// queued for it and refuse pushes until a new receiver is attached with
    /// [`Pipe::reset_receiver`] and [`Pipe::attach`].
    pub fn end_receiver(&self) {
        let mut g = self.lock();
        g.clear();
        g.state = State::NoReceiver;
    }

    /// Registry side: a new receiver (a new browser) starts counting from 0.
    pub fn reset_receiver(&self) {
        let mut g = self.lock();
        g.clear();
        g.seq = 0;
        g.base = 0;
        g.state = State::Away {
            frames: 0,
            bytes: 0,
        };
    }

    /// Registry side: a new sender (a new browser) starts counting from 0.
    pub fn reset_sender(&self) {
        self.lock().accepted = 0;
    }

    /// Registry side: the sender's count, when it moved here from another node.
    pub fn set_accepted(&self, accepted: u64) {
        self.lock().accepted = accepted;
    }

    /// Registry side: the session is over; nothing more is queued or written.
    pub fn close(&self) {
        let mut g = self.lock();
        g.open_blocked();
        if let State::Attached(_) = g.state {
            // Keep the queue: the receiver may still have events (the
            // session's last message) to write.
            g.state = State::Closed;
            return;
        }
        g.clear();
        g.state = State::Closed;
    }

    /// Receiver side of a cross-node direction: a frame published by the
    /// sender's node, with its pairing number `p`. Duplicates (a resend) are
    /// dropped; a gap means envelopes were lost and the sender must resend.
    pub fn push_from_peer(&self, p: u64, frame: Frame) -> FromPeer {
        let mut g = self.lock();
        let have = g.seq - g.base;
        if p <= have {
            // The sender's node holds each frame until an ack covers it. One
            // the receiver already read gets no ack from its reading, so give
            // it one here (every 16th and the last read suffice, acks being
            // cumulative): else a node that sends many frames again after a
            // crash fills its backlog with frames nothing will ever free.
            let read = (g.oldest_held() - 1).saturating_sub(g.base);
            if p <= read && (p % 16 == 0 || p == read) {
                Self::ack_to_peer(g, p);
            }
            return FromPeer::Duplicate;
        }
        if p > have + 1 {
            return FromPeer::Gap { next: have + 1 };
        }
        if matches!(g.state, State::Closed | State::NoReceiver) {
            return FromPeer::Dropped;
        }
        let cost = ENTRY_OVERHEAD + frame.len();
        g.seq += 1;
        g.accepted += 1;
        let (pos, seq) = (g.next_pos, g.seq);
        g.next_pos += 1;
        g.bytes += cost;
        g.unwritten += cost;
        g.entries.push_back(Entry {
            pos,
            seq,
            item: Item::Data { seq, frame },
            at: stamp(seq),
        });
        if g.bytes > self.limits.hard_cap() {
            if let State::Attached(rx) = &g.state {
                let rx = rx.clone();
                return FromPeer::Cut(self.cut(g, rx));
            }
        }
        self.wake_locked(g);
        FromPeer::Queued
    }

    /// Sender side of a cross-node direction: the remote receiver read every
    /// frame up to pairing number `p` (so its node wrote them too).
    pub fn ack_from_peer(&self, p: u64) {
        let mut g = self.lock();
        if g.ack_to.is_some() {
            // A pipe fed from another node only takes its own receiver's acks.
            return;
        }
        let upto = g.base + p;
        let mut acked = false;
        while let Some(front) = g.entries.front() {
            let done = match front.item {
                Item::Data { seq, .. } => seq <= upto,
                Item::Event { .. } => front.seq < upto,
            };
            if !done {
                break;
            }
            let cost = front.cost();
            let unwritten = matches!(front.item, Item::Data { seq, .. } if seq > g.peer_written);
            g.entries.pop_front();
            g.bytes -= cost;
            if unwritten {
                g.unwritten = g.unwritten.saturating_sub(cost);
            }
            acked = true;
        }
        g.peer_written = g.peer_written.max(upto);
        if acked {
            g.last_ack = Instant::now();
        }
        self.open_if_caught_up(&mut g);
    }

    /// Sender side of a cross-node direction: the receiver's node wrote
    /// every frame up to pairing number `p` to its socket.
    pub fn written_from_peer(&self, p: u64) {
        let mut g = self.lock();
        if g.ack_to.is_some() {
            return;
        }
        let upto = g.base + p;
        if upto <= g.peer_written {
            return;
        }
        let from = g.peer_written;
        let start = g.entries.partition_point(|e| e.seq <= from);
        let newly: usize = g
            .entries
            .range(start..)
            .take_while(|e| e.seq <= upto)
            .filter(|e| matches!(e.item, Item::Data { .. }))
            .map(Entry::cost)
            .sum();
        g.unwritten = g.unwritten.saturating_sub(newly);
        g.peer_written = upto;
        self.open_if_caught_up(&mut g);
    }

    /// Lets a sender paused by a cross-node backlog go on once the
    /// receiver's node has written half of it.
    fn open_if_caught_up(&self, g: &mut Inner) {
        if g.unwritten <= self.limits.backlog() / 2 && g.bytes <= self.limits.remote_cap() / 2 {
            g.open_blocked();
        }
    }

    /// Sender side: the receiver is (now) on another node and has every
    /// frame up to pairing number `p_last`; send it the rest, then keep
    /// publishing there.
    ///
    /// # Errors
    /// [`Gap`] when `p_last` does not fit what was sent and acknowledged.
    pub fn send_to_peer(&self, peer: Peer, p_last: u64) -> Result<(), Gap> {
        let mut g = self.lock();
        let last_seq = g.base + p_last;
        // The peer's node counts within the pairing: so do its errors.
        let base = g.base;
        g.fits(last_seq).map_err(|gap| match gap {
            Gap::Ahead { sent } => Gap::Ahead { sent: sent - base },
            Gap::Behind { oldest } => Gap::Behind {
                oldest: oldest - base,
            },
            Gap::Closed => Gap::Closed,
        })?;
        g.catch_up(last_seq);
        // Events are not carried across nodes (the receiver's node makes its own).
        while let Some(front) = g.entries.front() {
            let received = match front.item {
                Item::Data { seq, .. } => seq <= last_seq,
                Item::Event { .. } => true,
            };
            if !received {
                break;
            }
            let cost = front.cost();
            g.entries.pop_front();
            g.bytes -= cost;
        }
        let base = g.base;
        let envs: Vec<Envelope> = g
            .entries
            .iter()
            .filter(|e| matches!(e.item, Item::Data { .. }))
            .map(|e| data_envelope(&peer, e.seq - base, &e.item))
            .collect();
        g.entries.retain(|e| matches!(e.item, Item::Data { .. }));
        g.bytes = g.entries.iter().map(Entry::cost).sum();
        g.state = State::Remote(peer.clone());
        // Everything still held is yet to be written at the receiver's node.
        g.unwritten = g.bytes;
        g.peer_written = last_seq;
        g.cut = None;
        g.wake_pending = false;
        g.last_ack = Instant::now();
        drop(g);
        for env in envs {
            peer.bus.send(&peer.node, env);
        }
        Ok(())
    }

    /// Sender side: publishes again every held frame from pairing number
    /// `from` on (envelopes were lost; the receiver drops what it has).
    pub fn resend_to_peer(&self, from: u64) {
        let g = self.lock();
        let State::Remote(peer) = &g.state else {
            return;
        };
        let base = g.base;
        let envs: Vec<Envelope> = g
            .entries
            .iter()
            .filter(|e| matches!(e.item, Item::Data { .. }) && e.seq - base >= from)
            .map(|e| data_envelope(peer, e.seq - base, &e.item))
            .collect();
        let peer = peer.clone();
        drop(g);
        for env in envs {
            peer.bus.send(&peer.node, env);
        }
    }

    /// The node this pipe publishes to, if its receiver is remote.
    pub fn remote_node(&self) -> Option<Arc<str>> {
        match &self.lock().state {
            State::Remote(p) => Some(Arc::clone(&p.node)),
            _ => None,
        }
    }

    /// Sender side: the remote receiver went away; keep its frames within
    /// the away limits until it comes back somewhere.
    pub fn peer_away(&self) {
        let mut g = self.lock();
        if matches!(g.state, State::Remote(_)) {
            g.state = State::Away {
                frames: 0,
                bytes: 0,
            };
            g.open_blocked();
        }
    }

    /// Starts a new pairing on this direction: frames are numbered from 1
    /// again (`seq - base`), on both nodes.
    pub fn start_pairing(&self) {
        let mut g = self.lock();
        g.base = g.seq;
    }

    /// Sets where acknowledgements of this (remotely fed) pipe are sent.
    pub fn set_ack_to(&self, peer: Option<Peer>) {
        self.lock().ack_to = peer;
    }

    /// The node acknowledgements go to, for a remotely fed pipe.
    pub fn ack_node(&self) -> Option<Arc<str>> {
        self.lock().ack_to.as_ref().map(|p| Arc::clone(&p.node))
    }

    /// Frames of the current pairing queued into this pipe so far.
    pub fn pairing_count(&self) -> u64 {
        let g = self.lock();
        g.seq - g.base
    }

    /// `seq` at the start of the current pairing.
    pub fn base(&self) -> u64 {
        self.lock().base
    }

    /// A pipe fed from another node, for a receiver that already has
    /// `last_seq` frames, the current pairing having started at `base`.
    /// It queues (away) until a receiver attaches.
    pub fn fed_from_peer(limits: Limits, last_seq: u64, base: u64, ack_to: Peer) -> Arc<Self> {
        let pipe = Pipe::new(limits);
        {
            let mut g = pipe.lock();
            g.seq = last_seq;
            g.base = base.min(last_seq);
            g.state = State::Away {
                frames: 0,
                bytes: 0,
            };
            g.ack_to = Some(ack_to);
            g.reported = last_seq;
        }
        pipe
    }

    /// Takes the control messages queued for the receiver out of the pipe
    /// (to hand them to the node it moved to).
    pub fn take_events(&self, last_seq: u64) -> Vec<String> {
        let mut g = self.lock();
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(g.entries.len());
        let drained = g.drained_pos;
        for e in std::mem::take(&mut g.entries) {
            match &e.item {
                // Same rule as `attach`: skip what the client surely or probably has.
                Item::Event { text, .. } => {
                    let had = e.seq < last_seq || (e.seq == last_seq && e.pos <= drained);
                    if !had {
                        out.push(text.to_string());
                    }
                }
                Item::Data { .. } => kept.push_back(e),
            }
        }
        g.entries = kept;
        g.bytes = g.entries.iter().map(Entry::cost).sum();
        out
    }

    /// A pipe that publishes to a receiver on another node, continuing a
    /// pairing of which `p` frames were already sent, the sender having
    /// `accepted` frames accepted in all.
    pub fn sending_to_peer(limits: Limits, peer: Peer, p: u64, accepted: u64) -> Arc<Self> {
        let pipe = Pipe::new(limits);
        {
            let mut g = pipe.lock();
            g.seq = p;
            g.base = 0;
            g.accepted = accepted;
            g.peer_written = p;
            g.state = State::Remote(peer);
        }
        pipe
    }

    /// Registry side: this pipe's count came from a checkpoint (the node
    /// that knew it died), so the next receiver may be ahead of it.
    pub fn count_may_lag(&self) {
        self.lock().seq_may_lag = true;
    }

    /// Data frames accepted from the sending side so far.
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }

    /// Receiver side: everything queued after position `after`, if `conn`
    /// still reads this pipe. Clears the pending-wake flag, so a later push
    /// wakes the receiver again, and lets a waiting sender go on.
    pub fn drain(&self, conn: ConnId, after: u64, out: &mut Drained) -> Status {
        let mut g = self.lock();
        let status = match &g.state {
            State::Attached(rx) if rx.conn == conn => Status::Reading,
            // A closed pipe still lets its last receiver write the final events.
            State::Closed => Status::Closed,
            _ if g.cut == Some(conn) => return Status::Cut,
            _ => return Status::NotMine,
        };
        g.wake_pending = false;
        // Entries are sorted by position; skip those already written.
        let start = g.entries.partition_point(|e| e.pos <= after);
        let mut handed = 0;
        let mut last_data = None;
        for e in g.entries.range(start..) {
            if let Item::Data { seq, .. } = e.item {
                handed += e.cost();
                last_data = Some(seq);
            }
            out.items.push((e.pos, e.item.clone(), e.at));
        }
        if let Some(last) = g.entries.back() {
            g.drained_pos = g.drained_pos.max(last.pos);
        }
        out.remote = g.ack_to.is_some();
        g.unwritten = 0;
        g.open_blocked();
        if let Some(seq) = last_data.filter(|s| *s > g.reported && g.ack_to.is_some()) {
            g.unreported += handed;
            if g.unreported >= self.limits.report_every() {
                g.unreported = 0;
                g.reported = seq;
                let p = seq.saturating_sub(g.base);
                Self::tell_peer(g, |sid, to| Envelope::Written { sid, to, p });
            }
        }
        status
    }

    /// Whether `conn` was cut from this pipe as a slow consumer.
    pub fn was_cut(&self, conn: ConnId) -> bool {
        self.lock().cut == Some(conn)
    }

    /// Receiver side: the client read everything up to position `pos`.
    pub fn ack(&self, pos: u64) {
        let mut g = self.lock();
        let before = g.entries.len();
        let mut acked_seq = None;
        while let Some(front) = g.entries.front() {
            if front.pos > pos {
                break;
            }
            if let Item::Data { seq, .. } = front.item {
                acked_seq = Some(seq);
            }
            let cost = front.cost();
            g.entries.pop_front();
            g.bytes -= cost;
        }
        if acked_seq.is_some() || g.entries.len() != before {
            g.last_ack = Instant::now();
        }
        // A remotely fed pipe tells the sender's node, which may then forget.
        if let Some(seq) = acked_seq.filter(|s| *s > g.base) {
            let p = seq - g.base;
            Self::ack_to_peer(g, p);
        }
    }

    /// For a remotely fed pipe: tells the sender's node that the receiver
    /// has every frame up to pairing number `p`.
    fn ack_to_peer(g: MutexGuard<'_, Inner>, p: u64) {
        Self::tell_peer(g, |sid, to| Envelope::Ack { sid, to, p });
    }

    /// For a remotely fed pipe: sends the sender's node what `env` makes
    /// of the session id and the receiving side (outside the lock).
    fn tell_peer(g: MutexGuard<'_, Inner>, env: impl FnOnce(String, Role) -> Envelope) {
        let Some(peer) = g.ack_to.clone() else {
            return;
        };
        drop(g);
        let env = env(peer.sid.to_string(), peer.to);
        peer.bus.send(&peer.node, env);
    }

    /// Receiver side, fed from another node: cuts the receiver if it holds
    /// more than `max_buffered` and acknowledged nothing for the stall time
    /// (there is no local sender to notice).
    pub fn cut_if_stalled_receiver(&self) -> Option<ConnId> {
        let g = self.lock();
        g.ack_to.as_ref()?;
        let State::Attached(rx) = &g.state else {
            return None;
        };
        if g.bytes <= self.limits.max_buffered || g.last_ack.elapsed() < self.limits.stall {
            return None;
        }
        let rx = rx.clone();
        Some(self.cut(g, rx))
    }

    /// Bytes currently held (queued and unacknowledged), with overhead.
    pub fn held_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries currently held.
    pub fn held_entries(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_buffered: 1_000_000,
            stall: Duration::from_secs(3600),
            away_frames: 3,
            away_bytes: 1_000_000,
        }
    }

    fn data(n: u8) -> Frame {
        Frame::Binary(Bytes::from(vec![n]))
    }

    fn seqs(d: &Drained) -> Vec<u64> {
        d.items
            .iter()
            .filter_map(|(_, i, _)| match i {
                Item::Data { seq, .. } => Some(*seq),
                Item::Event { .. } => None,
            })
            .collect()
    }

    /// Runs `f` inside an actix system with a receiver whose wakes go nowhere.
    fn with_receiver(f: impl FnOnce(Receiver, Arc<Gate>)) {
        struct Sink;
        impl Actor for Sink {
            type Context = Context<Self>;
        }
        impl Handler<Wake> for Sink {
            type Result = ();
            fn handle(&mut self, _: Wake, _: &mut Context<Self>) {}
        }
        actix::System::new().block_on(async {
            let addr = Sink.start();
            f(
                Receiver {
                    conn: ConnId(1),
                    wake: addr.recipient(),
                    killer: None,
                },
                Gate::new(),
            );
        });
    }

    #[test]
    fn push_without_receiver_is_refused() {
        let p = Pipe::new(limits());
        assert_eq!(p.push(data(1), &Gate::new()), Pushed::NotPaired);
        assert_eq!(p.accepted(), 0);
    }

    #[test]
    fn away_queue_is_bounded() {
        let p = Pipe::new(limits());
        let gate = Gate::new();
        p.reset_receiver(); // away, as a freshly joined browser before attach
        for i in 0..3 {
            assert_eq!(p.push(data(i), &gate), Pushed::Queued { remote: false });
        }
        assert_eq!(p.push(data(9), &gate), Pushed::Overflow);
        assert_eq!(p.push(data(9), &gate), Pushed::NotPaired);
        assert_eq!(p.accepted(), 4);
        assert!(
            !gate.is_closed(),
            "an absent receiver never pauses the sender"
        );
    }

    #[test]
    fn replay_starts_after_last_seq_and_acks_trim() {
        with_receiver(|rx, gate| {
            let p = Pipe::new(Limits {
                away_frames: 100,
                ..limits()
            });
            p.reset_receiver();
            for i in 0..5 {
                p.push(data(i), &gate);
            }
            // Resume having received 2 of 5: replay 3, 4, 5.
            let written = p.attach(rx, 2).unwrap();
            let mut d = Drained::default();
            assert_eq!(p.drain(ConnId(1), written, &mut d), Status::Reading);
            assert_eq!(seqs(&d), vec![3, 4, 5]);
            p.ack(d.items.last().unwrap().0);
            assert_eq!(p.held_entries(), 0);
            assert_eq!(p.held_bytes(), 0);
        });
    }

    #[test]
    fn resume_with_impossible_last_seq_is_a_gap() {
        with_receiver(|rx, gate| {
            let p = Pipe::new(Limits {
                away_frames: 100,
                ..limits()
            });
            p.reset_receiver();
            for i in 0..5 {
                p.push(data(i), &gate);
            }
            assert_eq!(p.attach(rx.clone(), 6), Err(Gap::Ahead { sent: 5 }));
            p.attach(rx.clone(), 0).unwrap();
            p.ack(3); // client acknowledged frames 1..=3
            p.detach(rx.conn);
            assert_eq!(p.attach(rx.clone(), 1), Err(Gap::Behind { oldest: 4 }));
            p.close();
            assert_eq!(p.attach(rx, 5), Err(Gap::Closed));
        });
    }

    #[test]
    fn events_stay_in_order_with_data() {
        with_receiver(|rx, gate| {
            let p = Pipe::new(Limits {
                away_frames: 100,
                ..limits()
            });
            p.reset_receiver();
            p.push(data(1), &gate);
            p.push_event("ev".into(), EventEffect::None);
            p.push(data(2), &gate);
            let w = p.attach(rx, 0).unwrap();
            let mut d = Drained::default();
            p.drain(ConnId(1), w, &mut d);
            let kinds: Vec<_> = d
                .items
                .iter()
                .map(|(_, i, _)| match i {
                    Item::Data { seq, .. } => format!("d{seq}"),
                    Item::Event { .. } => "ev".to_string(),
                })
                .collect();
            assert_eq!(kinds, ["d1", "ev", "d2"]);
        });
    }

    #[test]
    fn a_backlog_closes_the_sender_gate_until_the_receiver_drains() {
        with_receiver(|rx, gate| {
            let p = Pipe::new(Limits {
                max_buffered: 4 * 65536,
                ..limits()
            });
            p.reset_receiver();
            p.attach(rx, 0).unwrap();
            let big = Frame::Binary(Bytes::from(vec![0u8; 40_000]));
            assert_eq!(p.push(big.clone(), &gate), Pushed::Queued { remote: false });
            assert_eq!(
                p.push(big.clone(), &gate),
                Pushed::Backlogged { remote: false }
            );
            assert!(gate.is_closed());
            let mut d = Drained::default();
            p.drain(ConnId(1), 0, &mut d);
            assert!(!gate.is_closed(), "a drain lets the sender go on");
        });
    }

    #[test]
    fn a_stalled_receiver_over_the_limit_is_cut() {
        with_receiver(|rx, gate| {
            let p = Pipe::new(Limits {
                max_buffered: 100_000,
                stall: Duration::ZERO,
                ..limits()
            });
            p.reset_receiver();
            p.attach(rx, 0).unwrap();
            let big = Frame::Binary(Bytes::from(vec![0u8; 60_000]));
            p.push(big.clone(), &gate);
            assert_eq!(p.cut_if_stalled(), None, "under the limit");
            p.push(big.clone(), &gate);
            assert_eq!(p.cut_if_stalled(), Some(ConnId(1)));
            assert!(p.was_cut(ConnId(1)));
            assert!(!gate.is_closed(), "the cut lets the sender go on");
            // Now away: the away limits (3 frames) apply.
            for _ in 0..3 {
                assert_eq!(p.push(data(0), &gate), Pushed::Queued { remote: false });
            }
            assert_eq!(p.push(data(9), &gate), Pushed::Overflow);
        });
    }

    #[test]
    fn the_hard_cap_cuts_at_once() {
        with_receiver(|rx, gate| {
            let p = Pipe::new(Limits {
                max_buffered: 100_000,
                ..limits()
            });
            p.reset_receiver();
            p.attach(rx, 0).unwrap();
            let big = Frame::Binary(Bytes::from(vec![0u8; 60_000]));
            let mut results = Vec::new();
            for _ in 0..8 {
                // Drain between pushes, so only the unacknowledged bytes grow.
                results.push(p.push(big.clone(), &gate));
                p.drain(ConnId(1), u64::MAX, &mut Drained::default());
            }
            // 400,000 bytes is the cap: the seventh frame crosses it.
            assert_eq!(results[6], Pushed::SlowConsumer(ConnId(1)), "{results:?}");
            assert!(
                results[..6]
                    .iter()
                    .all(|r| *r == Pushed::Queued { remote: false }),
                "{results:?}"
            );
        });
    }

    /// The pairing numbers of the next `n` acks on `rx` (the detached bus
    /// forwards on a thread), checking that no other envelope follows.
    fn acks_sent(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Arc<str>, Envelope)>,
        n: usize,
    ) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        while out.len() < n {
            match rx.try_recv() {
                Ok((node, Envelope::Ack { p, to, .. })) => {
                    assert_eq!((&*node, to), ("sender", Role::Mac));
                    out.push(p);
                }
                Ok(other) => panic!("not an ack: {other:?}"),
                Err(_) => {
                    assert!(Instant::now() < deadline, "acks so far: {out:?}");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "more than {out:?}");
        out
    }

    #[test]
    fn duplicates_from_another_node_that_the_receiver_read_are_acknowledged() {
        let (bus, mut rx) = crate::cluster::bus::Bus::detached("receiver");
        let peer = Peer {
            bus,
            node: Arc::from("sender"),
            sid: Arc::from("s"),
            to: Role::Mac,
        };
        // The receiver has read 40 frames; 3 more come and wait unread.
        let p = Pipe::fed_from_peer(limits(), 40, 0, peer);
        for n in 41..=43 {
            assert_eq!(p.push_from_peer(n, data(1)), FromPeer::Queued);
        }
        // The sender's node sends everything again (it lost its count).
        for n in 1..=43 {
            assert_eq!(p.push_from_peer(n, data(1)), FromPeer::Duplicate);
        }
        // Read ones are acked (every 16th and the last read); unread ones are
        // left to the receiver's own acks.
        assert_eq!(acks_sent(&mut rx, 3), vec![16, 32, 40]);
    }

    fn detached_peer(bus: Arc<Bus>, node: &str, to: Role) -> Peer {
        Peer {
            bus,
            node: Arc::from(node),
            sid: Arc::from("s"),
            to,
        }
    }

    #[test]
    fn a_sender_toward_another_node_is_paced_by_what_that_node_wrote_not_by_acks() {
        let (bus, _rx) = crate::cluster::bus::Bus::detached("sender");
        let limits = Limits {
            max_buffered: 4 * 65536,
            ..limits()
        };
        let p = Pipe::sending_to_peer(limits, detached_peer(bus, "receiver", Role::Browser), 0, 0);
        let gate = Gate::new();
        let big = Frame::Binary(Bytes::from(vec![0u8; 40_000]));
        assert_eq!(p.push(big.clone(), &gate), Pushed::Queued { remote: true });
        assert_eq!(
            p.push(big.clone(), &gate),
            Pushed::Backlogged { remote: true }
        );
        assert!(gate.is_closed());
        // The receiver's node wrote both frames; its client acknowledged
        // none (its pongs may wait behind its own paused data): go on.
        p.written_from_peer(2);
        assert!(!gate.is_closed(), "a written report lets the sender go on");
        assert_eq!(p.held_entries(), 2, "frames stay held until acknowledged");
        // An old report changes nothing; an ack frees what it covers.
        p.written_from_peer(1);
        p.ack_from_peer(2);
        assert_eq!(p.held_entries(), 0);
        assert_eq!(p.push(big, &gate), Pushed::Queued { remote: true });
    }

    #[test]
    fn a_receiving_node_reports_what_it_wrote_every_eighth_of_the_backlog() {
        let (bus, mut rx) = crate::cluster::bus::Bus::detached("receiver");
        let limits = Limits {
            max_buffered: 4 * 65536,
            ..limits()
        };
        // Backlog 64 KiB: a report every 8 KiB handed to the socket.
        let p = Pipe::fed_from_peer(limits, 0, 0, detached_peer(bus, "sender", Role::Mac));
        with_receiver(|r, _| {
            p.attach(r, 0).unwrap();
            let frame = |n: usize| Frame::Binary(Bytes::from(vec![0u8; n]));
            assert_eq!(p.push_from_peer(1, frame(4000)), FromPeer::Queued);
            let mut d = Drained::default();
            p.drain(ConnId(1), 0, &mut d);
            assert_eq!(p.push_from_peer(2, frame(5000)), FromPeer::Queued);
            p.drain(ConnId(1), d.items.last().unwrap().0, &mut d);
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let env = loop {
            match rx.try_recv() {
                Ok((_, env)) => break env,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("no report: {e}"),
            }
        };
        assert_eq!(
            env,
            Envelope::Written {
                sid: "s".into(),
                to: Role::Mac,
                p: 2
            }
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "one report for the two drains");
    }
}
