//! Rooms on one node: a host with several guests, admitted or denied by
//! the host, frames to all or one, tagged by sender, per-guest resume.

use serde_json::{Value, json};

use crate::support::{Got, Relay, Ws, resume_msg};

/// A room host and what `registered` said.
struct Host {
    ws: Ws,
    code: String,
    session_id: String,
    token: String,
}

async fn host(relay: &Relay, max_guests: u32, admit: &str) -> Host {
    let mut ws = relay.mac().await;
    ws.json(json!({"type": "register", "maxGuests": max_guests, "admit": admit}))
        .await;
    let r = ws.expect("registered").await;
    assert_eq!(r["maxGuests"], max_guests);
    assert_eq!(r["admit"], admit);
    Host {
        ws,
        code: r["code"].as_str().unwrap().to_owned(),
        session_id: r["sessionId"].as_str().unwrap().to_owned(),
        token: r["resumeToken"].as_str().unwrap().to_owned(),
    }
}

/// A guest in the room: its connection, id and resume token.
struct Guest {
    ws: Ws,
    id: u64,
    token: String,
}

/// Joins an `auto` room; the host hears `guest_joined` and `guest_admitted`.
async fn join_auto(relay: &Relay, h: &mut Host, name: &str) -> Guest {
    let mut ws = relay.browser().await;
    ws.json(json!({"type": "join", "code": h.code, "name": name}))
        .await;
    let j = ws.expect("joined").await;
    assert_eq!(j["sessionId"], h.session_id.as_str());
    let id = j["guestId"].as_u64().expect("guestId");
    let heard = h.ws.expect("guest_joined").await;
    assert_eq!(
        (heard["guestId"].as_u64(), heard["name"].as_str()),
        (Some(id), Some(name))
    );
    let admitted = h.ws.expect("guest_admitted").await;
    assert_eq!(admitted["guestId"].as_u64(), Some(id));
    Guest {
        ws,
        id,
        token: j["resumeToken"].as_str().unwrap().to_owned(),
    }
}

/// What the host reads next: a data frame with the guest the last `from`
/// named, passing over guest events (a replay repeats those after lastSeq).
async fn from_guest(h: &mut Ws, last_from: &mut Option<u64>) -> (u64, Got) {
    loop {
        let got = h.recv().await;
        if let Got::Text(t) = &got {
            let v: Value = serde_json::from_str(t).unwrap();
            if v["type"] == "from" {
                *last_from = v["guestId"].as_u64();
                continue;
            }
            if v["type"].as_str().is_some_and(|t| t.starts_with("guest_")) {
                continue;
            }
            assert_eq!(v["type"], "data", "the host expected data, got {v}");
        }
        return (last_from.expect("a from before the first guest frame"), got);
    }
}

#[tokio::test]
async fn the_host_admits_one_guest_and_denies_another() {
    let relay = Relay::start(&[]);
    let mut h = host(&relay, 3, "ask").await;

    let mut ana = relay.browser().await;
    ana.json(json!({"type": "join", "code": h.code, "name": "Ana"}))
        .await;
    let waiting = ana.expect("waiting").await;
    let ana_id = waiting["guestId"].as_u64().unwrap();
    let heard = h.ws.expect("guest_joined").await;
    assert_eq!(heard["guestId"].as_u64(), Some(ana_id));
    assert_eq!(heard["name"], "Ana");
    // Not in yet: its data is refused, and the host's reaches no one.
    ana.data("too early").await;
    ana.expect_error("NOT_PAIRED").await;
    h.ws.data("before anyone is in").await;

    h.ws.json(json!({"type": "admit", "guestId": ana_id})).await;
    let joined = ana.expect("joined").await;
    assert_eq!(joined["guestId"].as_u64(), Some(ana_id));
    assert_eq!(joined["sessionId"], h.session_id.as_str());
    assert!(
        joined["resumeToken"]
            .as_str()
            .is_some_and(|t| t.len() >= 32)
    );
    h.ws.expect("guest_admitted").await;

    let mut bo = relay.browser().await;
    bo.json(json!({"type": "join", "code": h.code})).await;
    let bo_id = bo.expect("waiting").await["guestId"].as_u64().unwrap();
    assert_ne!(bo_id, ana_id);
    let heard = h.ws.expect("guest_joined").await;
    assert_eq!(heard.get("name"), None, "no name given: {heard}");
    h.ws.json(json!({"type": "deny", "guestId": bo_id})).await;
    bo.expect_error("DENIED").await;
    bo.expect_close(1000).await;
    let left = h.ws.expect("guest_left").await;
    assert_eq!(
        (left["guestId"].as_u64(), left["reason"].as_str()),
        (Some(bo_id), Some("denied"))
    );

    // Answers to guests that are not waiting are refused, and change nothing.
    for op in ["admit", "deny"] {
        h.ws.json(json!({"type": op, "guestId": bo_id})).await;
        h.ws.expect_error("UNKNOWN_GUEST").await;
        h.ws.json(json!({"type": op, "guestId": ana_id})).await;
        h.ws.expect_error("UNKNOWN_GUEST").await;
    }
    h.ws.json(json!({"type": "remove", "guestId": 999})).await;
    h.ws.expect_error("UNKNOWN_GUEST").await;

    h.ws.data("hello Ana").await;
    assert_eq!(ana.expect("data").await["payload"], "hello Ana");
    ana.data("hi").await;
    let mut last = None;
    let (from, got) = from_guest(&mut h.ws, &mut last).await;
    assert_eq!(from, ana_id);
    assert!(matches!(got, Got::Text(t) if t.contains("\"hi\"")));
}

#[tokio::test]
async fn frames_go_to_all_or_one_guest_and_come_back_tagged_verbatim() {
    let relay = Relay::start(&[]);
    let mut h = host(&relay, 3, "auto").await;
    let mut guests = Vec::new();
    for name in ["a", "b", "c"] {
        guests.push(join_auto(&relay, &mut h, name).await);
    }
    let text = r#"{ "type" : "data", "payload": "é \"q\"", "extra": [1] }"#;
    h.ws.text(text).await;
    h.ws.binary(vec![0u8, 255, 7]).await;
    h.ws.json(json!({"type": "to", "guestId": guests[1].id}))
        .await;
    h.ws.binary(b"only b".to_vec()).await;
    h.ws.json(json!({"type": "to"})).await;
    h.ws.binary(b"all again".to_vec()).await;
    for (i, g) in guests.iter_mut().enumerate() {
        assert_eq!(g.ws.recv().await, Got::Text(text.to_owned()));
        assert_eq!(g.ws.recv().await, Got::Binary(vec![0, 255, 7]));
        if i == 1 {
            assert_eq!(g.ws.recv().await, Got::Binary(b"only b".to_vec()));
        }
        assert_eq!(g.ws.recv().await, Got::Binary(b"all again".to_vec()));
    }

    // Each guest's frames reach the host in its order, tagged with its id.
    for round in 0..20u8 {
        for g in &mut guests {
            g.ws.binary(vec![g.id as u8, round]).await;
        }
    }
    let mut last = None;
    let mut next = vec![0u8; guests.len()];
    for _ in 0..20 * guests.len() {
        let (from, got) = from_guest(&mut h.ws, &mut last).await;
        let Got::Binary(b) = got else {
            panic!("expected binary, got {got:?}")
        };
        assert_eq!(b[0] as u64, from, "frame tagged with another guest");
        let i = guests.iter().position(|g| g.id == from).unwrap();
        assert_eq!(b[1], next[i], "guest {from}'s frames out of order");
        next[i] += 1;
    }

    // A target that is not in the room is refused and sends to no one.
    h.ws.json(json!({"type": "to", "guestId": 77})).await;
    h.ws.expect_error("UNKNOWN_GUEST").await;
    h.ws.binary(b"lost".to_vec()).await;
    h.ws.json(json!({"type": "to"})).await;
    h.ws.binary(b"seen".to_vec()).await;
    for g in &mut guests {
        assert_eq!(g.ws.recv().await, Got::Binary(b"seen".to_vec()));
    }
}

#[tokio::test]
async fn a_full_room_says_so_and_bad_room_requests_are_refused() {
    let relay = Relay::start(&[("RELAY_MAX_GUESTS", "4")]);
    let mut h = host(&relay, 2, "auto").await;
    let _a = join_auto(&relay, &mut h, "a").await;
    let _b = join_auto(&relay, &mut h, "b").await;
    let mut late = relay.browser().await;
    late.json(json!({"type": "join", "code": h.code})).await;
    late.expect_error("ROOM_FULL").await;
    // The connection stays, as for a mistyped code.
    late.json(json!({"type": "ping", "ts": 1})).await;
    late.expect("pong").await;
    for (sample, want) in [
        ("relay_rooms", 1.0),
        ("relay_room_guests{state=\"in\"}", 2.0),
        ("relay_room_guests{state=\"waiting\"}", 0.0),
        ("relay_room_guests_max", 2.0),
        ("relay_room_decisions_total{decision=\"auto\"}", 2.0),
        ("relay_joins_total{result=\"room_full\"}", 1.0),
    ] {
        assert_eq!(relay.metric(sample).await, want, "{sample}");
    }

    let mut big = relay.mac().await;
    for n in [0, 5] {
        big.json(json!({"type": "register", "maxGuests": n})).await;
        let e = big.expect_error("INVALID_MESSAGE").await;
        assert!(
            e["message"].as_str().unwrap().contains("between 1 and 4"),
            "{e}"
        );
    }
    // Room messages from a pairing's mac or from a guest are refused.
    let mut mac = relay.mac().await;
    mac.json(json!({"type": "register"})).await;
    mac.expect("registered").await;
    mac.json(json!({"type": "admit", "guestId": 1})).await;
    mac.expect_error("INVALID_MESSAGE").await;
    let mut solo = host(&relay, 1, "auto").await;
    let mut g = join_auto(&relay, &mut solo, "x").await;
    g.ws.json(json!({"type": "to", "guestId": 1})).await;
    g.ws.expect_error("INVALID_MESSAGE").await;
}

#[tokio::test]
async fn a_removed_guest_is_cut_at_once_and_cannot_resume() {
    let relay = Relay::start(&[]);
    let mut h = host(&relay, 2, "auto").await;
    let mut stay = join_auto(&relay, &mut h, "stay").await;
    let mut gone = join_auto(&relay, &mut h, "gone").await;
    for i in 0..50u8 {
        h.ws.binary(vec![i]).await;
    }
    h.ws.json(json!({"type": "remove", "guestId": gone.id}))
        .await;
    h.ws.binary(b"after".to_vec()).await;
    // The removed guest hears REMOVED and its close, whatever it had not
    // read yet, and nothing sent after the remove.
    let mut closed = None;
    let mut removed = false;
    while closed.is_none() {
        match gone.ws.recv().await {
            Got::Binary(b) => assert_ne!(b, b"after", "a frame after the remove reached it"),
            Got::Text(t) => removed |= t.contains("REMOVED"),
            Got::Close(c) => closed = Some(c.map(|c| c.0)),
            Got::Ended => closed = Some(None),
        }
    }
    assert!(removed, "no REMOVED error");
    assert_eq!(closed, Some(Some(1000)));
    let left = h.ws.expect("guest_left").await;
    assert_eq!(
        (left["guestId"].as_u64(), left["reason"].as_str()),
        (Some(gone.id), Some("removed"))
    );
    for i in 0..50u8 {
        assert_eq!(stay.ws.recv().await, Got::Binary(vec![i]));
    }
    assert_eq!(stay.ws.recv().await, Got::Binary(b"after".to_vec()));

    let mut again = relay.browser().await;
    again.json(resume_msg(&h.session_id, &gone.token, 0)).await;
    again.expect_error("REMOVED").await;
    again.expect_close(1000).await;
    // Its place is free again for someone new.
    join_auto(&relay, &mut h, "new").await;
}

#[tokio::test]
async fn each_guest_resumes_on_its_own_with_nothing_lost() {
    let relay = Relay::start(&[]);
    let mut h = host(&relay, 2, "auto").await;
    let mut a = join_auto(&relay, &mut h, "a").await;
    let b = join_auto(&relay, &mut h, "b").await;
    for i in 0..10u8 {
        h.ws.binary(vec![i]).await;
    }
    for i in 0..10u8 {
        assert_eq!(a.ws.recv().await, Got::Binary(vec![i]));
    }
    for i in 0..3u8 {
        a.ws.binary(vec![100 + i]).await;
    }
    let mut last = None;
    for i in 0..3u8 {
        assert_eq!(
            from_guest(&mut h.ws, &mut last).await,
            (a.id, Got::Binary(vec![100 + i]))
        );
    }
    b.ws.drop_connection();
    let away = h.ws.expect("guest_away").await;
    assert_eq!(away["guestId"].as_u64(), Some(b.id));
    for i in 10..20u8 {
        h.ws.binary(vec![i]).await;
    }
    // b read nothing: everything comes again, in order, after `resumed`.
    let mut b2 = relay.browser().await;
    b2.json(resume_msg(&h.session_id, &b.token, 0)).await;
    let r = b2.expect("resumed").await;
    assert_eq!(r["lastSeq"], 0);
    for i in 0..20u8 {
        assert_eq!(b2.recv().await, Got::Binary(vec![i]));
    }
    let back = h.ws.expect("guest_back").await;
    assert_eq!(back["guestId"].as_u64(), Some(b.id));
    // a carried on meanwhile, and its count is its own.
    for i in 10..20u8 {
        assert_eq!(a.ws.recv().await, Got::Binary(vec![i]));
    }
    a.ws.drop_connection();
    h.ws.expect("guest_away").await;
    let mut a2 = relay.browser().await;
    a2.json(resume_msg(&h.session_id, &a.token, 20)).await;
    assert_eq!(a2.expect("resumed").await["lastSeq"], 3);
    assert_eq!(
        h.ws.expect("guest_back").await["guestId"].as_u64(),
        Some(a.id)
    );

    // The host resumes too: every guest frame comes again after its
    // lastSeq, with a `from` before the first.
    b2.binary(b"b1".to_vec()).await;
    let mut last = None;
    assert_eq!(
        from_guest(&mut h.ws, &mut last).await,
        (b.id, Got::Binary(b"b1".to_vec()))
    );
    h.ws.drop_connection();
    let mut h2 = relay.mac().await;
    h2.json(resume_msg(&h.session_id, &h.token, 2)).await;
    assert_eq!(h2.expect("resumed").await["lastSeq"], 20);
    let mut last = None;
    let (from, got) = from_guest(&mut h2, &mut last).await;
    assert_eq!((from, got), (a.id, Got::Binary(vec![102])));
    let (from, got) = from_guest(&mut h2, &mut last).await;
    assert_eq!((from, got), (b.id, Got::Binary(b"b1".to_vec())));
}

#[tokio::test]
async fn a_stalled_guest_is_cut_while_the_host_and_the_others_carry_on() {
    let relay = Relay::start(&[("RELAY_MAX_BUFFERED", "2MiB")]);
    let mut h = host(&relay, 2, "auto").await;
    let mut reader = join_auto(&relay, &mut h, "reads").await;
    let stalled = join_auto(&relay, &mut h, "stalls").await;
    // 8 MiB to all, in steps the reading guest takes as they come: far
    // past what the guest that reads nothing may hold.
    let mut i = 0u64;
    for _ in 0..32 {
        for _ in 0..8 {
            let mut b = vec![0u8; 32 * 1024];
            b[..8].copy_from_slice(&i.to_be_bytes());
            h.ws.binary(b).await;
            i += 1;
        }
        for want in i - 8..i {
            let Got::Binary(b) = reader.ws.recv().await else {
                panic!("expected frame {want}")
            };
            assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), want);
        }
    }
    // The host heard the stalled guest go (cut as a slow consumer; it may
    // resume), and nothing else.
    let away = h.ws.expect("guest_away").await;
    assert_eq!(away["guestId"].as_u64(), Some(stalled.id));
    drop(stalled);
}

#[tokio::test]
async fn a_host_that_never_answers_is_taken_for_a_no() {
    let relay = Relay::start(&[("RELAY_ADMIT_TIMEOUT", "1s")]);
    let mut h = host(&relay, 1, "ask").await;
    let mut g = relay.browser().await;
    g.json(json!({"type": "join", "code": h.code})).await;
    let id = g.expect("waiting").await["guestId"].as_u64();
    h.ws.expect("guest_joined").await;
    g.expect_error("DENIED").await;
    g.expect_close(1000).await;
    let left = h.ws.expect("guest_left").await;
    assert_eq!(
        (left["guestId"].as_u64(), left["reason"].as_str()),
        (id, Some("timeout"))
    );
    // A waiting guest that leaves is gone at once.
    let mut w = relay.browser().await;
    w.json(json!({"type": "join", "code": h.code})).await;
    let id = w.expect("waiting").await["guestId"].as_u64();
    h.ws.expect("guest_joined").await;
    w.drop_connection();
    let left = h.ws.expect("guest_left").await;
    assert_eq!(
        (left["guestId"].as_u64(), left["reason"].as_str()),
        (id, Some("closed"))
    );
}

#[tokio::test]
async fn a_guest_away_past_its_grace_period_is_gone_for_good() {
    let relay = Relay::start(&[("RELAY_GRACE", "300ms")]);
    let mut h = host(&relay, 2, "auto").await;
    let g = join_auto(&relay, &mut h, "leaves").await;
    let mut stays = join_auto(&relay, &mut h, "stays").await;
    g.ws.drop_connection();
    let away = h.ws.expect("guest_away").await;
    assert_eq!(away["guestId"].as_u64(), Some(g.id));
    let left = h.ws.expect("guest_left").await;
    assert_eq!(
        (left["guestId"].as_u64(), left["reason"].as_str()),
        (Some(g.id), Some("timeout"))
    );
    let mut again = relay.browser().await;
    again.json(resume_msg(&h.session_id, &g.token, 0)).await;
    again.expect_error("RESUME_EXPIRED").await;
    h.ws.binary(vec![7]).await;
    assert_eq!(stays.ws.recv().await, Got::Binary(vec![7]));
}

#[tokio::test]
async fn a_target_the_relay_cannot_take_never_sends_to_another_guest() {
    // Two control messages a second: `to` must not be held to it.
    let relay = Relay::start(&[("RELAY_MESSAGE_RATE", "2")]);
    let mut h = host(&relay, 2, "auto").await;
    let mut a = join_auto(&relay, &mut h, "a").await;
    let mut b = join_auto(&relay, &mut h, "b").await;
    for i in 0..30u8 {
        let g = if i % 2 == 0 { &a } else { &b };
        h.ws.json(json!({"type": "to", "guestId": g.id})).await;
        h.ws.binary(vec![i]).await;
    }
    for i in 0..15u8 {
        assert_eq!(a.ws.recv().await, Got::Binary(vec![2 * i]));
        assert_eq!(b.ws.recv().await, Got::Binary(vec![2 * i + 1]));
    }
    // A `to` the relay cannot read sends to no one, not to the last target.
    h.ws.text(r#"{"type":"to","guestId":"b"}"#).await;
    h.ws.expect_error("INVALID_MESSAGE").await;
    h.ws.binary(b"private".to_vec()).await;
    h.ws.json(json!({"type": "to"})).await;
    h.ws.binary(b"everyone".to_vec()).await;
    assert_eq!(a.ws.recv().await, Got::Binary(b"everyone".to_vec()));
    assert_eq!(b.ws.recv().await, Got::Binary(b"everyone".to_vec()));
}
