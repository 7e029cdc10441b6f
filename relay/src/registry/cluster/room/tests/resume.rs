//! A guest's resume on another node: its direction is handed over with
//! numbered frames, nothing lost, duplicated or reordered, both ways.
use relay_protocol::{AdmitMode, Role};

use super::*;
use crate::registry::{Resume, Resumed};

fn resume_msg(g: &Guesting, client: &TestClient, last_seq: u64) -> Resume {
    Resume {
        client: client.client.clone(),
        deadline: Deadline::for_request(),
        role: Role::Browser,
        session_id: g.joined.link.session_id.to_string(),
        resume_token: g.joined.resume_token.clone().expect("an admitted guest"),
        last_seq,
        guest_seqs: Default::default(),
    }
}

async fn resume_on(
    node: &Addr<ClusterRegistry>,
    g: &Guesting,
    last_seq: u64,
) -> (TestClient, Result<Resumed, ErrorCode>) {
    let client = TestClient::start();
    let r = node
        .send(resume_msg(g, &client, last_seq))
        .await
        .unwrap()
        .map_err(|r| r.code);
    (client, r)
}

fn binaries(seen: &[Seen]) -> Vec<Frame> {
    data(seen).into_iter().map(|(f, _)| f).collect()
}

fn from(seen: &[Seen], id: GuestId) -> Vec<Frame> {
    data(seen)
        .into_iter()
        .filter(|(_, g)| *g == Some(id))
        .map(|(f, _)| f)
        .collect()
}

/// Guests resume on other nodes (away, or taking over a connection that
/// still looked open), to and from the host's node: each gets every host
/// frame after its `lastSeq`, once and in order, and its `lastSeq` back
/// is what the host got of it, after which its frames continue in order.
#[actix::test]
async fn guests_resume_on_other_nodes_with_nothing_lost_or_doubled() {
    let r = TestRedis::start().await;
    let nodes = three_nodes(&r).await;
    let host = host_on(&nodes[0], 4, AdmitMode::Auto).await;
    let code = host.reg.code.clone();
    // a: n2 → n3 (away first); b: n1 → n2 (takeover); c: n3 → n1 (away).
    let a = join(&nodes[1], &code, "a").await.unwrap();
    let b = join(&nodes[0], &code, "b").await.unwrap();
    let c = join(&nodes[2], &code, "c").await.unwrap();
    host.wait(6).await;
    const N: u32 = 30;
    for i in 0..N {
        assert_eq!(host.send(bin("h", i), Target::All), 3);
        for g in [&a, &b, &c] {
            g.send(bin("g", i));
        }
    }
    for g in [&a, &b, &c] {
        g.wait(N as usize).await;
    }
    a.gone(Departure::Dropped);
    c.gone(Departure::Dropped);
    wait_for("both away", || {
        events(&host.seen())
            .iter()
            .filter(|e| e["type"] == "guest_away")
            .count()
            == 2
    })
    .await;
    for i in N..2 * N {
        assert_eq!(host.send(bin("h", i), Target::All), 3);
    }
    let (a2, ra) = resume_on(&nodes[2], &a, 10).await;
    let (b2, rb) = resume_on(&nodes[1], &b, 5).await;
    let (c2, rc) = resume_on(&nodes[0], &c, 0).await;
    let resumed = [
        (a2, ra.unwrap(), 10u32, a.id()),
        (b2, rb.unwrap(), 5, b.id()),
        (c2, rc.unwrap(), 0, c.id()),
    ];
    assert_eq!(b.client.replaced(), 1, "b's old connection was replaced");
    for (client, r, last, id) in &resumed {
        assert_eq!(
            r.accepted,
            u64::from(N),
            "guest {id}: what the host got of it"
        );
        let s = wait_seen(&r.link, client.conn(), (2 * N - last) as usize).await;
        assert_eq!(
            binaries(&s),
            (*last..2 * N).map(|i| bin("h", i)).collect::<Vec<_>>(),
            "guest {id}"
        );
    }
    // The host hears two guests back (b was taken over, never away).
    wait_for("guest_back twice", || {
        events(&host.seen())
            .iter()
            .filter(|e| e["type"] == "guest_back")
            .count()
            == 2
    })
    .await;
    // After the resume, each guest's frames continue where the host's stop.
    let gate = Gate::new();
    for (client, r, _, _) in &resumed {
        for i in N..N + 10 {
            let pushed =
                r.link
                    .outbound
                    .push(bin("g", i), Target::All, client.conn(), &gate, |_| {});
            assert!(matches!(pushed, Sent::Pipe(Pushed::Queued { .. })), "{i}");
        }
    }
    for (_, _, _, id) in &resumed {
        let want: Vec<Frame> = (0..N + 10).map(|i| bin("g", i)).collect();
        wait_for("every guest's frames at the host", || {
            from(&host.seen(), *id).len() >= want.len()
        })
        .await;
        assert_eq!(from(&host.seen(), *id), want, "from guest {id}");
    }
    // And the host's frames reach each at its new node.
    assert_eq!(host.send(bin("h", 2 * N), Target::All), 3);
    for (client, r, last, id) in &resumed {
        let s = wait_seen(&r.link, client.conn(), (2 * N + 1 - last) as usize).await;
        assert_eq!(binaries(&s).last(), Some(&bin("h", 2 * N)), "guest {id}");
    }
}

/// The host removes a guest while it resumes on another node: whichever
/// wins in Redis, the guest ends up out (cut with `REMOVED`, or its resume
/// refused), its token is `REMOVED` on every node, and it gets nothing
/// more the host sends.
#[actix::test]
async fn a_removal_during_a_resume_on_another_node_holds_everywhere() {
    let r = TestRedis::start().await;
    let nodes = three_nodes(&r).await;
    let host = host_on(&nodes[0], 2, AdmitMode::Auto).await;
    let code = host.reg.code.clone();
    for round in 0..4 {
        let g = join(&nodes[1], &code, "d").await.unwrap();
        let other = join(&nodes[2], &code, "e").await.unwrap();
        wait_for("both in", || {
            host.send(bin("probe", round), Target::All) == 2
        })
        .await;
        let client = TestClient::start();
        let resume = nodes[2].send(resume_msg(&g, &client, 0));
        let remove = host.act(RoomOp::Remove, g.id());
        // Even rounds race the two; odd ones let the resume finish first.
        let (resumed, removed) = if round % 2 == 0 {
            tokio::join!(resume, remove)
        } else {
            let resumed = resume.await;
            (resumed, remove.await)
        };
        assert_eq!(removed, Ok(()), "round {round}");
        match resumed.unwrap() {
            Ok(r) => {
                // The resume won: the remove found it on n3 and cut it there.
                wait_for("the resumed guest cut", || {
                    client.ended() == [ErrorCode::Removed]
                })
                .await;
                let before = seen(&r.link, client.conn()).map_or(0, |s| data(&s).len());
                host.send(bin("after", round), Target::All);
                let after = seen(&r.link, client.conn()).map_or(0, |s| data(&s).len());
                assert_eq!(before, after, "round {round}");
            }
            Err(code) => {
                assert_eq!(round % 2, 0, "a finished resume is not undone");
                assert_eq!(code.code, ErrorCode::Removed, "round {round}");
            }
        }
        for n in &nodes {
            let (_, again) = resume_on(n, &g, 0).await;
            assert_eq!(again.err(), Some(ErrorCode::Removed), "round {round}");
        }
        // The other guest is untouched; it leaves to make room.
        other.gone(Departure::Left);
        g.gone(Departure::Left);
        wait_for("room empty", || host.send(bin("x", 0), Target::All) == 0).await;
    }
}

/// A guest away on another node past its grace period ends: the host
/// hears `guest_left` (`timeout`), and its token resumes no more.
#[actix::test]
async fn a_guest_away_past_its_grace_period_ends_for_its_host() {
    let r = TestRedis::start().await;
    let mut short = crate::registry::testing::settings();
    short.grace = std::time::Duration::from_millis(300);
    let n1 = start_node_with(&r, "n1", short.clone()).await;
    let n2 = start_node_with(&r, "n2", short).await;
    let host = host_on(&n1, 2, AdmitMode::Auto).await;
    let g = join(&n2, &host.reg.code, "slow").await.unwrap();
    let stays = join(&n1, &host.reg.code, "stays").await.unwrap();
    host.wait(4).await;
    g.gone(Departure::Dropped);
    wait_for("guest_left timeout", || {
        events(&host.seen()).iter().any(|e| {
            e["type"] == "guest_left" && e["guestId"] == g.id() && e["reason"] == "timeout"
        })
    })
    .await;
    let away = events(&host.seen())
        .iter()
        .position(|e| e["type"] == "guest_away")
        .expect("guest_away before");
    assert!(away < host.seen().len());
    let (_, again) = resume_on(&n2, &g, 0).await;
    assert_eq!(again.err(), Some(ErrorCode::ResumeExpired));
    assert_eq!(
        host.send(bin("x", 0), Target::All),
        1,
        "only the one that stayed"
    );
    assert_eq!(stays.wait(1).await.len(), 1);
}

/// A guest that drops and comes back on its own node, the host on
/// another: it gets what it had not read, once, and its frames go on.
#[actix::test]
async fn a_guest_back_on_its_own_node_gets_what_it_missed_once() {
    let r = TestRedis::start().await;
    let nodes = three_nodes(&r).await;
    let host = host_on(&nodes[0], 2, AdmitMode::Auto).await;
    let g = join(&nodes[1], &host.reg.code, "g").await.unwrap();
    host.wait(2).await;
    for i in 0..10 {
        assert_eq!(host.send(bin("h", i), Target::All), 1);
        g.send(bin("g", i));
    }
    g.wait(10).await;
    g.gone(Departure::Dropped);
    wait_for("guest_away", || {
        events(&host.seen())
            .iter()
            .any(|e| e["type"] == "guest_away")
    })
    .await;
    for i in 10..20 {
        host.send(bin("h", i), Target::All);
    }
    let (client, res) = resume_on(&nodes[1], &g, 4).await;
    let res = res.unwrap();
    assert_eq!(res.accepted, 10);
    let s = wait_seen(&res.link, client.conn(), 16).await;
    // Give the host's node's replay time to arrive, then check no doubles.
    wait_for("guest_back", || {
        events(&host.seen())
            .iter()
            .any(|e| e["type"] == "guest_back")
    })
    .await;
    host.send(bin("h", 20), Target::All);
    let s2 = wait_seen(&res.link, client.conn(), s.len() + 1).await;
    assert_eq!(
        binaries(&s2),
        (4..21).map(|i| bin("h", i)).collect::<Vec<_>>()
    );
    let gate = Gate::new();
    res.link
        .outbound
        .push(bin("g", 10), Target::All, client.conn(), &gate, |_| {});
    wait_for("11 frames from g", || {
        from(&host.seen(), g.id()).len() == 11
    })
    .await;
    assert_eq!(
        from(&host.seen(), g.id()),
        (0..11).map(|i| bin("g", i)).collect::<Vec<_>>()
    );
}
