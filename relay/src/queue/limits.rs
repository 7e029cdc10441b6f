//! The bounds of one queue, and the thresholds derived from them.

use std::time::Duration;

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
    /// Whether a reader that falls behind pauses its sender (a pairing) or
    /// is cut once it holds `max_buffered` (a room's guest: one slow guest
    /// must not slow the host and the other guests).
    pub paced: bool,
}

impl Limits {
    /// Bytes waiting to be written beyond which the sender is paused.
    #[inline]
    pub(super) fn backlog(&self) -> usize {
        (self.max_buffered / 4).max(64 * 1024)
    }

    /// Bytes a receiving node hands to its socket between two reports of
    /// what it wrote to the sender's node: a fraction of the backlog, so a
    /// paused sender hears of progress long before the reader runs dry.
    #[inline]
    pub(super) fn report_every(&self) -> usize {
        self.backlog() / 8
    }

    /// Bytes held unacknowledged toward another node beyond which the sender
    /// pauses whatever was written there: twice the receiving node's
    /// [`Limits::hard_cap`], which cuts a reader that stopped reading long
    /// before, so this only guards against a receiving node gone wrong.
    #[inline]
    pub(super) fn remote_cap(&self) -> usize {
        self.hard_cap().saturating_mul(2)
    }

    /// Bytes held beyond which a pushed frame cuts the reader: the hard cap
    /// when the sender is paced, `max_buffered` when it is not.
    #[inline]
    pub(super) fn cut_at(&self) -> usize {
        if self.paced {
            self.hard_cap()
        } else {
            self.max_buffered
        }
    }

    /// Bytes held beyond which a reader is cut at once, acknowledging or not.
    ///
    /// Held bytes include what sits in kernel buffers on both ends (several
    /// MiB on a fast link), so a reading client can exceed `max_buffered`
    /// briefly; this cap only stops growth whose acknowledgements cannot
    /// arrive (the reader's own reading is paused by flow control).
    #[inline]
    pub(super) fn hard_cap(&self) -> usize {
        self.max_buffered.saturating_mul(4)
    }
}
