//! Property tests: any interleaving of what senders, readers, the network
//! and other nodes do gives the reading client every frame exactly once, in
//! order, with control messages in their place among them, and the queue
//! stays within its bounds.
//!
//! A model client reads what the queue hands out through a connection that
//! may drop with frames still in flight (those are lost with it); it
//! acknowledges only what it read and resumes with what it read as its
//! `lastSeq`, as the protocol says.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// What happens next, in one direction.
#[derive(Debug, Clone)]
enum Op {
    /// The sender sends a frame of this many bytes.
    Push(usize),
    /// The registry queues a control message.
    Event,
    /// The reader's socket drains the queue into its connection.
    Drain,
    /// The client reads this many items off its connection.
    Read(usize),
    /// The client acknowledges everything it read (its pong arrives).
    Ack,
    /// The connection drops; whatever was in flight is lost.
    Drop,
    /// The client comes back with what it read.
    Resume,
    /// The sender's side, paused, checks whether the reader stalled.
    StallCheck,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..3000).prop_map(Op::Push),
        1 => Just(Op::Event),
        3 => Just(Op::Drain),
        3 => (1usize..8).prop_map(Op::Read),
        2 => Just(Op::Ack),
        1 => Just(Op::Drop),
        2 => Just(Op::Resume),
        1 => Just(Op::StallCheck),
    ]
}

/// A frame that says its own number, so a client can check what it got.
fn frame(n: u64, len: usize) -> Frame {
    let mut b = n.to_be_bytes().to_vec();
    b.resize(8 + len, (n % 251) as u8);
    Frame::Binary(Bytes::from(b))
}

fn number(f: &Frame) -> u64 {
    match f {
        Frame::Binary(b) => u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        Frame::Text(_) => panic!("only binary frames are sent"),
    }
}

/// The reading client, as the protocol describes it.
#[derive(Default)]
struct Client {
    /// Its connection, if open: its id and what is in flight on it.
    conn: Option<ConnId>,
    in_flight: VecDeque<(u64, Item)>,
    /// Position of the last item handed to its connection.
    written: u64,
    /// Position of the last item it read, and data frames it read.
    read_pos: u64,
    read: u64,
    /// Control messages read, by the data count they came after.
    events: Vec<(u64, u64)>,
}

impl Client {
    fn read_item(&mut self, pos: u64, item: Item) -> Result<(), TestCaseError> {
        self.read_pos = pos;
        match item {
            Item::Data { seq, frame, .. } => {
                prop_assert_eq!(seq, self.read + 1, "data out of order");
                prop_assert_eq!(number(&frame), seq, "frame content is not its own");
                self.read = seq;
            }
            Item::Event { text, .. } => {
                let id: u64 = text.parse().expect("events are numbered");
                prop_assert!(
                    !self.events.iter().any(|(e, _)| *e == id),
                    "event {} twice",
                    id
                );
                self.events.push((id, self.read));
            }
        }
        Ok(())
    }
}

fn limits() -> Limits {
    Limits {
        max_buffered: 64 * 1024,
        stall: Duration::from_secs(10),
        away_frames: 40,
        away_bytes: 48 * 1024,
        paced: true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// One node: push, drain, read, ack, drop and resume in any order.
    #[test]
    fn every_frame_reaches_the_reader_once_in_order(ops in prop::collection::vec(op(), 1..300)) {
        let limits = limits();
        let mut q = Queue::new(limits);
        q.reset_reader();
        let t0 = Instant::now();
        let mut now = t0;
        let mut client = Client::default();
        let mut next_conn = 1;
        let mut sent = 0u64;
        let mut events = 0u64;
        // Data frames before each event, as queued.
        let mut event_at: Vec<u64> = Vec::new();
        let mut ended = false;
        // Bytes queued since the reader went away (the away limits).
        for op in ops {
            now += Duration::from_millis(50);
            match op {
                Op::Push(len) => {
                    if ended { continue; }
                    match q.push(frame(sent + 1, len)) {
                        Pushed::Queued { .. } => sent += 1,
                        Pushed::SlowConsumer(c) => {
                            prop_assert_eq!(Some(c), client.conn);
                            prop_assert_eq!(q.take_cut(), Some(c));
                            sent += 1;
                        }
                        Pushed::Overflow => ended = true,
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Op::Event => {
                    if ended { continue; }
                    q.push_event(events.to_string().into(), EventEffect::None);
                    event_at.push(sent);
                    events += 1;
                }
                Op::Drain => {
                    let Some(c) = client.conn else { continue };
                    let mut d = Drained::default();
                    match q.drain(c, client.written, &mut d) {
                        Status::Reading => {
                            prop_assert!(!q.sender_paused(), "a drain releases the sender");
                        }
                        Status::Cut | Status::NotMine => prop_assert!(d.items.is_empty()),
                        Status::Closed => {}
                    }
                    for (pos, item, _) in d.items {
                        prop_assert!(pos > client.written, "handed out twice");
                        client.written = pos;
                        client.in_flight.push_back((pos, item));
                    }
                }
                Op::Read(n) => {
                    for _ in 0..n {
                        let Some((pos, item)) = client.in_flight.pop_front() else { break };
                        client.read_item(pos, item)?;
                    }
                }
                Op::Ack => {
                    if client.conn.is_some() && client.read_pos > 0 {
                        let _ = q.ack(client.read_pos, now);
                    }
                }
                Op::Drop => {
                    if let Some(c) = client.conn.take() {
                        q.detach(c);
                        client.in_flight.clear();
                    }
                }
                Op::Resume => {
                    if client.conn.is_some() || ended { continue; }
                    // A cut client's old connection is over too.
                    client.in_flight.clear();
                    let c = ConnId(next_conn);
                    next_conn += 1;
                    match q.attach(c, client.read, now) {
                        Ok(written) => {
                            client.conn = Some(c);
                            client.written = written;
                        }
                        Err(gap) => prop_assert!(false, "resume at {} refused: {:?}", client.read, gap),
                    }
                }
                Op::StallCheck => {
                    if let Some(c) = q.cut_if_stalled(now) {
                        prop_assert_eq!(Some(c), client.conn);
                        prop_assert_eq!(q.take_cut(), Some(c));
                    }
                }
            }
            // Bounded: a reader on the node is cut before it holds more
            // than the hard cap, plus the frame that crossed it.
            prop_assert!(q.held_bytes() <= limits.hard_cap() + 3100 + ENTRY_OVERHEAD);
            if let Some(c) = client.conn {
                if q.was_cut(c) {
                    // Its socket closes with 1013; the client will resume.
                    client.conn = None;
                }
            }
        }
        if ended {
            return Ok(());
        }
        // The client comes back one last time and reads everything.
        if client.conn.is_none() {
            client.in_flight.clear();
            let c = ConnId(next_conn);
            let written = q.attach(c, client.read, now);
            prop_assert!(written.is_ok(), "final resume refused: {:?}", written);
            client.conn = Some(c);
            client.written = written.unwrap_or(0);
        }
        let c = client.conn.unwrap_or(ConnId(0));
        let mut d = Drained::default();
        q.drain(c, client.written, &mut d);
        for (pos, item) in client.in_flight.drain(..).collect::<Vec<_>>() {
            client.read_item(pos, item)?;
        }
        for (pos, item, _) in d.items {
            client.read_item(pos, item)?;
        }
        prop_assert_eq!(client.read, sent, "frames lost");
        // Every event the client got came right where it was queued.
        for (id, after) in &client.events {
            prop_assert_eq!(*after, event_at[*id as usize], "event {} out of place", id);
        }
        // Acknowledging everything frees everything.
        let _ = q.ack(client.read_pos.max(client.written), now);
        prop_assert_eq!(q.held_entries(), 0);
        prop_assert_eq!(q.held_bytes(), 0);
    }
}

/// What happens next on a cross-node direction.
#[derive(Debug, Clone)]
enum Hop {
    /// The sender pushes a frame; its envelope may be lost on the bus.
    Push { lost: bool },
    /// The bus delivers the next envelope in flight to the reader's node;
    /// a resend it asks for may be lost on the way.
    Deliver {
        /// The resend, if one is asked for, is lost.
        resend_lost: bool,
    },
    /// The reader's node drains into the client, which reads and acks.
    ReadAndAck,
    /// An ack or written report in flight back reaches the sender's node.
    Report,
    /// A failed publish is noticed: the sender's node sends everything again.
    ResendAll,
    /// Time passes: a gap still open may be asked for again.
    Retry,
}

fn hop() -> impl Strategy<Value = Hop> {
    prop_oneof![
        4 => prop::bool::weighted(0.1).prop_map(|lost| Hop::Push { lost }),
        4 => prop::bool::weighted(0.2).prop_map(|resend_lost| Hop::Deliver { resend_lost }),
        2 => Just(Hop::ReadAndAck),
        2 => Just(Hop::Report),
        1 => Just(Hop::ResendAll),
        1 => Just(Hop::Retry),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Two nodes over a bus that loses envelopes, resends included: the
    /// reader still gets every frame once, in order, asking at most once per
    /// gap within the retry interval, and acks free the sender's node.
    #[test]
    fn frames_across_a_lossy_bus_arrive_once_in_order(hops in prop::collection::vec(hop(), 1..300)) {
        let limits = Limits { away_frames: 10_000, away_bytes: 1 << 30, ..limits() };
        let mut now = Instant::now();
        // The reader's last ask for a resend (the gap and when), until a
        // frame fills it.
        let mut asked: Option<(u64, Instant)> = None;
        let mut sender = Queue::sending_to_peer(limits, 0, 0);
        let mut reader = Queue::fed_from_peer(limits, 0, 0);
        let c = ConnId(1);
        reader.attach(c, 0, now).map_err(|g| TestCaseError::fail(format!("{g:?}")))?;
        let mut bus: VecDeque<(u64, Frame)> = VecDeque::new();
        let mut back: VecDeque<(bool, u64)> = VecDeque::new();
        let mut client = Client { conn: Some(c), ..Client::default() };
        let mut sent = 0u64;
        for hop in hops {
            match hop {
                Hop::Push { lost } => {
                    if let Pushed::Publish { p, frame, .. } = sender.push(frame(sent + 1, 100)) {
                        sent += 1;
                        prop_assert_eq!(p, sent);
                        if !lost { bus.push_back((p, frame)); }
                    } else {
                        prop_assert!(false, "a remote reader's frame is published");
                    }
                }
                Hop::Deliver { resend_lost } => {
                    let Some((p, f)) = bus.pop_front() else { continue };
                    match reader.push_from_peer(p, f, now) {
                        FromPeer::Gap { next, ask } => {
                            if ask {
                                if let Some((n, at)) = asked {
                                    prop_assert!(
                                        n != next || now.duration_since(at) >= RESEND_RETRY,
                                        "asked twice for the gap at {} within the retry interval", next
                                    );
                                }
                                asked = Some((next, now));
                                // The resend, from where the gap began.
                                if !resend_lost { bus.extend(sender.resend_from(next)); }
                            }
                        }
                        FromPeer::Duplicate { ack: Some(a) } => back.push_back((true, a)),
                        FromPeer::Queued => asked = None,
                        FromPeer::Duplicate { ack: None } => {}
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Hop::ReadAndAck => {
                    let mut d = Drained::default();
                    reader.drain(c, client.written, &mut d);
                    if let Some(p) = d.report_written { back.push_back((false, p)); }
                    for (pos, item, _) in d.items {
                        client.written = pos;
                        client.read_item(pos, item)?;
                    }
                    if let Some(p) = reader.ack(client.read_pos, now) {
                        back.push_back((true, p));
                    }
                }
                Hop::Report => {
                    match back.pop_front() {
                        Some((true, p)) => sender.ack_from_peer(p, now),
                        Some((false, p)) => sender.written_from_peer(p),
                        None => {}
                    }
                }
                Hop::ResendAll => bus.extend(sender.resend_from(0)),
                Hop::Retry => now += RESEND_RETRY,
            }
        }
        // Everything settles: lost envelopes are sent again (the sender's
        // node after a failed publish, or the reader's next ask), all is read.
        now += RESEND_RETRY;
        bus.extend(sender.resend_from(reader.pairing_count() + 1));
        while let Some((p, f)) = bus.pop_front() {
            if let FromPeer::Gap { next, ask: true } = reader.push_from_peer(p, f, now) {
                bus.extend(sender.resend_from(next));
            }
        }
        let mut d = Drained::default();
        reader.drain(c, client.written, &mut d);
        for (pos, item, _) in d.items {
            client.read_item(pos, item)?;
        }
        prop_assert_eq!(client.read, sent, "frames lost");
        if let Some(p) = reader.ack(client.read_pos, now) {
            back.push_back((true, p));
        }
        for (ack, p) in back {
            if ack { sender.ack_from_peer(p, now) } else { sender.written_from_peer(p) }
        }
        prop_assert_eq!(sender.held_entries(), 0, "acks free the sender's node");
        prop_assert!(!sender.sender_paused());
    }
}
