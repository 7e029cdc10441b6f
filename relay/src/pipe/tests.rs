//! The pipe's I/O: waking the reader, pausing and releasing the sender's
//! gate, and what goes to another node. The queue's rules themselves are
//! tested in `queue`.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::cluster::bus::Bus;
use crate::cluster::envelope::{Control, Envelope};
use crate::metrics::DropReason;
use relay_protocol::Role;

fn limits() -> Limits {
    Limits {
        max_buffered: 1_000_000,
        stall: Duration::from_secs(3600),
        away_frames: 3,
        away_bytes: 1_000_000,
        paced: true,
    }
}

fn data(n: u8) -> Frame {
    Frame::Binary(Bytes::from(vec![n]))
}

/// A reader actor that counts its wakes.
struct Sink(Arc<std::sync::atomic::AtomicUsize>);

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Wake> for Sink {
    type Result = ();
    fn handle(&mut self, _: Wake, _: &mut Context<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `f` inside an actix system with a receiver whose wakes are counted.
fn with_receiver(f: impl AsyncFnOnce(Receiver, Arc<Gate>, Arc<std::sync::atomic::AtomicUsize>)) {
    actix::System::new().block_on(async {
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let addr = Sink(Arc::clone(&wakes)).start();
        f(
            Receiver {
                conn: ConnId(1),
                wake: addr.recipient(),
                killer: None,
            },
            Gate::new(),
            wakes,
        )
        .await;
    });
}

/// Lets the actix system deliver what was sent.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

fn peer(bus: &Bus, node: &str, to: Role) -> Peer {
    Peer {
        link: bus.link(&Arc::from(node)),
        sid: Arc::from("s"),
        to: to.into(),
    }
}

/// Whether the bus dropped anything, for any reason.
fn drops(bus: &Bus) -> u64 {
    DropReason::ALL
        .iter()
        .map(|r| {
            bus.metrics()
                .bus_dropped
                .with_label_values(&[r.as_str()])
                .get()
        })
        .sum()
}

#[test]
fn pushes_wake_the_reader_once_until_it_drains() {
    with_receiver(async |rx, gate, wakes| {
        let p = Pipe::new(limits());
        p.reset_receiver();
        p.attach(rx, 0).unwrap();
        settle().await;
        let after_attach = wakes.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after_attach, 1, "attaching wakes the reader");
        for i in 0..5 {
            assert_eq!(p.push(data(i), &gate), Pushed::Queued { remote: false });
        }
        settle().await;
        assert_eq!(
            wakes.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "coalesced"
        );
        let mut d = Drained::default();
        assert_eq!(p.drain(ConnId(1), 0, &mut d), Status::Reading);
        assert_eq!(d.items.len(), 5);
        p.push(data(9), &gate);
        settle().await;
        assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 2);
    });
}

#[test]
fn a_backlog_closes_the_sender_gate_until_the_receiver_drains() {
    with_receiver(async |rx, gate, _| {
        let p = Pipe::new(Limits {
            max_buffered: 4 * 65536,
            ..limits()
        });
        p.reset_receiver();
        p.attach(rx, 0).unwrap();
        let big = Frame::Binary(Bytes::from(vec![0u8; 40_000]));
        assert_eq!(p.push(big.clone(), &gate), Pushed::Queued { remote: false });
        assert_eq!(p.push(big, &gate), Pushed::Backlogged { remote: false });
        assert!(gate.is_closed());
        let mut d = Drained::default();
        p.drain(ConnId(1), 0, &mut d);
        assert!(!gate.is_closed(), "a drain lets the sender go on");
    });
}

#[test]
fn cutting_a_stalled_receiver_releases_the_sender() {
    with_receiver(async |rx, gate, wakes| {
        let p = Pipe::new(Limits {
            max_buffered: 100_000,
            stall: Duration::ZERO,
            ..limits()
        });
        p.reset_receiver();
        p.attach(rx, 0).unwrap();
        let big = Frame::Binary(Bytes::from(vec![0u8; 60_000]));
        p.push(big.clone(), &gate);
        p.push(big, &gate);
        assert!(gate.is_closed());
        settle().await;
        let before = wakes.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(p.cut_if_stalled(), Some(ConnId(1)));
        assert!(!gate.is_closed(), "the cut lets the sender go on");
        settle().await;
        assert_eq!(
            wakes.load(std::sync::atomic::Ordering::SeqCst),
            before + 1,
            "the cut reader is woken to close itself"
        );
        let mut d = Drained::default();
        assert_eq!(p.drain(ConnId(1), 0, &mut d), Status::Cut);
    });
}

#[test]
fn a_sender_toward_another_node_publishes_and_is_paced_by_what_that_node_wrote() {
    actix::System::new().block_on(async {
        let (bus, mut out) = Bus::detached("sender");
        let limits = Limits {
            max_buffered: 4 * 65536,
            ..limits()
        };
        let p = Pipe::sending_to_peer(limits, peer(&bus, "receiver", Role::Browser), 0, 0);
        assert_eq!(p.remote_node().as_deref(), Some("receiver"));
        let gate = Gate::new();
        let big = Frame::Binary(Bytes::from(vec![0u8; 40_000]));
        assert_eq!(p.push(big.clone(), &gate), Pushed::Queued { remote: true });
        assert_eq!(
            p.push(big.clone(), &gate),
            Pushed::Backlogged { remote: true }
        );
        assert!(gate.is_closed());
        let ps: Vec<u64> = out
            .publish()
            .into_iter()
            .map(|(node, e)| {
                assert_eq!(&*node, "receiver");
                e
            })
            .map(|e| match e {
                Envelope::Frame { p, to, .. } => {
                    assert_eq!(to, Role::Browser);
                    p
                }
                other => panic!("not a frame: {other:?}"),
            })
            .collect();
        assert_eq!(ps, [1, 2]);
        // The receiver's node wrote both; its client acknowledged none (its
        // pongs may wait behind its own paused data): go on.
        p.written_from_peer(2);
        assert!(!gate.is_closed(), "a written report lets the sender go on");
        // Lost envelopes are published again from where the gap began.
        p.resend_to_peer(2);
        assert!(matches!(
            &out.envelopes()[..],
            [Envelope::Frame { p: 2, .. }]
        ));
        // Away, the frames wait for the receiver and nothing is published.
        p.peer_away();
        assert_eq!(p.remote_node(), None);
        p.push(big, &gate);
        p.resend_to_peer(0);
        assert!(out.publish().is_empty());
        assert_eq!(drops(&bus), 0);
    });
}

#[test]
fn a_receiving_node_acknowledges_and_reports_what_it_wrote() {
    let (bus, mut out) = Bus::detached("receiver");
    let limits = Limits {
        max_buffered: 4 * 65536,
        ..limits()
    };
    // Backlog 64 KiB: a written report every 8 KiB handed to the socket.
    let p = Pipe::fed_from_peer(limits, 0, 0, peer(&bus, "sender", Role::Mac));
    with_receiver(async |rx, _, _| {
        p.attach(rx, 0).unwrap();
        let frame = |n: usize| Frame::Binary(Bytes::from(vec![0u8; n]));
        assert_eq!(p.push_from_peer(1, frame(4000)), FromPeer::Queued);
        let mut d = Drained::default();
        p.drain(ConnId(1), 0, &mut d);
        assert_eq!(p.push_from_peer(2, frame(5000)), FromPeer::Queued);
        p.drain(ConnId(1), d.items.last().unwrap().0, &mut d);
        p.ack(d.items.last().unwrap().0);
    });
    let env = out.envelopes();
    assert_eq!(
        env,
        [
            Envelope::Written {
                sid: "s".into(),
                to: Role::Mac,
                p: 2
            },
            Envelope::Ack {
                sid: "s".into(),
                to: Role::Mac,
                p: 2
            }
        ]
    );
}

#[test]
fn duplicates_from_another_node_that_the_receiver_read_are_acknowledged() {
    let (bus, mut out) = Bus::detached("receiver");
    // The receiver has read 40 frames; 3 more come and wait unread.
    let p = Pipe::fed_from_peer(limits(), 40, 0, peer(&bus, "sender", Role::Mac));
    for n in 41..=43 {
        assert_eq!(p.push_from_peer(n, data(1)), FromPeer::Queued);
    }
    // The sender's node sends everything again (it lost its count). Read
    // ones are acked (every 16th and the last read); unread ones are left
    // to the receiver's own acks.
    let mut acks = Vec::new();
    for n in 1..=43 {
        assert!(matches!(
            p.push_from_peer(n, data(1)),
            FromPeer::Duplicate { .. }
        ));
        acks.extend(out.envelopes().into_iter().map(|e| match e {
            Envelope::Ack { p, to, .. } => {
                assert_eq!(to, Role::Mac);
                p
            }
            other => panic!("not an ack: {other:?}"),
        }));
    }
    assert_eq!(acks, [16, 32, 40]);
    // Published in one batch, those acks would be one.
    for n in 1..=43 {
        p.push_from_peer(n, data(1));
    }
    assert_eq!(
        out.envelopes(),
        [Envelope::Ack {
            sid: "s".into(),
            to: Role::Mac,
            p: 40
        }]
    );
}

#[test]
fn a_gap_from_another_node_asks_its_node_once_for_a_resend() {
    let (bus, mut out) = Bus::detached("receiver");
    let p = Pipe::fed_from_peer(limits(), 0, 0, peer(&bus, "sender", Role::Mac));
    assert_eq!(p.push_from_peer(1, data(1)), FromPeer::Queued);
    // Frame 2 was lost; every frame behind it finds the gap, one asks.
    for n in 3..=20 {
        assert!(matches!(
            p.push_from_peer(n, data(1)),
            FromPeer::Gap { next: 2, .. }
        ));
    }
    assert_eq!(
        out.publish(),
        [(
            Arc::from("sender"),
            Envelope::Control(Control::Resend {
                sid: "s".into(),
                to: Role::Mac,
                from: 2
            })
        )]
    );
}

#[test]
fn a_full_link_pauses_new_frames_and_drops_replays_which_are_sent_again_once_it_drains() {
    actix::System::new().block_on(async {
        let (bus, mut out) = Bus::detached("sender");
        // Limits that never pause on the pipe's own account.
        let limits = Limits {
            max_buffered: 1 << 40,
            ..limits()
        };
        let p = Pipe::sending_to_peer(limits, peer(&bus, "receiver", Role::Browser), 0, 0);
        let gate = Gate::new();
        let mib = Frame::Binary(Bytes::from(vec![0u8; 1 << 20]));
        // New frames are never dropped: past the high mark the gate closes.
        let mut pushed = 0;
        while !gate.is_closed() {
            assert_eq!(p.push(mib.clone(), &gate), Pushed::Queued { remote: true });
            pushed += 1;
            assert!(pushed <= 40, "the link never paused the sender");
        }
        assert_eq!(pushed, 32, "past 32 MiB with the envelopes' overhead");
        // A resend of everything fits up to the hard limit; the rest is
        // dropped, counted, and owed.
        p.resend_to_peer(0);
        let full = bus
            .metrics()
            .bus_dropped
            .with_label_values(&[DropReason::ReplayFull.as_str()])
            .get();
        assert_eq!(full, 1, "64 MiB hold 31 of the 32 again");
        assert!(bus.take_lost().is_empty(), "no room to send them again yet");
        // The publisher empties the link: the sender goes on, and the
        // dropped frames are owed to the receiver's node.
        while !out.publish().is_empty() {}
        assert!(!gate.is_closed(), "below the low mark the sender goes on");
        assert_eq!(bus.take_lost(), [Arc::from("receiver")]);
        assert!(bus.take_lost().is_empty(), "once");
        assert_eq!(drops(&bus), 1);
    });
}
