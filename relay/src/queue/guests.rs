//! A room host's queue fed by guests on other nodes: each such guest's
//! frames arrive numbered in that guest's own direction and go into the
//! host's one queue with the guest's tag, in order, once (a gap asks that
//! guest's node to resend), exactly where a local guest's frames go.
//!
//! What goes back to each guest's node counts what the *host* did with
//! that guest's frames: how many of them its reader read (acknowledged, or
//! had on resume) and how many its socket took to write. Acknowledging on
//! arrival would be simpler, but the guest's node would then forget frames
//! the host never read, and a host whose node died could not get them back.
//! Frames of one guest enter the queue in its order and leave from the
//! front, so the count of a guest's frames the host read is how many of
//! its entries left the queue by being read.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::time::Instant;

use super::entry::{Entry, Item, stamp};
use super::outcome::FromPeer;
use super::{Queue, RESEND_RETRY, Reader};
use crate::frame::Frame;

/// One remote guest's direction as the host's queue takes it, in that
/// direction's numbers (the guest's node numbers its frames from 1 per
/// pairing, as a pairing's direction does).
#[derive(Debug)]
pub(super) struct Feed {
    /// The number of the last frame taken from it.
    received: u64,
    /// The number of the last of its frames the reader read, and the last
    /// such number reported to its node.
    read: u64,
    reported_read: u64,
    /// The number of the last of its frames handed to the reader to write,
    /// the last reported, and the cost handed out since.
    written: u64,
    reported_written: u64,
    unreported: usize,
    /// The gap last asked about (the number expected next) and when.
    asked: Option<(u64, Instant)>,
}

/// The remote guests feeding a host's queue, by guest.
pub(super) type Feeds = HashMap<NonZeroU64, Feed>;

/// What a host's queue says to a remote guest's node: its reader read, or
/// its socket took to write, every frame of that guest up to `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestReport {
    /// The guest.
    pub guest: NonZeroU64,
    /// The number in that guest's direction.
    pub p: u64,
}

/// Counts a data entry of a fed guest that left the queue read.
#[inline]
pub(super) fn count_read(feeds: &mut Option<Box<Feeds>>, e: &Entry) {
    if let (Some(feeds), Item::Data { from: Some(g), .. }) = (feeds, &e.item) {
        if let Some(f) = feeds.get_mut(g) {
            f.read += 1;
        }
    }
}

impl Queue {
    /// Guest `guest`, on another node, feeds this host's queue from now
    /// on, `have` of its frames (numbered in the guest's direction) having
    /// come in already: the next one expected is `have + 1`. Those of them
    /// still queued here (the guest came from this node, or fed it before)
    /// are not read yet, nor written if not handed out: so an ack never
    /// covers them early. Replaces an earlier feed of that guest.
    pub fn feed_guest(&mut self, guest: NonZeroU64, have: u64) {
        let (mut held, mut unwritten) = (0, 0);
        for e in &self.entries {
            if matches!(&e.item, Item::Data { from: Some(g), .. } if *g == guest) {
                held += 1;
                unwritten += u64::from(e.pos > self.drained_pos);
            }
        }
        let read = have.saturating_sub(held);
        let written = have.saturating_sub(unwritten);
        let feed = Feed {
            received: have,
            read,
            reported_read: read,
            written,
            reported_written: written,
            unreported: 0,
            asked: None,
        };
        self.feeds
            .get_or_insert_with(Box::default)
            .insert(guest, feed);
    }

    /// Guest `guest` no longer feeds this queue from another node (it
    /// left, or came to this node); returns how many of its frames were
    /// taken, in its direction's numbers. Its frames already queued stay.
    pub fn unfeed_guest(&mut self, guest: NonZeroU64) -> Option<u64> {
        let feeds = self.feeds.as_mut()?;
        let f = feeds.remove(&guest)?;
        if feeds.is_empty() {
            self.feeds = None;
        }
        Some(f.received)
    }

    /// A frame of guest `guest` from its node, with its number `p` in that
    /// guest's direction, arriving at `now`: queued with the guest's tag if
    /// it is the next one; a duplicate is dropped (with the number to
    /// acknowledge, as [`Queue::push_from_peer`] does), a gap asks once
    /// (then again after [`RESEND_RETRY`]). A guest that feeds nothing
    /// here has its frames dropped.
    pub fn push_from_guest(
        &mut self,
        guest: NonZeroU64,
        p: u64,
        frame: Frame,
        now: Instant,
    ) -> FromPeer {
        let open = !matches!(self.reader, Reader::Closed | Reader::None);
        let Some(f) = self.feeds.as_mut().and_then(|m| m.get_mut(&guest)) else {
            return FromPeer::Dropped;
        };
        if p <= f.received {
            let read = f.read;
            let ack = (p <= read && (p % 16 == 0 || p == read)).then_some(p);
            return FromPeer::Duplicate { ack };
        }
        if p > f.received + 1 {
            let next = f.received + 1;
            let ask = match f.asked {
                Some((n, at)) => n != next || now.saturating_duration_since(at) >= RESEND_RETRY,
                None => true,
            };
            if ask {
                f.asked = Some((next, now));
            }
            return FromPeer::Gap { next, ask };
        }
        if !open {
            return FromPeer::Dropped;
        }
        f.received = p;
        f.asked = None;
        self.seq += 1;
        self.accepted += 1;
        let seq = self.seq;
        let item = Item::Data {
            seq,
            frame,
            from: Some(guest),
        };
        self.append(seq, item, stamp(seq));
        if let Reader::Local(conn) = self.reader {
            if self.bytes > self.limits.hard_cap() {
                self.cut_reader(conn);
                return FromPeer::Cut(conn);
            }
        }
        self.notify();
        FromPeer::Queued
    }

    /// The remote guests whose frames the reader read further since the
    /// last call, with how far: what to acknowledge to their nodes.
    pub fn take_guest_reads(&mut self) -> Vec<GuestReport> {
        let Some(feeds) = self.feeds.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (&guest, f) in feeds.iter_mut() {
            if f.read > f.reported_read {
                f.reported_read = f.read;
                out.push(GuestReport { guest, p: f.read });
            }
        }
        out
    }

    /// A drain handed out the entries after position `from` up to
    /// `upto`: counts the fed guests' frames among them as written, and
    /// returns the written reports due (every eighth of the backlog per
    /// guest, as for a pairing). Entries at or before `from` were handed
    /// out before and are not counted again.
    pub(super) fn count_written(&mut self, from: u64, upto: u64) -> Vec<GuestReport> {
        let Some(feeds) = self.feeds.as_mut() else {
            return Vec::new();
        };
        let start = self.entries.partition_point(|e| e.pos <= from);
        for e in self.entries.range(start..).take_while(|e| e.pos <= upto) {
            if let Item::Data { from: Some(g), .. } = &e.item {
                if let Some(f) = feeds.get_mut(g) {
                    f.written += 1;
                    f.unreported += e.cost();
                }
            }
        }
        let every = self.limits.report_every();
        let mut out = Vec::new();
        for (&guest, f) in feeds.iter_mut() {
            if f.written > f.reported_written && f.unreported >= every {
                f.unreported = 0;
                f.reported_written = f.written;
                out.push(GuestReport {
                    guest,
                    p: f.written,
                });
            }
        }
        out
    }

    /// Guest `guest`'s frames as its direction moves to another node (a
    /// guest that resumed elsewhere): how many were taken, and those of
    /// them the reader has not read, by number, for the guest's new node
    /// to hold (its frames enter in order and leave only by being read, so
    /// they follow the last one read). The feed goes on where it was.
    pub fn guest_unread(&self, guest: NonZeroU64) -> Option<(u64, Vec<(u64, Frame)>)> {
        let f = self.feeds.as_ref()?.get(&guest)?;
        let unread = self
            .entries
            .iter()
            .filter_map(|e| match &e.item {
                Item::Data {
                    frame,
                    from: Some(g),
                    ..
                } if *g == guest => Some(frame.clone()),
                _ => None,
            })
            .zip(f.read + 1..)
            .map(|(frame, p)| (p, frame))
            .collect();
        Some((f.received, unread))
    }

    /// Whether remote guests feed this queue.
    /// Frames of guest `guest` held here after the host's data frame
    /// `seq`: those its reader has not had yet.
    pub fn guest_entries_after(&self, guest: NonZeroU64, seq: u64) -> u64 {
        let n = self.entries.iter().filter(|e| {
            matches!(&e.item, Item::Data { seq: s, from: Some(g), .. } if *g == guest && *s > seq)
        });
        n.count() as u64
    }

    #[inline]
    pub fn has_guest_feeds(&self) -> bool {
        self.feeds.is_some()
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
