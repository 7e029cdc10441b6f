//! A host's queue fed by remote guests, one rule at a time; `props` checks
//! them together over a lossy bus.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::{Drained, FromPeer, Item, Limits, Queue};
use super::GuestReport;
use crate::conns::ConnId;
use crate::frame::Frame;

const C: ConnId = ConnId(1);

fn limits() -> Limits {
    Limits {
        max_buffered: 1_000_000,
        stall: Duration::from_secs(3600),
        away_frames: 100,
        away_bytes: 1_000_000,
        paced: false,
    }
}

fn g(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("guests are numbered from 1")
}

fn data(n: u8) -> Frame {
    Frame::Binary(Bytes::from(vec![n]))
}

/// A host's queue, its reader attached, fed by remote guests 2 and 3.
fn host() -> Queue {
    let mut q = Queue::new(limits());
    q.reset_reader();
    q.attach(C, 0, Instant::now())
        .expect("a new reader attaches");
    q.feed_guest(g(2), 0);
    q.feed_guest(g(3), 0);
    q
}

/// Everything after `after`: (position, tag, first payload byte) of each frame.
fn drain(q: &mut Queue, after: u64) -> (Vec<(u64, Option<u64>, u8)>, Drained) {
    let mut d = Drained::default();
    q.drain(C, after, &mut d);
    let items = d
        .items
        .iter()
        .filter_map(|(pos, i, _)| match i {
            Item::Data {
                frame: Frame::Binary(b),
                from,
                ..
            } => Some((*pos, from.map(NonZeroU64::get), b[0])),
            _ => None,
        })
        .collect();
    (items, d)
}

fn report(guest: u64, p: u64) -> GuestReport {
    GuestReport { guest: g(guest), p }
}

#[test]
fn a_remote_guest_s_frames_join_local_ones_tagged_in_order_once() {
    let mut q = host();
    let now = Instant::now();
    q.push_from(data(10), Some(g(1)));
    assert_eq!(q.push_from_guest(g(2), 1, data(21), now), FromPeer::Queued);
    assert!(matches!(
        q.push_from_guest(g(2), 1, data(21), now),
        FromPeer::Duplicate { .. }
    ));
    // Frame 2 was lost on the way: asked for once, not by every frame behind it.
    assert_eq!(
        q.push_from_guest(g(2), 3, data(23), now),
        FromPeer::Gap { next: 2, ask: true }
    );
    assert_eq!(
        q.push_from_guest(g(2), 4, data(24), now),
        FromPeer::Gap {
            next: 2,
            ask: false
        }
    );
    // ... and again once the resend had time to come and did not.
    assert_eq!(
        q.push_from_guest(g(2), 3, data(23), now + super::RESEND_RETRY),
        FromPeer::Gap { next: 2, ask: true }
    );
    for (p, b) in [(2, 22), (3, 23)] {
        assert_eq!(q.push_from_guest(g(2), p, data(b), now), FromPeer::Queued);
    }
    // Guest 3 is numbered in its own direction.
    assert_eq!(q.push_from_guest(g(3), 1, data(31), now), FromPeer::Queued);
    let (items, _) = drain(&mut q, 0);
    let got: Vec<_> = items.iter().map(|(_, from, b)| (*from, *b)).collect();
    assert_eq!(
        got,
        [
            (Some(1), 10),
            (Some(2), 21),
            (Some(2), 22),
            (Some(2), 23),
            (Some(3), 31)
        ]
    );
}

#[test]
fn frames_of_a_guest_that_feeds_nothing_here_or_for_an_ended_host_are_dropped() {
    let mut q = host();
    let now = Instant::now();
    assert_eq!(q.push_from_guest(g(7), 1, data(1), now), FromPeer::Dropped);
    assert_eq!(q.unfeed_guest(g(2)), Some(0));
    assert_eq!(q.push_from_guest(g(2), 1, data(1), now), FromPeer::Dropped);
    q.close();
    assert_eq!(q.push_from_guest(g(3), 1, data(1), now), FromPeer::Dropped);
    assert_eq!(q.held_entries(), 0);
}

#[test]
fn only_what_the_host_read_is_acknowledged_to_each_guest() {
    let mut q = host();
    let now = Instant::now();
    q.push_from_guest(g(2), 1, data(21), now);
    q.push_from(data(10), Some(g(1)));
    q.push_from_guest(g(3), 1, data(31), now);
    q.push_from_guest(g(2), 2, data(22), now);
    assert_eq!(q.take_guest_reads(), [], "acknowledged on arrival");
    let (items, _) = drain(&mut q, 0);
    assert_eq!(q.take_guest_reads(), [], "acknowledged when written");
    // The host read up to guest 3's frame: one frame of each remote guest.
    q.ack(items[2].0, now);
    let mut reads = q.take_guest_reads();
    reads.sort_by_key(|r| r.guest);
    assert_eq!(reads, [report(2, 1), report(3, 1)]);
    assert_eq!(q.take_guest_reads(), [], "reported once");
    q.ack(items[3].0, now);
    assert_eq!(q.take_guest_reads(), [report(2, 2)]);
    // A frame sent again that the host read is acknowledged again.
    assert_eq!(
        q.push_from_guest(g(2), 2, data(22), now),
        FromPeer::Duplicate { ack: Some(2) }
    );
    assert_eq!(q.unfeed_guest(g(2)), Some(2));
}

#[test]
fn a_host_resuming_with_frames_counts_them_read() {
    let mut q = host();
    let now = Instant::now();
    for p in 1..=3 {
        q.push_from_guest(g(2), p, data(p as u8), now);
    }
    drain(&mut q, 0);
    assert!(q.detach(C));
    // It had read two data frames when its connection dropped.
    q.attach(ConnId(2), 2, now).expect("the reader resumes");
    assert_eq!(q.take_guest_reads(), [report(2, 2)]);
}

#[test]
fn a_feed_starts_after_what_the_host_already_read() {
    let mut q = host();
    let now = Instant::now();
    // Guest 2's direction moved here with the host having read 5 of its frames.
    q.feed_guest(g(2), 5);
    assert_eq!(
        q.push_from_guest(g(2), 5, data(5), now),
        FromPeer::Duplicate { ack: Some(5) }
    );
    assert_eq!(q.push_from_guest(g(2), 6, data(6), now), FromPeer::Queued);
    let (items, _) = drain(&mut q, 0);
    q.ack(items[0].0, now);
    assert_eq!(q.take_guest_reads(), [report(2, 6)]);
}

#[test]
fn written_reports_follow_what_the_host_s_socket_took_per_guest() {
    let mut q = host();
    let now = Instant::now();
    let every = limits().report_every();
    let big = |n: u8| Frame::Binary(Bytes::from(vec![n; every]));
    q.push_from_guest(g(2), 1, big(1), now);
    q.push_from_guest(g(3), 1, data(1), now);
    let (_, d) = drain(&mut q, 0);
    // Guest 3's one small frame is not worth a report yet.
    assert_eq!(d.guest_written, [report(2, 1)]);
    q.push_from_guest(g(2), 2, data(2), now);
    let (items, d) = drain(&mut q, 2);
    assert_eq!(
        items.len(),
        1,
        "the frames written before are not handed out again"
    );
    assert_eq!(d.guest_written, []);
    // A drain from the start (a new connection) counts nothing twice.
    q.push_from_guest(g(3), 2, big(2), now);
    let (_, d) = drain(&mut q, 0);
    assert_eq!(d.guest_written, [report(3, 2)]);
}

#[test]
fn a_guest_moving_takes_the_frames_the_host_has_not_read_by_their_numbers() {
    let mut q = host();
    let now = Instant::now();
    for p in 1..=3 {
        q.push_from_guest(g(2), p, data(20 + p as u8), now);
        q.push_from_guest(g(3), p, data(30 + p as u8), now);
    }
    let (items, _) = drain(&mut q, 0);
    // The host read guest 2's first two frames and guest 3's first.
    q.ack(items[2].0, now);
    assert_eq!(q.guest_unread(g(2)), Some((3, vec![(3, data(23))])));
    assert_eq!(
        q.guest_unread(g(3)),
        Some((3, vec![(2, data(32)), (3, data(33))]))
    );
    assert_eq!(q.guest_unread(g(7)), None);
    // The feed goes on where it was: the guest's new node continues at 4.
    assert_eq!(q.push_from_guest(g(2), 4, data(24), now), FromPeer::Queued);
}

#[test]
fn a_feed_started_over_frames_still_queued_acknowledges_none_of_them_early() {
    let mut q = host();
    let now = Instant::now();
    // Guest 4 was on the host's node: two of its frames are queued, the
    // first handed out. It moves away having sent 2 in all.
    q.push_from(data(41), Some(g(4)));
    let (items, _) = drain(&mut q, 0);
    q.push_from(data(42), Some(g(4)));
    q.feed_guest(g(4), 2);
    assert_eq!(q.push_from_guest(g(4), 3, data(43), now), FromPeer::Queued);
    // The host reads frame 1 only: the ack says 1, not 3.
    q.ack(items[0].0, now);
    assert_eq!(q.take_guest_reads(), [report(4, 1)]);
    assert_eq!(
        q.guest_unread(g(4)),
        Some((3, vec![(2, data(42)), (3, data(43))]))
    );
}
