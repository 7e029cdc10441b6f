//! No sticky sessions: the HTTP side's requests spread round robin over
//! three nodes of a cluster while its WebSocket peer is on a fourth; each
//! request that lands off the connection's node is run there.

use serde_json::json;

use super::client::{Http, Mode, base, binary};
use super::proxies::through_to;
use super::switch::switch_mid_stream;
use crate::support::Got;
use crate::support::cluster::{Cluster, Lb, pair_at, register_at};

#[tokio::test]
async fn behind_a_round_robin_proxy_over_three_nodes_the_http_side_pairs_and_resumes() {
    let cluster = Cluster::start(4, &[]);
    let rr = [
        cluster.node(1).addr,
        cluster.node(2).addr,
        cluster.node(3).addr,
    ];
    let proxy = Lb::start_refusing_websocket(&rr);
    let mac_url = cluster.node(4).url("/mac");
    through_to(&proxy.base(), register_at(&mac_url).await, Mode::Poll).await;
    through_to(&proxy.base(), register_at(&mac_url).await, Mode::Stream).await;
}

#[tokio::test]
async fn requests_taking_turns_over_three_nodes_carry_every_frame_once_in_order() {
    let cluster = Cluster::start(4, &[]);
    let bases: Vec<String> = (1..=3).map(|i| base(cluster.node(i).addr)).collect();
    for mode in [Mode::Poll, Mode::Stream] {
        let mut reg = register_at(&cluster.node(4).url("/mac")).await;
        // Opened on node 1; every later request goes to the next node.
        let mut browser = Http::open_over(&bases, "browser", mode).await;
        browser
            .json(json!({"type": "join", "code": reg.code}))
            .await;
        browser.expect("joined").await;
        reg.ws.expect("peer_joined").await;
        for i in 0..60u16 {
            reg.ws.binary(i.to_be_bytes().to_vec()).await;
            browser.send(vec![binary(&i.to_le_bytes())]).await;
        }
        for i in 0..60u16 {
            assert_eq!(browser.recv().await, Got::Binary(i.to_be_bytes().to_vec()));
            assert_eq!(reg.ws.recv().await, Got::Binary(i.to_le_bytes().to_vec()));
        }
        // A retried batch landing on another node is still applied once.
        let batch = json!({"batch": browser.batch, "frames": [binary(&[9])]});
        let (status, _) = browser.send_raw(&batch).await;
        assert_eq!(status, 200);
        browser.send(vec![binary(&[10])]).await;
        assert_eq!(reg.ws.recv().await, Got::Binary(vec![10]));
    }
    // Two requests in three were served by another node than the one
    // that got them (the connection's home is node 1).
    let (mut forwarded, mut all) = (0.0, 0.0);
    for i in 1..=3 {
        for op in ["send", "receive"] {
            for served in ["here", "forwarded"] {
                let sample = format!(r#"relay_http_requests_total{{op="{op}",served="{served}"}}"#);
                let v = cluster.node(i).metric(&sample).await;
                all += v;
                if served == "forwarded" {
                    forwarded += v;
                }
            }
        }
    }
    assert!(
        forwarded * 3.0 >= all * 2.0 - 6.0,
        "{forwarded} of {all} forwarded"
    );
    // A cid no node holds is 404 on every node.
    for b in &bases {
        let (status, _, _) = super::client::post(
            &format!("{b}/http/send"),
            &[("Relay-Connection", "AAAAAAAAAAAAAAAAAAAAAA")],
            r#"{"batch":1,"frames":[]}"#,
        )
        .await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn a_switch_across_nodes_mid_stream_loses_nothing() {
    let cluster = Cluster::start(4, &[]);
    let p = pair_at(
        &cluster.node(4).url("/mac"),
        &cluster.node(1).url("/browser"),
    )
    .await;
    let bases: Vec<String> = (1..=3).map(|i| base(cluster.node(i).addr)).collect();
    switch_mid_stream(p, &bases, &cluster.node(2).url("/browser")).await;
}

#[tokio::test]
async fn when_the_connections_node_dies_other_nodes_say_404_and_a_resume_carries_on() {
    let mut cluster = Cluster::start(3, &[]);
    let mut reg = register_at(&cluster.node(3).url("/mac")).await;
    // Opened on node 1 (its home), every later request to node 2.
    let bases = [base(cluster.node(1).addr), base(cluster.node(2).addr)];
    let mut browser = Http::open(&bases[0], "browser", Mode::Poll).await;
    browser.set_bases(&bases[1..]);
    browser
        .json(json!({"type": "join", "code": reg.code}))
        .await;
    let joined = browser.expect("joined").await;
    let token = joined["resumeToken"].as_str().expect("token").to_owned();
    reg.ws.expect("peer_joined").await;
    reg.ws.binary(vec![1]).await;
    assert_eq!(browser.recv().await, Got::Binary(vec![1]));

    cluster.kill(1);
    reg.ws.binary(vec![2]).await;
    // Node 2 finds nobody at the home's channel: the connection is gone.
    let (status, body) = browser.send_batch(vec![binary(&[7])]).await;
    assert_eq!(status, 404, "{body}");
    // So the client opens a new one and resumes, losing nothing.
    let mut again = Http::open(&bases[1], "browser", Mode::Poll).await;
    again
        .json(crate::support::resume_msg(&reg.session_id, &token, 1))
        .await;
    loop {
        let v = again.recv_json().await;
        if v["type"] == "resumed" {
            assert_eq!(v["lastSeq"], 0);
            break;
        }
    }
    assert_eq!(again.recv().await, Got::Binary(vec![2]));
    again.binary(&[7]).await;
    loop {
        match reg.ws.recv().await {
            Got::Binary(b) => {
                assert_eq!(b, vec![7]);
                break;
            }
            Got::Text(_) => {}
            other => panic!("{other:?}"),
        }
    }
}
