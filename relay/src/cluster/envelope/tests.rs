//! Envelopes round trip, keep a pairing's bytes, and skip what is malformed.

use super::control::{HeldBody, Verdict};
use super::*;
use relay_protocol::GuestLeftReason;

#[test]
fn envelopes_round_trip_in_one_message() {
    let all = vec![
        Envelope::Frame {
            sid: "s1".into(),
            to: Role::Browser,
            p: 7,
            frame: Frame::Binary(Bytes::from_static(&[0, 1, 255])),
        },
        Envelope::Frame {
            sid: "s1".into(),
            to: Role::Mac,
            p: u64::MAX,
            frame: Frame::Text(r#"{"type":"data","payload":"é"}"#.into()),
        },
        Envelope::Ack {
            sid: "s2".into(),
            to: Role::Mac,
            p: 3,
        },
        Envelope::Written {
            sid: "s2".into(),
            to: Role::Browser,
            p: 9,
        },
        Envelope::Control(Control::Ended {
            sid: "s3".into(),
            role: Role::Browser,
            reason: EndReason::Left,
        }),
        Envelope::Probe { nonce: 42 },
        Envelope::RoomFrame {
            sid: "s4".into(),
            host: None,
            lanes: vec![(1, 5), (3, u64::MAX), (u64::MAX, 0)],
            frame: Frame::Binary(Bytes::from_static(&[9, 0, 9])),
        },
        Envelope::RoomFrame {
            sid: "s4".into(),
            host: None,
            lanes: vec![(2, 1)],
            frame: Frame::Text(r#"{"type":"data","payload":""}"#.into()),
        },
        Envelope::RoomFrame {
            sid: "s4".into(),
            host: Some(u64::MAX),
            lanes: vec![(2, 9), (7, 1)],
            frame: Frame::Binary(Bytes::from_static(&[1])),
        },
        Envelope::GuestFrame {
            sid: "s4".into(),
            guest: 3,
            p: 11,
            frame: Frame::Text(r#"{"type":"data","payload":"ü"}"#.into()),
        },
        Envelope::GuestAck {
            sid: "s4".into(),
            lane: GuestLane {
                guest: 3,
                to_host: true,
            },
            p: 11,
        },
        Envelope::GuestWritten {
            sid: "s4".into(),
            lane: GuestLane {
                guest: 1,
                to_host: false,
            },
            p: 5,
        },
    ];
    let mut buf = BytesMut::new();
    for e in &all {
        e.encode(&mut buf);
    }
    let (back, bad) = Envelope::decode_all(buf.freeze());
    assert_eq!(bad, 0);
    assert_eq!(back, all);
}

#[test]
fn a_pairing_s_frame_is_the_bytes_it_always_was() {
    let mut buf = BytesMut::new();
    Envelope::Frame {
        sid: "ab".into(),
        to: Role::Browser,
        p: 258,
        frame: Frame::Binary(Bytes::from_static(b"xy")),
    }
    .encode(&mut buf);
    assert_eq!(
        &buf[..],
        &[
            0, 0, 0, 16, // length
            1,  // frame
            2, b'a', b'b', // session
            1,    // to the browser
            0, 0, 0, 0, 0, 0, 1, 2, // p
            0, b'x', b'y', // binary, payload
        ]
    );
}

/// The host's number of a room frame is a first lane naming guest 0: a
/// node that does not know it reads the frame as before, with one more
/// guest it does not hold (which its dispatcher skips).
#[test]
fn a_room_frame_s_host_number_is_a_lane_an_older_node_skips() {
    let frame = Frame::Text(r#"{"type":"data","payload":"x"}"#.into());
    let encode = |e: Envelope| {
        let mut buf = BytesMut::new();
        e.encode(&mut buf);
        buf.freeze()
    };
    let with = encode(Envelope::RoomFrame {
        sid: "s".into(),
        host: Some(42),
        lanes: vec![(3, 7), (5, 1)],
        frame: frame.clone(),
    });
    // What a node of before reads: the same bytes as a frame for guest 0 too.
    let before = encode(Envelope::RoomFrame {
        sid: "s".into(),
        host: None,
        lanes: vec![(0, 42), (3, 7), (5, 1)],
        frame: frame.clone(),
    });
    assert_eq!(with, before);
    // A host's number with no guest is no frame.
    let alone = encode(Envelope::RoomFrame {
        sid: "s".into(),
        host: None,
        lanes: vec![(0, 42)],
        frame,
    });
    assert_eq!(Envelope::decode_all(alone), (vec![], 1));
}

#[test]
fn malformed_room_envelopes_are_skipped() {
    let decode = |body: &[u8]| {
        let mut msg = (body.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(body);
        Envelope::decode_all(Bytes::from(msg))
    };
    // A room frame naming no guest, more than it holds, or too many.
    for count in [0u16, 2, MAX_ROOM_LANES as u16 + 1] {
        let mut body = vec![ROOM_FRAME, 1, b's'];
        body.extend_from_slice(&count.to_be_bytes());
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[0, b'x']);
        assert_eq!(decode(&body), (vec![], 1), "{count} lanes");
    }
    // A guest report whose direction is neither 0 nor 1.
    let mut body = vec![GUEST_ACK, 1, b's'];
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 2]);
    body.extend_from_slice(&[0; 8]);
    assert_eq!(decode(&body), (vec![], 1));
    // A guest frame cut short, and one whose text is not UTF-8.
    assert_eq!(decode(&[GUEST_FRAME, 1, b's', 0, 0]), (vec![], 1));
    let mut body = vec![GUEST_FRAME, 1, b's'];
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(&[1, 0xff]);
    assert_eq!(decode(&body), (vec![], 1));
}

#[test]
fn a_handover_carries_unacknowledged_frames_verbatim_binary_as_base64() {
    let frames = [
        (3, Frame::Binary(Bytes::from_static(&[0, 1, 255, b'"']))),
        (4, Frame::Text(r#"{"type":"data","payload":"é\n"}"#.into())),
        (5, Frame::Binary(Bytes::new())),
    ];
    let c = Control::Handover {
        sid: "s".into(),
        role: Role::Browser,
        received: Some(5),
        events: vec![],
        unacknowledged: frames.iter().map(|(p, f)| HeldFrame::new(*p, f)).collect(),
        error: None,
        request: 1,
    };
    let mut buf = BytesMut::new();
    Envelope::Control(c.clone()).encode(&mut buf);
    let (back, bad) = Envelope::decode_all(buf.freeze());
    assert_eq!((bad, back), (0, vec![Envelope::Control(c.clone())]));
    let Control::Handover { unacknowledged, .. } = c else {
        unreachable!()
    };
    let back: Vec<_> = unacknowledged
        .into_iter()
        .map(|h| h.into_frame().expect("decodes"))
        .collect();
    assert_eq!(back, frames);
    // A node that does not know the field reads the rest; one without it is read as none.
    let old = r#"{"type":"handover","sid":"s","role":"mac","received":null,"events":[],"error":null,"request":2}"#;
    let Ok(Control::Handover { unacknowledged, .. }) = serde_json::from_str(old) else {
        panic!("an older node's handover must parse")
    };
    assert!(unacknowledged.is_empty());
    let bad = HeldFrame {
        p: 1,
        body: HeldBody::Binary("not base64!".into()),
    };
    assert_eq!(bad.into_frame(), None);
}

#[test]
fn an_away_names_the_node_the_side_left_and_an_older_nodes_away_still_parses() {
    let c = Control::Away {
        sid: "s".into(),
        role: Role::Mac,
        node: Some("n1".into()),
    };
    let mut buf = BytesMut::new();
    Envelope::Control(c.clone()).encode(&mut buf);
    let (back, bad) = Envelope::decode_all(buf.freeze());
    assert_eq!((bad, back), (0, vec![Envelope::Control(c)]));
    // An older node's, without it: news from wherever the side was.
    let old = r#"{"type":"away","sid":"s","role":"browser"}"#;
    let Ok(Control::Away { role, node, .. }) = serde_json::from_str(old) else {
        panic!("an older node's away must parse")
    };
    assert_eq!((role, node), (Role::Browser, None));
}

#[test]
fn garbage_is_skipped_not_panicked_on() {
    for junk in [
        &b""[..],
        b"\x00\x00\x00\x05abc",
        b"\x00\x00\x00\x01\x09",
        b"\xff\xff\xff\xff",
    ] {
        let (_, _) = Envelope::decode_all(Bytes::copy_from_slice(junk));
    }
    let (ok, bad) = Envelope::decode_all(Bytes::from_static(b"\x00\x00\x00\x02\x01\x05"));
    assert!(ok.is_empty());
    assert_eq!(bad, 1);
}

#[test]
fn a_room_s_control_messages_round_trip_and_keep_their_json() {
    let sid = || String::from("s");
    let all = vec![
        Control::GuestJoined {
            sid: sid(),
            guest: 3,
            node: "b".into(),
            name: Some("Ada \"é\"".into()),
            admitted: false,
        },
        Control::Decide {
            sid: sid(),
            guest: 3,
            verdict: Verdict::Admit,
            request: 7,
        },
        Control::Decided {
            sid: sid(),
            guest: 3,
            done: true,
            request: 7,
        },
        Control::GuestAway {
            sid: sid(),
            guest: 4,
        },
        Control::GuestEnded {
            sid: sid(),
            guest: 4,
            reason: GuestLeftReason::Removed,
        },
        Control::GuestMoved {
            sid: sid(),
            guest: 5,
            node: "c".into(),
            p_last: 12,
            was_away: true,
            request: 8,
        },
        Control::GuestHandover {
            sid: sid(),
            guest: 5,
            received: Some(2),
            events: vec![r#"{"type":"peer_disconnected"}"#.into()],
            unacknowledged: vec![HeldFrame::new(
                2,
                &Frame::Binary(Bytes::from_static(&[0, 255])),
            )],
            error: None,
            not_yet: true,
            request: 8,
        },
        Control::HostHandover {
            sid: sid(),
            accepted: 9,
            guests: vec![HandedGuest {
                id: 6,
                node: "d".into(),
                admitted: true,
                sent: 4,
                held: vec![HeldFrame::new(4, &Frame::Text("x".into()))],
                have: 3,
            }],
            request: 9,
        },
        Control::HostAt {
            sid: sid(),
            node: "e".into(),
            guests: vec![(6, 3), (7, 0)],
            was_away: true,
        },
        Control::HostRebuild {
            sid: sid(),
            node: "e".into(),
            guests: vec![(6, Some(3)), (7, None)],
            request: 10,
        },
        Control::HostRebuilt {
            sid: sid(),
            node: "f".into(),
            guests: vec![super::RebuiltGuest {
                id: 6,
                took: 40,
                host_at: 52,
                from: 3,
                held: Vec::new(),
            }],
            request: 10,
        },
    ];
    let mut buf = BytesMut::new();
    for c in &all {
        Envelope::Control(c.clone()).encode(&mut buf);
    }
    let (back, bad) = Envelope::decode_all(buf.freeze());
    assert_eq!(bad, 0);
    assert_eq!(
        back,
        all.into_iter().map(Envelope::Control).collect::<Vec<_>>()
    );
    // What other nodes read: pinned, as a pairing's bytes are.
    let json = |c: &Control| serde_json::to_string(c).unwrap();
    assert_eq!(
        json(&Control::Decide {
            sid: sid(),
            guest: 3,
            verdict: Verdict::Remove,
            request: 1
        }),
        r#"{"type":"decide","sid":"s","guest":3,"verdict":"remove","request":1}"#
    );
    assert_eq!(
        json(&Control::GuestEnded {
            sid: sid(),
            guest: 4,
            reason: GuestLeftReason::Timeout
        }),
        r#"{"type":"guest_ended","sid":"s","guest":4,"reason":"timeout"}"#
    );
    assert_eq!(
        json(&Control::HostAt {
            sid: sid(),
            node: "e".into(),
            guests: vec![(6, 3)],
            was_away: false
        }),
        r#"{"type":"host_at","sid":"s","node":"e","guests":[[6,3]],"was_away":false}"#
    );
    assert_eq!(
        json(&Control::HostRebuild {
            sid: sid(),
            node: "e".into(),
            guests: vec![(6, Some(3)), (7, None)],
            request: 1,
        }),
        r#"{"type":"host_rebuild","sid":"s","node":"e","guests":[[6,3],[7,null]],"request":1}"#
    );
    assert_eq!(
        json(&Control::HostRebuilt {
            sid: sid(),
            node: "f".into(),
            guests: vec![super::RebuiltGuest {
                id: 6,
                took: 40,
                host_at: 52,
                from: 3,
                held: Vec::new(),
            }],
            request: 1,
        }),
        r#"{"type":"host_rebuilt","sid":"s","node":"f","guests":[{"id":6,"took":40,"host_at":52,"from":3}],"request":1}"#
    );
}

#[test]
fn a_node_skips_a_control_message_of_a_kind_it_does_not_know_and_reads_the_rest() {
    // What a node of before rooms makes of a room's message: one bad
    // envelope, and the next one read as usual.
    let mut buf = BytesMut::new();
    let future = br#"{"type":"a_kind_from_a_newer_node","sid":"s","guest":3}"#;
    buf.put_u32(1 + future.len() as u32);
    buf.put_u8(CONTROL);
    buf.put_slice(future);
    let ended = Control::Ended {
        sid: "s".into(),
        role: Role::Browser,
        reason: EndReason::Left,
    };
    Envelope::Control(ended.clone()).encode(&mut buf);
    assert_eq!(
        Envelope::decode_all(buf.freeze()),
        (vec![Envelope::Control(ended)], 1)
    );
}
