//! Messages between a room's nodes that are lost on the way (pub/sub loses
//! what a node's broken subscription misses): the guest's node is made
//! deaf to control messages (`Bus::lose_controls`), frames still pass.

use std::sync::Arc;

use relay_protocol::{AdmitMode, Role};

use super::*;
use crate::cluster::bus::Bus;
use crate::registry::{RegistrySettings, Resume};

/// Starts the registry of `node` with `settings`, keeping its bus (to make
/// it lose control messages); its lease renews itself for the test's life.
async fn start_node_with_bus(
    r: &TestRedis,
    node: &str,
    settings: RegistrySettings,
) -> (Addr<ClusterRegistry>, Arc<Bus>) {
    let (addr, bus, lease) = start_node_full(r, node, settings, Duration::from_secs(30)).await;
    std::mem::forget(lease);
    (addr, bus)
}

/// Waits until `f` holds, for up to `within` (a test of the relay's own
/// retries, which outlast [`WAIT`]).
async fn wait_long(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < until, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events about guest `id` that `host` heard, by type, in order.
fn about(host: &Hosting, id: GuestId) -> Vec<String> {
    events(&host.seen())
        .iter()
        .filter(|e| e["guestId"] == id)
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The host admits a guest whose node loses the `Decide`: the host's
/// node reads on after its wait (the decision stands in Redis), but the
/// guest hears nothing of the room, not even the frames its node receives
/// for it (a guest admitted earlier on the same node gets them, from the
/// same envelopes), and may send nothing. Once its node hears again, the
/// host's node's next ask reaches it: the guest gets `joined`, then every
/// frame the host sent since, once and in order, and its frames reach the
/// host.
#[actix::test]
async fn a_lost_decide_lets_the_guest_in_only_once_its_node_hears_it() {
    let r = TestRedis::start().await;
    let n1 = start_node(&r, "n1").await;
    let (n2, bus2) = start_node_with_bus(&r, "n2", settings()).await;
    let host = host_on(&n1, 2, AdmitMode::Ask).await;
    let code = host.reg.code.clone();
    let witness = join(&n2, &code, "witness").await.unwrap();
    host.act(RoomOp::Admit, witness.id()).await.unwrap();
    assert_eq!(witness.wait(1).await[0].kind(), "joined");
    let g = join(&n2, &code, "late").await.unwrap();
    wait_for("both joins heard", || {
        about(&host, g.id()) == ["guest_joined"]
    })
    .await;

    bus2.lose_controls(true);
    host.act(RoomOp::Admit, g.id()).await.unwrap();
    assert_eq!(about(&host, g.id()), ["guest_joined", "guest_admitted"]);
    const N: u32 = 5;
    for i in 0..N {
        assert_eq!(host.send(bin("h", i), Target::All), 2);
    }
    // The frames reached n2 (the witness has them, from envelopes that
    // named both guests), and none reached the guest still waiting there.
    let w = witness.wait(1 + N as usize).await;
    assert_eq!(data(&w).len(), N as usize);
    assert_eq!(g.seen(), Some(vec![]), "a waiting guest hears nothing");
    assert!(matches!(g.send(bin("g", 0)), Pushed::NotPaired));

    bus2.lose_controls(false);
    let s = g.wait(1 + N as usize).await;
    assert_eq!(s[0].kind(), "joined");
    if let Seen::Event(e) = &s[0] {
        assert!(e["resumeToken"].as_str().is_some_and(|t| !t.is_empty()));
    }
    assert_eq!(
        data(&s),
        (0..N).map(|i| (bin("h", i), None)).collect::<Vec<_>>()
    );
    assert_eq!(host.send(bin("h", N), Target::All), 2);
    let s = g.wait(2 + N as usize).await;
    assert_eq!(data(&s).len(), N as usize + 1, "nothing twice");
    assert!(matches!(g.send(bin("g", 1)), Pushed::Queued { .. }));
    wait_for("the guest's frame at the host", || {
        data(&host.seen()).contains(&(bin("g", 1), Some(g.id())))
    })
    .await;
    assert_eq!(about(&host, g.id()), ["guest_joined", "guest_admitted"]);
}

/// The guest's node never hears the host's admission (its subscription
/// stays deaf to control messages): after the host's node asked again for
/// its bounded time, the guest ends (`guest_left`, `timeout`), and the
/// host's frames no longer go to it. Its node, hearing again, cuts it
/// once told (`DENIED`: it never got in).
#[actix::test]
async fn a_guest_whose_node_never_confirms_its_admission_ends_for_the_host() {
    let r = TestRedis::start().await;
    let n1 = start_node(&r, "n1").await;
    let (n2, bus2) = start_node_with_bus(&r, "n2", settings()).await;
    let host = host_on(&n1, 2, AdmitMode::Ask).await;
    let g = join(&n2, &host.reg.code, "never").await.unwrap();
    host.wait(1).await;
    bus2.lose_controls(true);
    host.act(RoomOp::Admit, g.id()).await.unwrap();
    assert_eq!(host.send(bin("h", 0), Target::All), 1);
    wait_long("guest_left", Duration::from_secs(20), || {
        about(&host, g.id()).len() == 3
    })
    .await;
    assert_eq!(
        about(&host, g.id()),
        ["guest_joined", "guest_admitted", "guest_left"]
    );
    let left = events(&host.seen()).pop().unwrap();
    assert_eq!(left["reason"], "timeout");
    assert_eq!(host.send(bin("h", 1), Target::All), 0);
    assert_eq!(g.seen(), Some(vec![]), "it never heard the room");
}

/// A guest's resume on another node that misses its deadline (its old
/// node, deaf, never hands over): the guest is away on its new node, its
/// grace period runs again, and when it passes the guest ends: the host
/// hears `guest_left` (`timeout`) last, its frames go to the others only,
/// and the token resumes on no node.
#[actix::test]
async fn a_guest_s_resume_that_misses_its_deadline_ends_when_its_grace_passes() {
    let r = TestRedis::start().await;
    let mut short = settings();
    short.grace = Duration::from_secs(1);
    let n1 = start_node_with(&r, "n1", short.clone()).await;
    let (n2, bus2) = start_node_with_bus(&r, "n2", short.clone()).await;
    let n3 = start_node_with(&r, "n3", short).await;
    let host = host_on(&n1, 2, AdmitMode::Auto).await;
    let g = join(&n2, &host.reg.code, "g").await.unwrap();
    let stays = join(&n3, &host.reg.code, "stays").await.unwrap();
    host.wait(4).await;
    host.send(bin("h", 0), Target::All);
    g.wait(1).await;
    g.gone(Departure::Dropped);
    wait_for("guest_away", || {
        about(&host, g.id()).contains(&"guest_away".to_owned())
    })
    .await;

    bus2.lose_controls(true);
    let client = TestClient::start();
    let asked = Instant::now();
    let late = n3
        .send(Resume {
            client: client.client.clone(),
            deadline: Deadline::at(asked + Duration::from_millis(300)),
            role: Role::Browser,
            session_id: g.joined.link.session_id.to_string(),
            resume_token: g.joined.resume_token.clone().unwrap(),
            last_seq: 1,
            guest_seqs: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(late.err().map(|r| r.code), Some(ErrorCode::Unavailable));
    bus2.lose_controls(false);

    wait_for("guest_left", || {
        about(&host, g.id()).last().map(String::as_str) == Some("guest_left")
    })
    .await;
    let left = events(&host.seen())
        .into_iter()
        .rfind(|e| e["guestId"] == g.id())
        .unwrap();
    assert_eq!(left["reason"], "timeout");
    assert_eq!(
        about(&host, g.id())
            .iter()
            .filter(|t| *t == "guest_left")
            .count(),
        1
    );
    for n in [&n1, &n2, &n3] {
        let again = TestClient::start();
        let res = n
            .send(Resume {
                client: again.client.clone(),
                deadline: Deadline::for_request(),
                role: Role::Browser,
                session_id: g.joined.link.session_id.to_string(),
                resume_token: g.joined.resume_token.clone().unwrap(),
                last_seq: 1,
                guest_seqs: Default::default(),
            })
            .await
            .unwrap();
        assert_eq!(res.err().map(|r| r.code), Some(ErrorCode::ResumeExpired));
    }
    assert_eq!(
        host.send(bin("h", 1), Target::All),
        1,
        "only the one that stayed"
    );
    assert_eq!(data(&stays.wait(2).await).len(), 2);
}

/// The host does not answer a join on another node in time, and its
/// node's denial never reaches the guest's node: the host hears
/// `guest_left` (`timeout`) once, and the guest's node, having waited out
/// the admit timeout and the host's node's asking, denies the guest
/// itself: nobody waits for an answer for ever.
#[actix::test]
async fn a_waiting_guest_whose_node_hears_no_answer_is_denied_there() {
    let r = TestRedis::start().await;
    let mut quick = settings();
    quick.admit_timeout = Duration::from_millis(300);
    let n1 = start_node_with(&r, "n1", quick.clone()).await;
    let (n2, bus2) = start_node_with_bus(&r, "n2", quick).await;
    let host = host_on(&n1, 1, AdmitMode::Ask).await;
    let g = join(&n2, &host.reg.code, "unanswered").await.unwrap();
    bus2.lose_controls(true);
    wait_for("the host's timeout", || {
        about(&host, g.id()) == ["guest_joined", "guest_left"]
    })
    .await;
    assert!(g.client.ended().is_empty(), "its node heard nothing yet");
    wait_long(
        "the guest's node to deny it",
        Duration::from_secs(20),
        || g.client.ended() == [ErrorCode::Denied],
    )
    .await;
    assert_eq!(about(&host, g.id()), ["guest_joined", "guest_left"]);
    assert_eq!(g.seen().map(|s| data(&s).len()).unwrap_or(0), 0);
}

/// The host removes a guest whose node loses the `Decide`: the host's
/// node reads on after its wait with the guest out of the room (its
/// frames no longer sent to the guest, the guest's no longer taken), and
/// once the node hears again the guest is cut with `REMOVED`.
#[actix::test]
async fn a_lost_remove_keeps_the_guest_out_and_cuts_it_once_heard() {
    let r = TestRedis::start().await;
    let n1 = start_node(&r, "n1").await;
    let (n2, bus2) = start_node_with_bus(&r, "n2", settings()).await;
    let host = host_on(&n1, 2, AdmitMode::Auto).await;
    let g = join(&n2, &host.reg.code, "removed").await.unwrap();
    let stays = join(&n2, &host.reg.code, "stays").await.unwrap();
    host.wait(4).await;
    bus2.lose_controls(true);
    host.act(RoomOp::Remove, g.id()).await.unwrap();
    assert_eq!(
        about(&host, g.id()),
        ["guest_joined", "guest_admitted", "guest_left"]
    );
    assert_eq!(host.send(bin("h", 0), Target::All), 1);
    assert_eq!(data(&stays.wait(1).await), [(bin("h", 0), None)]);
    // What the removed guest still sends is not taken, what stays's is.
    g.send(bin("g", 0));
    stays.send(bin("s", 0));
    wait_for("the frame of the guest that stays", || {
        data(&host.seen()).contains(&(bin("s", 0), Some(stays.id())))
    })
    .await;
    assert!(g.client.ended().is_empty(), "its node has not heard yet");
    bus2.lose_controls(false);
    wait_for("the removed guest cut", || {
        g.client.ended() == [ErrorCode::Removed]
    })
    .await;
    assert!(
        !data(&host.seen())
            .iter()
            .any(|(_, from)| *from == Some(g.id())),
        "nothing of the removed guest reached the host"
    );
    assert_eq!(g.seen().map(|s| data(&s).len()).unwrap_or(0), 0);
}

/// The guest's node dies (deaf, then its lease gone) before it confirms
/// the host's admission: once the node is reaped the host hears the guest
/// away, as for any guest of a dead node (whether it got its token died
/// with the node), and gone (`guest_left`, `timeout`) when its grace
/// period passes.
#[actix::test]
async fn a_guest_whose_node_dies_before_confirming_its_admission_is_away_then_gone() {
    let r = TestRedis::start().await;
    let mut short = settings();
    short.grace = Duration::from_secs(1);
    let ttl = Duration::from_secs(2);
    let (n1, _, _l1) = start_node_full(&r, "n1", short.clone(), ttl).await;
    let (n2, bus2, lease2) = start_node_full(&r, "n2", short, ttl).await;
    let host = host_on(&n1, 2, AdmitMode::Ask).await;
    let g = join(&n2, &host.reg.code, "doomed").await.unwrap();
    host.wait(1).await;
    bus2.lose_controls(true);
    host.act(RoomOp::Admit, g.id()).await.unwrap();
    lease2.give_up().await;
    wait_long("guest_left", Duration::from_secs(20), || {
        about(&host, g.id()).len() == 4
    })
    .await;
    assert_eq!(
        about(&host, g.id()),
        ["guest_joined", "guest_admitted", "guest_away", "guest_left"]
    );
    let left = events(&host.seen()).pop().unwrap();
    assert_eq!(left["reason"], "timeout");
    assert_eq!(host.send(bin("h", 0), Target::All), 0);
    drop(n2);
}

/// While a guest's node has not confirmed its admission, the host's frames
/// for it are held within the away limits (1 MiB here): a host that sends
/// more meanwhile ends the guest (`guest_left`, `timeout`) at once, as one
/// away too long, and is never paused by it.
#[actix::test]
async fn frames_held_for_an_unconfirmed_guest_are_bounded() {
    let r = TestRedis::start().await;
    let n1 = start_node(&r, "n1").await;
    let (n2, bus2) = start_node_with_bus(&r, "n2", settings()).await;
    let host = host_on(&n1, 2, AdmitMode::Ask).await;
    let g = join(&n2, &host.reg.code, "unconfirmed").await.unwrap();
    host.wait(1).await;
    bus2.lose_controls(true);
    host.act(RoomOp::Admit, g.id()).await.unwrap();
    let mut sent = 0;
    while host.send(Frame::Binary(Bytes::from(vec![7u8; 100_000])), Target::All) == 1 {
        sent += 1;
        assert!(sent <= 11, "more than 1 MiB held for a guest not in");
    }
    wait_for("guest_left", || about(&host, g.id()).len() == 3).await;
    assert_eq!(
        about(&host, g.id()),
        ["guest_joined", "guest_admitted", "guest_left"]
    );
    assert_eq!(events(&host.seen()).pop().unwrap()["reason"], "timeout");
    assert!(!host.gate.is_closed());
    assert_eq!(g.seen(), Some(vec![]));
}
