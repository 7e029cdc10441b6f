//! What guests hear of their host across nodes.

use std::sync::Arc;

use relay_protocol::{AdmitMode, ErrorCode};

use super::*;

/// The host drops and comes back on its node: its guests, here and on
/// other nodes, hear `peer_disconnected` then `peer_resumed`, and what they
/// sent meanwhile reaches it after the resume, in order. Then the host
/// leaves: every guest hears `MAC_DISCONNECTED`.
#[actix::test]
async fn guests_hear_their_host_go_away_come_back_and_end() {
    let r = TestRedis::start().await;
    let nodes = three_nodes(&r).await;
    let host = host_on(&nodes[0], 3, AdmitMode::Auto).await;
    let code = host.reg.code.clone();
    let mut guests = Vec::new();
    for n in &nodes {
        guests.push(join(n, &code, "x").await.unwrap());
    }
    host.wait(6).await;
    nodes[0].do_send(Gone {
        session_id: Arc::clone(&host.reg.link.session_id),
        member: host.reg.link.member,
        conn: host.client.conn(),
        how: Departure::Dropped,
    });
    for g in &guests {
        let s = g.wait(1).await;
        assert_eq!(s[0].kind(), "peer_disconnected");
        assert_eq!(g.joined.link.member, Member::Guest(g.id() as usize));
        for i in 0..10 {
            g.send(bin("away", i));
        }
    }
    let again = TestClient::start();
    let resumed = nodes[0]
        .send(crate::registry::Resume {
            client: again.client.clone(),
            deadline: Deadline::for_request(),
            role: relay_protocol::Role::Mac,
            session_id: host.reg.link.session_id.to_string(),
            resume_token: host.reg.resume_token.clone(),
            last_seq: 0,
            guest_seqs: Default::default(),
        })
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("resume: {r:?}"));
    assert_eq!(resumed.accepted, 0);
    for g in &guests {
        let s = g.wait(2).await;
        assert_eq!(s[1].kind(), "peer_resumed");
    }
    let s = wait_seen(&resumed.link, again.conn(), 30).await;
    for g in &guests {
        let got: Vec<Frame> = data(&s)
            .into_iter()
            .filter(|(_, from)| *from == Some(g.id()))
            .map(|(f, _)| f)
            .collect();
        assert_eq!(got, (0..10).map(|i| bin("away", i)).collect::<Vec<_>>());
    }
    // The resumed host's frames reach every guest.
    let gate = Gate::new();
    let pushed =
        resumed
            .link
            .outbound
            .push(bin("back", 0), Target::All, again.conn(), &gate, |_| {});
    assert!(matches!(pushed, Sent::Room(3)));
    for g in &guests {
        let s = g.wait(3).await;
        assert_eq!(data(&s), [(bin("back", 0), None)]);
    }
    nodes[0].do_send(Gone {
        session_id: Arc::clone(&host.reg.link.session_id),
        member: host.reg.link.member,
        conn: again.conn(),
        how: Departure::Left,
    });
    for g in &guests {
        let s = g.wait(4).await;
        match &s[3] {
            Seen::Event(e) => assert_eq!(e["code"], "MAC_DISCONNECTED", "{e}"),
            other => panic!("{other:?}"),
        }
    }
}

/// A host that does not answer a join within `RELAY_ADMIT_TIMEOUT`: the
/// guest is denied on whichever node it is, and the host hears
/// `guest_left` with `timeout`; a guest whose waiting connection closes is
/// `guest_left` `closed`.
#[actix::test]
async fn a_join_the_host_does_not_answer_in_time_is_denied_on_any_node() {
    let r = TestRedis::start().await;
    let mut short = crate::registry::testing::settings();
    short.admit_timeout = std::time::Duration::from_millis(300);
    let n1 = start_node_with(&r, "n1", short.clone()).await;
    let n2 = start_node_with(&r, "n2", short).await;
    let host = host_on(&n1, 3, AdmitMode::Ask).await;
    let here = join(&n1, &host.reg.code, "here").await.unwrap();
    let there = join(&n2, &host.reg.code, "there").await.unwrap();
    let closes = join(&n2, &host.reg.code, "closes").await.unwrap();
    closes.gone(Departure::Closed);
    wait_for("three guest_left", || {
        events(&host.seen())
            .iter()
            .filter(|e| e["type"] == "guest_left")
            .count()
            == 3
    })
    .await;
    let left: Vec<(u64, String)> = events(&host.seen())
        .iter()
        .filter(|e| e["type"] == "guest_left")
        .map(|e| {
            (
                e["guestId"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (g, reason) in [(&here, "timeout"), (&there, "timeout"), (&closes, "closed")] {
        assert!(left.contains(&(g.id(), reason.to_owned())), "{left:?}");
    }
    wait_for("both denied", || {
        here.client.ended() == [ErrorCode::Denied] && there.client.ended() == [ErrorCode::Denied]
    })
    .await;
    assert!(closes.client.ended().is_empty());
    // The places are free again.
    for _ in 0..3 {
        join(&n2, &host.reg.code, "again").await.unwrap();
    }
}

/// The host drops and resumes on another node while its old node is up:
/// the room moves with it. A guest on a third node carries on (its frames
/// the host had not read come again, once); the guests on the old node and
/// on the new one are closed to resume, and do, nothing lost either way.
#[actix::test]
async fn a_host_resuming_on_another_node_takes_its_room_along() {
    use crate::registry::{Resume, Resumed};
    use relay_protocol::Role;
    let r = TestRedis::start().await;
    let nodes = three_nodes(&r).await;
    let host = host_on(&nodes[0], 4, AdmitMode::Auto).await;
    let code = host.reg.code.clone();
    let a = join(&nodes[0], &code, "a").await.unwrap();
    let b = join(&nodes[1], &code, "b").await.unwrap();
    let c = join(&nodes[2], &code, "c").await.unwrap();
    host.wait(6).await;
    for i in 0..10 {
        assert_eq!(host.send(bin("h", i), Target::All), 3);
        for g in [&a, &b, &c] {
            g.send(bin("g", i));
        }
    }
    host.wait(6 + 30).await;
    for i in 0..5 {
        b.send(bin("late", i));
    }
    host.wait(6 + 35).await;
    nodes[0].do_send(Gone {
        session_id: Arc::clone(&host.reg.link.session_id),
        member: host.reg.link.member,
        conn: host.client.conn(),
        how: Departure::Dropped,
    });
    for g in [&a, &b, &c] {
        assert_eq!(g.wait(11).await[10].kind(), "peer_disconnected");
    }
    // It read 30 data frames: b's 5 late ones are not among them.
    let client = TestClient::start();
    let moved: Resumed = nodes[2]
        .send(Resume {
            client: client.client.clone(),
            deadline: Deadline::for_request(),
            role: Role::Mac,
            session_id: host.reg.link.session_id.to_string(),
            resume_token: host.reg.resume_token.clone(),
            last_seq: 30,
            guest_seqs: Default::default(),
        })
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("resume: {r:?}"));
    assert_eq!(moved.accepted, 10);
    let s = wait_seen(&moved.link, client.conn(), 2 + 5).await;
    assert_eq!(
        data(&s),
        (0..5)
            .map(|i| (bin("late", i), Some(b.id())))
            .collect::<Vec<_>>()
    );
    let mut away: Vec<u64> = events(&s)
        .iter()
        .filter(|e| e["type"] == "guest_away")
        .map(|e| e["guestId"].as_u64().unwrap())
        .collect();
    away.sort_unstable();
    assert_eq!(
        away,
        [a.id(), c.id()],
        "the guests closed to resume are away"
    );
    wait_for("a and c closed to resume", || {
        a.client.ended() == [ErrorCode::ShuttingDown]
            && c.client.ended() == [ErrorCode::ShuttingDown]
    })
    .await;
    assert!(b.client.ended().is_empty());
    assert_eq!(b.wait(12).await[11].kind(), "peer_resumed");
    let gate = Gate::new();
    for i in 10..20 {
        let sent = moved
            .link
            .outbound
            .push(bin("h", i), Target::All, client.conn(), &gate, |_| {});
        assert!(matches!(sent, Sent::Room(3)), "{i}");
    }
    let s = b.wait(12 + 10).await;
    assert_eq!(
        super::data(&s)
            .into_iter()
            .map(|(f, _)| f)
            .collect::<Vec<_>>(),
        (0..20).map(|i| bin("h", i)).collect::<Vec<_>>()
    );
    // a and c resume (a elsewhere, c where the host is now).
    let resume_guest = |g: &Guesting, client: &TestClient| Resume {
        client: client.client.clone(),
        deadline: Deadline::for_request(),
        role: Role::Browser,
        session_id: g.joined.link.session_id.to_string(),
        resume_token: g.joined.resume_token.clone().unwrap(),
        last_seq: 10,
        guest_seqs: Default::default(),
    };
    let (ca, cc) = (TestClient::start(), TestClient::start());
    let ra = nodes[1].send(resume_guest(&a, &ca)).await.unwrap().unwrap();
    let rc = nodes[2].send(resume_guest(&c, &cc)).await.unwrap().unwrap();
    assert_eq!((ra.accepted, rc.accepted), (10, 10));
    for (r, client) in [(&ra, &ca), (&rc, &cc)] {
        let s = wait_seen(&r.link, client.conn(), 10).await;
        assert_eq!(
            super::data(&s)
                .into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>(),
            (10..20).map(|i| bin("h", i)).collect::<Vec<_>>()
        );
        let pushed = r
            .link
            .outbound
            .push(bin("g", 10), Target::All, client.conn(), &gate, |_| {});
        assert!(matches!(
            pushed,
            Sent::Pipe(crate::pipe::Pushed::Queued { .. })
        ));
    }
    wait_for("both back", || {
        events(&seen(&moved.link, client.conn()).unwrap())
            .iter()
            .filter(|e| e["type"] == "guest_back")
            .count()
            == 2
    })
    .await;
    b.send(bin("g", 10));
    wait_for("every guest's eleventh frame", || {
        let d = data(&seen(&moved.link, client.conn()).unwrap());
        [a.id(), b.id(), c.id()].iter().all(|id| {
            d.iter()
                .any(|(f, from)| *from == Some(*id) && *f == bin("g", 10))
        })
    })
    .await;
}
