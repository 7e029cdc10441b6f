//! The queue's side of a cross-node direction: frames published to a reader
//! on another node and kept until it acknowledges them, frames fed from a
//! sender on another node (in order, once, asking again for what was
//! lost), and moving a reader between nodes.

use std::time::Instant;

use super::entry::{Entry, Item, stamp};
use super::outcome::{FromPeer, Gap, Pushed};
use super::{AWAY, Queue, RESEND_RETRY, Reader};
use crate::frame::Frame;

impl Queue {
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
        self.append(
            seq,
            Item::Data {
                seq,
                frame,
                from: None,
            },
            stamp(seq),
        );
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

    /// Reader side, as the sender moves to another node: the data frames of
    /// this pairing the reader has not acknowledged, by pairing number. The
    /// sender's new node holds them from then on (see
    /// [`Queue::hold_handed_over`]); this queue keeps them for its reader.
    pub fn unacknowledged(&self) -> Vec<(u64, Frame)> {
        self.entries
            .iter()
            .filter_map(|e| match &e.item {
                Item::Data { seq, frame, .. } if *seq > self.base => {
                    Some((seq - self.base, frame.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Sender side, on a queue toward a reader on another node: holds
    /// `frames` (by pairing number, in order), which the reader's node
    /// already has and its reader has not acknowledged, as the replay source
    /// should the reader move. They are not published (the reader's node has
    /// them) nor counted unwritten; its acks free them as they free the rest.
    /// Frames past this queue's count, or not after what it holds, are not
    /// this queue's and are ignored.
    pub fn hold_handed_over(&mut self, frames: Vec<(u64, Frame)>) {
        let have = self.seq - self.base;
        let mut last = self
            .entries
            .back()
            .map_or(0, |e| e.seq.saturating_sub(self.base));
        for (p, frame) in frames {
            if p <= last || p > have {
                continue;
            }
            last = p;
            let seq = self.base + p;
            self.append(
                seq,
                Item::Data {
                    seq,
                    frame,
                    from: None,
                },
                None,
            );
            // Already at the reader's node: nothing of it is unwritten.
            if let Some(e) = self.entries.back() {
                self.unwritten -= e.cost();
            }
        }
    }

    /// Sender side: the pairing number up to which the reader
    /// acknowledged (every frame after it is held).
    pub fn acknowledged(&self) -> u64 {
        self.oldest_held()
            .saturating_sub(1)
            .saturating_sub(self.base)
    }

    /// Toward a room guest whose node died with its host's: its count of
    /// this direction died there, so the frames held for it are numbered
    /// after the count it brings when it comes back (see `renumber`).
    pub fn number_on_return(&mut self) {
        self.unnumbered = true;
    }

    /// The reader came back with `last_seq` frames: if this queue waited
    /// for that count (`number_on_return`), what it holds is renumbered to
    /// follow it, once. Called before the reader attaches or is sent to.
    pub fn renumber(&mut self, last_seq: u64) {
        if !std::mem::take(&mut self.unnumbered) {
            return;
        }
        let by = last_seq.saturating_sub(self.oldest_held().saturating_sub(1));
        for e in &mut self.entries {
            e.seq += by;
            if let Item::Data { seq, .. } = &mut e.item {
                *seq += by;
            }
        }
        self.seq += by;
        self.peer_written += by;
        self.reported += by;
    }

    /// Queues a room host's data frame toward one guest, numbered `host`
    /// among the host's frames (kept with it for replays; see `Entry::host`).
    #[inline]
    pub fn push_host(&mut self, frame: Frame, host: u64) -> Pushed {
        let before = self.next_pos;
        let pushed = self.push_from(frame, None);
        if self.next_pos > before {
            if let Some(e) = self.entries.back_mut() {
                e.host = host;
            }
        }
        pushed
    }

    /// Sender side: every held frame from pairing number `from` on, to
    /// publish again (envelopes were lost; the reader drops what it has).
    /// Empty unless the reader is on another node.
    pub fn resend_from(&self, from: u64) -> Vec<(u64, Frame)> {
        self.resend_numbered(from)
            .into_iter()
            .map(|(p, frame, _)| (p, frame))
            .collect()
    }

    /// As [`Queue::resend_from`], each with its number among a room host's
    /// frames (0 if none; see [`Queue::push_host`]).
    pub fn resend_numbered(&self, from: u64) -> Vec<(u64, Frame, u64)> {
        if self.reader != Reader::Remote {
            return Vec::new();
        }
        self.entries
            .iter()
            .filter_map(|e| match &e.item {
                Item::Data { seq, frame, .. } if seq - self.base >= from => {
                    Some((seq - self.base, frame.clone(), e.host))
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
