//! Graceful drain on SIGTERM: every client told `SHUTTING_DOWN` and closed
//! with 1012, then the process exits cleanly. A node with up to one batch of
//! clients (100) tells them all at once; a larger one 100 every 100 ms.

use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Relay, WAIT, Ws, pair, register};

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
    assert!(status.success(), "exit status {status:?}");
    assert!(relay.logged("drained"));
    let started = relay.log_line("drain started").expect("drain started");
    assert_eq!(started["fields"]["connections"], 6, "{started}");
    assert_eq!(started["fields"]["batches"], 1, "{started}");
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
    // The last batch goes two gaps after the first (a timer never fires early).
    let took = logged_at(&relay, "drained")
        .duration_since(logged_at(&relay, "drain started"))
        .expect("drained after it started");
    assert!(took >= Duration::from_millis(200), "drained in {took:?}");
}

/// While a drain is under way the node is not ready, still alive, and turns
/// new clients away at once. A mac that stops reading while its browser
/// floods it holds the drain open: its SHUTTING_DOWN and close frame wait
/// behind a full write side until the client reads again (for at most the
/// socket's 2 s linger), and the node waits for them.
#[tokio::test]
async fn while_draining_the_node_is_not_ready_and_turns_new_clients_away() {
    let mut relay = Relay::start(&[("RELAY_DRAIN_TIMEOUT", "60s")]);
    let p = pair(&relay).await;
    let (mac_tx, mut mac_rx) = p.mac.into_inner().split();
    let (mut browser_tx, browser_rx) = p.browser.into_inner().split();
    // The browser sends until flow control holds it back; the mac reads
    // nothing. A send blocked 5 s is held back, not merely slow on a loaded
    // machine.
    let flood = tokio::spawn(async move {
        let frame = Message::binary(vec![7u8; 64 * 1024]);
        while tokio::time::timeout(Duration::from_secs(5), browser_tx.send(frame.clone()))
            .await
            .is_ok_and(|sent| sent.is_ok())
        {}
        browser_tx
    });
    let browser_tx = flood.await.expect("flood");

    relay.sigterm();
    relay.wait_logged("drain started").await;
    let (status, body) = relay.get("/readyz").await;
    assert_eq!((status, body.trim()), (503, "draining"));
    assert_eq!(relay.get("/healthz").await.0, 200);
    // A client arriving now is turned away at once, to reconnect elsewhere.
    let mut late = relay.mac().await;
    late.expect_error("SHUTTING_DOWN").await;
    late.expect_close(1012).await;
    assert!(
        relay.log_line("drained").is_none(),
        "the stalled mac holds the drain open"
    );

    // The mac reads again: its socket gets to the drain, and the node exits.
    let close = loop {
        match tokio::time::timeout(WAIT, mac_rx.next()).await {
            Ok(Some(Ok(Message::Close(c)))) => break c,
            Ok(Some(Ok(_))) => {}
            other => panic!("the mac was not closed: {other:?}"),
        }
    };
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1012));
    drop((mac_tx, browser_tx, browser_rx));
    assert!(relay.wait_exit().success());
    assert!(relay.log_line("drained").is_some());
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
