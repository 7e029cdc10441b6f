//! What the queue's calls answer: what became of a frame, why a reader
//! cannot attach, and what a drain handed out.

use std::time::Instant;

use super::entry::Item;
use crate::conns::ConnId;
use crate::frame::Frame;

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
    /// For a room host's queue fed by guests on other nodes: tell each
    /// guest's node that every frame of that guest up to this number was
    /// written.
    pub guest_written: Vec<super::GuestReport>,
}
