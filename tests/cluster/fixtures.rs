//! The cluster fixtures themselves, on single in-memory nodes where a cluster
//! is not needed: when a cluster test fails, these say whether Redis and
//! haproxy behave as the tests assume.

use serde_json::json;

use crate::support::cluster::{Lb, Node, RedisServer, register_at};

#[test]
fn redis_stops_and_starts_again_on_the_same_port() {
    let mut redis = RedisServer::start();
    assert!(redis.pings());
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    let port = redis.port();
    redis.stop();
    assert!(!redis.pings(), "a stopped Redis answers");
    redis.start_again();
    assert_eq!(redis.port(), port);
    assert!(redis.pings());
}

#[tokio::test]
async fn the_balancer_round_robins_skips_nodes_that_are_not_ready_and_reconfigures() {
    const MACS: &str = "relay_connections_open{role=\"mac\"}";
    let a = Node::start("node-1", &[("RELAY_DRAIN_TIMEOUT", "30s")]);
    let b = Node::start("node-2", &[]);
    let mut lb = Lb::start(&[a.addr, b.addr]);
    assert_eq!(lb.get("/readyz").await.0, 200);

    // Round robin, no stickiness: four clients, two on each node.
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(register_at(&lb.url("/mac")).await);
    }
    assert_eq!(a.metric(MACS).await, 2.0);
    assert_eq!(b.metric(MACS).await, 2.0);

    // A draining node fails its check and leaves the rotation.
    a.sigterm();
    lb.wait_logged("node-1 is DOWN").await;
    let mut later = Vec::new();
    for _ in 0..2 {
        later.push(register_at(&lb.url("/mac")).await);
    }
    b.wait_metric(MACS, |v| v == 4.0).await;

    // A new backend list: the old haproxy keeps the tunnels it has.
    lb.reconfigure(&[b.addr]);
    for r in &mut later {
        r.ws.json(json!({"type": "ping", "ts": 1})).await;
        r.ws.expect("pong").await;
    }
    let _one_more = register_at(&lb.url("/mac")).await;
    b.wait_metric(MACS, |v| v == 5.0).await;
    drop(first);
}
