//! The cluster fixtures themselves, on single in-memory nodes where a cluster
//! is not needed: when a cluster test fails, these say whether Redis and
//! haproxy (and Sentinel) behave as the tests assume.

use serde_json::json;

use crate::support::cluster::{
    Lb, Node, RedisServer, Resp, SentinelSet, redis_command, register_at,
};

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

    // A draining node leaves the rotation: it fails its check, or (its two
    // clients told at once) has already exited.
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

#[test]
fn a_sentinel_set_fails_over_when_asked_and_when_its_master_dies() {
    let mut set = SentinelSet::start();
    let ports = set.server_ports();
    let first = set.master_port();
    assert!(ports.contains(&first), "{first} is not one of {ports:?}");
    let hosts = set
        .url()
        .strip_prefix("redis+sentinel://")
        .and_then(|r| r.strip_suffix("/relaymaster"))
        .map(|h| h.split(',').count());
    assert_eq!(hosts, Some(3), "{}", set.url());
    // A write on the master reaches the replica.
    let ok = redis_command(first, &["SET", "k", "1"]).expect("SET");
    assert_eq!(ok, Resp::Simple("OK".into()));

    // Planned: the old master ends up a replica of the new one, with the data.
    set.failover();
    let second = set.master_port();
    assert_ne!(second, first);
    let on_old = redis_command(first, &["GET", "k"]).expect("GET");
    assert_eq!(on_old, Resp::Bulk(Some("1".into())));
    let refused = redis_command(first, &["SET", "k", "2"]).expect("SET");
    assert!(
        matches!(&refused, Resp::Error(e) if e.starts_with("READONLY")),
        "the demoted master took a write: {refused:?}"
    );

    // Unplanned: the master dies and the replica takes over, with the data.
    set.kill_master();
    assert_eq!(set.master_port(), first);
    let on_new = redis_command(first, &["GET", "k"]).expect("GET");
    assert_eq!(on_new, Resp::Bulk(Some("1".into())));
}
