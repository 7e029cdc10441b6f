//! Resume on another node: a side drops mid-stream and comes back on a third
//! node while its peer keeps sending, before, during and after its absence;
//! sequence-numbered payloads prove nothing is lost, duplicated or reordered.

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::watch;

use super::{assert_sequence, collect, send_range, wait_event};
use crate::support::cluster::{Cluster, Resp, pair_at, redis_command};
use crate::support::{WAIT, Ws, resume_msg};

/// Mac on node 1, browser on node 2; the mover drops and resumes on node 3.
async fn resume_on_a_third_node(mover_is_mac: bool) {
    // The stayer sends in three parts: before the drop, while the mover is
    // away, and after it resumed.
    const PART: u64 = 1000;
    const N_STAY: u64 = 3 * PART;
    const N_MOVE: u64 = 800;
    let c = Cluster::start(3, &[("RELAY_RESUME_BUFFER_FRAMES", "100000")]);
    let p = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    let (token, mover_path) = if mover_is_mac {
        (p.mac_token.clone(), "/mac")
    } else {
        (p.browser_token.clone(), "/browser")
    };
    let session = p.session_id.clone();
    let (mover, stayer) = if mover_is_mac {
        (p.mac, p.browser)
    } else {
        (p.browser, p.mac)
    };

    // The stayer collects all of the mover's frames, publishing the events it
    // hears so its sender and the mover can wait for them.
    let (events_tx, events) = watch::channel(Vec::new());
    let (mut s_tx, mut s_rx) = stayer.into_inner().split();
    let stayer_recv =
        tokio::spawn(async move { collect(&mut s_rx, N_MOVE as usize, Some(&events_tx)).await });
    let mut heard = events.clone();
    let stayer_send = tokio::spawn(async move {
        send_range(&mut s_tx, 1, PART).await;
        wait_event(&mut heard, "peer_disconnected").await;
        send_range(&mut s_tx, PART + 1, 2 * PART).await;
        wait_event(&mut heard, "peer_resumed").await;
        send_range(&mut s_tx, 2 * PART + 1, N_STAY).await;
        s_tx
    });

    // First connection: send some, read some, then the network fails.
    let (mut m_tx, mut m_rx) = mover.into_inner().split();
    send_range(&mut m_tx, 1, 400).await;
    let (first, _) = collect(&mut m_rx, 300, None).await;
    Ws::from_stream(m_rx.reunite(m_tx).expect("same stream")).drop_connection();
    // Resume once the cluster noticed, so the peer's events are certain
    // (a resume racing the drop would be a silent takeover).
    wait_event(&mut events.clone(), "peer_disconnected").await;

    // Second connection, on node 3: resume from what it has, re-send what the relay lacks.
    let mut ws = Ws::connect(&c.node(3).url(mover_path)).await;
    ws.json(resume_msg(&session, &token, first.len() as u64))
        .await;
    let resumed = ws.expect("resumed").await;
    assert_eq!(resumed["sessionId"], session.as_str());
    let accepted = resumed["lastSeq"].as_u64().expect("lastSeq");
    assert!(
        accepted <= 400,
        "relay cannot have accepted more than was sent"
    );
    let (mut m_tx, mut m_rx) = ws.into_inner().split();
    let resend = tokio::spawn(async move {
        send_range(&mut m_tx, accepted + 1, N_MOVE).await;
        m_tx
    });
    let (rest, _) = collect(&mut m_rx, (N_STAY as usize) - first.len(), None).await;
    let mut all = first;
    all.extend(rest);
    assert_sequence(&all, N_STAY, "mover received");

    let (got, seen) = stayer_recv.await.unwrap();
    assert_sequence(&got, N_MOVE, "stayer received");
    let types: Vec<&str> = seen.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["peer_disconnected", "peer_resumed"]);
    let _sink = stayer_send.await.unwrap();
    let _sink2 = resend.await.unwrap();
}

#[tokio::test]
async fn a_browser_resumes_on_another_node_with_nothing_lost() {
    resume_on_a_third_node(false).await;
}

#[tokio::test]
async fn a_mac_resumes_on_another_node_with_nothing_lost() {
    resume_on_a_third_node(true).await;
}

/// A resume while the side's old connection still looks open (on another
/// node) takes it over: the old one closes with 4001, the metric says takeover.
#[tokio::test]
async fn a_resume_over_a_live_connection_on_another_node_is_a_counted_takeover() {
    let c = Cluster::start(2, &[]);
    let mut p = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    let mut ws = Ws::connect(&c.node(2).url("/mac")).await;
    ws.json(resume_msg(&p.session_id, &p.mac_token, 0)).await;
    ws.expect("resumed").await;
    assert_eq!(p.mac.until_closed().await, Some(4001));
    assert_eq!(
        c.node(2)
            .metric("relay_resumes_total{result=\"takeover\"}")
            .await,
        1.0
    );
    assert_eq!(
        c.node(2).metric("relay_resumes_total{result=\"ok\"}").await,
        0.0
    );
    // The new connection carries the session: the browser's frames reach it.
    p.browser.data("after takeover").await;
    assert_eq!(ws.recv_json().await["payload"], "after takeover");
}

/// Pairs a mac and a browser on node 1, has them exchange `from_mac` and
/// `from_browser` frames, kills node 1, and returns the session id and the
/// mac's and the browser's resume tokens.
async fn pair_then_kill_node_1(
    c: &mut Cluster,
    from_mac: u64,
    from_browser: u64,
) -> (String, String, String) {
    let p = pair_at(&c.node(1).url("/mac"), &c.node(1).url("/browser")).await;
    let ids = (
        p.session_id.clone(),
        p.mac_token.clone(),
        p.browser_token.clone(),
    );
    let (mut m_tx, mut m_rx) = p.mac.into_inner().split();
    let (mut b_tx, mut b_rx) = p.browser.into_inner().split();
    send_range(&mut m_tx, 1, from_mac).await;
    send_range(&mut b_tx, 1, from_browser).await;
    let (got, _) = collect(&mut b_rx, from_mac as usize, None).await;
    assert_sequence(&got, from_mac, "browser before the crash");
    let (got, _) = collect(&mut m_rx, from_browser as usize, None).await;
    assert_sequence(&got, from_browser, "mac before the crash");
    c.kill(1);
    ids
}

/// Both sides on a node that dies. Only the counts checkpointed in Redis at
/// pairing survive it, so whichever side resumes first, the relay's count of
/// frames the mac sent is behind what the browser read until the mac has
/// re-sent what the dead node had taken. Each order must resume both, and
/// the browser must get each frame after its lastSeq once.
async fn both_sides_resume_after_a_crash(browser_first: bool, mac_node: usize) {
    let mut c = Cluster::start(mac_node, &[]);
    let (session, mac_token, browser_token) = pair_then_kill_node_1(&mut c, 300, 200).await;

    let mut b = Ws::connect(&c.node(2).url("/browser")).await;
    let mut m = Ws::connect(&c.node(mac_node).url("/mac")).await;
    // Neither side re-sends anything before both resumed: the second resume
    // meets the first side's count as restored from the checkpoint.
    let (m_accepted, b_accepted) = if mac_node != 2 {
        // On two nodes: the browser's node learns of the mac's move.
        b.json(resume_msg(&session, &browser_token, 300)).await;
        let b_resumed = b.expect("resumed").await;
        m.json(resume_msg(&session, &mac_token, 200)).await;
        (m.expect("resumed").await, b_resumed)
    } else {
        // On one node, both resumes sent before either answer.
        if browser_first {
            b.json(resume_msg(&session, &browser_token, 300)).await;
            m.json(resume_msg(&session, &mac_token, 200)).await;
        } else {
            m.json(resume_msg(&session, &mac_token, 200)).await;
            b.json(resume_msg(&session, &browser_token, 300)).await;
        }
        (m.expect("resumed").await, b.expect("resumed").await)
    };
    let m_accepted = m_accepted["lastSeq"].as_u64().expect("lastSeq");
    let b_accepted = b_accepted["lastSeq"].as_u64().expect("lastSeq");
    assert!(
        m_accepted <= 300 && b_accepted <= 200,
        "{m_accepted} {b_accepted}"
    );
    let (mut m_tx, mut m_rx) = m.into_inner().split();
    let (mut b_tx, mut b_rx) = b.into_inner().split();
    send_range(&mut m_tx, m_accepted + 1, 400).await;
    send_range(&mut b_tx, b_accepted + 1, 250).await;
    let (rest, _) = collect(&mut b_rx, 100, None).await;
    let want: Vec<u64> = (301..=400).collect();
    assert_eq!(
        rest, want,
        "browser after the crash: each frame after 300 once"
    );
    let (rest, _) = collect(&mut m_rx, 50, None).await;
    let want: Vec<u64> = (201..=250).collect();
    assert_eq!(rest, want, "mac after the crash: each frame after 200 once");
}

#[tokio::test]
async fn after_a_crash_the_browser_resumes_first_ahead_of_the_checkpoint() {
    both_sides_resume_after_a_crash(true, 2).await;
}

#[tokio::test]
async fn after_a_crash_the_mac_resumes_first_and_the_browser_is_ahead_of_it() {
    both_sides_resume_after_a_crash(false, 2).await;
}

#[tokio::test]
async fn after_a_crash_the_two_sides_resume_on_two_nodes() {
    both_sides_resume_after_a_crash(true, 3).await;
}

/// Both sides on a node that dies, and the browser's resume waits for the
/// dead node (its lease has not lapsed yet) while the mac resumes on a third
/// node. The browser's node learns the mac's count only from the mac's move,
/// which comes during that wait; it must count the browser's frames from it,
/// not from the checkpoint. (Counting from the checkpoint had the browser send
/// every frame again, and its node then held the ones the mac's node dropped
/// as read, unacknowledged, until its backlog was full and nothing more got
/// through: the 10-minute chaos run's lost direction.) Frames here outweigh
/// the backlog (a quarter of `RELAY_MAX_BUFFERED`).
#[tokio::test]
async fn after_a_crash_a_move_heard_during_a_resume_gives_its_count() {
    const FROM_MAC: u64 = 400;
    const FROM_BROWSER: u64 = 600;
    let mut c = Cluster::start(
        3,
        &[
            ("RELAY_MAX_FRAME", "64KiB"),
            ("RELAY_MAX_BUFFERED", "256KiB"),
        ],
    );
    let (session, mac_token, browser_token) =
        pair_then_kill_node_1(&mut c, FROM_MAC, FROM_BROWSER).await;

    // Node 1's lease outlives it by up to 3 s: node 2 waits for its handover.
    let mut b = Ws::connect(&c.node(2).url("/browser")).await;
    b.json(resume_msg(&session, &browser_token, FROM_MAC)).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut m = Ws::connect(&c.node(3).url("/mac")).await;
    m.json(resume_msg(&session, &mac_token, FROM_BROWSER)).await;
    let b_accepted = b.expect("resumed").await["lastSeq"]
        .as_u64()
        .expect("lastSeq");
    let m_accepted = m.expect("resumed").await["lastSeq"]
        .as_u64()
        .expect("lastSeq");
    assert_eq!(
        (m_accepted, b_accepted),
        (FROM_MAC, FROM_BROWSER),
        "each side is told what its peer read"
    );

    let (mut m_tx, mut m_rx) = m.into_inner().split();
    let (mut b_tx, mut b_rx) = b.into_inner().split();
    send_range(&mut b_tx, b_accepted + 1, FROM_BROWSER + 50).await;
    send_range(&mut m_tx, m_accepted + 1, FROM_MAC + 50).await;
    let (rest, _) = collect(&mut m_rx, 50, None).await;
    let want: Vec<u64> = (FROM_BROWSER + 1..=FROM_BROWSER + 50).collect();
    assert_eq!(rest, want, "mac after the crash: each new frame once");
    let (rest, _) = collect(&mut b_rx, 50, None).await;
    let want: Vec<u64> = (FROM_MAC + 1..=FROM_MAC + 50).collect();
    assert_eq!(rest, want, "browser after the crash: each new frame once");
}

/// Waits until field `field` of session `sid`'s hash in Redis is `value`.
async fn wait_field(c: &Cluster, sid: &str, field: &str, value: &str) {
    let key = format!("relay:s:{sid}");
    let want = Resp::Bulk(Some(value.to_owned()));
    let until = std::time::Instant::now() + WAIT;
    loop {
        let got = redis_command(c.redis.port(), &["HGET", &key, field]);
        if got.as_ref() == Ok(&want) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{key} {field} stayed {got:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A resume whose deadline passes while it waits must never attach later.
/// The browser's node is stopped (its lease lasts the whole test), so every
/// resume of the session on node 3 waits its full handover wait (2 s) for it.
/// Two mac resumes hold node 3's turn for 4 s; the browser's resume queued
/// behind them is refused by the relay itself with `UNAVAILABLE`, at its
/// deadline less a handover wait, before it moved anything. It must never
/// attach afterwards (so a later resume does not replace its connection), the
/// mac must not hear `peer_resumed` for it, and the browser can resume later.
/// (Before deadlines, it waited up to 10 s, committed after its socket's 5 s
/// had run out, and the next resume closed its connection with 4001.)
#[tokio::test]
async fn a_resume_refused_at_its_deadline_never_attaches_later() {
    let c = Cluster::start(3, &[("RELAY_LEASE_TTL", "30s")]);
    let mut p = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    p.browser.drop_connection();
    p.mac.expect("peer_disconnected").await;
    // Node 2 tells the mac's node before Redis: stop it only once Redis has
    // the browser away, or the browser's resumes would be takeovers.
    wait_field(&c, &p.session_id, "b_state", "away").await;
    c.node(2).sigstop();

    // The first mac resume waits for node 2 while holding the session's turn
    // on node 3: node 1 has handed over (it closed the old connection).
    let mut first = Ws::connect(&c.node(3).url("/mac")).await;
    first.json(resume_msg(&p.session_id, &p.mac_token, 0)).await;
    assert_eq!(p.mac.until_closed().await, Some(4001));
    let mut mac = Ws::connect(&c.node(3).url("/mac")).await;
    mac.json(resume_msg(&p.session_id, &p.mac_token, 0)).await;
    c.node(3)
        .wait_logged("resume waits for another resume of its session")
        .await;
    let mut refused = Ws::connect(&c.node(3).url("/browser")).await;
    refused
        .json(resume_msg(&p.session_id, &p.browser_token, 0))
        .await;
    refused.expect_error("UNAVAILABLE").await;

    // The mac resumes go on as before: the second takes over the first.
    first.expect("resumed").await;
    assert_eq!(first.until_closed().await, Some(4001));
    mac.expect("resumed").await;

    // The browser resumes again, and is the one that gets the session.
    let mut browser = Ws::connect(&c.node(3).url("/browser")).await;
    browser
        .json(resume_msg(&p.session_id, &p.browser_token, 0))
        .await;
    browser.expect("resumed").await;
    mac.expect("peer_resumed").await;
    browser.data("to the mac").await;
    assert_eq!(mac.recv_json().await["payload"], "to the mac");
    mac.data("to the browser").await;
    assert_eq!(browser.recv_json().await["payload"], "to the browser");

    // The refused connection was never attached: not replaced by the later
    // resume, and nothing was written to it.
    refused.json(json!({"type": "ping", "ts": 7})).await;
    assert_eq!(refused.expect("pong").await["ts"], 7);
    assert_eq!(
        c.node(3)
            .metric("relay_resumes_total{result=\"unavailable\"}")
            .await,
        1.0
    );
}

/// Both sides on node 1; the mac drops with frames of the browser unread,
/// then the browser moves to node 2 and the mac to node 3. The unread frames
/// were queued on node 1 while both were there; they must reach the mac
/// wherever it resumes, ahead of what the browser sent from node 2, whether
/// node 1 is still up (`stop_node_1` false) or drained and gone (true).
async fn both_sides_leave_their_node_with_frames_unread(stop_node_1: bool) {
    const SENT: u64 = 50;
    const READ: u64 = 20;
    const AFTER: u64 = 60;
    let mut c = Cluster::start(3, &[]);
    let p = pair_at(&c.node(1).url("/mac"), &c.node(1).url("/browser")).await;
    let (session, mac_token, browser_token) = (
        p.session_id.clone(),
        p.mac_token.clone(),
        p.browser_token.clone(),
    );
    let (mut b_tx, b_rx) = p.browser.into_inner().split();
    send_range(&mut b_tx, 1, SENT).await;
    let (m_tx, mut m_rx) = p.mac.into_inner().split();
    let (first, _) = collect(&mut m_rx, READ as usize, None).await;
    assert_sequence(&first, READ, "mac before it dropped");
    Ws::from_stream(m_rx.reunite(m_tx).expect("same stream")).drop_connection();
    let mut b = Ws::from_stream(b_rx.reunite(b_tx).expect("same stream"));
    b.expect("peer_disconnected").await;
    b.drop_connection();
    wait_field(&c, &session, "b_state", "away").await;

    let mut b = Ws::connect(&c.node(2).url("/browser")).await;
    b.json(resume_msg(&session, &browser_token, 0)).await;
    let accepted = b.expect("resumed").await["lastSeq"]
        .as_u64()
        .expect("lastSeq");
    assert_eq!(accepted, SENT, "node 1 took every frame the browser sent");
    if stop_node_1 {
        c.node(1).sigterm();
        c.node_mut(1).wait_exit().await;
        // A drained node gives its lease up as it exits: nobody waits for
        // a handover it can no longer give.
        let lease = format!("relay:lease:{}", c.node(1).id);
        assert_eq!(
            redis_command(c.redis.port(), &["EXISTS", &lease]),
            Ok(Resp::Int(0)),
            "the drained node's lease outlived it"
        );
    }
    let (mut b_tx, _b_rx) = b.into_inner().split();
    send_range(&mut b_tx, SENT + 1, AFTER).await;

    let mut m = Ws::connect(&c.node(3).url("/mac")).await;
    m.json(resume_msg(&session, &mac_token, READ)).await;
    m.expect("resumed").await;
    let (_m_tx, mut m_rx) = m.into_inner().split();
    let (rest, _) = collect(&mut m_rx, (AFTER - READ) as usize, None).await;
    let want: Vec<u64> = (READ + 1..=AFTER).collect();
    assert_eq!(
        rest, want,
        "mac after both moved: each frame after {READ} once"
    );
    assert!(
        !c.node(3).logged("handover did not come in time"),
        "node 3 waited for a node that had left"
    );
}

#[tokio::test]
async fn both_sides_leave_a_live_node_and_the_unread_frames_follow() {
    both_sides_leave_their_node_with_frames_unread(false).await;
}

#[tokio::test]
async fn both_sides_leave_a_drained_node_and_the_unread_frames_follow() {
    both_sides_leave_their_node_with_frames_unread(true).await;
}

/// A resume whose peer's node cannot replay what it claims to lack (here a
/// `lastSeq` past what was sent) is refused on a third node. A side that was
/// away stays away: its peer hears nothing more, and a good resume later
/// brings it back. A side that was connected (a takeover) has lost its old
/// connection: its peer hears `peer_disconnected`.
async fn a_resume_the_peers_node_cannot_replay(was_away: bool) {
    let c = Cluster::start(3, &[]);
    let mut p = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    p.mac.data("one").await;
    assert_eq!(p.browser.recv_json().await["payload"], "one");
    let mut old = Some(p.browser);
    if was_away {
        old.take().expect("connected").drop_connection();
        p.mac.expect("peer_disconnected").await;
        wait_field(&c, &p.session_id, "b_state", "away").await;
    }
    let mut bad = Ws::connect(&c.node(3).url("/browser")).await;
    bad.json(resume_msg(&p.session_id, &p.browser_token, 500))
        .await;
    let refused = bad.expect_error("INVALID_RESUME").await;
    let why = refused["message"].as_str().unwrap_or_default();
    assert!(!why.contains('{'), "a sentence, not a debug print: {why}");
    if let Some(mut old) = old {
        assert_eq!(old.until_closed().await, Some(4001));
        p.mac.expect("peer_disconnected").await;
    }
    // The refused resume leaves the side away in Redis (a script of its own,
    // after the refusal): a resume before that would be a takeover of the
    // refused one, and its peer would hear no `peer_resumed` (design.md,
    // Known limits).
    wait_field(&c, &p.session_id, "b_state", "away").await;
    // The browser comes back with what it has, and the session goes on.
    let mut b = Ws::connect(&c.node(3).url("/browser")).await;
    b.json(resume_msg(&p.session_id, &p.browser_token, 1)).await;
    b.expect("resumed").await;
    // The mac's next message is the browser coming back: no `peer_resumed`
    // for the refused resume, no second `peer_disconnected`.
    assert_eq!(p.mac.recv_json().await["type"], "peer_resumed");
    p.mac.data("two").await;
    assert_eq!(b.recv_json().await["payload"], "two");
    b.data("back").await;
    assert_eq!(p.mac.recv_json().await["payload"], "back");
}

#[tokio::test]
async fn a_refused_resume_of_an_away_side_leaves_it_away_and_its_peer_untold() {
    a_resume_the_peers_node_cannot_replay(true).await;
}

#[tokio::test]
async fn a_refused_takeover_tells_the_peer_its_side_is_gone() {
    a_resume_the_peers_node_cannot_replay(false).await;
}
