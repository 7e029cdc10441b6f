//! Pairing across nodes: the flow and its events as on one node, and what
//! must be decided once for the whole cluster (who joins, which codes are
//! live, when a code expires).

use std::collections::HashSet;

use futures_util::future::join_all;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_protocol::code::ALPHABET;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::cluster::{Cluster, pair_at, register_at};
use crate::support::{Got, Stream, WAIT, Ws};

/// `n` frames of random kinds and sizes, each carrying its number: binary ones
/// start with it, text ones are `data` messages with odd payloads and an extra
/// `seq` field (the relay must not re-encode them).
fn frames(seed: u64, n: u64) -> Vec<Message> {
    let mut rng = StdRng::seed_from_u64(seed);
    (1..=n)
        .map(|seq| {
            if rng.random_bool(0.5) {
                let mut b = seq.to_be_bytes().to_vec();
                b.resize(8 + rng.random_range(0..=16 * 1024), 0);
                rng.fill(&mut b[8..]);
                Message::binary(b)
            } else {
                let len = rng.random_range(0..=2048);
                let payload: String = (0..len)
                    .map(|_| match rng.random_range(0..6) {
                        0 => '"',
                        1 => 'é',
                        2 => '\n',
                        3 => '😀',
                        _ => rng.random_range('a'..='z'),
                    })
                    .collect();
                Message::text(format!(
                    "{{ \"type\" : \"data\", \"payload\": {}, \"seq\": {seq} }}",
                    json!(payload)
                ))
            }
        })
        .collect()
}

/// `n` binary frames of random sizes up to 64 KiB, each starting with its number.
fn bulk_frames(seed: u64, n: u64) -> Vec<Message> {
    let mut rng = StdRng::seed_from_u64(seed);
    (1..=n)
        .map(|seq| {
            let mut b = seq.to_be_bytes().to_vec();
            b.resize(8 + rng.random_range(0..=64 * 1024 - 8), 0);
            rng.fill(&mut b[8..]);
            Message::binary(b)
        })
        .collect()
}

async fn send_all(
    mut tx: SplitSink<Stream, Message>,
    frames: Vec<Message>,
) -> SplitSink<Stream, Message> {
    for f in frames {
        tx.send(f).await.expect("send");
    }
    tx
}

/// Reads `expected.len()` data frames and checks each is exactly the one expected.
async fn recv_all(
    mut rx: SplitStream<Stream>,
    expected: Vec<Message>,
    who: &str,
) -> SplitStream<Stream> {
    for (i, want) in expected.into_iter().enumerate() {
        let got = loop {
            let m = tokio::time::timeout(WAIT, rx.next())
                .await
                .unwrap_or_else(|_| panic!("{who}: frame {} not in time", i + 1))
                .expect("stream open")
                .expect("frame ok");
            if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
                break m;
            }
        };
        assert!(
            got == want,
            "{who}: frame {} differs (lost, reordered or altered): got {} bytes, want {} bytes",
            i + 1,
            got.len(),
            want.len()
        );
    }
    rx
}

/// Sends `n` random frames each way at once and checks both sides got them verbatim, in order.
async fn exchange(mac: Ws, browser: Ws, seed: u64, n: u64) -> (Ws, Ws) {
    exchange_frames(mac, browser, frames(seed, n), frames(seed + 1, n)).await
}

/// Sends both lists at once, each side reading everything the other sends,
/// and checks both sides got them verbatim, in order.
async fn exchange_frames(
    mac: Ws,
    browser: Ws,
    to_browser: Vec<Message>,
    to_mac: Vec<Message>,
) -> (Ws, Ws) {
    let (mac_tx, mac_rx) = mac.into_inner().split();
    let (browser_tx, browser_rx) = browser.into_inner().split();
    let (mac_tx, browser_tx, browser_rx, mac_rx) = tokio::join!(
        send_all(mac_tx, to_browser.clone()),
        send_all(browser_tx, to_mac.clone()),
        recv_all(browser_rx, to_browser, "browser"),
        recv_all(mac_rx, to_mac, "mac"),
    );
    (
        Ws::from_stream(mac_rx.reunite(mac_tx).expect("same stream")),
        Ws::from_stream(browser_rx.reunite(browser_tx).expect("same stream")),
    )
}

#[tokio::test]
async fn a_mac_and_a_browser_on_two_nodes_pair_exchange_and_leave() {
    let c = Cluster::start(3, &[]);
    let p = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    assert_ne!(p.mac_token, p.browser_token);
    let (mut mac, mut browser) = exchange(p.mac, p.browser, 1, 300).await;

    // The browser leaves: the mac, on another node, is told why.
    browser.json(json!({"type": "leave"})).await;
    browser.expect_close(1000).await;
    assert_eq!(mac.expect("peer_left").await["reason"], "left");

    // The code is still live: a browser on a third node joins with it.
    let mut second = c.node(3).browser().await;
    second
        .json(json!({"type": "join", "code": p.code.to_lowercase()}))
        .await;
    assert_eq!(
        second.expect("joined").await["sessionId"],
        p.session_id.as_str()
    );
    mac.expect("peer_joined").await;
    let (mut mac, mut second) = exchange(mac, second, 3, 50).await;

    // The mac leaves: the browser on node 3 gets MAC_DISCONNECTED and a 1000 close.
    mac.json(json!({"type": "leave"})).await;
    mac.expect_close(1000).await;
    second.expect_error("MAC_DISCONNECTED").await;
    second.expect_close(1000).await;

    // The session and its code are gone on every node.
    for n in 1..=3 {
        let mut late = c.node(n).browser().await;
        late.json(json!({"type": "join", "code": p.code})).await;
        late.expect_error("INVALID_CODE").await;
    }
}

#[tokio::test]
async fn two_browsers_racing_for_one_code_on_two_nodes_one_wins() {
    const ROUNDS: usize = 60;
    let c = Cluster::start(3, &[]);
    for round in 0..ROUNDS {
        let n = round % 3;
        let mut mac = register_at(&c.node(n + 1).url("/mac")).await;
        let (mut a, mut b) = tokio::join!(
            c.node((n + 1) % 3 + 1).browser(),
            c.node((n + 2) % 3 + 1).browser()
        );
        // Both joins leave at the same moment, each to its own node.
        let join = json!({"type": "join", "code": mac.code});
        tokio::join!(a.json(join.clone()), b.json(join.clone()));
        let (ra, rb) = tokio::join!(a.recv_json(), b.recv_json());
        let (mut winner, won, lost) = match (ra["type"].as_str(), rb["type"].as_str()) {
            (Some("joined"), Some("error")) => (a, ra, rb),
            (Some("error"), Some("joined")) => (b, rb, ra),
            _ => panic!("round {round}: exactly one join must win: {ra} / {rb}"),
        };
        assert_eq!(lost["code"], "ALREADY_JOINED", "round {round}: {lost}");
        assert_eq!(won["sessionId"], mac.session_id.as_str());
        mac.ws.expect("peer_joined").await;
        // The winner is the one paired with the mac.
        mac.ws.binary(vec![round as u8]).await;
        assert_eq!(winner.recv().await, Got::Binary(vec![round as u8]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_unique_across_the_cluster() {
    const PER_NODE: usize = 300;
    let c = Cluster::start(3, &[]);
    let urls: Vec<String> = (1..=3).map(|n| c.node(n).url("/mac")).collect();
    let macs = join_all((0..PER_NODE * 3).map(|i| register_at(&urls[i % 3]))).await;
    let mut live = HashSet::new();
    for r in &macs {
        assert_eq!(r.code.chars().count(), 6, "{}", r.code);
        assert!(r.code.chars().all(|c| ALPHABET.contains(&c)), "{}", r.code);
        assert!(
            live.insert(r.code.clone()),
            "code {} issued twice while live",
            r.code
        );
    }
    assert_eq!(live.len(), PER_NODE * 3);
}

#[tokio::test]
async fn a_code_expires_once_for_the_whole_cluster() {
    const EXPIRED: &str = "relay_codes_expired_total";
    let c = Cluster::start(3, &[("RELAY_CODE_TTL", "1s")]);
    let mut r = register_at(&c.node(1).url("/mac")).await;
    let expired = r.ws.expect("code_expired").await;
    assert_eq!(expired["code"], r.code.as_str());

    // Every other node knows the code expired.
    for n in 2..=3 {
        let mut b = c.node(n).browser().await;
        b.json(json!({"type": "join", "code": r.code})).await;
        b.expect_error("EXPIRED_CODE").await;
    }
    // Expired once, not once per node.
    let mut total = 0.0;
    for node in c.nodes() {
        total += node.metric(EXPIRED).await;
    }
    assert_eq!(total, 1.0, "{EXPIRED} summed over the nodes");

    // The mac registers again on the same socket; a second code_expired for
    // the old code would come before this answer.
    r.ws.json(json!({"type": "register"})).await;
    let again = r.ws.expect("registered").await;
    assert_ne!(again["code"], r.code.as_str());
}

#[tokio::test]
async fn a_pair_on_one_node_never_sends_its_frames_through_redis() {
    let c = Cluster::start(2, &[]);
    let node = c.node(1);
    let p = pair_at(&node.url("/mac"), &node.url("/browser")).await;
    let _ = exchange(p.mac, p.browser, 7, 500).await;
    assert_eq!(
        node.metric("relay_frames_relayed_total{path=\"local\"}")
            .await,
        1000.0
    );
    assert_eq!(
        node.metric("relay_frames_relayed_total{path=\"redis\"}")
            .await,
        0.0
    );
    // A cross-node pair does go through Redis, counted on the sending node.
    let q = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    let _ = exchange(q.mac, q.browser, 9, 100).await;
    assert_eq!(
        c.node(1)
            .metric("relay_frames_relayed_total{path=\"redis\"}")
            .await,
        100.0
    );
    assert_eq!(
        c.node(2)
            .metric("relay_frames_relayed_total{path=\"redis\"}")
            .await,
        100.0
    );
}

/// Both sides of a cross-node pair send bulk data at once, each reading
/// everything the other sends: far more than the backlog either way. Flow
/// control must pace both senders without ever stopping both (it used to:
/// each node waited for acknowledgements that queued behind its own paused
/// sender's unread data), and nobody is cut. The links between the nodes
/// drop nothing: their bounds are for trouble, not for load.
#[tokio::test]
async fn bulk_both_ways_at_once_across_nodes_never_stalls() {
    // Headroom over what kernel buffers hold unacknowledged, as in
    // data::bulk_both_ways_at_once_never_stalls.
    let c = Cluster::start(2, &[("RELAY_MAX_BUFFERED", "16MiB")]);
    let p = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    let _ = exchange_frames(
        p.mac,
        p.browser,
        bulk_frames(11, 1000),
        bulk_frames(12, 1000),
    )
    .await;
    for node in c.nodes() {
        assert_eq!(
            node.metric("relay_disconnects_total{reason=\"slow_consumer\"}")
                .await,
            0.0
        );
        for (reason, n) in node.bus_drops().await {
            assert_eq!(n, 0.0, "relay_bus_dropped_total{{reason={reason:?}}}");
        }
    }
}

/// The same bulk exchange with both sides on one node of the cluster.
#[tokio::test]
async fn bulk_both_ways_at_once_on_one_cluster_node_never_stalls() {
    let c = Cluster::start(1, &[("RELAY_MAX_BUFFERED", "16MiB")]);
    let node = c.node(1);
    let p = pair_at(&node.url("/mac"), &node.url("/browser")).await;
    let _ = exchange_frames(
        p.mac,
        p.browser,
        bulk_frames(13, 1000),
        bulk_frames(14, 1000),
    )
    .await;
    assert_eq!(
        node.metric("relay_disconnects_total{reason=\"slow_consumer\"}")
            .await,
        0.0
    );
}
