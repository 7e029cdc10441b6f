//! Rooms in a cluster. Until rooms cross nodes (docs/design.md, "Rooms
//! across nodes": the Redis part is built, the bus and registry part is
//! not), a cluster refuses a room host plainly and goes on serving
//! pairings; and what a room client may already send (`guestSeqs` on a
//! resume, shared/PROTOCOL.md) changes nothing for anyone else.

use serde_json::json;

use super::seq_frame;
use crate::support::cluster::{Cluster, pair_at};
use crate::support::{Got, Ws, resume_msg};

#[tokio::test]
async fn a_cluster_refuses_a_room_host_plainly_and_the_socket_can_still_register() {
    let c = Cluster::start(2, &[]);
    for room in [
        json!({"type": "register", "maxGuests": 3}),
        json!({"type": "register", "admit": "auto"}),
        json!({"type": "register", "maxGuests": 1, "admit": "ask"}),
    ] {
        let mut mac = c.node(1).mac().await;
        mac.json(room.clone()).await;
        let e = mac.expect_error("INVALID_MESSAGE").await;
        let says = e["message"].as_str().expect("a message");
        assert!(
            says.contains("single-node relay") && says.contains("without them"),
            "{room}: {says}"
        );
        // The refusal changed nothing: a plain register on the same socket
        // gets a pairing whose browser joins on the other node.
        mac.json(json!({"type": "register"})).await;
        let r = mac.expect("registered").await;
        assert!(r.get("maxGuests").is_none(), "{r}");
        let mut browser = c.node(2).browser().await;
        browser
            .json(json!({"type": "join", "code": r["code"], "name": "Ana"}))
            .await;
        let j = browser.expect("joined").await;
        assert!(j.get("guestId").is_none(), "a pairing's browser: {j}");
        mac.expect("peer_joined").await;
    }
}

#[tokio::test]
async fn a_mac_s_resume_with_guest_seqs_on_another_node_is_a_plain_resume() {
    let c = Cluster::start(3, &[]);
    let p = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    let (mut mac, mut browser) = (p.mac, p.browser);
    for seq in 1..=3 {
        browser.binary(bytes(seq)).await;
    }
    for seq in 1..=3 {
        assert!(matches!(mac.recv().await, Got::Binary(b) if b == bytes(seq)));
    }
    mac.drop_connection();
    browser.expect("peer_disconnected").await;

    let mut again = Ws::connect(&c.node(3).url("/mac")).await;
    let mut resume = resume_msg(&p.session_id, &p.mac_token, 3);
    // What a room host's client sends; a pairing's mac has no guests, and a
    // malformed map must not matter either where it is not needed.
    resume["guestSeqs"] = json!({"1": 3, "x": "y"});
    again.json(resume).await;
    let resumed = again.expect("resumed").await;
    assert_eq!(resumed["lastSeq"], 0);
    browser.expect("peer_resumed").await;

    browser.binary(bytes(4)).await;
    assert!(matches!(again.recv().await, Got::Binary(b) if b == bytes(4)));
    again.binary(bytes(1)).await;
    assert!(matches!(browser.recv().await, Got::Binary(b) if b == bytes(1)));
}

/// The bytes of binary data frame `seq`.
fn bytes(seq: u64) -> Vec<u8> {
    seq_frame(seq).into_data().to_vec()
}
