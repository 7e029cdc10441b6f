//! What a client has sent and must be able to send again. The relay says how
//! many of a client's frames it accepted only in `resumed`; between resumes
//! the client learns it from its own app-level pings: a `pong` proves the
//! relay processed every frame sent before the `ping`. Frames it refused
//! (`NOT_PAIRED`, one error each, in order) are the last ones before the ping,
//! because the client stops sending when its peer leaves.
//!
//! Pure bookkeeping, no I/O: tested on its own.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::GuestId;

/// Whom a room host's frame is for. Everyone else's frames are `All`
/// (a pairing's, a guest's: they have one peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Every admitted guest (and the one peer of a pairing).
    #[default]
    All,
    /// One guest of the room.
    Guest(GuestId),
}

/// A data frame and whom it is for: kept together so that a frame sent
/// again after a resume reaches the guest it was meant for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressed {
    /// Whom it is for.
    pub to: Target,
    /// The frame.
    pub frame: OutFrame,
}

impl From<OutFrame> for Addressed {
    fn from(frame: OutFrame) -> Self {
        Addressed {
            to: Target::All,
            frame,
        }
    }
}

impl Addressed {
    fn size(&self) -> usize {
        self.frame.size()
    }
}

/// A data frame as the client sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// A `data` text frame (the full JSON text).
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

impl OutFrame {
    fn size(&self) -> usize {
        64 + match self {
            OutFrame::Text(t) => t.len(),
            OutFrame::Binary(b) => b.len(),
        }
    }
}

/// Bounds of the outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Frames that may wait to be sent (while reconnecting).
    pub queue_frames: usize,
    /// Bytes that may wait to be sent.
    pub queue_bytes: usize,
    /// Bytes sent and not yet confirmed before the client stops sending
    /// until its next ping is answered.
    pub unconfirmed_bytes: usize,
    /// Confirmed bytes kept to re-send after a relay node crash.
    pub keep_bytes: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            queue_frames: 1000,
            queue_bytes: 8 << 20,
            unconfirmed_bytes: 8 << 20,
            keep_bytes: 8 << 20,
        }
    }
}

/// The queue is full: the frame was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the outbound queue is full ({frames} frames, {bytes} bytes waiting); wait for the connection to come back"
)]
pub struct QueueFull {
    /// Frames waiting.
    pub frames: usize,
    /// Bytes waiting.
    pub bytes: usize,
}

/// What a `resumed` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reconciled {
    /// Frames queued again because the relay had not accepted them.
    pub resent: usize,
    /// Frames the relay lost that were no longer kept here (a crash beyond the keep bound).
    pub lost: u64,
}

/// The client's outbound frames.
#[derive(Debug)]
pub struct Outbox {
    limits: OutboxLimits,
    /// Confirmed frames kept for a crash, oldest first; the last has number `confirmed`.
    kept: VecDeque<Addressed>,
    kept_bytes: usize,
    /// Frames the relay is known to have accepted.
    confirmed: u64,
    /// Sent, not yet confirmed, oldest first (number `confirmed + 1 + i`).
    sent: VecDeque<Addressed>,
    sent_bytes: usize,
    /// Waiting to be sent.
    queued: VecDeque<Addressed>,
    queued_bytes: usize,
    /// Pings in flight: their `ts` and how many frames had been sent before them.
    syncs: VecDeque<(u64, u64)>,
    /// `NOT_PAIRED` errors since the last answered ping.
    refused: u64,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(limits: OutboxLimits) -> Self {
        Outbox {
            limits,
            kept: VecDeque::new(),
            kept_bytes: 0,
            confirmed: 0,
            sent: VecDeque::new(),
            sent_bytes: 0,
            queued: VecDeque::new(),
            queued_bytes: 0,
            syncs: VecDeque::new(),
            refused: 0,
        }
    }

    /// Queues a frame to send.
    ///
    /// # Errors
    /// [`QueueFull`] when the queue's bounds are reached.
    pub fn push(&mut self, f: impl Into<Addressed>) -> Result<(), QueueFull> {
        let f = f.into();
        let size = f.size();
        if self.queued.len() >= self.limits.queue_frames
            || self.queued_bytes + size > self.limits.queue_bytes
        {
            return Err(QueueFull {
                frames: self.queued.len(),
                bytes: self.queued_bytes,
            });
        }
        self.queued_bytes += size;
        self.queued.push_back(f);
        Ok(())
    }

    /// The next frame to write, now counted as sent; `None` when nothing
    /// waits or too much is unconfirmed (send a ping and wait for its pong).
    pub fn next_to_send(&mut self) -> Option<Addressed> {
        if self.sent_bytes >= self.limits.unconfirmed_bytes {
            return None;
        }
        let f = self.queued.pop_front()?;
        let size = f.size();
        self.queued_bytes -= size;
        self.sent_bytes += size;
        self.sent.push_back(f.clone());
        Some(f)
    }

    /// Whether frames wait to be sent.
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Whether sending stopped until a ping is answered.
    pub fn blocked(&self) -> bool {
        self.sent_bytes >= self.limits.unconfirmed_bytes && !self.queued.is_empty()
    }

    /// Frames sent in all (confirmed or not).
    pub fn total_sent(&self) -> u64 {
        self.confirmed + self.sent.len() as u64
    }

    /// Frames sent or waiting to be sent: the number the next frame pushed
    /// comes after.
    pub fn total(&self) -> u64 {
        self.total_sent() + self.queued.len() as u64
    }

    /// Frames known accepted by the relay.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Frames sent but not confirmed, plus those waiting to be sent.
    pub fn unconfirmed(&self) -> u64 {
        (self.sent.len() + self.queued.len()) as u64
    }

    /// A ping with `ts` is being sent after every frame sent so far.
    pub fn ping_sent(&mut self, ts: u64) {
        self.syncs.push_back((ts, self.total_sent()));
    }

    /// The relay refused a data frame (`NOT_PAIRED`).
    pub fn not_paired(&mut self) {
        self.refused += 1;
    }

    /// The pong of `ts` came: every frame sent before that ping was processed.
    /// Returns how many of them the relay refused.
    pub fn pong(&mut self, ts: u64) -> u64 {
        let Some(i) = self.syncs.iter().position(|(t, _)| *t == ts) else {
            return 0;
        };
        // Earlier pings are answered by this one too.
        let (_, upto) = self.syncs[i];
        self.syncs.drain(..=i);
        let covered = upto
            .saturating_sub(self.confirmed)
            .min(self.sent.len() as u64) as usize;
        let refused = (self.refused as usize).min(covered);
        self.refused = 0;
        // The refused ones are the last of the covered frames: drop them.
        for _ in 0..refused {
            if let Some(f) = self.sent.remove(covered - 1 - (refused - 1)) {
                self.sent_bytes -= f.size();
            }
        }
        for (_, s) in self.syncs.iter_mut() {
            *s = s.saturating_sub(refused as u64);
        }
        for _ in 0..covered - refused {
            if let Some(f) = self.sent.pop_front() {
                self.sent_bytes -= f.size();
                self.keep(f);
            }
        }
        self.confirmed += (covered - refused) as u64;
        refused as u64
    }

    fn keep(&mut self, f: Addressed) {
        self.kept_bytes += f.size();
        self.kept.push_back(f);
        while self.kept_bytes > self.limits.keep_bytes {
            if let Some(old) = self.kept.pop_front() {
                self.kept_bytes -= old.size();
            }
        }
    }

    /// A new connection resumed: the relay accepted `accepted` frames. Frames
    /// after that are queued again, ahead of anything queued meanwhile.
    pub fn resumed(&mut self, accepted: u64) -> Reconciled {
        self.syncs.clear();
        self.refused = 0;
        let mut out = Reconciled::default();
        let mut again: VecDeque<Addressed> = VecDeque::new();
        if accepted >= self.confirmed {
            let newly = ((accepted - self.confirmed) as usize).min(self.sent.len());
            for _ in 0..newly {
                if let Some(f) = self.sent.pop_front() {
                    self.sent_bytes -= f.size();
                    self.keep(f);
                }
            }
            self.confirmed += newly as u64;
        } else {
            // The relay lost frames it had confirmed (its node crashed): send
            // them again from what is kept.
            let missing = self.confirmed - accepted;
            let have = (self.kept.len() as u64).min(missing);
            out.lost = missing - have;
            for _ in 0..have {
                if let Some(f) = self.kept.pop_back() {
                    self.kept_bytes -= f.size();
                    again.push_front(f);
                }
            }
            self.confirmed = accepted;
        }
        again.extend(self.sent.drain(..));
        self.sent_bytes = 0;
        out.resent = again.len();
        for f in again.into_iter().rev() {
            self.queued_bytes += f.size();
            self.queued.push_front(f);
        }
        // Whatever is lost is also not counted by the relay.
        self.confirmed = accepted.max(self.confirmed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u32) -> OutFrame {
        OutFrame::Text(n.to_string())
    }

    fn drain(o: &mut Outbox) -> Vec<OutFrame> {
        std::iter::from_fn(|| o.next_to_send())
            .map(|a| a.frame)
            .collect()
    }

    #[test]
    fn a_full_queue_says_so() {
        let mut o = Outbox::new(OutboxLimits {
            queue_frames: 2,
            ..Default::default()
        });
        o.push(t(1)).unwrap();
        o.push(t(2)).unwrap();
        assert_eq!(
            o.push(t(3)),
            Err(QueueFull {
                frames: 2,
                bytes: 2 * 65
            })
        );
    }

    #[test]
    fn resume_resends_what_the_relay_lacks_in_order() {
        let mut o = Outbox::new(OutboxLimits::default());
        for i in 1..=5 {
            o.push(t(i)).unwrap();
        }
        assert_eq!(drain(&mut o).len(), 5);
        o.push(t(6)).unwrap(); // queued while reconnecting
        let r = o.resumed(3);
        assert_eq!(r, Reconciled { resent: 2, lost: 0 });
        assert_eq!(drain(&mut o), [t(4), t(5), t(6)]);
        assert_eq!(o.confirmed(), 3);
        assert_eq!(o.total_sent(), 6);
    }

    #[test]
    fn frames_sent_again_keep_their_target() {
        let mut o = Outbox::new(OutboxLimits::default());
        for (i, to) in [Target::Guest(1), Target::Guest(2), Target::All]
            .into_iter()
            .enumerate()
        {
            o.push(Addressed {
                to,
                frame: t(i as u32),
            })
            .unwrap();
        }
        assert_eq!(o.total(), 3);
        let _ = std::iter::from_fn(|| o.next_to_send()).count();
        o.resumed(1);
        let again: Vec<Target> = std::iter::from_fn(|| o.next_to_send())
            .map(|a| a.to)
            .collect();
        assert_eq!(again, [Target::Guest(2), Target::All]);
    }

    #[test]
    fn a_pong_confirms_and_refused_frames_are_the_last_before_the_ping() {
        let mut o = Outbox::new(OutboxLimits::default());
        for i in 1..=4 {
            o.push(t(i)).unwrap();
        }
        drain(&mut o);
        // The peer left: frames 3 and 4 were refused; the client pings to sync.
        o.not_paired();
        o.not_paired();
        o.ping_sent(7);
        assert_eq!(o.pong(7), 2);
        assert_eq!(o.confirmed(), 2);
        assert_eq!(o.total_sent(), 2);
        // Numbering goes on from the relay's count.
        o.push(t(5)).unwrap();
        drain(&mut o);
        assert_eq!(o.resumed(3), Reconciled { resent: 0, lost: 0 });
    }

    #[test]
    fn after_a_crash_confirmed_frames_are_sent_again_from_what_is_kept() {
        let mut o = Outbox::new(OutboxLimits::default());
        for i in 1..=4 {
            o.push(t(i)).unwrap();
        }
        drain(&mut o);
        o.ping_sent(1);
        o.pong(1);
        assert_eq!(o.confirmed(), 4);
        // The node crashed before passing frames 3 and 4 on.
        assert_eq!(o.resumed(2), Reconciled { resent: 2, lost: 0 });
        assert_eq!(drain(&mut o), [t(3), t(4)]);
    }

    #[test]
    fn too_much_unconfirmed_stops_sending_until_a_pong() {
        let mut o = Outbox::new(OutboxLimits {
            unconfirmed_bytes: 200,
            ..Default::default()
        });
        for i in 1..=5 {
            o.push(t(i)).unwrap();
        }
        assert_eq!(drain(&mut o).len(), 4); // 4 × 65 bytes crosses 200
        assert!(o.blocked());
        o.ping_sent(1);
        o.pong(1);
        assert_eq!(drain(&mut o), [t(5)]);
    }
}
