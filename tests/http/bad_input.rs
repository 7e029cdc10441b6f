//! What the HTTP transport refuses, each with a status and a sentence that
//! says what to do, and what it leaves intact.

use serde_json::{Value, json};

use super::client::{Http, Mode, base, binary, post, text};
use crate::support::Relay;

fn says_what_to_do(body: &Value) {
    let e = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {body}"));
    assert!(e.len() > 20, "a sentence, not a word: {e}");
}

#[tokio::test]
async fn requests_that_name_no_connection_or_carry_no_protocol_are_refused() {
    let relay = Relay::start(&[("RELAY_MAX_FRAME", "1000")]);
    let b = base(relay.addr);
    let send = format!("{b}/http/send");
    let receive = format!("{b}/http/receive");
    let ok_body = r#"{"batch":1,"frames":[]}"#;

    // No Relay-Connection header.
    let (status, body, _) = post(&send, &[], ok_body).await;
    assert_eq!(status, 400);
    says_what_to_do(&body);
    // A cid nobody issued.
    let unknown = [("Relay-Connection", "AAAAAAAAAAAAAAAAAAAAAA")];
    let (status, body, _) = post(&send, &unknown, ok_body).await;
    assert_eq!(status, 404);
    says_what_to_do(&body);
    let (status, _, _) = post(&receive, &unknown, r#"{"after":0,"mode":"poll"}"#).await;
    assert_eq!(status, 404);
    // A GET is not the transport.
    let (status, _) = relay.get("/http/mac").await;
    assert_eq!(status, 404);

    let mut mac = Http::open(&b, "mac", Mode::Poll).await;
    let own = mac.cid.clone();
    let cid = [("Relay-Connection", own.as_str())];
    for bad in [
        "not json",
        r#"{"frames":[]}"#,
        r#"{"batch":0,"frames":[]}"#,
        r#"{"batch":1,"frames":[{"text":"a","binary":"AA=="}]}"#,
        r#"{"batch":1,"frames":[{"binary":"***"}]}"#,
        r#"{"batch":1,"frames":[{"json":1}]}"#,
    ] {
        let (status, body, _) = post(&send, &cid, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        says_what_to_do(&body);
    }
    let too_many: Vec<Value> = (0..65).map(|_| text("{}")).collect();
    let (status, body) = mac.send_raw(&json!({"batch": 1, "frames": too_many})).await;
    assert_eq!(status, 400, "{body}");
    for bad in [
        "[]",
        r#"{"after":0}"#,
        r#"{"after":-1,"mode":"poll"}"#,
        r#"{"after":0,"mode":"push"}"#,
    ] {
        let (status, body, _) = post(&receive, &cid, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        says_what_to_do(&body);
    }
    // A body over the cap (4 x RELAY_MAX_FRAME + 64 KiB) is refused whole.
    let huge = vec![b'x'; 4 * 1000 + (64 << 10) + 1];
    let (status, body, _) = post(&send, &cid, huge).await;
    assert_eq!(status, 413, "{body}");
    says_what_to_do(&body);

    // None of that touched the connection: batch 1 is still the next.
    mac.json(json!({"type": "register"})).await;
    mac.expect("registered").await;

    // A frame over the limit is the WebSocket's MESSAGE_TOO_LARGE and 1009.
    mac.send(vec![binary(&[0; 1001])]).await;
    mac.expect_error("MESSAGE_TOO_LARGE").await;
    mac.expect_close(1009).await;
    let (status, body) = mac.send_batch(vec![]).await;
    assert_eq!(status, 410);
    assert_eq!(body["close"], 1009);
    says_what_to_do(&body);
}

#[tokio::test]
async fn malformed_messages_over_http_count_as_on_a_websocket() {
    let relay = Relay::start(&[("RELAY_MAX_MALFORMED", "3")]);
    let mut mac = Http::open(&base(relay.addr), "mac", Mode::Poll).await;
    mac.send(vec![text("nope"), text("{}"), text(r#"{"type":"what"}"#)])
        .await;
    for _ in 0..3 {
        mac.expect_error("INVALID_MESSAGE").await;
    }
    mac.expect_close(1008).await;
}

#[tokio::test]
async fn origins_off_the_allow_list_are_refused_and_allowed_ones_get_cors() {
    let relay = Relay::start(&[("RELAY_ALLOWED_ORIGINS", "https://app.example.com")]);
    let b = base(relay.addr);
    let evil = [("Origin", "https://evil.example.net")];
    for path in ["/http/browser", "/http/mac", "/http/send", "/http/receive"] {
        let (status, body, headers) = post(&format!("{b}{path}"), &evil, "").await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["close"], 1008);
        says_what_to_do(&body);
        assert!(headers.get("access-control-allow-origin").is_none());
    }
    let good = [("Origin", "https://app.example.com")];
    let (status, body, headers) = post(&format!("{b}/http/browser"), &good, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );

    // The preflight is answered from the same list.
    let client = reqwest::Client::new();
    let pre = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{b}/http/send"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "relay-connection,content-type",
            )
            .send()
    };
    let res = pre("https://app.example.com").await.expect("preflight");
    assert_eq!(res.status().as_u16(), 204);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("relay-connection"))
    );
    let res = pre("https://evil.example.net").await.expect("preflight");
    assert_eq!(res.status().as_u16(), 403);
}

#[tokio::test]
async fn virtual_connections_count_under_the_per_address_ceiling() {
    let relay = Relay::start(&[("RELAY_MAX_CONNECTIONS_PER_ADDR", "2")]);
    let b = base(relay.addr);
    let _one = Http::open(&b, "mac", Mode::Poll).await;
    let _two = relay.mac().await;
    let (status, body, headers) = post(&format!("{b}/http/mac"), &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "5");
    says_what_to_do(&body);
}

#[tokio::test]
async fn a_client_that_stops_receiving_is_dropped_like_a_silent_websocket() {
    let relay = Relay::start(&[
        ("RELAY_HEARTBEAT_INTERVAL", "1s"),
        ("RELAY_HEARTBEAT_TIMEOUT", "1s"),
    ]);
    let mut reg = crate::support::register(&relay).await;
    let mut browser = Http::open(&base(relay.addr), "browser", Mode::Poll).await;
    browser
        .json(json!({"type": "join", "code": reg.code}))
        .await;
    browser.expect("joined").await;
    reg.ws.expect("peer_joined").await;
    // The browser's network dies: no receive arrives any more.
    reg.ws.expect("peer_disconnected").await;
    // Its next request learns it was dropped (1001: resume).
    let res = browser.receive_raw(browser.after, Mode::Poll).await;
    let status = res.status().as_u16();
    let items: Value = res.json().await.expect("JSON");
    if status == 200 {
        assert_eq!(items[0]["close"], 1001, "{items}");
    } else {
        assert_eq!((status, &items["close"]), (410, &json!(1001)), "{items}");
    }
    // While polling, a client is never dropped.
    let mut mac = Http::open(&base(relay.addr), "mac", Mode::Poll).await;
    mac.json(json!({"type": "register"})).await;
    mac.expect("registered").await;
    for _ in 0..4 {
        // Each empty poll lasts the wait (the heartbeat interval here).
        mac.send(vec![]).await;
        let res = mac.receive_raw(mac.after, Mode::Poll).await;
        let items: Value = res.json().await.expect("JSON");
        assert_eq!(items, json!([]));
    }
    mac.json(json!({"type": "ping", "ts": 3})).await;
    assert_eq!(mac.expect("pong").await["ts"], 3);
}

#[tokio::test]
async fn a_client_that_collects_without_acknowledging_is_cut_as_a_slow_consumer() {
    let relay = Relay::start(&[
        ("RELAY_HEARTBEAT_TIMEOUT", "1s"),
        ("RELAY_MAX_BUFFERED", "262144"),
        ("RELAY_MAX_FRAME", "65536"),
    ]);
    let mut reg = crate::support::register(&relay).await;
    let mut browser = Http::open(&base(relay.addr), "browser", Mode::Poll).await;
    browser
        .json(json!({"type": "join", "code": reg.code}))
        .await;
    browser.expect("joined").await;
    reg.ws.expect("peer_joined").await;
    // The browser keeps polling from 0, acknowledging nothing: it gets the
    // same items again and again (alive, but never reading on).
    let poller = tokio::spawn(async move {
        loop {
            let res = browser.receive_raw(0, Mode::Poll).await;
            if res.status().as_u16() != 200 {
                return res.status().as_u16();
            }
            let _ = res.bytes().await;
        }
    });
    // The mac sends more than the relay holds for a reader that does not read.
    for _ in 0..300 {
        reg.ws.binary(vec![7u8; 4096]).await;
    }
    relay
        .wait_metric(r#"relay_disconnects_total{reason="slow_consumer"}"#, |v| {
            v >= 1.0
        })
        .await;
    reg.ws.expect("peer_disconnected").await;
    poller.abort();
}

#[tokio::test]
async fn a_head_over_the_limit_is_431_on_the_http_transport_too() {
    let relay = Relay::start(&[("RELAY_MAX_REQUEST_HEAD", "4096")]);
    let big = "x".repeat(5000);
    let (status, _, _) = post(
        &format!("{}/http/mac", base(relay.addr)),
        &[("X-Padding", big.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 431);
}

#[tokio::test]
async fn a_draining_node_tells_a_waiting_http_client_to_go_elsewhere() {
    let relay = Relay::start(&[]);
    let mut mac = Http::open(&base(relay.addr), "mac", Mode::Poll).await;
    mac.json(json!({"type": "register"})).await;
    mac.expect("registered").await;
    // The mac's next poll is waiting when the node is told to stop.
    let received = r#"relay_http_requests_total{op="receive",served="here"}"#;
    let before = relay.metric(received).await;
    let after = mac.after;
    let waiting = tokio::spawn(async move {
        let res = mac.receive_raw(after, Mode::Poll).await;
        res.json::<Value>().await.expect("JSON")
    });
    relay.wait_metric(received, |v| v > before).await;
    relay.sigterm();
    let items = waiting.await.expect("the poll answered");
    let error: Value =
        serde_json::from_str(items[0]["text"].as_str().unwrap_or("{}")).unwrap_or_default();
    assert_eq!(error["code"], "SHUTTING_DOWN", "{items}");
    assert_eq!(items[1]["close"], 1012, "{items}");
}

#[tokio::test]
async fn bodies_the_node_holds_at_once_are_bounded() {
    use tokio::io::AsyncWriteExt;
    // Sends of 64 B frames: a body is at most 4 x 64 B + 64 KiB, and the
    // node holds sixteen of those at once.
    let relay = Relay::start(&[("RELAY_MAX_FRAME", "64"), ("RELAY_MAX_BUFFERED", "64")]);
    let mut mac = Http::open(&base(relay.addr), "mac", Mode::Poll).await;
    let cap = 4 * 64 + (64 << 10);
    // Sixteen clients announce a body at the cap and send none of it yet.
    let mut slow = Vec::new();
    for _ in 0..16 {
        let mut tcp = tokio::net::TcpStream::connect(relay.addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /http/send HTTP/1.1\r\nHost: relay\r\nRelay-Connection: {}\r\nContent-Length: {cap}\r\n\r\n",
            mac.cid
        );
        tcp.write_all(head.as_bytes()).await.expect("write");
        slow.push(tcp);
    }
    // The node reads their heads and waits for their bodies: then one more
    // is told to come back, without its body being read.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    let (status, body) = loop {
        let (status, body) = mac.send_batch(vec![]).await;
        if status != 200 {
            break (status, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the budget never filled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    says_what_to_do(&body);
    mac.batch -= 1;
    // Once they go, the budget is back.
    drop(slow);
    loop {
        let (status, _) = mac.send_batch(vec![text(r#"{"type":"register"}"#)]).await;
        if status == 200 {
            break;
        }
        mac.batch -= 1;
        assert!(
            std::time::Instant::now() < deadline,
            "the budget never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    mac.expect("registered").await;
}
