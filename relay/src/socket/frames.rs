//! Data between the client and the pipes: the client's frames into the
//! peer's pipe (paused while the peer is behind), the socket's own pipe
//! written out to the client, and the pings whose pongs acknowledge it.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use relay_protocol::{CloseCode, ErrorCode, ServerMessage};
use tracing::{debug, warn};

use super::Socket;
use crate::conns::ConnId;
use crate::frame::Frame;
use crate::metrics::DisconnectReason;
use crate::outbound::{Sent, Target, Trouble};
use crate::pipe::Pushed;
use crate::queue::{EventEffect, Item, Status};
use crate::registry::{Departure, Gone, Link, Member, Overflowed};

/// Written bytes after which the socket asks the client to prove it read them
/// (a ping carrying the position). Smaller means finer slow-consumer
/// detection and a shorter replay buffer; larger means fewer pings.
const MARKER_BYTES: usize = 64 * 1024;

/// Written frames after which the socket sends a position ping anyway, so a
/// stream of small frames is acknowledged often enough to trim the buffer.
const MARKER_FRAMES: u32 = 64;

/// The most a server frame's header takes (no mask): 2 bytes and 8 of length.
const FRAME_HEADER: usize = 10;

/// Drain buffer capacity (items) under which the buffer is not kept between
/// drains: small batches allocate their own.
const KEEP_DRAINED: usize = 16;

/// How often a paused sender checks whether its peer stopped reading.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Socket {
    /// Takes a place in a session and writes whatever is already queued.
    pub(super) fn linked(&mut self, link: Link, ctx: &mut Context<Self>) {
        self.cancel_handshake_timer(ctx);
        self.generation = self.generation.wrapping_add(1);
        self.written = link.written;
        self.measured = link.written;
        self.marker_bytes = 0;
        self.marker_frames = 0;
        self.link = Some(link);
        // A new connection starts sending to every guest, and hears who
        // sends before the first guest frame.
        self.target = Target::All;
        self.last_from = None;
    }

    /// Writes everything new in the inbound pipe.
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(link) = &self.link else { return };
        if self.out.len() >= super::pump::WRITE_HIGH {
            // The client is behind on reading: the frames wait in the pipe
            // (where its flow control sees them) until the pump wrote these.
            self.held = true;
            return;
        }
        let inbound = Arc::clone(&link.inbound);
        let mut d = std::mem::take(&mut self.drained);
        match inbound.drain(self.id, self.written, &mut d) {
            Status::Cut => {
                warn!(conn = %self.id, role = self.role.as_str(), "slow consumer; closing");
                self.close(
                    ctx,
                    CloseCode::TryAgainLater,
                    DisconnectReason::SlowConsumer,
                    "slow consumer",
                );
                return;
            }
            Status::NotMine => return,
            Status::Reading | Status::Closed => {}
        }
        let latency = self
            .shared
            .metrics
            .relay_seconds
            .with_label_values(&[if d.remote { "redis" } else { "local" }]);
        // The batch's bytes at once, not copied again as the buffer grows.
        let bytes: usize = d
            .items
            .iter()
            .map(|(_, item, _)| match item {
                Item::Data { frame, .. } => frame.len() + FRAME_HEADER,
                Item::Event { text, .. } => text.len() + FRAME_HEADER,
            })
            .sum();
        self.out.reserve(bytes);
        // One clock read for the whole batch.
        let mut now: Option<Instant> = None;
        // Written from the list and dropped together after it: see below.
        for &(pos, ref item, queued_at) in &d.items {
            self.written = pos;
            match item {
                Item::Data { frame, from, .. } => {
                    let from = *from;
                    if let Some(id) = from.filter(|_| from != self.last_from) {
                        self.last_from = from;
                        self.out
                            .text(ServerMessage::From { guest_id: id.get() }.to_text());
                    }
                    // Frames written again after a resume were measured the first time.
                    if let Some(at) = queued_at.filter(|_| pos > self.measured) {
                        let now = *now.get_or_insert_with(Instant::now);
                        latency.observe(now.saturating_duration_since(at).as_secs_f64());
                        self.measured = pos;
                    }
                    self.marker_bytes += frame.len();
                    self.marker_frames += 1;
                    match frame {
                        Frame::Binary(b) => self.out.binary(b),
                        Frame::Text(t) => self.out.text(t),
                    }
                }
                Item::Event { text, effect } => {
                    self.out.text(text);
                    match effect {
                        EventEffect::None => {}
                        EventEffect::Detach => {
                            // The session is over for this socket; it may register again.
                            self.link = None;
                            break;
                        }
                        EventEffect::Close(code) => {
                            self.close(ctx, *code, DisconnectReason::SessionOver, "");
                            break;
                        }
                    }
                }
            }
        }
        // A frame is a reference-counted slice of the buffer its sender's
        // socket read it into, on another worker thread, which meanwhile
        // counts its next frames off a buffer whose count may share a cache
        // line with this one. Dropping each frame right after copying it
        // stalled on that line (and on the copy's stores) once a frame;
        // dropped together, the line moves about once a batch.
        d.items.clear();
        // A socket keeps its drain buffer only while batches are large (a
        // stream of frames); an idle one gives its memory back (80 bytes an
        // item), so a quiet connection holds none.
        if d.items.capacity() > KEEP_DRAINED {
            d.items.clear();
            self.drained = d;
        }
        if self.marker_bytes >= MARKER_BYTES || self.marker_frames >= MARKER_FRAMES {
            self.send_marker();
        }
    }

    /// A ping carrying the written position: its pong proves everything
    /// before it was read.
    pub(super) fn send_marker(&mut self) {
        let mut marker = [0u8; 12];
        marker[..4].copy_from_slice(&self.generation.to_be_bytes());
        marker[4..].copy_from_slice(&self.written.to_be_bytes());
        self.out.ping(&marker);
        self.marker_bytes = 0;
        self.marker_frames = 0;
    }

    pub(super) fn on_pong(&mut self, payload: &[u8]) {
        self.last_pong = Instant::now();
        let Ok(marker) = <[u8; 12]>::try_from(payload) else {
            return;
        };
        let (generation, pos) = marker.split_at(4);
        let generation = u32::from_be_bytes(generation.try_into().unwrap_or_default());
        let pos = u64::from_be_bytes(pos.try_into().unwrap_or_default());
        if let Some(link) = &self.link {
            // A pong can only vouch for what this link has written.
            if generation == self.generation && pos <= self.written {
                link.inbound.ack(pos);
            }
        }
    }

    /// While the gate is closed (the peer is behind), checks every second
    /// whether the peer stopped reading altogether, and keeps this socket
    /// counted as alive: it reads nothing, but its client is not silent.
    fn watch_stall(&mut self, ctx: &mut Context<Self>) {
        if self.stall_watch.is_some() {
            return;
        }
        self.stall_watch = Some(ctx.run_interval(STALL_CHECK, |act, ctx| {
            if !act.gate.is_closed() {
                if let Some(h) = act.stall_watch.take() {
                    ctx.cancel_future(h);
                }
                return;
            }
            if let Some(live) = &act.live {
                live.touch();
            }
            let pipe = act.link.as_ref().and_then(|l| l.outbound.pipe());
            if let Some(peer) = pipe.and_then(|p| p.cut_if_stalled()) {
                act.peer_cut(Member::from(act.role.peer()), peer);
            }
        }));
    }

    /// The peer was cut as a slow consumer: tell the registry now, as its
    /// socket may be stalled and only notice when the TCP cut reaches it.
    fn peer_cut(&self, member: Member, peer: ConnId) {
        let Some(link) = &self.link else { return };
        warn!(conn = %peer, peer_of = %self.id, "peer stopped reading; cutting it");
        self.shared.registry.gone(Gone {
            session_id: Arc::clone(&link.session_id),
            member,
            conn: peer,
            how: Departure::Dropped,
        });
    }

    /// A data frame from the client.
    pub(super) fn on_data(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let Some(link) = &self.link else {
            self.send_error(ctx, ErrorCode::NotPaired, None);
            return;
        };
        let len = frame.len() as u64;
        let metrics = &self.shared.metrics;
        let count = |remote: bool| {
            let (frames, bytes) = if remote {
                (&metrics.frames_remote, &metrics.bytes_remote)
            } else {
                (&metrics.frames_local, &metrics.bytes_local)
            };
            frames.inc();
            bytes.inc_by(len);
        };
        let mut troubles = Vec::new();
        let pushed = match link
            .outbound
            .push(frame, self.target, self.id, &self.gate, |t| {
                troubles.push(t)
            }) {
            Sent::Pipe(p) => p,
            Sent::Room(reached) => {
                if reached > 0 {
                    count(false);
                }
                for t in troubles {
                    match t {
                        Trouble::SlowConsumer(place, conn) => {
                            self.peer_cut(Member::Guest(place), conn)
                        }
                        Trouble::Overflow(place) => self.shared.registry.overflowed(Overflowed {
                            session_id: Arc::clone(&link.session_id),
                            member: Member::Guest(place),
                        }),
                    }
                }
                return;
            }
        };
        // The peer of a pairing side, or the host of a room guest.
        let peer = Member::from(self.role.peer());
        match pushed {
            Pushed::Queued { remote } => count(remote),
            Pushed::SlowConsumer(conn) => {
                count(false);
                self.peer_cut(peer, conn);
            }
            Pushed::Backlogged { remote } => {
                count(remote);
                self.watch_stall(ctx);
            }
            Pushed::NotPaired => {
                debug!(conn = %self.id, "data refused: not paired");
                self.send_error(ctx, ErrorCode::NotPaired, None)
            }
            Pushed::Overflow => self.shared.registry.overflowed(Overflowed {
                session_id: Arc::clone(&link.session_id),
                member: peer,
            }),
            // A resume took this side over: its `Replaced` is on its way,
            // and the new connection sends this frame again.
            Pushed::Replaced => debug!(conn = %self.id, "data refused: taken over"),
        }
    }
}
