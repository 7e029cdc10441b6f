//! Wire format of every message, both ways.

use super::*;

#[test]
fn client_messages_parse_from_the_wire() {
    assert_eq!(
        ClientMessage::parse(r#"{"type":"register"}"#).unwrap(),
        ClientMessage::Register {
            client_id: None,
            max_guests: None,
            admit: None
        }
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"register","clientId":"abc"}"#).unwrap(),
        ClientMessage::Register {
            client_id: Some("abc".into()),
            max_guests: None,
            admit: None
        }
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"resume","sessionId":"s","resumeToken":"t","lastSeq":7}"#)
            .unwrap(),
        ClientMessage::Resume {
            session_id: "s".into(),
            resume_token: "t".into(),
            last_seq: 7,
            guest_seqs: GuestSeqs::new(),
        }
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"leave","extra":1}"#).unwrap(),
        ClientMessage::Leave
    );
    let ping = ClientMessage::parse(r#"{"type":"ping","ts":1700000000123}"#).unwrap();
    let ClientMessage::Ping { ts } = ping else {
        panic!("not a ping")
    };
    assert_eq!(ts.to_string(), "1700000000123");
}

#[test]
fn ping_timestamps_come_back_as_the_same_number() {
    // Found by `make fuzz` (client_message): without correctly rounded
    // float parsing this read one ULP off, so `pong` echoed another number.
    for ts in [
        "123456789012691357802469135780",
        "1700000000123.4567",
        "0.30000000000000004",
        "-2.5e-308",
    ] {
        let ping = ClientMessage::parse(&format!(r#"{{"type":"ping","ts":{ts}}}"#)).unwrap();
        assert_eq!(ClientMessage::parse(&ping.to_text()).unwrap(), ping, "{ts}");
        let ClientMessage::Ping { ts: n } = ping else {
            panic!("not a ping")
        };
        assert_eq!(n.as_f64(), ts.parse::<f64>().ok(), "{ts}");
    }
}

#[test]
fn is_data_agrees_with_the_full_parse() {
    for text in [
        r#"{"type":"data","payload":"hi"}"#,
        r#"{"payload":"hi","type":"data"}"#,
        r#"{"type":"data","payload":"h\u00e9 \"q\"","extra":[1,{"a":null}]}"#,
        r#"{"type":"d\u0061ta","payload":""}"#,
        r#" {"type":"data","payload":"x"} "#,
        r#"{"type":"data","payload":"x"} x"#,
        r#"{"type":"data","payload":5}"#,
        r#"{"type":"data","payload":null}"#,
        r#"{"type":"data"}"#,
        r#"{"type":"data","payload":"a","payload":"b"}"#,
        r#"{"type":"data","type":"data","payload":"a"}"#,
        r#"{"type":"ping","ts":1,"payload":"x"}"#,
        r#"{"type":"DATA","payload":"x"}"#,
        r#"{"type":"data","payload":"\ud800"}"#,
        r#"["data","x"]"#,
        "",
    ] {
        let full = matches!(ClientMessage::parse(text), Ok(ClientMessage::Data { .. }));
        assert_eq!(ClientMessage::is_data(text), full, "{text}");
        assert!(!ClientMessage::is_plain_data(text) || full, "{text}");
    }
    assert!(ClientMessage::is_data(r#"{"type":"data","payload":"hi"}"#));
}

#[test]
fn malformed_client_messages_are_errors() {
    for text in [
        "",
        "not json",
        "[]",
        "{}",
        r#"{"type":"nope"}"#,
        r#"{"type":"join"}"#,
        r#"{"type":"join","code":7}"#,
        r#"{"type":"resume","sessionId":"s","resumeToken":"t","lastSeq":-1}"#,
        r#"{"type":"data","payload":{"a":1}}"#,
        r#"{"type":"ping","ts":"x"}"#,
        r#"{"type":"Register"}"#,
    ] {
        assert!(ClientMessage::parse(text).is_err(), "{text:?} parsed");
    }
}

#[test]
fn room_messages_parse_from_the_wire() {
    assert_eq!(
        ClientMessage::parse(r#"{"type":"register","maxGuests":3,"admit":"auto"}"#).unwrap(),
        ClientMessage::Register {
            client_id: None,
            max_guests: Some(3),
            admit: Some(AdmitMode::Auto)
        }
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"join","code":"abc","name":"Ana"}"#).unwrap(),
        ClientMessage::Join {
            code: "abc".into(),
            name: Some("Ana".into())
        }
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"admit","guestId":2}"#).unwrap(),
        ClientMessage::Admit { guest_id: 2 }
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"to"}"#).unwrap(),
        ClientMessage::To { guest_id: None }
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"to","guestId":7}"#).unwrap(),
        ClientMessage::To { guest_id: Some(7) }
    );
    for bad in [
        r#"{"type":"register","maxGuests":-1}"#,
        r#"{"type":"register","admit":"maybe"}"#,
        r#"{"type":"admit"}"#,
        r#"{"type":"remove","guestId":"1"}"#,
        r#"{"type":"to","guestId":1.5}"#,
    ] {
        assert!(ClientMessage::parse(bad).is_err(), "{bad} parsed");
    }
    assert_eq!(
        ServerMessage::GuestLeft {
            guest_id: 4,
            reason: GuestLeftReason::Removed
        }
        .to_text(),
        r#"{"type":"guest_left","guestId":4,"reason":"removed"}"#
    );
    assert_eq!(
        ServerMessage::From { guest_id: 4 }.to_text(),
        r#"{"type":"from","guestId":4}"#
    );
}

#[test]
fn a_malformed_message_still_says_what_it_meant_to_be() {
    let bad_to = r#"{"type":"to","guestId":"b"}"#;
    assert!(ClientMessage::parse(bad_to).is_err());
    assert!(ClientMessage::has_type(bad_to, "to"));
    assert!(!ClientMessage::has_type(bad_to, "admit"));
    assert!(!ClientMessage::has_type("not json", "to"));
    assert!(!ClientMessage::has_type(r#"{"guestId":1}"#, "to"));
}

#[test]
fn v1_messages_carry_no_room_fields() {
    let joined = ServerMessage::Joined {
        session_id: "s".into(),
        resume_token: "t".into(),
        guest_id: None,
    };
    assert_eq!(
        joined.to_text(),
        r#"{"type":"joined","sessionId":"s","resumeToken":"t"}"#
    );
}

#[test]
fn server_messages_use_camel_case_fields() {
    let text = ServerMessage::Registered {
        code: "H4F7KN".into(),
        expires_at: 1,
        session_id: "s".into(),
        resume_token: "t".into(),
        max_guests: None,
        admit: None,
    }
    .to_text();
    assert_eq!(
        text,
        r#"{"type":"registered","code":"H4F7KN","expiresAt":1,"sessionId":"s","resumeToken":"t"}"#
    );
    assert_eq!(
        ServerMessage::PeerLeft {
            reason: PeerLeftReason::Timeout
        }
        .to_text(),
        r#"{"type":"peer_left","reason":"timeout"}"#
    );
    assert_eq!(
        ServerMessage::error(ErrorCode::NotPaired).to_text(),
        format!(
            r#"{{"type":"error","code":"NOT_PAIRED","message":"{}"}}"#,
            ErrorCode::NotPaired.default_message()
        )
    );
}

#[test]
fn a_hosts_guest_seqs_go_out_only_when_there_are_some() {
    let mut m = ClientMessage::Resume {
        session_id: "s".into(),
        resume_token: "t".into(),
        last_seq: 12,
        guest_seqs: GuestSeqs::new(),
    };
    assert_eq!(
        m.to_text(),
        r#"{"type":"resume","sessionId":"s","resumeToken":"t","lastSeq":12}"#
    );
    let ClientMessage::Resume { guest_seqs, .. } = &mut m else {
        unreachable!()
    };
    guest_seqs.extend([(1, 7), (3, 5)]);
    let text = m.to_text();
    assert_eq!(
        text,
        r#"{"type":"resume","sessionId":"s","resumeToken":"t","lastSeq":12,"guestSeqs":{"1":7,"3":5}}"#
    );
    assert_eq!(ClientMessage::parse(&text).unwrap(), m);
}

#[test]
fn malformed_guest_seqs_read_as_absent_not_as_a_bad_resume() {
    for seqs in [
        r#"{"x":1}"#,
        r#"{"1":-1}"#,
        r#"{"1":"7"}"#,
        r#"[7,5]"#,
        r#"null"#,
        r#"7"#,
        r#"{"1":1.5}"#,
    ] {
        let text = format!(
            r#"{{"type":"resume","sessionId":"s","resumeToken":"t","lastSeq":3,"guestSeqs":{seqs}}}"#
        );
        let m = ClientMessage::parse(&text).unwrap_or_else(|e| panic!("{seqs}: {e}"));
        let ClientMessage::Resume {
            guest_seqs,
            last_seq,
            ..
        } = m
        else {
            panic!("not a resume")
        };
        assert!(guest_seqs.is_empty(), "{seqs}");
        assert_eq!(last_seq, 3);
    }
}
