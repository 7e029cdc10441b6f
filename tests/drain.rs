//! Graceful drain on SIGTERM: every client told `SHUTTING_DOWN` and closed
//! with 1012, then the process exits cleanly. A node with up to one batch of
//! clients (100) tells them all at once; a larger one 100 every 100 ms.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::support::{Relay, Ws, pair, register};

/// Reads until `SHUTTING_DOWN` and the 1012 close. A paired client may first
/// hear that its peer went (it was told a moment earlier).
async fn expect_drained(ws: &mut Ws) {
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

/// When the relay logged `message` (the line must be there).
fn logged_at(relay: &Relay, message: &str) -> SystemTime {
    let line = relay
        .log_line(message)
        .unwrap_or_else(|| panic!("no {message:?} line"));
    let ts = line["timestamp"].as_str().expect("a timestamp");
    humantime::parse_rfc3339_weak(ts).unwrap_or_else(|e| panic!("timestamp {ts:?}: {e}"))
}

#[tokio::test]
async fn a_small_node_tells_every_client_at_once_then_exits() {
    // Spread over half the drain timeout whatever the count, as before, these
    // six would have been told over 15 s, and the node would exit after that.
    let mut relay = Relay::start(&[("RELAY_DRAIN_TIMEOUT", "30s")]);
    let mut a = pair(&relay).await;
    let mut b = pair(&relay).await;
    let mut lone = register(&relay).await;
    let mut idle = relay.browser().await; // connected, no session yet
    // Every socket is open on the relay before the drain lists them.
    relay
        .wait_metric("relay_connections_open{role=\"browser\"}", |v| v == 3.0)
        .await;

    let sent = Instant::now();
    relay.sigterm();
    for ws in [
        &mut a.mac,
        &mut a.browser,
        &mut b.mac,
        &mut b.browser,
        &mut lone.ws,
        &mut idle,
    ] {
        expect_drained(ws).await;
    }
    let status = relay.wait_exit();
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(relay.logged("drained"));
    let started = relay.log_line("drain started").expect("drain started");
    assert_eq!(started["fields"]["connections"], 6, "{started}");
    assert_eq!(started["fields"]["batches"], 1, "{started}");
    // Bounded loosely for a busy machine; the old spread alone was 15 s.
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM to exit took {took:?}"
    );
}

#[tokio::test]
async fn a_node_with_more_than_a_batch_spreads_its_clients() {
    // 201 clients: three batches (67 each), 100 ms apart. Info logs only, so
    // the connections' debug lines leave the drain's lines in the kept tail.
    let mut relay = Relay::start(&[("RELAY_DRAIN_TIMEOUT", "30s"), ("RELAY_LOG", "info")]);
    let mut clients = Vec::new();
    for _ in 0..201 {
        clients.push(relay.mac().await);
    }
    // Every socket is open on the relay before the drain lists them.
    relay
        .wait_metric("relay_connections_open{role=\"mac\"}", |v| v == 201.0)
        .await;

    relay.sigterm();
    for ws in &mut clients {
        expect_drained(ws).await;
    }
    let status = relay.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    let started: Value = relay.log_line("drain started").expect("drain started");
    assert_eq!(started["fields"]["connections"], 201, "{started}");
    assert_eq!(started["fields"]["batches"], 3, "{started}");
    assert_eq!(started["fields"]["batch_size"], 67, "{started}");
    // The last batch goes two gaps after the first (a timer never fires
    // early), and the whole drain is seconds shorter than the old 15 s.
    let took = logged_at(&relay, "drained")
        .duration_since(logged_at(&relay, "drain started"))
        .expect("drained after it started");
    assert!(took >= Duration::from_millis(200), "drained in {took:?}");
    assert!(took < Duration::from_secs(5), "drained in {took:?}");
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
