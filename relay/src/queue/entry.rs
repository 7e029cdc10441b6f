//! What a queue holds: data frames and control events in order, each with
//! its position and what it costs against the bounds.

use std::time::Instant;

use bytestring::ByteString;
use relay_protocol::CloseCode;

use crate::frame::{Frame, Sender};

/// One data frame in this many is timed for the latency histogram.
const LATENCY_SAMPLE: u64 = 16;

/// Bookkeeping bytes charged per queued entry, so a flood of tiny frames is
/// bounded by memory actually used, not only by payload bytes.
pub const ENTRY_OVERHEAD: usize = 64;

pub(super) fn stamp(seq: u64) -> Option<Instant> {
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
        /// The room guest it came from, toward a room host.
        from: Sender,
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
pub(super) struct Entry {
    /// Position in this queue, strictly increasing; what ack markers carry.
    pub(super) pos: u64,
    /// For data: its seq. For events: the seq of the last data frame before it.
    pub(super) seq: u64,
    pub(super) item: Item,
    /// When it was queued, for one data frame in [`LATENCY_SAMPLE`] (the
    /// latency histogram): a clock read per frame would cost more than the
    /// rest of the frame's bookkeeping.
    pub(super) at: Option<Instant>,
    /// On a room host's way to one guest: the frame's number among the
    /// host's frames (0: none, or not a host's frame), published with it so
    /// that the guest's node knows where it stands should the host's node
    /// die (docs/design.md, "Rooms across nodes").
    pub(super) host: u64,
}

impl Entry {
    #[inline]
    pub(super) fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + match &self.item {
                Item::Data { frame, .. } => frame.len(),
                Item::Event { text, .. } => text.len(),
            }
    }

    #[inline]
    pub(super) fn is_data(&self) -> bool {
        matches!(self.item, Item::Data { .. })
    }

    /// Whether a reader with `last_seq` frames surely or probably has this
    /// entry: every frame up to `last_seq` and, by TCP order, every event
    /// before the last of them; an event right after it if it was handed
    /// out (`drained_pos`), so a resumed client does not hear it twice.
    pub(super) fn received_by(&self, last_seq: u64, drained_pos: u64) -> bool {
        match self.item {
            Item::Data { seq, .. } => seq <= last_seq,
            Item::Event { .. } => {
                self.seq < last_seq || (self.seq == last_seq && self.pos <= drained_pos)
            }
        }
    }
}
