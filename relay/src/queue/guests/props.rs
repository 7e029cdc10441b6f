//! Property test: a host's queue fed by guests on other nodes over a bus
//! that loses envelopes, beside a guest on the host's node, while the
//! host's connection drops and resumes. Each guest's frames reach the host
//! once, in that guest's order; what goes back to a guest's node never
//! acknowledges a frame the host has not read (its node must keep those
//! should the host's node die); and once the host read everything, the
//! acknowledgements free every guest's node, including one a guest moved
//! to with the frames the host had not read.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::super::{Drained, FromPeer, Item, Limits, Pushed, Queue, RESEND_RETRY};
use crate::conns::ConnId;
use crate::frame::Frame;

/// Guests 1 and 2 are on other nodes, guest 3 on the host's.
const REMOTE: [u64; 2] = [1, 2];
const LOCAL: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A remote guest sends a frame; its envelope may be lost.
    Send { guest: usize, lost: bool },
    /// The local guest sends a frame.
    Local,
    /// The next envelope of a remote guest's node reaches the host's node.
    Deliver { guest: usize },
    /// The host's socket drains; the host reads this many items of it.
    Read(usize),
    /// The host acknowledges what it read.
    Ack,
    /// The host's connection drops (what was in flight is lost) and it
    /// resumes with what it read.
    Reconnect,
    /// An acknowledgement or written report reaches a guest's node.
    Report { guest: usize },
    /// Time passes: a gap still open is asked for again.
    Retry,
    /// A remote guest resumes on another node: that node holds the frames
    /// the host has not read, and the guest sends again what did not
    /// reach the host (what is still on the bus may arrive too).
    Move { guest: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..2, prop::bool::weighted(0.15)).prop_map(|(guest, lost)| Op::Send { guest, lost }),
        2 => Just(Op::Local),
        5 => (0usize..2).prop_map(|guest| Op::Deliver { guest }),
        3 => (1usize..6).prop_map(Op::Read),
        2 => Just(Op::Ack),
        1 => Just(Op::Reconnect),
        3 => (0usize..2).prop_map(|guest| Op::Report { guest }),
        1 => Just(Op::Retry),
        1 => (0usize..2).prop_map(|guest| Op::Move { guest }),
    ]
}

fn limits() -> Limits {
    Limits {
        max_buffered: 1 << 24,
        stall: Duration::from_secs(3600),
        away_frames: 100_000,
        away_bytes: 1 << 30,
        paced: false,
    }
}

fn tag(guest: u64) -> NonZeroU64 {
    NonZeroU64::new(guest).expect("guests count from 1")
}

/// A frame that says whose and which it is.
fn frame(guest: u64, n: u64) -> Frame {
    let mut b = guest.to_be_bytes().to_vec();
    b.extend_from_slice(&n.to_be_bytes());
    b.resize(200, 0);
    Frame::Binary(Bytes::from(b))
}

fn whose(f: &Frame) -> (u64, u64) {
    match f {
        Frame::Binary(b) => (
            u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
        ),
        Frame::Text(_) => panic!("only binary frames are sent"),
    }
}

/// A remote guest's node: its direction toward the host, what is on the
/// bus toward the host's node, and what came back.
struct GuestNode {
    queue: Queue,
    bus: VecDeque<(u64, Frame)>,
    /// Acknowledgements (true) and written reports in flight back.
    back: VecDeque<(bool, u64)>,
    sent: u64,
}

/// The host as a client: what it has read of each guest.
#[derive(Default)]
struct Host {
    conn: u64,
    in_flight: VecDeque<(u64, Item)>,
    written: u64,
    read_pos: u64,
    /// Data frames read in all (its resume `lastSeq`), and of each guest.
    read: u64,
    of: [u64; 4],
}

impl Host {
    fn read_item(&mut self, pos: u64, item: Item) -> Result<(), TestCaseError> {
        self.read_pos = pos;
        if let Item::Data { frame, from, .. } = item {
            let (guest, n) = whose(&frame);
            prop_assert_eq!(from, Some(tag(guest)), "frame tagged with another guest");
            prop_assert_eq!(
                n,
                self.of[guest as usize] + 1,
                "guest {}'s frames out of order",
                guest
            );
            self.of[guest as usize] = n;
            self.read += 1;
        }
        Ok(())
    }
}

/// Hands the host's reports to the guests' nodes' queues in flight, after
/// checking no acknowledgement runs ahead of what the host read.
fn send_back(
    reads: Vec<super::GuestReport>,
    written: bool,
    host: &Host,
    nodes: &mut [GuestNode],
) -> Result<(), TestCaseError> {
    for r in reads {
        let g = r.guest.get();
        if !written {
            prop_assert!(
                r.p <= host.of[g as usize],
                "guest {}'s frame {} acknowledged, the host read {}",
                g,
                r.p,
                host.of[g as usize]
            );
        }
        nodes[g as usize - 1].back.push_back((!written, r.p));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn each_guest_s_frames_reach_the_host_once_in_order_and_are_freed_only_once_read(
        ops in prop::collection::vec(op(), 1..300)
    ) {
        let mut now = Instant::now();
        let mut q = Queue::new(limits());
        q.reset_reader();
        let mut host = Host { conn: 1, ..Host::default() };
        q.attach(ConnId(1), 0, now).map_err(|g| TestCaseError::fail(format!("{g:?}")))?;
        for g in REMOTE {
            q.feed_guest(tag(g), 0);
        }
        let mut nodes: Vec<GuestNode> = REMOTE
            .iter()
            .map(|_| GuestNode {
                queue: Queue::sending_to_peer(limits(), 0, 0),
                bus: VecDeque::new(),
                back: VecDeque::new(),
                sent: 0,
            })
            .collect();
        let mut local_sent = 0;
        for op in ops {
            now += Duration::from_millis(20);
            match op {
                Op::Send { guest, lost } => {
                    let node = &mut nodes[guest];
                    let f = frame(REMOTE[guest], node.sent + 1);
                    let Pushed::Publish { p, frame, .. } = node.queue.push(f) else {
                        return Err(TestCaseError::fail("a remote host's frame is published"));
                    };
                    node.sent += 1;
                    prop_assert_eq!(p, node.sent);
                    if !lost {
                        node.bus.push_back((p, frame));
                    }
                }
                Op::Local => {
                    local_sent += 1;
                    q.push_from(frame(LOCAL, local_sent), Some(tag(LOCAL)));
                }
                Op::Deliver { guest } => {
                    let Some((p, f)) = nodes[guest].bus.pop_front() else { continue };
                    match q.push_from_guest(tag(REMOTE[guest]), p, f, now) {
                        FromPeer::Queued | FromPeer::Duplicate { ack: None } => {}
                        FromPeer::Duplicate { ack: Some(a) } => {
                            let r = super::GuestReport { guest: tag(REMOTE[guest]), p: a };
                            send_back(vec![r], false, &host, &mut nodes)?;
                        }
                        FromPeer::Gap { next, ask } => {
                            if ask {
                                let node = &mut nodes[guest];
                                let again = node.queue.resend_from(next);
                                node.bus.extend(again);
                            }
                        }
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Op::Read(n) => {
                    let mut d = Drained::default();
                    q.drain(ConnId(host.conn), host.written, &mut d);
                    send_back(d.guest_written, true, &host, &mut nodes)?;
                    for (pos, item, _) in d.items {
                        host.written = pos;
                        host.in_flight.push_back((pos, item));
                    }
                    for _ in 0..n {
                        let Some((pos, item)) = host.in_flight.pop_front() else { break };
                        host.read_item(pos, item)?;
                    }
                }
                Op::Ack => {
                    if host.read_pos > 0 {
                        let _ = q.ack(host.read_pos, now);
                        send_back(q.take_guest_reads(), false, &host, &mut nodes)?;
                    }
                }
                Op::Reconnect => {
                    q.detach(ConnId(host.conn));
                    host.in_flight.clear();
                    host.conn += 1;
                    let written = q.attach(ConnId(host.conn), host.read, now);
                    prop_assert!(written.is_ok(), "resume at {} refused: {:?}", host.read, written);
                    host.written = written.unwrap_or(0);
                    send_back(q.take_guest_reads(), false, &host, &mut nodes)?;
                }
                Op::Report { guest } => {
                    let node = &mut nodes[guest];
                    match node.back.pop_front() {
                        Some((true, p)) => node.queue.ack_from_peer(p, now),
                        Some((false, p)) => node.queue.written_from_peer(p),
                        None => {}
                    }
                }
                Op::Retry => now += RESEND_RETRY,
                Op::Move { guest } => {
                    let Some((received, unread)) = q.guest_unread(tag(REMOTE[guest])) else {
                        return Err(TestCaseError::fail("a fed guest has a feed"));
                    };
                    let node = &mut nodes[guest];
                    let mut moved = Queue::sending_to_peer(limits(), received, received);
                    moved.hold_handed_over(unread);
                    // It resumed with `received` as its `lastSeq`: it
                    // sends the rest again, from its new node.
                    for n in received + 1..=node.sent {
                        if let Pushed::Publish { p, frame, .. } = moved.push(frame(REMOTE[guest], n)) {
                            node.bus.push_back((p, frame));
                        }
                    }
                    node.queue = moved;
                    // Reports in flight went to the old node.
                    node.back.clear();
                }
            }
        }
        // Everything settles: what was lost is sent again, the host reads
        // all and acknowledges it, the reports reach the guests' nodes.
        now += RESEND_RETRY;
        for (i, node) in nodes.iter_mut().enumerate() {
            let have = host.of[REMOTE[i] as usize];
            node.bus.extend(node.queue.resend_from(have + 1));
            while let Some((p, f)) = node.bus.pop_front() {
                if let FromPeer::Gap { next, ask: true } = q.push_from_guest(tag(REMOTE[i]), p, f, now) {
                    node.bus.extend(node.queue.resend_from(next));
                }
            }
        }
        let mut d = Drained::default();
        q.drain(ConnId(host.conn), host.written, &mut d);
        for (pos, item) in host.in_flight.drain(..).collect::<Vec<_>>() {
            host.read_item(pos, item)?;
        }
        for (pos, item, _) in d.items {
            host.read_item(pos, item)?;
        }
        for (i, node) in nodes.iter().enumerate() {
            prop_assert_eq!(host.of[REMOTE[i] as usize], node.sent, "guest {}'s frames lost", REMOTE[i]);
        }
        prop_assert_eq!(host.of[LOCAL as usize], local_sent, "the local guest's frames lost");
        let _ = q.ack(host.read_pos, now);
        send_back(q.take_guest_reads(), false, &host, &mut nodes)?;
        for node in &mut nodes {
            while let Some((ack, p)) = node.back.pop_front() {
                if ack { node.queue.ack_from_peer(p, now) } else { node.queue.written_from_peer(p) }
            }
            prop_assert_eq!(node.queue.held_entries(), 0, "acks free the guest's node");
        }
        prop_assert_eq!(q.held_entries(), 0);
    }
}
