//! A room host's `admit`, `deny` and `remove`, kept in their place among
//! the data frames. Pure bookkeeping, no I/O: tested on its own.
//!
//! Where a command falls among the frames matters: a frame sent before
//! `admit` must not reach the admitted guest, and one sent after `remove`
//! must not reach the removed one. So each command is tagged with the
//! number of frames the application had handed over before it, and is
//! written right after that frame, never earlier or later. A command is
//! kept until a pong proves the relay read it; after a resume the unproven
//! ones are written again in their place. Writing one twice is harmless:
//! the relay answers the second with `UNKNOWN_GUEST` and changes nothing.

use std::collections::VecDeque;

use crate::ClientMessage;

/// One command and where it goes.
#[derive(Debug)]
struct Pending {
    /// It goes after the frame with this number (0: before any frame).
    after: u64,
    msg: ClientMessage,
    /// Written on the current connection.
    written: bool,
}

/// The commands not yet known read by the relay, in the order given.
#[derive(Debug, Default)]
pub(super) struct Commands {
    /// Oldest first; the written ones are a prefix.
    items: VecDeque<Pending>,
    /// Pings in flight: their `ts` and how many commands were written before them.
    syncs: VecDeque<(u64, usize)>,
}

/// Commands that may wait: far more than a person clicks, few enough to
/// bound a runaway application.
pub(super) const MAX_COMMANDS: usize = 1000;

impl Commands {
    /// Takes `msg`, to go after frame number `after`; false when too many wait.
    pub(super) fn push(&mut self, after: u64, msg: ClientMessage) -> bool {
        if self.items.len() >= MAX_COMMANDS {
            return false;
        }
        self.items.push_back(Pending {
            after,
            msg,
            written: false,
        });
        true
    }

    /// The next command to write now that `sent` frames are written, marked
    /// written; `None` when the next one waits for a frame still to come.
    pub(super) fn due(&mut self, sent: u64) -> Option<ClientMessage> {
        let p = self.items.iter_mut().find(|p| !p.written)?;
        if p.after > sent {
            return None;
        }
        p.written = true;
        Some(p.msg.clone())
    }

    fn written(&self) -> usize {
        self.items.iter().take_while(|p| p.written).count()
    }

    /// A ping with `ts` is written after every command written so far.
    pub(super) fn ping_sent(&mut self, ts: u64) {
        let n = self.written();
        self.syncs.push_back((ts, n));
    }

    /// The pong of `ts` came: the commands written before it were read.
    pub(super) fn pong(&mut self, ts: u64) {
        let Some(i) = self.syncs.iter().position(|(t, _)| *t == ts) else {
            return;
        };
        let (_, n) = self.syncs[i];
        self.syncs.drain(..=i);
        self.items.drain(..n.min(self.items.len()));
        for (_, m) in self.syncs.iter_mut() {
            *m = m.saturating_sub(n);
        }
    }

    /// A new connection: what was written but not proven read is written again.
    pub(super) fn reconnected(&mut self) {
        self.syncs.clear();
        for p in &mut self.items {
            p.written = false;
        }
    }

    /// A new session: the old one's commands mean nothing there.
    pub(super) fn clear(&mut self) {
        self.items.clear();
        self.syncs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(id: u64) -> ClientMessage {
        ClientMessage::Admit { guest_id: id }
    }

    #[test]
    fn a_command_waits_for_the_frames_given_before_it() {
        let mut c = Commands::default();
        c.push(2, admit(1));
        c.push(2, admit(2));
        c.push(5, admit(3));
        assert_eq!(c.due(1), None);
        assert_eq!(c.due(2), Some(admit(1)));
        assert_eq!(c.due(4), Some(admit(2)));
        assert_eq!(c.due(4), None);
        assert_eq!(c.due(5), Some(admit(3)));
        assert_eq!(c.due(9), None);
    }

    #[test]
    fn unproven_commands_are_written_again_after_a_reconnect() {
        let mut c = Commands::default();
        c.push(0, admit(1));
        c.push(0, admit(2));
        assert_eq!(c.due(0), Some(admit(1)));
        c.ping_sent(7);
        assert_eq!(c.due(0), Some(admit(2)));
        c.pong(7);
        c.reconnected();
        // Only the one written after the answered ping comes again.
        assert_eq!(c.due(0), Some(admit(2)));
        assert_eq!(c.due(0), None);
        c.ping_sent(8);
        c.pong(8);
        c.reconnected();
        assert_eq!(c.due(100), None);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut c = Commands::default();
        for i in 0..MAX_COMMANDS as u64 {
            assert!(c.push(0, admit(i)));
        }
        assert!(!c.push(0, admit(0)));
        c.clear();
        assert!(c.push(0, admit(0)));
    }
}
