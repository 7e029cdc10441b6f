//! Graceful drain on SIGTERM: not ready, every client told `SHUTTING_DOWN` and
//! closed with 1012 (in batches), then the process exits cleanly.

use serde_json::json;

use crate::support::{Relay, pair, register};

#[tokio::test]
async fn sigterm_drains_every_client_then_exits() {
    let mut relay = Relay::start(&[("RELAY_DRAIN_TIMEOUT", "6s")]);
    let mut a = pair(&relay).await;
    let mut b = pair(&relay).await;
    let mut lone = register(&relay).await;
    let mut idle = relay.browser().await; // connected, no session yet

    relay.sigterm();
    relay.wait_logged("drain started").await;
    // Batches are spread over half the drain timeout, so the node is still up here.
    let (status, body) = relay.get("/readyz").await;
    assert_eq!((status, body.trim()), (503, "draining"));
    assert_eq!(relay.get("/healthz").await.0, 200);

    // A client arriving now is turned away at once, to reconnect elsewhere.
    let mut late = relay.mac().await;
    late.expect_error("SHUTTING_DOWN").await;
    late.expect_close(1012).await;

    for ws in [
        &mut a.mac,
        &mut a.browser,
        &mut b.mac,
        &mut b.browser,
        &mut lone.ws,
        &mut idle,
    ] {
        // Paired clients may first hear that their peer went (it was drained earlier).
        loop {
            let v = ws.recv_json().await;
            match v["type"].as_str() {
                Some("peer_disconnected") => continue,
                Some("error") => {
                    assert_eq!(v["code"], "SHUTTING_DOWN");
                    break;
                }
                _ => panic!("unexpected {v}"),
            }
        }
        ws.expect_close(1012).await;
    }
    let status = relay.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(relay.logged("drained"));
}

#[tokio::test]
async fn a_drain_with_no_clients_exits_at_once() {
    let mut relay = Relay::start(&[("RELAY_DRAIN_TIMEOUT", "60s")]);
    let mut m = relay.mac().await;
    m.json(json!({"type": "register"})).await;
    m.expect("registered").await;
    m.close(1000).await;
    relay.sigterm();
    assert!(relay.wait_exit().success());
}
