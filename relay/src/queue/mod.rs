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

mod cross_node;
mod entry;
mod guests;
mod limits;
mod outcome;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytestring::ByteString;

pub use self::entry::{ENTRY_OVERHEAD, EventEffect, Item};
use self::entry::{Entry, stamp};
pub use self::guests::GuestReport;
pub use self::limits::Limits;
pub use self::outcome::{Drained, FromPeer, Gap, Pushed, Status};
use crate::conns::ConnId;
use crate::frame::{Frame, Sender};

/// How long a queue fed from another node waits for the resend it asked for
/// before it asks again for the same gap. The ask or the resend may be lost
/// too (a failed publish, a full link), so it must ask again some time; a
/// resend normally comes back within a publish round trip (milliseconds), so
/// a second is long enough not to ask twice for frames already on their way,
/// and short beside the grace period a client would wait in.
pub const RESEND_RETRY: Duration = Duration::from_secs(1);

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
    /// For a room host's queue: the guests on other nodes feeding it.
    feeds: Option<Box<guests::Feeds>>,
    /// Toward a room guest whose count died with a node: see `renumber`.
    unnumbered: bool,
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
            feeds: None,
            unnumbered: false,
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
    #[inline]
    pub fn sender_paused(&self) -> bool {
        self.paused
    }

    /// Whether the reader must be woken now (clears the request).
    #[inline]
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// Whether the reader must be woken or a reader was cut: what the owner
    /// acts on beyond the state it can read.
    #[inline]
    pub fn wants_owner(&self) -> bool {
        self.wake || self.newly_cut.is_some()
    }

    /// A reader cut as a slow consumer since the last call: wake it to close
    /// with 1013, and cut its connection if it cannot.
    #[inline]
    pub fn take_cut(&mut self) -> Option<ConnId> {
        self.newly_cut.take()
    }

    /// The connection reading this queue on this node, if any.
    #[inline]
    pub fn local_reader(&self) -> Option<ConnId> {
        match self.reader {
            Reader::Local(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the reader is on another node (frames are published there).
    #[inline]
    pub fn is_remote(&self) -> bool {
        self.reader == Reader::Remote
    }

    // ---- the sender ----

    /// Queues one data frame toward the reader.
    #[cfg(test)]
    pub fn push(&mut self, frame: Frame) -> Pushed {
        self.push_from(frame, None)
    }

    /// Queues one data frame toward the reader, from `from` (a room guest).
    #[inline]
    pub fn push_from(&mut self, frame: Frame, from: Sender) -> Pushed {
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
                    from,
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
        self.append(seq, Item::Data { seq, frame, from }, stamp(seq));
        let Reader::Local(conn) = self.reader else {
            return Pushed::Queued { backlogged: false };
        };
        if self.bytes > self.limits.cut_at() {
            self.cut_reader(conn);
            return Pushed::SlowConsumer(conn);
        }
        let backlogged = self.limits.paced && self.unwritten > self.limits.backlog();
        self.paused |= backlogged;
        self.notify();
        Pushed::Queued { backlogged }
    }

    #[inline]
    fn append(&mut self, seq: u64, item: Item, at: Option<Instant>) {
        let entry = Entry {
            pos: self.next_pos,
            seq,
            item,
            at,
            host: 0,
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
    #[inline]
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
            if let Some(e) = self.entries.pop_front() {
                guests::count_read(&mut self.feeds, &e);
            }
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
    #[inline]
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
        out.items.extend(
            self.entries
                .range(start..)
                .map(|e| (e.pos, e.item.clone(), e.at)),
        );
        out.guest_written.clear();
        if let Some(last) = self.entries.back().map(|e| e.pos) {
            out.guest_written = self.count_written(self.drained_pos, last);
            self.drained_pos = self.drained_pos.max(last);
        }
        out.remote = self.fed;
        out.report_written = None;
        // Everything is handed out now, so every frame up to `seq` is
        // written; what was unwritten is what this drain handed out.
        if self.fed && self.seq > self.reported {
            self.unreported += self.unwritten;
            if self.unreported >= self.limits.report_every() {
                self.unreported = 0;
                self.reported = self.seq;
                out.report_written = Some(self.seq.saturating_sub(self.base));
            }
        }
        self.unwritten = 0;
        self.paused = false;
        status
    }

    /// Whether `conn` was cut from this queue as a slow consumer.
    pub fn was_cut(&self, conn: ConnId) -> bool {
        self.cut == Some(conn)
    }

    /// The client read everything up to position `pos`. For a queue fed
    /// from another node, returns the pairing number to acknowledge there.
    #[inline]
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
            if let Some(e) = self.entries.pop_front() {
                guests::count_read(&mut self.feeds, &e);
            }
        }
        if self.entries.len() != before {
            self.last_ack = now;
        }
        // A fed queue tells the sender's node, which may then forget.
        acked_seq
            .filter(|s| self.fed && *s > self.base)
            .map(|s| s - self.base)
    }
}
