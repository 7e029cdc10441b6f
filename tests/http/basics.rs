//! Pairing and data over HTTP, against a WebSocket peer, in both roles and
//! both receive modes.

use serde_json::json;

use super::client::{Http, Mode, base, binary, text};
use crate::support::{Got, Relay, register};

/// Every byte value, and lengths around the base64 padding.
fn binaries() -> Vec<Vec<u8>> {
    vec![
        (0..=255u8).collect(),
        vec![0],
        vec![255, 254],
        vec![1, 2, 3],
        (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect(),
    ]
}

/// Text a transport could mangle: line ends SSE would split, quotes,
/// escapes, non-ASCII, a NUL.
const TRICKY: &str = "line\r\nbreak\rcr \"quoted\" \\ back\tslash é 漢字 🎉 nul\u{0}end";

async fn http_mac_with_websocket_browser(mode: Mode) {
    let relay = Relay::start(&[]);
    let mut mac = Http::open(&base(relay.addr), "mac", mode).await;
    mac.json(json!({"type": "register"})).await;
    let reg = mac.expect("registered").await;
    let code = reg["code"].as_str().expect("code");

    let mut browser = relay.browser().await;
    browser.json(json!({"type": "join", "code": code})).await;
    browser.expect("joined").await;
    mac.expect("peer_joined").await;

    // Mac to browser: binary and text, verbatim, in one batch and one by one.
    let bins = binaries();
    mac.send(bins.iter().map(|b| binary(b)).collect()).await;
    for b in &bins {
        assert_eq!(browser.recv().await, Got::Binary(b.clone()));
    }
    mac.data(TRICKY).await;
    let sent = json!({"type": "data", "payload": TRICKY}).to_string();
    assert_eq!(browser.recv().await, Got::Text(sent.clone()));

    // Browser to mac, the same.
    for b in &bins {
        browser.binary(b.clone()).await;
    }
    for b in &bins {
        assert_eq!(mac.recv().await, Got::Binary(b.clone()));
    }
    browser.text(sent.clone()).await;
    assert_eq!(mac.recv().await, Got::Text(sent));

    // The app-level ping works as on a WebSocket.
    mac.json(json!({"type": "ping", "ts": 42})).await;
    assert_eq!(mac.expect("pong").await["ts"], 42);

    // Leaving ends the session: the browser is told, the virtual connection closes.
    mac.json(json!({"type": "leave"})).await;
    browser.expect_error("MAC_DISCONNECTED").await;
    browser.expect_close(1000).await;
}

#[tokio::test]
async fn an_http_mac_pairs_with_a_websocket_browser_by_long_poll() {
    http_mac_with_websocket_browser(Mode::Poll).await;
}

#[tokio::test]
async fn an_http_mac_pairs_with_a_websocket_browser_by_stream() {
    http_mac_with_websocket_browser(Mode::Stream).await;
}

async fn websocket_mac_with_http_browser(mode: Mode) {
    let relay = Relay::start(&[]);
    let mut reg = register(&relay).await;
    let mut browser = Http::open(&base(relay.addr), "browser", mode).await;
    browser
        .json(json!({"type": "join", "code": reg.code}))
        .await;
    let joined = browser.expect("joined").await;
    assert_eq!(joined["sessionId"], reg.session_id.as_str());
    reg.ws.expect("peer_joined").await;

    let bins = binaries();
    for b in &bins {
        reg.ws.binary(b.clone()).await;
    }
    for b in &bins {
        assert_eq!(browser.recv().await, Got::Binary(b.clone()));
    }
    // Text frames sent one per batch and many per batch arrive in order.
    let texts: Vec<String> = (0..100)
        .map(|i| json!({"type": "data", "payload": format!("{i} {TRICKY}")}).to_string())
        .collect();
    browser
        .send(texts[..50].iter().map(|t| text(t)).collect())
        .await;
    for t in &texts[50..] {
        browser.send(vec![text(t)]).await;
    }
    for t in &texts {
        assert_eq!(reg.ws.recv().await, Got::Text(t.clone()));
    }
    for b in &bins {
        browser.binary(b).await;
    }
    for b in &bins {
        assert_eq!(reg.ws.recv().await, Got::Binary(b.clone()));
    }

    // The WebSocket mac leaves: the HTTP browser gets the error and the close item.
    reg.ws.json(json!({"type": "leave"})).await;
    browser.expect_error("MAC_DISCONNECTED").await;
    browser.expect_close(1000).await;
    // After the close item, the connection answers 410 with its close code.
    let (status, body) = browser.send_batch(vec![]).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["close"], 1000);

    // Counted by transport: one fallback, its frames, and none open now.
    assert_eq!(
        relay
            .metric(r#"relay_http_connections_total{role="browser"}"#)
            .await,
        1.0
    );
    relay
        .wait_metric(r#"relay_http_connections_open{role="browser"}"#, |v| {
            v == 0.0
        })
        .await;
    let frames_in = relay
        .metric(r#"relay_http_frames_total{direction="in"}"#)
        .await;
    assert_eq!(frames_in, (1 + texts.len() + bins.len()) as f64);
    assert!(
        relay
            .metric(r#"relay_http_frames_total{direction="out"}"#)
            .await
            > bins.len() as f64
    );
}

#[tokio::test]
async fn an_http_browser_pairs_with_a_websocket_mac_by_long_poll() {
    websocket_mac_with_http_browser(Mode::Poll).await;
}

#[tokio::test]
async fn an_http_browser_pairs_with_a_websocket_mac_by_stream() {
    websocket_mac_with_http_browser(Mode::Stream).await;
}

#[tokio::test]
async fn two_http_sides_pair_and_the_stream_opens_at_once() {
    let relay = Relay::start(&[]);
    let b = base(relay.addr);
    let mut mac = Http::open(&b, "mac", Mode::Stream).await;
    mac.json(json!({"type": "register"})).await;
    let code = mac.expect("registered").await["code"].clone();
    // The stream's `: open` line came before anything else, so a client can
    // tell a streaming path from a buffering one.
    assert!(mac.opened);
    let mut browser = Http::open(&b, "browser", Mode::Poll).await;
    browser.json(json!({"type": "join", "code": code})).await;
    browser.expect("joined").await;
    mac.expect("peer_joined").await;
    for i in 0..20u8 {
        mac.binary(&[i; 3]).await;
        browser.binary(&[i; 5]).await;
    }
    for i in 0..20u8 {
        assert_eq!(browser.recv().await, Got::Binary(vec![i; 3]));
        assert_eq!(mac.recv().await, Got::Binary(vec![i; 5]));
    }
}

#[tokio::test]
async fn a_retried_batch_is_applied_once_and_one_ahead_is_refused() {
    let relay = Relay::start(&[]);
    let mut reg = register(&relay).await;
    let mut browser = Http::open(&base(relay.addr), "browser", Mode::Poll).await;
    browser
        .json(json!({"type": "join", "code": reg.code}))
        .await;
    browser.expect("joined").await;
    reg.ws.expect("peer_joined").await;

    let batch2 = json!({"batch": 2, "frames": [binary(&[2]), binary(&[3])]});
    let (status, body) = browser.send_raw(&batch2).await;
    assert_eq!((status, &body["batch"]), (200, &json!(2)), "{body}");
    // The answer was lost, say: the client sends the same batch again.
    let (status, body) = browser.send_raw(&batch2).await;
    assert_eq!((status, &body["batch"]), (200, &json!(2)), "{body}");
    // So is batch 1, long taken.
    let (status, _) = browser
        .send_raw(&json!({"batch": 1, "frames": [binary(&[1])]}))
        .await;
    assert_eq!(status, 200);
    // A batch ahead of the next is refused, with the one expected.
    let (status, body) = browser
        .send_raw(&json!({"batch": 4, "frames": [binary(&[4])]}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["expected"], 3);
    assert!(body["error"].as_str().is_some_and(|e| e.len() > 20));
    let (status, _) = browser
        .send_raw(&json!({"batch": 3, "frames": [binary(&[5])]}))
        .await;
    assert_eq!(status, 200);

    // Each frame arrived once, in order.
    for b in [2u8, 3, 5] {
        assert_eq!(reg.ws.recv().await, Got::Binary(vec![b]));
    }
    reg.ws.json(json!({"type": "ping", "ts": 1})).await;
    assert_eq!(reg.ws.expect("pong").await["ts"], 1);
}

#[tokio::test]
async fn a_lost_answer_is_received_again_and_acknowledgements_never_go_back() {
    let relay = Relay::start(&[]);
    let mut mac = Http::open(&base(relay.addr), "mac", Mode::Poll).await;
    mac.json(json!({"type": "register"})).await;
    mac.json(json!({"type": "ping", "ts": 7})).await;
    mac.expect("registered").await;
    mac.expect("pong").await;
    assert_eq!(mac.after, 2);
    // The poll's answer was lost: the same `after` gets the same items again.
    let res = mac.receive_raw(0, Mode::Poll).await;
    assert_eq!(res.status().as_u16(), 200);
    let again: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(again.as_array().map(Vec::len), Some(2), "{again}");
    assert_eq!(again[0]["pos"], 1);
    // Acknowledging 2 (and getting the pong of a new ping), then going
    // back to 1, is refused.
    mac.send(vec![text(r#"{"type":"ping","ts":8}"#)]).await;
    let res = mac.receive_raw(2, Mode::Poll).await;
    let third: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(third[0]["pos"], 3, "{third}");
    let res = mac.receive_raw(1, Mode::Poll).await;
    assert_eq!(res.status().as_u16(), 409);
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(body["acked"], 2);
    // Past what was sent is refused too.
    let res = mac.receive_raw(9, Mode::Poll).await;
    assert_eq!(res.status().as_u16(), 400);
}

#[tokio::test]
async fn a_room_guest_over_http_is_a_guest_like_any_other() {
    let relay = Relay::start(&[]);
    let mut host = relay.mac().await;
    host.json(json!({"type": "register", "maxGuests": 2, "admit": "auto"}))
        .await;
    let code = host.expect("registered").await["code"].clone();
    let mut guest = Http::open(&base(relay.addr), "browser", Mode::Stream).await;
    guest
        .json(json!({"type": "join", "code": code, "name": "Ana"}))
        .await;
    let joined = guest.expect("joined").await;
    let id = joined["guestId"].clone();
    assert_eq!(host.expect("guest_joined").await["guestId"], id);
    assert_eq!(host.expect("guest_admitted").await["guestId"], id);

    host.binary(vec![1, 2, 3]).await;
    assert_eq!(guest.recv().await, Got::Binary(vec![1, 2, 3]));
    guest.binary(&[4, 5]).await;
    assert_eq!(host.expect("from").await["guestId"], id);
    assert_eq!(host.recv().await, Got::Binary(vec![4, 5]));

    // Removed by the host: the guest's connection ends as a WebSocket's would.
    host.json(json!({"type": "remove", "guestId": id})).await;
    guest.expect_error("REMOVED").await;
    guest.expect_close(1000).await;
}

/// A waiting poll holds no request on the relay (docs/design.md, "The HTTP
/// edge"): its head comes before there is anything to receive, and its
/// items in the body once they are written.
#[tokio::test]
async fn a_waiting_poll_sends_its_head_at_once_and_its_items_when_they_come() {
    let relay = Relay::start(&[]);
    let mut mac = Http::open(&base(relay.addr), "mac", Mode::Poll).await;
    // Nothing written to this connection yet, and the head is here.
    let res = mac.receive_raw(0, Mode::Poll).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["cache-control"], "no-store");
    // The register's answer is written while that poll waits: it carries it.
    mac.json(json!({"type": "register"})).await;
    let text = tokio::time::timeout(crate::support::WAIT, res.text())
        .await
        .expect("the body in time")
        .expect("a whole body");
    let items: Vec<serde_json::Value> = serde_json::from_str(&text).expect("a JSON array");
    assert_eq!(items.len(), 1, "{text}");
    assert_eq!(items[0]["pos"], 1);
    let registered: serde_json::Value =
        serde_json::from_str(items[0]["text"].as_str().expect("a text item")).expect("JSON");
    assert_eq!(registered["type"], "registered", "{text}");
}
