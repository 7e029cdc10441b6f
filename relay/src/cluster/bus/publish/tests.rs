//! What one batch publishes: acks coalesced within their bounds, messages
//! split by size, links taken in turn. Through the detached bus, so what is
//! checked is what the receiving node would decode.

use bytes::Bytes;

use super::*;
use crate::cluster::envelope::{Control, EndReason, GuestLane};
use crate::frame::Frame;
use crate::gate::Gate;

fn ack(sid: &str, to: Role, p: u64) -> Envelope {
    Envelope::Ack {
        sid: sid.into(),
        to,
        p,
    }
}

fn written(sid: &str, to: Role, p: u64) -> Envelope {
    Envelope::Written {
        sid: sid.into(),
        to,
        p,
    }
}

fn ended(sid: &str) -> Control {
    Control::Ended {
        sid: sid.into(),
        role: Role::Mac,
        reason: EndReason::Left,
    }
}

#[test]
fn acks_and_written_reports_of_one_direction_become_one_each_with_the_highest_number() {
    let (bus, mut out) = Bus::detached("me");
    let l = bus.link(&Arc::from("other"));
    let gate = Gate::new();
    l.ack("s1".into(), Role::Mac, 3, 0);
    l.written("s1".into(), Role::Mac, 5, 0);
    l.ack("s2".into(), Role::Mac, 1, 0);
    l.ack("s1".into(), Role::Browser, 2, 0);
    l.frame(
        "s1".into(),
        Role::Browser,
        9,
        Frame::Binary(Bytes::from_static(b"f")),
        &gate,
    );
    l.ack("s1".into(), Role::Mac, 7, 0);
    l.written("s1".into(), Role::Mac, 8, 0);
    // A duplicate's ack may be lower than one before it: the highest wins.
    l.ack("s1".into(), Role::Mac, 4, 0);
    l.ack("s2".into(), Role::Mac, 2, 0);
    assert_eq!(
        out.envelopes(),
        [
            ack("s1", Role::Mac, 7),
            written("s1", Role::Mac, 8),
            ack("s2", Role::Mac, 2),
            ack("s1", Role::Browser, 2),
            Envelope::Frame {
                sid: "s1".into(),
                to: Role::Browser,
                p: 9,
                frame: Frame::Binary(Bytes::from_static(b"f")),
            },
        ]
    );
    assert_eq!(bus.metrics().bus_queued_bytes.get(), 0);
}

#[test]
fn a_room_frame_is_one_envelope_per_node_and_room_reports_coalesce_per_guest() {
    let (bus, mut out) = Bus::detached("me");
    let (a, b) = (bus.link(&Arc::from("a")), bus.link(&Arc::from("b")));
    let gate = Gate::new();
    let frame = Frame::Binary(Bytes::from_static(b"to all"));
    // Eight guests: five on node a, three on node b, each at its own number.
    a.room_frame(
        "s".into(),
        None,
        (1..=5).map(|g| (g, g * 10)).collect(),
        frame.clone(),
        &gate,
    );
    b.room_frame(
        "s".into(),
        None,
        vec![(6, 1), (7, 2), (8, 3)],
        frame.clone(),
        &gate,
    );
    let lane = |guest, to_host| GuestLane { guest, to_host };
    a.guest_ack("s".into(), lane(1, false), 3, 0);
    a.guest_ack("s".into(), lane(2, false), 4, 0);
    a.guest_ack("s".into(), lane(1, false), 9, 0);
    a.guest_ack("s".into(), lane(1, true), 2, 0);
    a.guest_written("s".into(), lane(1, false), 5, 0);
    a.ack("s".into(), Role::Mac, 1, 0);
    a.guest_frame("s".into(), 1, 7, Frame::Text("hi".into()), &gate);
    let mut sent = out.publish();
    sent.sort_by(|x, y| x.0.cmp(&y.0));
    let on = |node: &str| -> Vec<Envelope> {
        sent.iter()
            .filter(|(n, _)| &**n == node)
            .map(|(_, e)| e.clone())
            .collect()
    };
    assert_eq!(
        on("b"),
        [Envelope::RoomFrame {
            sid: "s".into(),
            host: None,
            lanes: vec![(6, 1), (7, 2), (8, 3)],
            frame: frame.clone(),
        }]
    );
    assert_eq!(
        on("a"),
        [
            Envelope::RoomFrame {
                sid: "s".into(),
                host: None,
                lanes: vec![(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)],
                frame,
            },
            Envelope::GuestAck {
                sid: "s".into(),
                lane: lane(1, false),
                p: 9
            },
            Envelope::GuestAck {
                sid: "s".into(),
                lane: lane(2, false),
                p: 4
            },
            Envelope::GuestAck {
                sid: "s".into(),
                lane: lane(1, true),
                p: 2
            },
            Envelope::GuestWritten {
                sid: "s".into(),
                lane: lane(1, false),
                p: 5
            },
            ack("s", Role::Mac, 1),
            Envelope::GuestFrame {
                sid: "s".into(),
                guest: 1,
                p: 7,
                frame: Frame::Text("hi".into()),
            },
        ]
    );
    assert_eq!(bus.metrics().bus_queued_bytes.get(), 0);
}

#[test]
fn one_host_frame_queued_for_each_guest_of_a_node_is_published_once() {
    let (bus, mut out) = Bus::detached("me");
    let l = bus.link(&Arc::from("other"));
    let gate = Gate::new();
    let one = Frame::Binary(Bytes::from(vec![1u8; 1000]));
    let two = Frame::Text(r#"{"type":"data","payload":"2"}"#.into());
    let other = Frame::Binary(Bytes::from(vec![1u8; 1000]));
    // Each guest's direction queues the frame on its own, as the host's
    // pushes reach them one after another.
    for g in 1..=4 {
        l.room_frame("s".into(), None, vec![(g, 7)], one.clone(), &gate);
    }
    for g in 1..=2 {
        l.room_frame("s".into(), None, vec![(g, 8)], two.clone(), &gate);
    }
    // Not merged: a frame after another session's, a frame past an ack, and a
    // different frame with equal bytes (merging it would be right too).
    l.room_frame("t".into(), None, vec![(3, 8)], two.clone(), &gate);
    l.room_frame("s".into(), None, vec![(3, 8)], two.clone(), &gate);
    l.ack("s".into(), Role::Mac, 1, 0);
    l.room_frame("s".into(), None, vec![(4, 8)], two.clone(), &gate);
    l.room_frame("s".into(), None, vec![(5, 1)], other.clone(), &gate);
    let room = |sid: &str, lanes: Vec<(u64, u64)>, frame: &Frame| Envelope::RoomFrame {
        sid: sid.into(),
        host: None,
        lanes,
        frame: frame.clone(),
    };
    assert_eq!(
        out.envelopes(),
        [
            room("s", vec![(1, 7), (2, 7), (3, 7), (4, 7)], &one),
            room("s", vec![(1, 8), (2, 8)], &two),
            room("t", vec![(3, 8)], &two),
            room("s", vec![(3, 8)], &two),
            ack("s", Role::Mac, 1),
            room("s", vec![(4, 8)], &two),
            room("s", vec![(5, 1)], &other),
        ]
    );
    assert_eq!(bus.metrics().bus_queued_bytes.get(), 0);
}

/// A host frame's number goes in the merged envelope once; frames of
/// different numbers are never merged, whatever their payload.
#[test]
fn room_frames_merge_only_with_the_same_host_number() {
    let (bus, mut out) = Bus::detached("me");
    let l = bus.link(&Arc::from("other"));
    let gate = Gate::new();
    let one = Frame::Binary(Bytes::from(vec![1u8; 100]));
    l.room_frame("s".into(), Some(7), vec![(1, 3)], one.clone(), &gate);
    l.room_frame("s".into(), Some(7), vec![(2, 5)], one.clone(), &gate);
    l.room_frame("s".into(), Some(8), vec![(3, 1)], one.clone(), &gate);
    l.room_frame("s".into(), None, vec![(4, 1)], one.clone(), &gate);
    let room = |host, lanes| Envelope::RoomFrame {
        sid: "s".into(),
        host,
        lanes,
        frame: one.clone(),
    };
    assert_eq!(
        out.envelopes(),
        [
            room(Some(7), vec![(1, 3), (2, 5)]),
            room(Some(8), vec![(3, 1)]),
            room(None, vec![(4, 1)]),
        ]
    );
}

#[test]
fn acks_are_not_coalesced_across_a_control_message_of_any_session() {
    let (bus, mut out) = Bus::detached("me");
    let l = bus.link(&Arc::from("other"));
    l.ack("s1".into(), Role::Mac, 3, 0);
    l.ack("s1".into(), Role::Mac, 4, 0);
    l.control(ended("another session"));
    l.ack("s1".into(), Role::Mac, 5, 0);
    l.written("s1".into(), Role::Mac, 5, 0);
    l.ack("s1".into(), Role::Mac, 6, 0);
    assert_eq!(
        out.envelopes(),
        [
            ack("s1", Role::Mac, 4),
            Envelope::Control(ended("another session")),
            ack("s1", Role::Mac, 6),
            written("s1", Role::Mac, 5),
        ]
    );
}

#[test]
fn acks_of_two_pairings_of_one_direction_are_not_coalesced() {
    // The mac's node started a new pairing (a new browser joined) when a
    // control came *from* the other node: nothing in this link marks it.
    let (bus, mut out) = Bus::detached("me");
    let l = bus.link(&Arc::from("other"));
    l.ack("s".into(), Role::Mac, 50, 0);
    l.ack("s".into(), Role::Mac, 3, 120);
    l.ack("s".into(), Role::Mac, 4, 120);
    assert_eq!(
        out.envelopes(),
        [ack("s", Role::Mac, 50), ack("s", Role::Mac, 4)]
    );
}

#[test]
fn batches_split_into_messages_by_size_and_every_message_decodes() {
    let (bus, mut out) = Bus::detached("me");
    let l = bus.link(&Arc::from("other"));
    let gate = Gate::new();
    let frame = Frame::Binary(Bytes::from(vec![7u8; 100 << 10]));
    for p in 1..=10 {
        l.frame("s".into(), Role::Mac, p, frame.clone(), &gate);
    }
    let mut items = Vec::new();
    let bytes = l.take(usize::MAX, &mut items);
    let msgs = pack(&items);
    assert_eq!(msgs.len(), 4, "three frames of 100 KiB pass 256 KiB");
    let mut ps = Vec::new();
    for m in msgs {
        assert!(m.len() < MAX_MESSAGE + (100 << 10) + 64);
        let (envs, bad) = Envelope::decode_all(m.freeze());
        assert_eq!(bad, 0);
        ps.extend(envs.into_iter().map(|e| match e {
            Envelope::Frame { p, .. } => p,
            other => panic!("not a frame: {other:?}"),
        }));
    }
    assert_eq!(ps, (1..=10).collect::<Vec<_>>());
    l.published(bytes, items.len(), true);
    assert!(out.publish().is_empty());
}

#[test]
fn a_busy_link_does_not_keep_another_waiting() {
    let (bus, mut out) = Bus::detached("me");
    let busy = bus.link(&Arc::from("busy"));
    let quiet = bus.link(&Arc::from("quiet"));
    for p in 0..3 * MAX_BATCH as u64 {
        busy.ack("s".into(), Role::Mac, p, p);
    }
    quiet.control(ended("s"));
    let mut quiet_seen = false;
    for _ in 0..2 {
        let batch = out.publish();
        assert!(batch.len() <= MAX_BATCH);
        quiet_seen |= batch.iter().any(|(n, _)| &**n == "quiet");
    }
    assert!(quiet_seen, "the quiet link waited behind the busy one");
}
