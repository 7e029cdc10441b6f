//! The link to one other node: the one queue of everything this node
//! publishes to that node's channel, in order, bounded by class.
//!
//! Pipes and the registry hand their envelopes to the link of the node they
//! mean; the publisher (`publish`) takes them from every link. Each class of
//! envelope has a bound and a stated policy when it is reached, and every
//! envelope dropped is counted under its [`DropReason`] in
//! `relay_bus_dropped_total`:
//!
//! | class | bound | when reached |
//! | --- | --- | --- |
//! | new data frame | [`HIGH_WATER`] bytes | never dropped: the sender's gate closes until the link drains below [`LOW_WATER`] (the sender's node holds every frame until acknowledged anyway) |
//! | replayed or resent frame | [`HARD_LIMIT`] bytes | dropped (`replay_full`); it stays held in the sender's queue, the link is marked lost so the holders send again once it has room, and the receiver's gap asks for it too |
//! | ack, written report | [`HARD_LIMIT`] bytes | dropped (`ack_full`, `written_full`): they are cumulative, the next one covers it |
//! | control message | [`MAX_CONTROLS`] queued | dropped (`control_full`) with a warning: lost for good (see [`DropReason::ControlFull`]) |
//! | probe | [`HARD_LIMIT`] bytes | dropped (`probe_full`): it reads as a missed probe |
//!
//! Envelopes of a failed publish are counted too (`publish_failed`); the
//! link is then marked lost as well.
//!
//! The bytes counted are those queued plus those taken by the publisher and
//! not yet published, so the marks weigh what the link really holds. A data
//! frame's payload is shared with the sender's replay buffer (`Bytes`), so
//! what a link adds to memory is mostly the encoding, made at publish time.
//!
//! A link never blocks and never awaits: every call takes its lock for a
//! push or a pop and returns.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use relay_protocol::{GuestId, Role};
use tokio::sync::Notify;
use tracing::warn;

use crate::cluster::envelope::{Control, Envelope, GuestLane, HeldFrame, Lane};
use crate::frame::Frame;
use crate::gate::Gate;
use crate::metrics::{DropReason, Metrics};

/// Bytes held by one link above which senders of new frames are paused.
/// Each direction toward a node already pauses its sender past its own
/// backlog (a quarter of `RELAY_MAX_BUFFERED`, 2 MiB by default), so only
/// many busy senders toward one node together, outrunning Redis, reach it:
/// 32 MiB is sixteen full backlogs, a quarter of a second of a 1 Gbit/s link.
pub const HIGH_WATER: usize = 32 << 20;

/// Bytes held by one link below which paused senders go on: well under the
/// high mark, so they are not paused and released at every publish.
pub const LOW_WATER: usize = 8 << 20;

/// Bytes held by one link beyond which replayed frames, acks, written
/// reports and probes are dropped. Twice the high mark, so the room between
/// is kept for replays (a resume's, or a resync's) on top of paused new
/// traffic; new frames may still pass it by about a frame per sender whose
/// gate has just closed.
pub const HARD_LIMIT: usize = 2 * HIGH_WATER;

/// Control messages queued toward one node beyond which more are dropped.
/// Controls are a few per session event, but a node's death sends one
/// `Away` per side it held to each peer's node at once: this is room for a
/// dead node of 65,536 sides all paired with one survivor, at a few hundred
/// bytes each.
pub const MAX_CONTROLS: usize = 65_536;

/// Bytes charged per envelope on top of a frame's payload (its header,
/// session id and queue slot), so many small envelopes are bounded by the
/// memory they use.
pub const ENVELOPE_OVERHEAD: usize = 64;

/// What a queued envelope is, for its bound and for coalescing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// A data frame published for the first time.
    Frame,
    /// A data frame published again (replay to a moved side, or resend).
    Replay,
    /// An acknowledgement.
    Ack,
    /// A written report.
    Written,
    /// A control message.
    Control,
    /// A probe of this node's own subscription.
    Probe,
}

/// One envelope waiting to be published.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) env: Envelope,
    pub(super) class: Class,
    /// What it is charged against the link's bounds.
    pub(super) size: usize,
    /// For acks and written reports: the pairing they count in (the `base`
    /// of the pipe that sent them), so coalescing never merges two pairings
    /// of one direction; 0 otherwise.
    pub(super) pairing: u64,
}

/// What a link shares with its bus and the other links.
pub(super) struct Shared {
    pub(super) metrics: Arc<Metrics>,
    /// Wakes the publisher: a link that was empty has something.
    pub(super) ready: Notify,
    /// Bytes held by every link together (`relay_bus_queued_bytes`).
    queued: AtomicUsize,
}

impl Shared {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Shared {
            metrics,
            ready: Notify::new(),
            queued: AtomicUsize::new(0),
        }
    }

    fn add(&self, bytes: usize) {
        let now = self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.metrics.bus_queued_bytes.set(now as i64);
    }

    fn sub(&self, bytes: usize) {
        let now = self.queued.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        self.metrics.bus_queued_bytes.set(now as i64);
    }
}

/// Guarded by [`Link::state`].
#[derive(Default)]
struct State {
    /// Waiting to be published, in the order handed in.
    queue: VecDeque<Outgoing>,
    /// Bytes of `queue` plus those taken by the publisher and not yet
    /// published: what the marks and the hard limit weigh.
    bytes: usize,
    /// Control messages in `queue`.
    controls: usize,
    /// Senders paused by this link, until it drains below [`LOW_WATER`].
    paused: Vec<Arc<Gate>>,
    /// Controls are being dropped: warned once until one gets in again.
    dropping_controls: bool,
}

/// The link to one other node (or to this one, for its probes): see the
/// module docs.
pub struct Link {
    // Fixed after construction.
    node: Arc<str>,
    shared: Arc<Shared>,
    // Guarded by the lock.
    state: Mutex<State>,
    // Shared atomics.
    /// Envelopes to this node were lost (a failed publish, or a replayed
    /// frame dropped here): the holders of frames must send them again.
    lost: AtomicBool,
}

impl Link {
    pub(super) fn new(node: Arc<str>, shared: Arc<Shared>) -> Self {
        Link {
            node,
            shared,
            state: Mutex::new(State::default()),
            lost: AtomicBool::new(false),
        }
    }

    /// The node at the other end.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every method leaves State consistent before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dropped(&self, reason: DropReason, n: usize) {
        self.shared
            .metrics
            .bus_dropped
            .with_label_values(&[reason.as_str()])
            .inc_by(n as u64);
    }

    /// Appends to the queue, waking the publisher if it was empty.
    fn push(&self, st: &mut State, env: Envelope, class: Class, pairing: u64) {
        let size = ENVELOPE_OVERHEAD
            + match &env {
                Envelope::Frame { frame, .. } | Envelope::GuestFrame { frame, .. } => frame.len(),
                Envelope::RoomFrame { frame, lanes, .. } => frame.len() + 16 * (lanes.len() + 1),
                Envelope::Control(
                    Control::Handover {
                        events,
                        unacknowledged,
                        ..
                    }
                    | Control::GuestHandover {
                        events,
                        unacknowledged,
                        ..
                    },
                ) => {
                    events.iter().map(String::len).sum::<usize>()
                        + unacknowledged.iter().map(HeldFrame::size).sum::<usize>()
                }
                _ => 0,
            };
        if class == Class::Control {
            st.controls += 1;
        }
        let was_empty = st.queue.is_empty();
        st.bytes += size;
        st.queue.push_back(Outgoing {
            env,
            class,
            size,
            pairing,
        });
        self.shared.add(size);
        if was_empty {
            self.shared.ready.notify_one();
        }
    }

    /// Queues a new data frame, never dropped; closes `gate` (the sender's)
    /// while the link holds more than [`HIGH_WATER`].
    pub fn frame(&self, sid: String, to: Role, p: u64, frame: Frame, gate: &Arc<Gate>) {
        self.new_frame(Envelope::Frame { sid, to, p, frame }, gate);
    }

    /// Queues a room host's new data frame for the guests of the other
    /// node named in `lanes` (each with its number), as one envelope:
    /// published once however many guests it is for. As [`Link::frame`].
    /// `host` is the frame's number among the host's frames, if known.
    pub fn room_frame(
        &self,
        sid: String,
        host: Option<u64>,
        lanes: Vec<(GuestId, u64)>,
        frame: Frame,
        gate: &Arc<Gate>,
    ) {
        let env = Envelope::RoomFrame {
            sid,
            host,
            lanes,
            frame,
        };
        self.new_frame(env, gate);
    }

    /// Queues a room guest's new data frame toward its host. As [`Link::frame`].
    pub fn guest_frame(&self, sid: String, guest: GuestId, p: u64, frame: Frame, gate: &Arc<Gate>) {
        let env = Envelope::GuestFrame {
            sid,
            guest,
            p,
            frame,
        };
        self.new_frame(env, gate);
    }

    /// Queues an acknowledgement of one direction of a room. As [`Link::ack`].
    pub fn guest_ack(&self, sid: String, lane: GuestLane, p: u64, pairing: u64) {
        self.report(Envelope::GuestAck { sid, lane, p }, Class::Ack, pairing);
    }

    /// Queues a written report of one direction of a room. As [`Link::ack`].
    pub fn guest_written(&self, sid: String, lane: GuestLane, p: u64, pairing: u64) {
        self.report(
            Envelope::GuestWritten { sid, lane, p },
            Class::Written,
            pairing,
        );
    }

    /// Queues a new data frame of any kind (see [`Link::frame`]).
    fn new_frame(&self, env: Envelope, gate: &Arc<Gate>) {
        let mut st = self.lock();
        self.push(&mut st, env, Class::Frame, 0);
        if st.bytes > HIGH_WATER {
            // Closed under the lock, so the publisher's release cannot come first.
            gate.close();
            if !st.paused.iter().any(|g| Arc::ptr_eq(g, gate)) {
                st.paused.push(Arc::clone(gate));
            }
        }
    }

    /// Queues frames sent again (to a side that moved, or to fill a gap).
    /// Past [`HARD_LIMIT`] the rest are dropped and the link is marked lost,
    /// so their holder sends them again when it has room.
    /// Frames of a room are never merged: each names its one guest.
    #[cfg(test)]
    pub fn replay(&self, sid: &str, lane: impl Into<Lane>, frames: Vec<(u64, Frame)>) {
        let frames = frames.into_iter().map(|(p, f)| (p, f, 0)).collect();
        self.replay_numbered(sid, lane, frames);
    }

    /// As [`Link::replay`], each frame with its number among a room host's
    /// frames (0: none), which a room frame carries.
    pub fn replay_numbered(
        &self,
        sid: &str,
        lane: impl Into<Lane>,
        frames: Vec<(u64, Frame, u64)>,
    ) {
        let lane = lane.into();
        let mut st = self.lock();
        let mut dropped = 0;
        for (p, frame, host) in frames {
            if dropped > 0 || st.bytes + ENVELOPE_OVERHEAD + frame.len() > HARD_LIMIT {
                dropped += 1;
                continue;
            }
            let sid = sid.to_owned();
            let env = match lane {
                Lane::Pair(to) => Envelope::Frame { sid, to, p, frame },
                Lane::Guest(GuestLane {
                    guest,
                    to_host: true,
                }) => Envelope::GuestFrame {
                    sid,
                    guest,
                    p,
                    frame,
                },
                Lane::Guest(GuestLane {
                    guest,
                    to_host: false,
                }) => Envelope::RoomFrame {
                    sid,
                    host: crate::cluster::envelope::host_number(host),
                    lanes: vec![(guest, p)],
                    frame,
                },
            };
            self.push(&mut st, env, Class::Replay, 0);
        }
        drop(st);
        if dropped > 0 {
            self.dropped(DropReason::ReplayFull, dropped);
            self.lost.store(true, Ordering::Relaxed);
        }
    }

    /// Queues an acknowledgement of pairing number `p` of the pairing that
    /// began at `pairing`; dropped past [`HARD_LIMIT`].
    pub fn ack(&self, sid: String, to: Role, p: u64, pairing: u64) {
        self.report(Envelope::Ack { sid, to, p }, Class::Ack, pairing);
    }

    /// Queues a written report, as [`Link::ack`].
    pub fn written(&self, sid: String, to: Role, p: u64, pairing: u64) {
        self.report(Envelope::Written { sid, to, p }, Class::Written, pairing);
    }

    fn report(&self, env: Envelope, class: Class, pairing: u64) {
        let mut st = self.lock();
        if st.bytes + ENVELOPE_OVERHEAD > HARD_LIMIT {
            drop(st);
            let reason = match class {
                Class::Ack => DropReason::AckFull,
                _ => DropReason::WrittenFull,
            };
            self.dropped(reason, 1);
            return;
        }
        self.push(&mut st, env, class, pairing);
    }

    /// Queues a control message; dropped, with a warning, when
    /// [`MAX_CONTROLS`] are already queued.
    pub fn control(&self, c: Control) {
        let mut st = self.lock();
        if st.controls >= MAX_CONTROLS {
            let first = !std::mem::replace(&mut st.dropping_controls, true);
            drop(st);
            self.dropped(DropReason::ControlFull, 1);
            if first {
                warn!(node = %self.node, reason = DropReason::ControlFull.as_str(), queued = MAX_CONTROLS, "dropping control messages to a node (each is counted; this is logged once until one gets through)");
            }
            return;
        }
        st.dropping_controls = false;
        self.push(&mut st, Envelope::Control(c), Class::Control, 0);
    }

    /// Queues a probe; dropped past [`HARD_LIMIT`].
    pub fn probe(&self, nonce: u64) {
        let mut st = self.lock();
        if st.bytes + ENVELOPE_OVERHEAD > HARD_LIMIT {
            drop(st);
            self.dropped(DropReason::ProbeFull, 1);
            return;
        }
        self.push(&mut st, Envelope::Probe { nonce }, Class::Probe, 0);
    }

    /// Publisher: moves up to `max` envelopes into `out`, in order; returns
    /// their bytes, which stay counted until [`Link::published`].
    pub(super) fn take(&self, max: usize, out: &mut Vec<Outgoing>) -> usize {
        let mut st = self.lock();
        let n = max.min(st.queue.len());
        let (mut bytes, mut controls) = (0, 0);
        for o in st.queue.drain(..n) {
            bytes += o.size;
            controls += usize::from(o.class == Class::Control);
            out.push(o);
        }
        st.controls -= controls;
        bytes
    }

    /// Publisher: `bytes` taken were published (or lost with `n` envelopes
    /// when `ok` is false). Releases the paused senders below the low mark.
    pub(super) fn published(&self, bytes: usize, n: usize, ok: bool) {
        if !ok {
            self.dropped(DropReason::PublishFailed, n);
            self.lost.store(true, Ordering::Relaxed);
        }
        let mut st = self.lock();
        st.bytes -= bytes;
        self.shared.sub(bytes);
        let gates = if st.bytes < LOW_WATER {
            std::mem::take(&mut st.paused)
        } else {
            Vec::new()
        };
        drop(st);
        for g in gates {
            g.open();
        }
    }

    /// Whether envelopes to this node were lost since the last call, and the
    /// link has room below [`LOW_WATER`] for what their holders send again
    /// (else the flag stays for a later call): clears the flag.
    pub fn take_lost(&self) -> bool {
        if !self.lost.load(Ordering::Relaxed) || self.lock().bytes >= LOW_WATER {
            return false;
        }
        self.lost.swap(false, Ordering::Relaxed)
    }

    /// Nothing queued, in flight, paused or owed: the link can be forgotten
    /// once nobody holds it.
    pub(super) fn is_idle(&self) -> bool {
        let st = self.lock();
        st.queue.is_empty()
            && st.bytes == 0
            && st.paused.is_empty()
            && !self.lost.load(Ordering::Relaxed)
    }

    /// Bytes held (queued or being published).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests;
