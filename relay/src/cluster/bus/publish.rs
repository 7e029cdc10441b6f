//! The publisher: one task that takes what the links hold, packs each
//! node's envelopes into few messages and sends them all in one pipeline,
//! so Redis round trips do not cap throughput. One pipeline is in flight at
//! a time, on one connection, so a node's messages keep their order.
//!
//! Within one batch, acks (and, separately, written reports) of the same
//! direction are coalesced into the first of them, carrying the highest
//! number: they are cumulative, so the others say nothing more. They are
//! never merged across a control message of any session (acks count in
//! pairing numbers, and controls can start a new pairing), nor across two
//! pairings of their direction.
//!
//! A room host's frame reaches each guest's direction on its own (each has
//! its own numbers, held until that guest acknowledges); queued back to back
//! toward one node, the same frame for several guests becomes one envelope
//! naming them all, so a broadcast's payload crosses Redis once per node.
//! Only neighbours merge, so nothing moves past anything else.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use relay_protocol::Role;
use tracing::{debug, info, warn};

use super::link::{Class, Link, Outgoing};
use super::{Bus, channel};
use crate::cluster::envelope::{Envelope, GuestLane, MAX_ROOM_LANES};
use crate::cluster::redis::Redis;
use crate::frame::Frame;

/// Largest single published message; a batch for one node is split above it.
const MAX_MESSAGE: usize = 256 << 10;

/// Envelopes taken from the links per pipeline.
const MAX_BATCH: usize = 4096;

/// What one pipeline publishes from one link.
pub(super) struct Part {
    pub(super) link: Arc<Link>,
    pub(super) items: Vec<Outgoing>,
    /// Bytes taken from the link, given back when published.
    pub(super) bytes: usize,
}

impl Bus {
    /// Takes up to [`MAX_BATCH`] envelopes from the links, beginning with
    /// the link after the one `start` names last time, so a busy link cannot
    /// keep the others waiting.
    pub(super) fn take_batch(&self, start: &mut usize) -> Vec<Part> {
        let links = self.links();
        let mut parts = Vec::new();
        let mut budget = MAX_BATCH;
        let n = links.len();
        for i in 0..n {
            if budget == 0 {
                break;
            }
            let link = &links[(*start + i) % n];
            let mut items = Vec::new();
            let bytes = link.take(budget, &mut items);
            if items.is_empty() {
                continue;
            }
            budget -= items.len();
            parts.push(Part {
                link: Arc::clone(link),
                items,
                bytes,
            });
        }
        *start = start.wrapping_add(1);
        parts
    }
}

/// Which direction an ack or written report is about, and in which pairing.
#[derive(PartialEq, Eq, Hash)]
struct ReportKey {
    sid: String,
    to: Direction,
    written: bool,
    pairing: u64,
}

/// A pairing's direction (toward a role) or a room's (one guest's).
#[derive(PartialEq, Eq, Hash)]
enum Direction {
    Pair(Role),
    Room(GuestLane),
}

/// Coalesces acks and written reports of one link's batch (see the module
/// docs), keeping everything else in order.
pub(super) fn coalesce(items: &mut Vec<Outgoing>) {
    // Where the kept report of each key is in `items`, since the last control.
    let mut kept: HashMap<ReportKey, usize> = HashMap::new();
    let mut out: Vec<Outgoing> = Vec::with_capacity(items.len());
    for o in items.drain(..) {
        if let Some(prev) = out.last_mut() {
            if merge_room_frames(prev, &o) {
                continue;
            }
        }
        let (sid, to, p, written) = match (&o.env, o.class) {
            (Envelope::Ack { sid, to, p }, Class::Ack) => (sid, Direction::Pair(*to), *p, false),
            (Envelope::Written { sid, to, p }, Class::Written) => {
                (sid, Direction::Pair(*to), *p, true)
            }
            (Envelope::GuestAck { sid, lane, p }, Class::Ack) => {
                (sid, Direction::Room(*lane), *p, false)
            }
            (Envelope::GuestWritten { sid, lane, p }, Class::Written) => {
                (sid, Direction::Room(*lane), *p, true)
            }
            (_, Class::Control) => {
                kept.clear();
                out.push(o);
                continue;
            }
            _ => {
                out.push(o);
                continue;
            }
        };
        let key = ReportKey {
            sid: sid.clone(),
            to,
            written,
            pairing: o.pairing,
        };
        match kept.get(&key) {
            Some(&i) => {
                if let Envelope::Ack { p: first, .. }
                | Envelope::Written { p: first, .. }
                | Envelope::GuestAck { p: first, .. }
                | Envelope::GuestWritten { p: first, .. } = &mut out[i].env
                {
                    *first = (*first).max(p);
                }
            }
            None => {
                kept.insert(key, out.len());
                out.push(o);
            }
        }
    }
    *items = out;
}

/// Adds `next`'s guests to `prev` if both are new frames of one room
/// carrying the very same payload (cloned by reference count from one
/// host frame); returns whether it did.
fn merge_room_frames(prev: &mut Outgoing, next: &Outgoing) -> bool {
    let (
        Envelope::RoomFrame {
            sid: a,
            host: ha,
            lanes,
            frame: fa,
        },
        Envelope::RoomFrame {
            sid: b,
            host: hb,
            lanes: more,
            frame: fb,
        },
    ) = (&mut prev.env, &next.env)
    else {
        return false;
    };
    // The host's number takes a lane of the envelope (see `Envelope::RoomFrame`).
    let marker = usize::from(ha.is_some());
    let same = prev.class == Class::Frame
        && next.class == Class::Frame
        && a == b
        && ha == hb
        && same_payload(fa, fb)
        && lanes.len() + more.len() + marker <= MAX_ROOM_LANES;
    if same {
        lanes.extend_from_slice(more);
    }
    same
}

/// Whether two frames share one payload. Merging two frames that merely
/// have equal bytes would be right too (the receiver takes the lanes in
/// order, and each lane's numbers say which frame it is); sharing is the
/// case that matters, and a pointer test is cheap.
fn same_payload(a: &Frame, b: &Frame) -> bool {
    match (a, b) {
        (Frame::Binary(x), Frame::Binary(y)) => x.as_ptr() == y.as_ptr() && x.len() == y.len(),
        (Frame::Text(x), Frame::Text(y)) => x.as_ptr() == y.as_ptr() && x.len() == y.len(),
        _ => false,
    }
}

/// Encodes one node's envelopes into messages of about [`MAX_MESSAGE`] at
/// most (one envelope larger than that gets a message of its own).
pub(super) fn pack(items: &[Outgoing]) -> Vec<BytesMut> {
    let mut msgs = vec![BytesMut::new()];
    for o in items {
        if msgs.last().is_some_and(|m| m.len() >= MAX_MESSAGE) {
            msgs.push(BytesMut::new());
        }
        if let Some(m) = msgs.last_mut() {
            o.env.encode(m);
        }
    }
    msgs.retain(|m| !m.is_empty());
    msgs
}

/// Publishes whatever the links hold, for as long as the node runs.
pub(super) async fn run(bus: Arc<Bus>, redis: Arc<Redis>) {
    let mut start = 0;
    let mut failed_batches: u64 = 0;
    loop {
        let mut parts = bus.take_batch(&mut start);
        if parts.is_empty() {
            // A link that gets something while empty wakes us (a permit is
            // kept if that happened since the take).
            bus.shared.ready.notified().await;
            continue;
        }
        let mut pipe = redis::pipe();
        let mut count = 0u64;
        for part in &mut parts {
            coalesce(&mut part.items);
            let ch = channel(part.link.node());
            for m in pack(&part.items) {
                pipe.cmd("PUBLISH").arg(&ch).arg(m.as_ref()).ignore();
                count += 1;
            }
        }
        let ok = match redis.query::<()>("publish", &pipe).await {
            Ok(()) => {
                bus.shared.metrics.pubsub_out.inc_by(count);
                if failed_batches > 0 {
                    info!(failed_batches, "publishing again");
                    failed_batches = 0;
                }
                true
            }
            Err(e) => {
                // One line per outage, not one per batch: an outage under
                // load fails many batches a second (each is counted in
                // relay_redis_errors_total, its envelopes in
                // relay_bus_dropped_total).
                if failed_batches == 0 {
                    warn!(error = %e, messages = count, "publish failed; holders will resend (further failures until it recovers are logged at debug)");
                } else {
                    debug!(error = %e, messages = count, "publish failed");
                }
                failed_batches += 1;
                false
            }
        };
        for part in parts {
            part.link.published(part.bytes, part.items.len(), ok);
        }
    }
}

#[cfg(test)]
mod tests;
