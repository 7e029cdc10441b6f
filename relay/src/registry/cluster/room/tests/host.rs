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
