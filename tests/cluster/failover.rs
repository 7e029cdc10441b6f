//! Failures under live sessions: a node killed without a word, and Redis
//! going away and coming back.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{seq_frame, seq_of};
use crate::support::cluster::{Cluster, pair_at, register_at};
use crate::support::{Got, Ws, resume_msg};

/// Sends the [`seq_frame`]s `from..=to`.
async fn send(ws: &mut Ws, from: u64, to: u64) {
    for seq in from..=to {
        let Message::Binary(b) = seq_frame(seq) else {
            unreachable!()
        };
        ws.binary(b.to_vec()).await;
    }
}

/// Receives the [`seq_frame`]s `from..=to`, exactly and in order.
async fn recv(ws: &mut Ws, from: u64, to: u64, who: &str) {
    for want in from..=to {
        match ws.recv().await {
            Got::Binary(b) => assert_eq!(seq_of(&b), want, "{who}: lost, duplicated or reordered"),
            other => panic!("{who}: expected frame {want}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_killed_node_s_client_resumes_on_another_node() {
    let mut c = Cluster::start(3, &[]);
    let mut p = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    send(&mut p.mac, 1, 50).await;
    recv(&mut p.browser, 1, 50, "browser").await;
    send(&mut p.browser, 1, 50).await;
    recv(&mut p.mac, 1, 50, "mac").await;

    c.kill(2);
    // The mac does not know yet and keeps sending.
    send(&mut p.mac, 51, 60).await;
    // Its peer's node is gone: the mac is told within a few seconds.
    p.mac.expect("peer_disconnected").await;
    send(&mut p.mac, 61, 100).await;

    // The browser's connection died with its node; it resumes on node 3.
    let mut browser = c.node(3).browser().await;
    browser
        .json(resume_msg(&p.session_id, &p.browser_token, 50))
        .await;
    let resumed = browser.expect("resumed").await;
    assert_eq!(resumed["sessionId"], p.session_id.as_str());
    // All 50 of its frames reached the mac, so the relay accepted all 50.
    assert_eq!(resumed["lastSeq"], 50);
    recv(&mut browser, 51, 100, "resumed browser").await;
    p.mac.expect("peer_resumed").await;

    // Data flows again both ways.
    send(&mut browser, 51, 100).await;
    recv(&mut p.mac, 51, 100, "mac").await;
    send(&mut p.mac, 101, 150).await;
    recv(&mut browser, 101, 150, "resumed browser").await;
}

#[tokio::test]
async fn a_pair_on_one_node_outlives_redis_going_away_and_coming_back() {
    let mut c = Cluster::start(2, &[]);
    let mut p = pair_at(&c.node(1).url("/mac"), &c.node(1).url("/browser")).await;

    c.redis.stop();
    for node in c.nodes() {
        node.wait_status("/readyz", 503).await;
        assert_eq!(node.metric("relay_ready").await, 0.0);
    }
    assert_eq!(c.node(1).get("/healthz").await.0, 200);
    // No new sessions without Redis...
    let mut mac = c.node(1).mac().await;
    mac.json(json!({"type": "register"})).await;
    mac.expect_error("UNAVAILABLE").await;
    let mut browser = c.node(1).browser().await;
    browser
        .json(json!({"type": "join", "code": "H4F7KN"}))
        .await;
    browser.expect_error("UNAVAILABLE").await;
    // ...but the pair on one node carries on.
    send(&mut p.mac, 1, 100).await;
    recv(&mut p.browser, 1, 100, "browser").await;
    send(&mut p.browser, 1, 100).await;
    recv(&mut p.mac, 1, 100, "mac").await;

    // Redis comes back (empty): the nodes reconnect by themselves.
    c.redis.start_again();
    for node in c.nodes() {
        node.wait_status("/readyz", 200).await;
        assert_eq!(node.metric("relay_ready").await, 1.0);
    }
    let mut q = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    q.mac.binary(vec![1]).await;
    assert_eq!(q.browser.recv().await, Got::Binary(vec![1]));
    let _fresh = register_at(&c.node(2).url("/mac")).await;

    // The old pair never noticed.
    send(&mut p.mac, 101, 150).await;
    recv(&mut p.browser, 101, 150, "browser").await;
    send(&mut p.browser, 101, 150).await;
    recv(&mut p.mac, 101, 150, "mac").await;
}
