//! One direction toward one side of a session, as plain data: the delivery
//! queue and the replay buffer at once. No I/O, no actors, no bus, no
//! timers: it says what should happen (wake the reader, pause or release the
//! sender, publish a frame, acknowledge to another node, cut a slow reader)
//! and [`crate::pipe`] does it. It does not know what drains it: a socket on
//! this node, or another node that publishes to it.
//!
//! Numbering: every data frame toward the reader gets `seq`, counted from 1
//! per direction (the reader's resume `lastSeq`); every entry (data or
//! control event) gets a strictly increasing position `pos`, which a reader
//! acknowledges (a WebSocket ping carrying it). `base` is `seq` when the
//! current pairing began: across nodes, frames are numbered `seq - base`.
//!
//! Bounds: a reader that drains too slowly pauses the sender (backlog); one
//! that holds too much unacknowledged is cut (slow consumer); an absent
//! reader's queue is bounded by the away limits, past which its side ends.

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use relay_protocol::CloseCode;

use crate::conns::ConnId;
use crate::frame::Frame;

/// One data frame in this many is timed for the latency histogram.
pub const LATENCY_SAMPLE: u64 = 16;

/// How long a queue fed from another node waits for the resend it asked for
/// before it asks again for the same gap. The ask or the resend may be lost
/// too (a failed publish, a full link), so it must ask again some time; a
/// resend normally comes back within a publish round trip (milliseconds), so
/// a second is long enough not to ask twice for frames already on their way,
/// and short beside the grace period a client would wait in.
pub const RESEND_RETRY: Duration = Duration::from_secs(1);

/// Bookkeeping bytes charged per queued entry, so a flood of tiny frames is
/// bounded by memory actually used, not only by payload bytes.
pub const ENTRY_OVERHEAD: usize = 64;

fn stamp(seq: u64) -> Option<Instant> {
    (seq % LATENCY_SAMPLE == 0).then(Instant::now)
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

/// One queued item toward the reader.
#[derive(Debug, Clone)]
pub enum Item {
    /// A data frame with its per-direction sequence number.
    Data {
        /// 1-based count of data frames toward this reader.
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
    /// Position in this queue, strictly increasing; what ack markers carry.
    pos: u64,
    /// For data: its seq. For events: the seq of the last data frame before it.
    seq: u64,
    item: Item,
    /// When it was queued, for one data frame in [`LATENCY_SAMPLE`] (the
    /// latency histogram): a clock read per frame would cost more than the
    /// rest of the frame's bookkeeping.
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

    fn is_data(&self) -> bool {
        matches!(self.item, Item::Data { .. })
    }

    /// Whether a reader with `last_seq` frames surely or probably has this
    /// entry: every frame up to `last_seq` and, by TCP order, every event
    /// before the last of them; an event right after it if it was handed
    /// out (`drained_pos`), so a resumed client does not hear it twice.
    fn received_by(&self, last_seq: u64, drained_pos: u64) -> bool {
        match self.item {
            Item::Data { seq, .. } => seq <= last_seq,
            Item::Event { .. } => {
                self.seq < last_seq || (self.seq == last_seq && self.pos <= drained_pos)
            }
        }
    }
}

/// Bounds of one queue.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes a reader may hold unread before it may be cut as a slow consumer.
    pub max_buffered: usize,
    /// How long a reader over `max_buffered` may go without acknowledging
    /// anything before it is cut.
    pub stall: Duration,
    /// Frames queued for an absent reader before its session ends.
    pub away_frames: usize,
    /// Bytes queued for an absent reader before its session ends.
    pub away_bytes: usize,
}

impl Limits {
    /// Bytes waiting to be written beyond which the sender is paused.
    fn backlog(&self) -> usize {
        (self.max_buffered / 4).max(64 * 1024)
    }

    /// Bytes a receiving node hands to its socket between two reports of
    /// what it wrote to the sender's node: a fraction of the backlog, so a
    /// paused sender hears of progress long before the reader runs dry.
    fn report_every(&self) -> usize {
        self.backlog() / 8
    }

    /// Bytes held unacknowledged toward another node beyond which the sender
    /// pauses whatever was written there: twice the receiving node's
    /// [`Limits::hard_cap`], which cuts a reader that stopped reading long
    /// before, so this only guards against a receiving node gone wrong.
    fn remote_cap(&self) -> usize {
        self.hard_cap().saturating_mul(2)
    }

    /// Bytes held beyond which a reader is cut at once, acknowledging or not.
    ///
    /// Held bytes include what sits in kernel buffers on both ends (several
    /// MiB on a fast link), so a reading client can exceed `max_buffered`
    /// briefly; this cap only stops growth whose acknowledgements cannot
    /// arrive (the reader's own reading is paused by flow control).
    fn hard_cap(&self) -> usize {
        self.max_buffered.saturating_mul(4)
    }
}

/// Who reads the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// No reader on that side (no browser yet, or it left): pushes are refused.
    None,
    /// A connection on this node drains the queue.
    Local(ConnId),
    /// The reader dropped and may resume; pushes are queued within limits.
    Away {
        /// Frames pushed since it went away.
        frames: usize,
        /// Bytes pushed since it went away.
        bytes: usize,
    },
    /// The session is over; pushes are refused.
    Closed,
    /// The reader is on another node: each frame is published there as it
    /// is pushed, and kept here until acknowledged (the replay source if
    /// the reader moves).
    Remote,
}

const AWAY: Reader = Reader::Away {
    frames: 0,
    bytes: 0,
};

/// What became of a pushed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for a reader on this node (or an absent one).
    Queued {
        /// The reader is behind: pause the sender until it catches up.
        backlogged: bool,
    },
    /// Queued for a reader on another node: publish it there as `p`.
    Publish {
        /// The frame's number within the pairing.
        p: u64,
        /// The frame, to publish.
        frame: Frame,
        /// Too much is unwritten there: pause the sender.
        backlogged: bool,
    },
    /// A frame the reader already had before a crash, sent again: dropped.
    Skipped,
    /// Queued; the reader held more than allowed and is cut (see [`Queue::take_cut`]).
    SlowConsumer(ConnId),
    /// No reader: the frame was refused (`NOT_PAIRED`).
    NotPaired,
    /// The absent reader's buffer overflowed: the frame was dropped and its
    /// side must end (`RESUME_EXPIRED`). Reported once; later pushes see `NotPaired`.
    Overflow,
}

/// What became of a frame from another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromPeer {
    /// Queued for the reader.
    Queued,
    /// Already had it (a resend); acknowledge `ack` to the sender's node if set.
    Duplicate {
        /// A pairing number the reader read, to acknowledge.
        ack: Option<u64>,
    },
    /// Frames before it are missing (dropped). The sender's node must resend
    /// from `next`; asked once per gap, not by every frame behind it.
    Gap {
        /// The pairing number expected next.
        next: u64,
        /// Ask the sender's node for the resend now: this gap is new (or
        /// moved), or the last ask is older than [`RESEND_RETRY`].
        ask: bool,
    },
    /// The reader's side is over; nothing to deliver to.
    Dropped,
    /// Queued, and the reader was cut as a slow consumer.
    Cut(ConnId),
}

/// Why a reader could not attach at the `lastSeq` it gave.
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
    /// The queue is closed (the session, or this side of it, ended).
    Closed,
}

/// A reader's standing toward its queue, as seen when it drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It is the attached reader.
    Reading,
    /// The session is over; write what is left, then stop.
    Closed,
    /// It was cut as a slow consumer: close with 1013.
    Cut,
    /// Another connection reads the queue now (or none does).
    NotMine,
}

/// What a reader took out of its queue in one drain.
#[derive(Debug, Default)]
pub struct Drained {
    /// Items to write, in order, with their positions and, for sampled data
    /// frames, when they were queued.
    pub items: Vec<(u64, Item, Option<Instant>)>,
    /// The queue is fed from another node (for the latency histogram's path).
    pub remote: bool,
    /// Tell the sender's node that every frame up to this pairing number
    /// was written (cross-node flow control).
    pub report_written: Option<u64>,
}

/// One direction toward one side: see the module docs.
#[derive(Debug)]
pub struct Queue {
    limits: Limits,
    /// Data frames accepted from the sending side (its resume `lastSeq`).
    accepted: u64,
    /// Data frames queued toward the reader so far.
    seq: u64,
    /// `seq` when the current pairing started: a frame's pairing number is
    /// `seq - base`, the same on both nodes of a cross-node direction.
    base: u64,
    /// Position of the next entry.
    next_pos: u64,
    entries: VecDeque<Entry>,
    /// Cost of `entries` (held: unwritten and unacknowledged).
    bytes: usize,
    /// Cost of the entries not yet handed to the reader (for a reader on
    /// another node: not yet reported written there). What flow control
    /// weighs: it never waits for acknowledgements, which travel in the
    /// reader's own stream and may queue behind its paused sending.
    unwritten: usize,
    reader: Reader,
    /// Highest position handed to a reader to write: an event at or before
    /// it was probably received, even if not yet acknowledged.
    drained_pos: u64,
    /// When the reader last acknowledged something (or attached).
    last_ack: Instant,
    /// The reader cut as a slow consumer, until another one attaches.
    cut: Option<ConnId>,
    /// `seq` came from a checkpoint because the node that knew it died: a
    /// reader may have read more than `seq`, and the sender will send those
    /// frames again (it was told the checkpoint as its `lastSeq`).
    seq_may_lag: bool,
    /// Frames the sender sends again that the reader already has: dropped.
    skip: u64,
    /// Fed from another node: acknowledgements and written reports go back
    /// there, and acks from elsewhere are not this queue's.
    fed: bool,
    /// For a queue toward another node: the reader's node wrote every frame
    /// up to this `seq` to its socket (acknowledged ones included).
    peer_written: u64,
    /// For a queue fed from another node: the last `seq` reported written to
    /// the sender's node, and the cost handed to the reader since.
    reported: u64,
    unreported: usize,
    /// For a queue fed from another node: the gap it last asked the sender's
    /// node to fill (the pairing number expected next) and when; cleared when
    /// a frame fills it.
    asked: Option<(u64, Instant)>,
    /// The sender is paused by this queue's backlog.
    paused: bool,
    /// A wake-up is on its way to the reader and not yet answered by a drain.
    notified: bool,
    /// The reader must be woken (set for the owner to act on, then taken).
    wake: bool,
    /// A reader just cut, to be closed by the owner (then taken).
    newly_cut: Option<ConnId>,
}

impl Queue {
    /// A queue with no reader yet.
    pub fn new(limits: Limits) -> Self {
        Queue {
            limits,
            accepted: 0,
            seq: 0,
            base: 0,
            next_pos: 1,
            entries: VecDeque::new(),
            bytes: 0,
            unwritten: 0,
            reader: Reader::None,
            drained_pos: 0,
            last_ack: Instant::now(),
            cut: None,
            seq_may_lag: false,
            skip: 0,
            fed: false,
            peer_written: 0,
            reported: 0,
            unreported: 0,
            asked: None,
            paused: false,
            notified: false,
            wake: false,
            newly_cut: None,
        }
    }

    /// A queue fed from another node, for a reader that already has
    /// `last_seq` frames, the current pairing having started at `base`. It
    /// queues (away) until a reader attaches.
    pub fn fed_from_peer(limits: Limits, last_seq: u64, base: u64) -> Self {
        Queue {
            seq: last_seq,
            base: base.min(last_seq),
            reader: AWAY,
            fed: true,
            reported: last_seq,
            ..Queue::new(limits)
        }
    }

    /// A queue toward a reader on another node, continuing a pairing of
    /// which `p` frames were already sent, the sender having `accepted`
    /// frames accepted in all.
    pub fn sending_to_peer(limits: Limits, p: u64, accepted: u64) -> Self {
        Queue {
            seq: p,
            accepted,
            peer_written: p,
            reader: Reader::Remote,
            ..Queue::new(limits)
        }
    }

    // ---- for the owner: what to do after each call ----

    /// Whether the sender must stay paused (false: release it).
    pub fn sender_paused(&self) -> bool {
        self.paused
    }

    /// Whether the reader must be woken now (clears the request).
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// A reader cut as a slow consumer since the last call: wake it to close
    /// with 1013, and cut its connection if it cannot.
    pub fn take_cut(&mut self) -> Option<ConnId> {
        self.newly_cut.take()
    }

    /// The connection reading this queue on this node, if any.
    pub fn local_reader(&self) -> Option<ConnId> {
        match self.reader {
            Reader::Local(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the reader is on another node (frames are published there).
    pub fn is_remote(&self) -> bool {
        self.reader == Reader::Remote
    }

    // ---- the sender ----

    /// Queues one data frame toward the reader.
    pub fn push(&mut self, frame: Frame) -> Pushed {
        let cost = ENTRY_OVERHEAD + frame.len();
        match &mut self.reader {
            Reader::None | Reader::Closed => return Pushed::NotPaired,
            Reader::Away { frames, bytes } => {
                if *frames + 1 > self.limits.away_frames || *bytes + cost > self.limits.away_bytes {
                    // The absent side has been gone too long to hold more: end
                    // it rather than drop frames silently.
                    self.reader = Reader::Closed;
                    self.accepted += 1;
                    return Pushed::Overflow;
                }
                *frames += 1;
                *bytes += cost;
            }
            Reader::Local(_) | Reader::Remote => {}
        }
        self.accepted += 1;
        if self.skip > 0 {
            // A frame the reader read before the crash, sent again.
            self.skip -= 1;
            return Pushed::Skipped;
        }
        self.seq += 1;
        let seq = self.seq;
        if self.reader == Reader::Remote {
            self.append(
                seq,
                Item::Data {
                    seq,
                    frame: frame.clone(),
                },
                stamp(seq),
            );
            // Paced by what the reader's node wrote, as a local backlog is.
            let backlogged =
                self.unwritten > self.limits.backlog() || self.bytes > self.limits.remote_cap();
            self.paused |= backlogged;
            return Pushed::Publish {
                p: seq - self.base,
                frame,
                backlogged,
            };
        }
        self.append(seq, Item::Data { seq, frame }, stamp(seq));
        let Reader::Local(conn) = self.reader else {
            return Pushed::Queued { backlogged: false };
        };
        if self.bytes > self.limits.hard_cap() {
            self.cut_reader(conn);
            return Pushed::SlowConsumer(conn);
        }
        let backlogged = self.unwritten > self.limits.backlog();
        self.paused |= backlogged;
        self.notify();
        Pushed::Queued { backlogged }
    }

    fn append(&mut self, seq: u64, item: Item, at: Option<Instant>) {
        let entry = Entry {
            pos: self.next_pos,
            seq,
            item,
            at,
        };
        self.next_pos += 1;
        self.bytes += entry.cost();
        self.unwritten += entry.cost();
        self.entries.push_back(entry);
    }

    /// Queues a control message toward the reader, ordered after every data
    /// frame pushed before it. Dropped if the queue is closed.
    pub fn push_event(&mut self, text: ByteString, effect: EventEffect) {
        if self.reader == Reader::Closed {
            return;
        }
        self.append(self.seq, Item::Event { text, effect }, None);
        self.notify();
    }

    /// Asks for a wake-up of a local reader, unless one is already on its way.
    fn notify(&mut self) {
        if matches!(self.reader, Reader::Local(_)) && !self.notified {
            self.notified = true;
            self.wake = true;
        }
    }

    /// Cuts the local reader as a slow consumer.
    fn cut_reader(&mut self, conn: ConnId) {
        // From now on frames count against the away limits, so memory stays
        // bounded while the socket is cut.
        self.reader = AWAY;
        self.notified = true;
        self.cut = Some(conn);
        self.newly_cut = Some(conn);
        self.paused = false;
    }

    /// Sender side, while paused: cuts the local reader if it holds more
    /// than `max_buffered` and acknowledged nothing for the stall time.
    pub fn cut_if_stalled(&mut self, now: Instant) -> Option<ConnId> {
        let Reader::Local(conn) = self.reader else {
            return None;
        };
        if self.bytes <= self.limits.max_buffered
            || now.saturating_duration_since(self.last_ack) < self.limits.stall
        {
            return None;
        }
        self.cut_reader(conn);
        Some(conn)
    }

    /// The same for a queue fed from another node, which has no local
    /// sender to notice.
    pub fn cut_if_stalled_fed(&mut self, now: Instant) -> Option<ConnId> {
        if !self.fed {
            return None;
        }
        self.cut_if_stalled(now)
    }

    // ---- the reader ----

    /// Whether a reader that has `last_seq` frames can take this queue:
    /// every frame after it is still held. A count that may lag (see
    /// [`Queue::catch_up`]) takes any reader ahead of it.
    ///
    /// # Errors
    /// The [`Gap`] between what it has and what is held.
    pub fn check(&self, last_seq: u64) -> Result<(), Gap> {
        if self.reader == Reader::Closed {
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
    /// next one's when none is: the reader has every frame before it.
    fn oldest_held(&self) -> u64 {
        self.entries
            .iter()
            .find_map(|e| e.is_data().then_some(e.seq))
            .unwrap_or(self.seq + 1)
    }

    /// A reader with `last_seq` frames is taking this queue. If the count
    /// came from a checkpoint and the reader read more (frames the count
    /// lost with a dead node), the sender will send those again: move the
    /// count up to the reader's and drop them when they come.
    fn catch_up(&mut self, last_seq: u64) {
        if self.seq_may_lag && last_seq > self.seq {
            self.skip += last_seq - self.seq;
            self.seq = last_seq;
            self.entries.retain(|e| !e.is_data());
            // Events queued since the crash are new to the reader: they come
            // after everything it has.
            for e in &mut self.entries {
                e.seq = last_seq;
            }
            self.bytes = self.entries.iter().map(Entry::cost).sum();
        }
        self.seq_may_lag = false;
    }

    /// Drops the entries at the front that a reader with `last_seq` frames has.
    fn drop_received(&mut self, last_seq: u64) {
        while let Some(front) = self.entries.front() {
            if !front.received_by(last_seq, self.drained_pos) {
                break;
            }
            self.bytes -= front.cost();
            self.entries.pop_front();
        }
    }

    /// `conn` reads the queue from now on, having received `last_seq` data
    /// frames. Returns the position it has written up to.
    ///
    /// # Errors
    /// [`Gap`] when `last_seq` does not fit what was sent and acknowledged.
    pub fn attach(&mut self, conn: ConnId, last_seq: u64, now: Instant) -> Result<u64, Gap> {
        self.check(last_seq)?;
        self.catch_up(last_seq);
        self.drop_received(last_seq);
        let written = self.entries.front().map_or(self.next_pos, |e| e.pos) - 1;
        // Everything still held is unwritten for the new connection.
        self.unwritten = self.bytes;
        self.reader = Reader::Local(conn);
        self.notified = false;
        self.cut = None;
        self.last_ack = now;
        self.notify();
        Ok(written)
    }

    /// The reader `conn` dropped; keep queueing within the away limits.
    /// Returns false if `conn` was not the attached reader.
    pub fn detach(&mut self, conn: ConnId) -> bool {
        if self.reader != Reader::Local(conn) {
            return false;
        }
        self.reader = AWAY;
        self.notified = false;
        self.paused = false;
        true
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.unwritten = 0;
        self.notified = false;
        self.paused = false;
    }

    /// The reading side is gone for good: drop what was queued for it and
    /// refuse pushes until a new reader comes ([`Queue::reset_reader`]).
    pub fn end_reader(&mut self) {
        self.clear();
        self.reader = Reader::None;
    }

    /// A new reader (a new browser) starts counting from 0.
    pub fn reset_reader(&mut self) {
        self.clear();
        self.seq = 0;
        self.base = 0;
        self.asked = None;
        self.reader = AWAY;
    }

    /// A new sender (a new browser) starts counting from 0.
    pub fn reset_sender(&mut self) {
        self.accepted = 0;
    }

    /// The sender's count, when it moved here from another node.
    pub fn set_accepted(&mut self, accepted: u64) {
        self.accepted = accepted;
    }

    /// Data frames accepted from the sending side so far.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// The session is over; nothing more is queued or written.
    pub fn close(&mut self) {
        self.paused = false;
        if let Reader::Local(_) = self.reader {
            // Keep the queue: the reader may still have events (the
            // session's last message) to write.
            self.reader = Reader::Closed;
            return;
        }
        self.clear();
        self.reader = Reader::Closed;
    }

    /// Everything queued after position `after`, if `conn` still reads this
    /// queue. Answers the pending wake-up (a later push wakes the reader
    /// again) and releases a paused sender.
    pub fn drain(&mut self, conn: ConnId, after: u64, out: &mut Drained) -> Status {
        let status = match self.reader {
            Reader::Local(c) if c == conn => Status::Reading,
            // A closed queue still lets its last reader write the final events.
            Reader::Closed => Status::Closed,
            _ if self.cut == Some(conn) => return Status::Cut,
            _ => return Status::NotMine,
        };
        self.notified = false;
        // Entries are sorted by position; skip those already written.
        let start = self.entries.partition_point(|e| e.pos <= after);
        let mut handed = 0;
        let mut last_data = None;
        for e in self.entries.range(start..) {
            if let Item::Data { seq, .. } = e.item {
                handed += e.cost();
                last_data = Some(seq);
            }
            out.items.push((e.pos, e.item.clone(), e.at));
        }
        if let Some(last) = self.entries.back() {
            self.drained_pos = self.drained_pos.max(last.pos);
        }
        out.remote = self.fed;
        self.unwritten = 0;
        self.paused = false;
        out.report_written = None;
        if let Some(seq) = last_data.filter(|s| self.fed && *s > self.reported) {
            self.unreported += handed;
            if self.unreported >= self.limits.report_every() {
                self.unreported = 0;
                self.reported = seq;
                out.report_written = Some(seq.saturating_sub(self.base));
            }
        }
        status
    }

    /// Whether `conn` was cut from this queue as a slow consumer.
    pub fn was_cut(&self, conn: ConnId) -> bool {
        self.cut == Some(conn)
    }

    /// The client read everything up to position `pos`. For a queue fed
    /// from another node, returns the pairing number to acknowledge there.
    pub fn ack(&mut self, pos: u64, now: Instant) -> Option<u64> {
        let before = self.entries.len();
        let mut acked_seq = None;
        while let Some(front) = self.entries.front() {
            if front.pos > pos {
                break;
            }
            if let Item::Data { seq, .. } = front.item {
                acked_seq = Some(seq);
            }
            self.bytes -= front.cost();
            self.entries.pop_front();
        }
        if self.entries.len() != before {
            self.last_ack = now;
        }
        // A fed queue tells the sender's node, which may then forget.
        acked_seq
            .filter(|s| self.fed && *s > self.base)
            .map(|s| s - self.base)
    }

    // ---- across nodes ----

    /// Reader side of a cross-node direction: a frame published by the
    /// sender's node, with its pairing number `p`, arriving at `now`.
    /// Duplicates (a resend) are dropped; a gap means envelopes were lost and
    /// the sender must resend, which the first frame past the gap asks for
    /// (and one after [`RESEND_RETRY`], if the gap is still there).
    pub fn push_from_peer(&mut self, p: u64, frame: Frame, now: Instant) -> FromPeer {
        let have = self.seq - self.base;
        if p <= have {
            // The sender's node holds each frame until an ack covers it. One
            // the reader already read gets no ack from its reading, so give
            // it one here (every 16th and the last read suffice, acks being
            // cumulative): else a node that sends many frames again after a
            // crash fills its backlog with frames nothing will ever free.
            let read = (self.oldest_held() - 1).saturating_sub(self.base);
            let ack = (self.fed && p <= read && (p % 16 == 0 || p == read)).then_some(p);
            return FromPeer::Duplicate { ack };
        }
        if p > have + 1 {
            let next = have + 1;
            let ask = match self.asked {
                Some((n, at)) => n != next || now.saturating_duration_since(at) >= RESEND_RETRY,
                None => true,
            };
            if ask {
                self.asked = Some((next, now));
            }
            return FromPeer::Gap { next, ask };
        }
        if matches!(self.reader, Reader::Closed | Reader::None) {
            return FromPeer::Dropped;
        }
        self.seq += 1;
        self.accepted += 1;
        // The gap asked about, if any, ended here.
        self.asked = None;
        let seq = self.seq;
        self.append(seq, Item::Data { seq, frame }, stamp(seq));
        if let Reader::Local(conn) = self.reader {
            if self.bytes > self.limits.hard_cap() {
                self.cut_reader(conn);
                return FromPeer::Cut(conn);
            }
        }
        self.notify();
        FromPeer::Queued
    }

    /// Sender side of a cross-node direction: the remote reader read every
    /// frame up to pairing number `p` (so its node wrote them too).
    pub fn ack_from_peer(&mut self, p: u64, now: Instant) {
        if self.fed {
            // A queue fed from another node only takes its own reader's acks.
            return;
        }
        let upto = self.base + p;
        let mut acked = false;
        while let Some(front) = self.entries.front() {
            let done = match front.item {
                Item::Data { seq, .. } => seq <= upto,
                Item::Event { .. } => front.seq < upto,
            };
            if !done {
                break;
            }
            let cost = front.cost();
            if matches!(front.item, Item::Data { seq, .. } if seq > self.peer_written) {
                self.unwritten = self.unwritten.saturating_sub(cost);
            }
            self.bytes -= cost;
            self.entries.pop_front();
            acked = true;
        }
        self.peer_written = self.peer_written.max(upto);
        if acked {
            self.last_ack = now;
        }
        self.release_if_caught_up();
    }

    /// Sender side of a cross-node direction: the reader's node wrote every
    /// frame up to pairing number `p` to its socket.
    pub fn written_from_peer(&mut self, p: u64) {
        if self.fed {
            return;
        }
        let upto = self.base + p;
        if upto <= self.peer_written {
            return;
        }
        let from = self.peer_written;
        let start = self.entries.partition_point(|e| e.seq <= from);
        let newly: usize = self
            .entries
            .range(start..)
            .take_while(|e| e.seq <= upto)
            .filter(|e| e.is_data())
            .map(Entry::cost)
            .sum();
        self.unwritten = self.unwritten.saturating_sub(newly);
        self.peer_written = upto;
        self.release_if_caught_up();
    }

    /// Lets a sender paused by a cross-node backlog go on once the reader's
    /// node has written half of it.
    fn release_if_caught_up(&mut self) {
        if self.unwritten <= self.limits.backlog() / 2 && self.bytes <= self.limits.remote_cap() / 2
        {
            self.paused = false;
        }
    }

    /// Sender side: the reader is (now) on another node and has every frame
    /// up to pairing number `p_last`; returns the rest, to publish there, and
    /// publishes every later push.
    ///
    /// # Errors
    /// [`Gap`] (in pairing numbers) when `p_last` does not fit what was sent
    /// and acknowledged.
    pub fn send_to_peer(&mut self, p_last: u64, now: Instant) -> Result<Vec<(u64, Frame)>, Gap> {
        let base = self.base;
        let last_seq = base + p_last;
        // The peer's node counts within the pairing: so do its errors.
        self.check(last_seq).map_err(|gap| match gap {
            Gap::Ahead { sent } => Gap::Ahead { sent: sent - base },
            Gap::Behind { oldest } => Gap::Behind {
                oldest: oldest - base,
            },
            Gap::Closed => Gap::Closed,
        })?;
        self.catch_up(last_seq);
        // Events are not carried across nodes (the reader's node makes its own).
        self.entries.retain(|e| match e.item {
            Item::Data { seq, .. } => seq > last_seq,
            Item::Event { .. } => false,
        });
        self.bytes = self.entries.iter().map(Entry::cost).sum();
        self.reader = Reader::Remote;
        // Everything still held is yet to be written at the reader's node.
        self.unwritten = self.bytes;
        self.peer_written = last_seq;
        self.cut = None;
        self.notified = false;
        self.last_ack = now;
        Ok(self.resend_from(0))
    }

    /// Sender side: every held frame from pairing number `from` on, to
    /// publish again (envelopes were lost; the reader drops what it has).
    /// Empty unless the reader is on another node.
    pub fn resend_from(&self, from: u64) -> Vec<(u64, Frame)> {
        if self.reader != Reader::Remote {
            return Vec::new();
        }
        self.entries
            .iter()
            .filter_map(|e| match &e.item {
                Item::Data { seq, frame } if seq - self.base >= from => {
                    Some((seq - self.base, frame.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Sender side: the remote reader went away; keep its frames within the
    /// away limits until it comes back somewhere.
    pub fn peer_away(&mut self) {
        if self.reader == Reader::Remote {
            self.reader = AWAY;
            self.paused = false;
        }
    }

    /// Starts a new pairing on this direction: frames are numbered from 1
    /// again (`seq - base`), on both nodes.
    pub fn start_pairing(&mut self) {
        self.base = self.seq;
        // Pairing numbers start again: an ask of the last pairing means nothing.
        self.asked = None;
    }

    /// Whether acknowledgements and written reports of this queue go to
    /// another node (it is fed from there).
    pub fn set_fed(&mut self, fed: bool) {
        self.fed = fed;
    }

    /// Frames of the current pairing queued so far.
    pub fn pairing_count(&self) -> u64 {
        self.seq - self.base
    }

    /// `seq` at the start of the current pairing.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// This queue's count came from a checkpoint (the node that knew it
    /// died), so the next reader may be ahead of it.
    pub fn count_may_lag(&mut self) {
        self.seq_may_lag = true;
    }

    /// Takes the control messages queued for the reader out of the queue
    /// (to hand them to the node it moved to), except those a reader with
    /// `last_seq` frames surely or probably has.
    pub fn take_events(&mut self, last_seq: u64) -> Vec<String> {
        let drained = self.drained_pos;
        let mut out = Vec::new();
        self.entries.retain(|e| match &e.item {
            Item::Event { text, .. } => {
                if !e.received_by(last_seq, drained) {
                    out.push(text.to_string());
                }
                false
            }
            Item::Data { .. } => true,
        });
        self.bytes = self.entries.iter().map(Entry::cost).sum();
        out
    }

    /// Bytes currently held (queued and unacknowledged), with overhead.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Entries currently held.
    pub fn held_entries(&self) -> usize {
        self.entries.len()
    }
}
