//! A room whose host's node dies (its lease given up) is rebuilt where the
//! host resumes, from its guests' nodes (docs/design.md, "Rooms across
//! nodes"): with `guestSeqs`, every guest frame reaches the host once and
//! in order, and no guest on a live node gets a host frame twice; without
//! it, nothing is lost (frames the host read may come again).

use relay_protocol::{AdmitMode, Role};

use super::*;
use crate::cluster::envelope::Control;
use crate::registry::{Resume, Resumed};

/// The room of these tests: the host on n1 (the node that dies), guest a
/// on n2 (where the host resumes), b on n3, c on n1. Each guest has the
/// host's frames h0..h9, and a also h10 (to it alone); the host read
/// g0..g9 of each guest, then each sent g10..g14 before n1 died and
/// g15..g19 after.
struct Died {
    _r: TestRedis,
    nodes: [Addr<ClusterRegistry>; 3],
    host: Hosting,
    guests: [Guesting; 3],
}

async fn a_room_whose_node_dies() -> Died {
    let r = TestRedis::start().await;
    let (n1, lease) = start_node_leased(&r, "n1", crate::registry::testing::settings()).await;
    let nodes = [n1, start_node(&r, "n2").await, start_node(&r, "n3").await];
    let host = host_on(&nodes[0], 3, AdmitMode::Auto).await;
    let code = host.reg.code.clone();
    let a = join(&nodes[1], &code, "a").await.unwrap();
    let b = join(&nodes[2], &code, "b").await.unwrap();
    let c = join(&nodes[0], &code, "c").await.unwrap();
    host.wait(6).await;
    for i in 0..10 {
        assert_eq!(host.send(bin("h", i), Target::All), 3);
    }
    assert_eq!(host.send(bin("h", 10), Target::Guest(a.id())), 1);
    for (g, n) in [(&a, 11), (&b, 10), (&c, 10)] {
        wait_for("the host's frames", || {
            data(&g.seen().unwrap_or_default()).len() == n
        })
        .await;
    }
    for g in [&a, &b, &c] {
        for i in 0..10 {
            g.send(bin(&format!("g{}", g.id()), i));
        }
    }
    wait_for("the host read 30", || data(&host.seen()).len() == 30).await;
    for g in [&a, &b, &c] {
        for i in 10..15 {
            g.send(bin(&format!("g{}", g.id()), i));
        }
    }
    lease.give_up().await;
    for g in [&a, &b] {
        for i in 15..20 {
            g.send(bin(&format!("g{}", g.id()), i));
        }
    }
    Died {
        _r: r,
        nodes,
        host,
        guests: [a, b, c],
    }
}

/// The host resumes on n2 with `lastSeq` 30, and `guestSeqs` if `seqs`.
async fn host_resumes(d: &Died, seqs: bool) -> (TestClient, Resumed) {
    let client = TestClient::start();
    let guest_seqs = if seqs {
        d.guests.iter().map(|g| (g.id(), 10)).collect()
    } else {
        Default::default()
    };
    let resumed = d.nodes[1]
        .send(Resume {
            client: client.client.clone(),
            deadline: Deadline::for_request(),
            role: Role::Mac,
            session_id: d.host.reg.link.session_id.to_string(),
            resume_token: d.host.reg.resume_token.clone(),
            last_seq: 30,
            guest_seqs,
        })
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("the host's resume: {r:?}"));
    (client, resumed)
}

/// A guest resumes on `node` having `last_seq` of the host's frames.
async fn guest_resumes(
    node: &Addr<ClusterRegistry>,
    g: &Guesting,
    last_seq: u64,
) -> (TestClient, Resumed) {
    let client = TestClient::start();
    let resumed = node
        .send(Resume {
            client: client.client.clone(),
            deadline: Deadline::for_request(),
            role: Role::Browser,
            session_id: g.joined.link.session_id.to_string(),
            resume_token: g.joined.resume_token.clone().unwrap(),
            last_seq,
            guest_seqs: Default::default(),
        })
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("guest {}'s resume: {r:?}", g.id()));
    (client, resumed)
}

fn frames_of(seen: &[Seen], id: GuestId) -> Vec<Frame> {
    data(seen)
        .into_iter()
        .filter(|(_, g)| *g == Some(id))
        .map(|(f, _)| f)
        .collect()
}

fn numbered(tag: &str, range: std::ops::Range<u32>) -> Vec<Frame> {
    range.map(|i| bin(tag, i)).collect()
}

/// n1 dies mid-stream and the host resumes on n2 with `guestSeqs`: it
/// gets every guest frame after its count once and in order (b's from its
/// node, a's and c's when they resume: a was on n2 and is closed to resume,
/// c was on n1), its `lastSeq` back is the lowest host frame a live
/// guest's node took, and what it sends again reaches only the guests that
/// had not had it, once; the guests keep receiving.
#[actix::test]
async fn a_room_is_rebuilt_where_its_host_resumes_after_its_node_died() {
    let d = a_room_whose_node_dies().await;
    let [a, b, c] = &d.guests;
    let (client, moved) = host_resumes(&d, true).await;
    assert_eq!(
        moved.accepted, 10,
        "b's node had the host's frames up to 10"
    );
    let seen = || seen(&moved.link, client.conn()).unwrap();
    let tag = |g: &Guesting| format!("g{}", g.id());
    wait_for("b's frames after the host's count", || {
        frames_of(&seen(), b.id()).len() == 10
    })
    .await;
    assert_eq!(frames_of(&seen(), b.id()), numbered(&tag(b), 10..20));
    let mut away: Vec<u64> = events(&seen())
        .iter()
        .filter(|e| e["type"] == "guest_away")
        .map(|e| e["guestId"].as_u64().unwrap())
        .collect();
    away.sort_unstable();
    assert_eq!(away, [a.id(), c.id()], "a (on n2) and c (on n1) resume");
    wait_for("a closed to resume", || {
        a.client.ended() == [ErrorCode::ShuttingDown]
    })
    .await;
    // The host sends again what it sent after its `lastSeq` (h10, to a),
    // then something new to all.
    let gate = Gate::new();
    let push =
        |f: Frame, to: Target| match moved
            .link
            .outbound
            .push(f, to, client.conn(), &gate, |_| {})
        {
            Sent::Room(n) => n,
            Sent::Pipe(p) => panic!("{p:?}"),
        };
    assert_eq!(push(bin("h", 10), Target::Guest(a.id())), 0, "a had it");
    assert_eq!(push(bin("h", 11), Target::All), 3);
    let b_seen = b.wait(12).await;
    assert_eq!(
        data(&b_seen)
            .into_iter()
            .map(|(f, _)| f)
            .collect::<Vec<_>>(),
        [numbered("h", 0..10), vec![bin("h", 11)]].concat()
    );
    assert!(events(&b_seen).iter().any(|e| e["type"] == "peer_resumed"));
    // a comes back where the host is, c on n3: each gets h11 once, and is
    // told the host's count of its frames, after which it sends again.
    let (ca, ra) = guest_resumes(&d.nodes[1], a, 11).await;
    let (cc, rc) = guest_resumes(&d.nodes[2], c, 10).await;
    assert_eq!((ra.accepted, rc.accepted), (10, 10));
    for (r, cl) in [(&ra, &ca), (&rc, &cc)] {
        let s = wait_seen(&r.link, cl.conn(), 1).await;
        assert_eq!(
            data(&s).into_iter().map(|(f, _)| f).collect::<Vec<_>>(),
            [bin("h", 11)]
        );
    }
    for (g, r, cl) in [(a, &ra, &ca), (c, &rc, &cc)] {
        for i in 10..20 {
            let pushed =
                r.link
                    .outbound
                    .push(bin(&tag(g), i), Target::All, cl.conn(), &gate, |_| {});
            assert!(matches!(pushed, Sent::Pipe(Pushed::Queued { .. })), "{i}");
        }
    }
    wait_for("every guest frame after the host's count", || {
        let s = seen();
        [a, c].iter().all(|g| frames_of(&s, g.id()).len() == 10)
    })
    .await;
    for g in [a, b, c] {
        assert_eq!(
            frames_of(&seen(), g.id()),
            numbered(&tag(g), 10..20),
            "{}",
            g.id()
        );
    }
    // b keeps sending to the rebuilt room.
    b.send(bin(&tag(b), 20));
    wait_for("b's next frame", || frames_of(&seen(), b.id()).len() == 11).await;
}

/// As above without `guestSeqs` (an older client): the host read g0..g9 of
/// each guest and acknowledged none, so b's node sends its frames from
/// g0 again: nothing is lost, and what the host read comes twice.
#[actix::test]
async fn without_guest_seqs_a_rebuilt_room_loses_nothing() {
    let d = a_room_whose_node_dies().await;
    let b = &d.guests[1];
    let (client, moved) = host_resumes(&d, false).await;
    let seen = || seen(&moved.link, client.conn()).unwrap();
    wait_for("b's frames", || frames_of(&seen(), b.id()).len() == 20).await;
    assert_eq!(
        frames_of(&seen(), b.id()),
        numbered(&format!("g{}", b.id()), 0..20)
    );
}

/// The host and guest c on n1, b on n3; each guest has h0..h9. Then n1
/// goes deaf with its lease alive (a node killed within its lease: who
/// asks it waits the handover wait in vain).
struct Deaf {
    _r: TestRedis,
    lease: Option<crate::cluster::lease::Lease>,
    nodes: [Addr<ClusterRegistry>; 3],
    host: Hosting,
    b: Guesting,
    c: Guesting,
}

async fn a_room_whose_node_goes_deaf() -> Deaf {
    let r = TestRedis::start().await;
    let (n1, bus1, lease) = start_node_full(&r, "n1", settings(), Duration::from_secs(30)).await;
    let nodes = [n1, start_node(&r, "n2").await, start_node(&r, "n3").await];
    let host = host_on(&nodes[0], 2, AdmitMode::Auto).await;
    let code = host.reg.code.clone();
    let b = join(&nodes[2], &code, "b").await.unwrap();
    let c = join(&nodes[0], &code, "c").await.unwrap();
    host.wait(4).await;
    for i in 0..10 {
        assert_eq!(host.send(bin("h", i), Target::All), 2);
    }
    for g in [&b, &c] {
        wait_for("the host's frames", || {
            data(&g.seen().unwrap_or_default()).len() == 10
        })
        .await;
    }
    bus1.lose_controls(true);
    Deaf {
        _r: r,
        lease: Some(lease),
        nodes,
        host,
        b,
        c,
    }
}

/// A resume of `who` on `node` with `last_seq`, as a client sends it.
async fn resume_on(
    node: &Addr<ClusterRegistry>,
    who: (Role, &str, &str),
    last_seq: u64,
) -> (TestClient, Result<Resumed, crate::registry::Refusal>) {
    let client = TestClient::start();
    let (role, sid, token) = who;
    let r = node
        .send(Resume {
            client: client.client.clone(),
            deadline: Deadline::for_request(),
            role,
            session_id: sid.to_owned(),
            resume_token: token.to_owned(),
            last_seq,
            guest_seqs: Default::default(),
        })
        .await
        .unwrap();
    (client, r)
}

/// The host (resumed as `moved`) sends h10 and h11 to all; b gets them
/// once, and so does c, on n3, resuming again as often as it is closed
/// to resume or refused with `SHUTTING_DOWN` (what its client does).
async fn both_guests_get_the_next_frames(
    d: &Deaf,
    hc: &TestClient,
    moved: &Resumed,
    mut c: (TestClient, Result<Resumed, crate::registry::Refusal>),
) {
    let gate = Gate::new();
    for i in 10..12 {
        let sent = moved
            .link
            .outbound
            .push(bin("h", i), Target::All, hc.conn(), &gate, |_| {});
        assert!(matches!(sent, Sent::Room(_)));
    }
    wait_for("b's frames after the rebuild", || {
        data(&d.b.seen().unwrap_or_default()).len() == 12
    })
    .await;
    let sid = d.c.joined.link.session_id.to_string();
    let token = d.c.joined.resume_token.clone().unwrap();
    let who = (Role::Browser, sid.as_str(), token.as_str());
    let until = Instant::now() + WAIT;
    let mut tries = 1;
    loop {
        let refused = match &c.1 {
            Ok(rc) => {
                let got = data(&seen(&rc.link, c.0.conn()).unwrap_or_default());
                if got.iter().any(|(f, _)| *f == bin("h", 11)) {
                    let frames: Vec<Frame> = got.into_iter().map(|(f, _)| f).collect();
                    assert_eq!(frames, [bin("h", 10), bin("h", 11)], "c: once, in order");
                    return;
                }
                false
            }
            Err(r) => {
                assert_eq!(r.code, ErrorCode::ShuttingDown, "c's resume: {r:?}");
                true
            }
        };
        if refused || c.0.ended() == [ErrorCode::ShuttingDown] {
            tries += 1;
            assert!(tries < 5, "c resumes again and again");
            c = resume_on(&d.nodes[2], who, 10).await;
            continue;
        }
        assert!(
            Instant::now() < until,
            "c got no more of the host's frames: {:?}",
            c.1.as_ref().map(|rc| seen(&rc.link, c.0.conn()))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The host's resume on n2, having read nothing of its guests.
fn host_of(d: &Deaf) -> (Role, String, String) {
    (
        Role::Mac,
        d.host.reg.link.session_id.to_string(),
        d.host.reg.resume_token.clone(),
    )
}

/// c's client comes back on n3 *before* the host resumes on n2: its
/// resume asks n1 and waits in vain, then the host's rebuild finds it
/// resumed there, its ways pointing at n1. It keeps getting the host's
/// frames, once each.
#[actix::test]
async fn a_guest_of_the_dead_node_back_before_its_host_keeps_getting_frames() {
    let d = a_room_whose_node_goes_deaf().await;
    let sid = d.c.joined.link.session_id.to_string();
    let token = d.c.joined.resume_token.clone().unwrap();
    let c = resume_on(&d.nodes[2], (Role::Browser, &sid, &token), 10).await;
    assert!(c.1.is_ok(), "c's resume: {:?}", c.1.as_ref().err());
    let (role, hsid, htoken) = host_of(&d);
    let (hc, moved) = resume_on(&d.nodes[1], (role, &hsid, &htoken), 0).await;
    let moved = moved.unwrap_or_else(|r| panic!("the host's resume: {r:?}"));
    both_guests_get_the_next_frames(&d, &hc, &moved, c).await;
}

/// As above, c's client coming back while the host's resume waits for n1:
/// the rebuild's question reaches n3 while c's resume there still waits
/// for n1 too. c is told to come again (`SHUTTING_DOWN`) and, back, keeps
/// getting the host's frames, once each.
#[actix::test]
async fn a_guest_of_the_dead_node_back_during_its_host_s_resume_keeps_getting_frames() {
    let d = a_room_whose_node_goes_deaf().await;
    let sid = d.c.joined.link.session_id.to_string();
    let token = d.c.joined.resume_token.clone().unwrap();
    let (role, hsid, htoken) = host_of(&d);
    let host = resume_on(&d.nodes[1], (role, &hsid, &htoken), 0);
    let guest = async {
        // Within the host's wait for n1 (the handover wait, 2 s).
        tokio::time::sleep(Duration::from_millis(300)).await;
        resume_on(&d.nodes[2], (Role::Browser, &sid, &token), 10).await
    };
    let ((hc, moved), c) = tokio::join!(host, guest);
    let moved = moved.unwrap_or_else(|r| panic!("the host's resume: {r:?}"));
    both_guests_get_the_next_frames(&d, &hc, &moved, c).await;
}

/// As above, the host's resume not waiting for n1 (its lease given up
/// meanwhile): the rebuild's question reaches n3 while c's resume there
/// still waits for n1. c is closed to resume and its resume under way
/// refused (`SHUTTING_DOWN`); back, it keeps getting the host's frames,
/// once each.
#[actix::test]
async fn a_guest_of_the_dead_node_mid_resume_at_its_host_s_rebuild_keeps_getting_frames() {
    let mut d = a_room_whose_node_goes_deaf().await;
    let sid = d.c.joined.link.session_id.to_string();
    let token = d.c.joined.resume_token.clone().unwrap();
    let (role, hsid, htoken) = host_of(&d);
    let lease = d.lease.take().unwrap();
    let guest = resume_on(&d.nodes[2], (Role::Browser, &sid, &token), 10);
    let host = async {
        // Once c's resume is homed on n3 and waits for n1 (2 s).
        tokio::time::sleep(Duration::from_millis(300)).await;
        lease.give_up().await;
        resume_on(&d.nodes[1], (role, &hsid, &htoken), 0).await
    };
    let (c, (hc, moved)) = tokio::join!(guest, host);
    let moved = moved.unwrap_or_else(|r| panic!("the host's resume: {r:?}"));
    assert_eq!(
        c.1.as_ref().err().map(|r| r.code),
        Some(ErrorCode::ShuttingDown),
        "c's resume under way is refused"
    );
    both_guests_get_the_next_frames(&d, &hc, &moved, c).await;
}

/// The host on n1, which dies (its lease given up), b on n3, d on n4; the
/// host resumes on n2 having read g0..g4 of each. n4 is deaf when the
/// rebuild asks (a stalled node, its lease alive) and hears again once
/// the question is lost: d ends (`MAC_DISCONNECTED` on n4, its token
/// refused), the host hears `guest_left` `timeout` once, and b carries on:
/// every frame both ways once and in order.
#[actix::test]
async fn guests_of_a_node_that_does_not_answer_the_rebuild_end_and_the_others_carry_on() {
    let r = TestRedis::start().await;
    let (n1, lease) = start_node_leased(&r, "n1", settings()).await;
    let n2 = start_node(&r, "n2").await;
    let n3 = start_node(&r, "n3").await;
    let (n4, bus4, lease4) = start_node_full(&r, "n4", settings(), Duration::from_secs(30)).await;
    std::mem::forget(lease4);
    let host = host_on(&n1, 2, AdmitMode::Auto).await;
    let b = join(&n3, &host.reg.code, "b").await.unwrap();
    let d = join(&n4, &host.reg.code, "d").await.unwrap();
    host.wait(4).await;
    for i in 0..10 {
        assert_eq!(host.send(bin("h", i), Target::All), 2);
    }
    for g in [&b, &d] {
        wait_for("the host's frames", || {
            data(&g.seen().unwrap_or_default()).len() == 10
        })
        .await;
        for i in 0..5 {
            g.send(bin(&format!("g{}", g.id()), i));
        }
    }
    wait_for("the host read 10", || data(&host.seen()).len() == 10).await;
    bus4.lose_controls(true);
    lease.give_up().await;
    let tag = format!("g{}", b.id());
    for i in 5..10 {
        b.send(bin(&tag, i));
    }

    let client = TestClient::start();
    let resume = n2.send(Resume {
        client: client.client.clone(),
        deadline: Deadline::for_request(),
        role: Role::Mac,
        session_id: host.reg.link.session_id.to_string(),
        resume_token: host.reg.resume_token.clone(),
        last_seq: 10,
        guest_seqs: [(b.id(), 5), (d.id(), 5)].into_iter().collect(),
    });
    let hears_again = async {
        // Once n4 lost the question, it hears what follows it (`Ended`).
        wait_for("n4 to lose the rebuild's question", || {
            bus4.lost_controls()
                .iter()
                .any(|c| matches!(c, Control::HostRebuild { .. }))
        })
        .await;
        bus4.lose_controls(false);
    };
    let (moved, ()) = tokio::join!(resume, hears_again);
    let moved = moved
        .unwrap()
        .unwrap_or_else(|r| panic!("the host's resume: {r:?}"));
    assert_eq!(moved.accepted, 10, "b's node had the host's frames to 10");
    let seen = || seen(&moved.link, client.conn()).unwrap();
    let left = |s: &[Seen]| -> Vec<serde_json::Value> {
        events(s)
            .into_iter()
            .filter(|e| e["type"] == "guest_left")
            .collect()
    };
    let s = seen();
    assert_eq!(left(&s).len(), 1, "{s:?}");
    assert_eq!(left(&s)[0]["guestId"], d.id());
    assert_eq!(left(&s)[0]["reason"], "timeout");
    assert!(
        !events(&s).iter().any(|e| e["type"] == "guest_away"),
        "b's node answered, d is gone: nobody is away"
    );

    // d is told its host is gone, and its token is no good any more.
    wait_for("d told MAC_DISCONNECTED", || {
        let s = d.seen().unwrap_or_default();
        events(&s).iter().any(|e| e["code"] == "MAC_DISCONNECTED")
    })
    .await;
    let s = d.seen().unwrap_or_default();
    assert!(
        matches!(s.last(), Some(Seen::Event(e)) if e["code"] == "MAC_DISCONNECTED"),
        "nothing after it: {s:?}"
    );
    assert_eq!(data(&s).len(), 10, "d got only the host's first frames");
    let (_, again) = resume_on(
        &n3,
        (
            Role::Browser,
            &*d.joined.link.session_id,
            d.joined.resume_token.as_deref().unwrap(),
        ),
        10,
    )
    .await;
    let refused = again.err().map(|r| r.code);
    assert_eq!(
        refused,
        Some(ErrorCode::MacDisconnected),
        "d's token after it ended"
    );

    // b: its frames after the host's count once and in order, the host's
    // next frames once and in order, and its own next frame.
    wait_for("b's frames after the host's count", || {
        frames_of(&seen(), b.id()).len() == 5
    })
    .await;
    assert_eq!(frames_of(&seen(), b.id()), numbered(&tag, 5..10));
    let gate = Gate::new();
    for i in 10..12 {
        let sent = moved
            .link
            .outbound
            .push(bin("h", i), Target::All, client.conn(), &gate, |_| {});
        assert!(matches!(sent, Sent::Room(1)), "only b is in the room");
    }
    wait_for("the host's next frames at b", || {
        data(&b.seen().unwrap_or_default()).len() == 12
    })
    .await;
    assert_eq!(
        data(&b.seen().unwrap_or_default())
            .into_iter()
            .map(|(f, _)| f)
            .collect::<Vec<_>>(),
        numbered("h", 0..12)
    );
    b.send(bin(&tag, 10));
    wait_for("b's next frame", || frames_of(&seen(), b.id()).len() == 6).await;
    assert_eq!(frames_of(&seen(), b.id()), numbered(&tag, 5..11));
    assert_eq!(left(&seen()).len(), 1, "d left once");
}
