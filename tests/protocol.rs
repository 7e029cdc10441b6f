//! The protocol's flow and its error codes, one behaviour per test.

use serde_json::json;

use crate::support::{Got, Relay, pair, register, resume_msg};

#[tokio::test]
async fn register_join_and_peer_events() {
    let relay = Relay::start(&[]);
    let p = pair(&relay).await;
    assert_eq!(p.code.len(), 6);
    assert_ne!(p.mac_token, p.browser_token);
    assert!(p.mac_token.len() >= 22, "token has at least 128 bits");

    // The browser leaves: the mac is told why and the code can be joined again.
    let mut browser = p.browser;
    browser.json(json!({"type": "leave"})).await;
    browser.expect_close(1000).await;
    let mut mac = p.mac;
    let left = mac.expect("peer_left").await;
    assert_eq!(left["reason"], "left");

    let mut second = relay.browser().await;
    second
        .json(json!({"type": "join", "code": p.code.to_lowercase()}))
        .await;
    second.expect("joined").await;
    mac.expect("peer_joined").await;

    // The mac leaves: the browser gets MAC_DISCONNECTED and a 1000 close.
    mac.json(json!({"type": "leave"})).await;
    mac.expect_close(1000).await;
    second.expect_error("MAC_DISCONNECTED").await;
    second.expect_close(1000).await;

    // The session and its code are gone.
    let mut third = relay.browser().await;
    third.json(json!({"type": "join", "code": p.code})).await;
    third.expect_error("INVALID_CODE").await;
}

#[tokio::test]
async fn join_tolerates_case_spaces_and_hyphens() {
    let relay = Relay::start(&[]);
    let r = register(&relay).await;
    let typed = format!(" {}-{} ", &r.code[..3].to_lowercase(), &r.code[3..]);
    let mut b = relay.browser().await;
    b.json(json!({"type": "join", "code": typed})).await;
    b.expect("joined").await;
}

#[tokio::test]
async fn browser_closing_with_1000_is_peer_left_closed() {
    let relay = Relay::start(&[]);
    let mut p = pair(&relay).await;
    p.browser.close(1000).await;
    let left = p.mac.expect("peer_left").await;
    assert_eq!(left["reason"], "closed");
}

#[tokio::test]
async fn mac_closing_with_1000_ends_the_session() {
    let relay = Relay::start(&[]);
    let mut p = pair(&relay).await;
    p.mac.close(1000).await;
    p.browser.expect_error("MAC_DISCONNECTED").await;
    p.browser.expect_close(1000).await;
}

#[tokio::test]
async fn browser_dropping_is_away_then_timeout() {
    let relay = Relay::start(&[("RELAY_GRACE", "300ms")]);
    let mut p = pair(&relay).await;
    p.browser.drop_connection();
    p.mac.expect("peer_disconnected").await;
    let left = p.mac.expect("peer_left").await;
    assert_eq!(left["reason"], "timeout");
}

#[tokio::test]
async fn mac_dropping_for_longer_than_grace_ends_the_session() {
    let relay = Relay::start(&[("RELAY_GRACE", "300ms")]);
    let mut p = pair(&relay).await;
    p.mac.drop_connection();
    p.browser.expect("peer_disconnected").await;
    p.browser.expect_error("MAC_DISCONNECTED").await;
    p.browser.expect_close(1000).await;
}

#[tokio::test]
async fn invalid_code_for_unknown_and_malformed_codes() {
    let relay = Relay::start(&[]);
    let mut b = relay.browser().await;
    for code in ["333333", "H0F7KN", "short", "", "ABCDEFG"] {
        b.json(json!({"type": "join", "code": code})).await;
        b.expect_error("INVALID_CODE").await;
    }
    // The socket stays usable after a failed join.
    b.json(json!({"type": "ping", "ts": 1})).await;
    b.expect("pong").await;
}

#[tokio::test]
async fn code_expiry_then_register_again_on_the_same_socket() {
    let relay = Relay::start(&[("RELAY_CODE_TTL", "300ms")]);
    let mut r = register(&relay).await;
    let expired = r.ws.expect("code_expired").await;
    assert_eq!(expired["code"], r.code.as_str());

    let mut b = relay.browser().await;
    b.json(json!({"type": "join", "code": r.code})).await;
    b.expect_error("EXPIRED_CODE").await;

    // Data after expiry has no peer.
    r.ws.binary(vec![1, 2, 3]).await;
    r.ws.expect_error("NOT_PAIRED").await;

    r.ws.json(json!({"type": "register"})).await;
    let again = r.ws.expect("registered").await;
    assert_ne!(again["code"], r.code.as_str());
    assert!(again["expiresAt"].as_u64().is_some());
}

#[tokio::test]
async fn a_paired_session_outlives_its_code() {
    let relay = Relay::start(&[("RELAY_CODE_TTL", "300ms")]);
    let mut p = pair(&relay).await;
    // Wait for the code to expire, observed through a late join.
    let mut late = relay.browser().await;
    loop {
        late.json(json!({"type": "join", "code": p.code})).await;
        let v = late.expect("error").await;
        if v["code"] == "EXPIRED_CODE" {
            break;
        }
        assert_eq!(v["code"], "ALREADY_JOINED");
        // Within RELAY_MESSAGE_RATE (20 a second), as a person retrying would be.
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    p.mac.binary(vec![7]).await;
    assert_eq!(p.browser.recv().await, Got::Binary(vec![7]));
    // When the browser leaves now, the mac learns its code is gone too.
    p.browser.json(json!({"type": "leave"})).await;
    assert_eq!(p.mac.expect("peer_left").await["reason"], "left");
    p.mac.expect("code_expired").await;
    p.mac.json(json!({"type": "register"})).await;
    p.mac.expect("registered").await;
}

#[tokio::test]
async fn one_browser_only() {
    let relay = Relay::start(&[]);
    let p = pair(&relay).await;
    let mut second = relay.browser().await;
    second.json(json!({"type": "join", "code": p.code})).await;
    second.expect_error("ALREADY_JOINED").await;
}

#[tokio::test]
async fn not_paired_before_a_browser_joins() {
    let relay = Relay::start(&[]);
    let mut r = register(&relay).await;
    r.ws.data("hello").await;
    r.ws.expect_error("NOT_PAIRED").await;
    r.ws.binary(vec![0u8; 10]).await;
    r.ws.expect_error("NOT_PAIRED").await;

    let mut b = relay.browser().await;
    b.binary(vec![1]).await;
    b.expect_error("NOT_PAIRED").await;
}

#[tokio::test]
async fn invalid_message_and_close_after_ten_in_a_row() {
    let relay = Relay::start(&[]);
    let mut mac = relay.mac().await;
    // A valid message in between resets the count.
    for _ in 0..9 {
        mac.text("not json").await;
        mac.expect_error("INVALID_MESSAGE").await;
    }
    mac.json(json!({"type": "ping", "ts": 5})).await;
    assert_eq!(mac.expect("pong").await["ts"], 5);
    let bad = [
        "not json".to_string(),
        "{}".into(),
        "[1,2]".into(),
        r#"{"type":"teleport"}"#.into(),
        r#"{"type":"register","clientId":42}"#.into(),
        r#"{"type":"join","code":"333333"}"#.into(), // join is for browsers
        r#"{"type":"resume","sessionId":"s","resumeToken":"t","lastSeq":"x"}"#.into(),
        r#"{"type":"ping","ts":"soon"}"#.into(),
        "null".into(),
    ];
    for text in &bad {
        mac.text(text.clone()).await;
        mac.expect_error("INVALID_MESSAGE").await;
    }
    mac.text("{").await;
    mac.expect_error("INVALID_MESSAGE").await;
    mac.expect_close(1008).await;
}

#[tokio::test]
async fn message_too_large_closes_with_1009() {
    let relay = Relay::start(&[("RELAY_MAX_FRAME", "64KiB")]);
    let mut p = pair(&relay).await;
    p.mac.binary(vec![0u8; 64 * 1024]).await; // at the limit: relayed
    assert_eq!(p.browser.recv().await, Got::Binary(vec![0u8; 64 * 1024]));
    p.mac.binary(vec![0u8; 64 * 1024 + 1]).await;
    p.mac.expect_error("MESSAGE_TOO_LARGE").await;
    p.mac.expect_close(1009).await;
    // The browser's side is unaffected and learns the mac dropped.
    p.browser.expect("peer_disconnected").await;
}

#[tokio::test]
async fn rate_limited_joins() {
    let relay = Relay::start(&[("RELAY_JOIN_RATE", "3")]);
    let mut b = relay.browser().await;
    for _ in 0..3 {
        b.json(json!({"type": "join", "code": "333333"})).await;
        b.expect_error("INVALID_CODE").await;
    }
    b.json(json!({"type": "join", "code": "333333"})).await;
    b.expect_error("RATE_LIMITED").await;
    // A good code is refused too: guessing is what the limit stops.
    let r = register(&relay).await;
    let mut other = relay.browser().await;
    other.json(json!({"type": "join", "code": r.code})).await;
    other.expect_error("RATE_LIMITED").await;
    assert!(
        relay
            .metric("relay_joins_total{result=\"rate_limited\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn forwarded_for_is_used_only_when_trusted() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    for (trusted, expect_second) in [("true", "INVALID_CODE"), ("false", "RATE_LIMITED")] {
        let relay = Relay::start(&[
            ("RELAY_JOIN_RATE", "1"),
            ("RELAY_TRUST_FORWARDED_FOR", trusted),
        ]);
        for (i, ip) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
            let mut req = relay.url("/browser").into_client_request().unwrap();
            req.headers_mut().insert(
                "x-forwarded-for",
                format!("198.51.100.9, {ip}").parse().unwrap(),
            );
            let (stream, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let mut b = crate::support::Ws::from_stream(stream);
            b.json(json!({"type": "join", "code": "333333"})).await;
            let want = if i == 0 {
                "INVALID_CODE"
            } else {
                expect_second
            };
            b.expect_error(want).await;
        }
    }
}

#[tokio::test]
async fn invalid_resume_and_resume_expired() {
    let relay = Relay::start(&[("RELAY_GRACE", "200ms")]);
    let mut b = relay.browser().await;
    b.json(resume_msg("nope", "nope", 0)).await;
    b.expect_error("INVALID_RESUME").await;

    let mut p = pair(&relay).await;
    // Wrong token for a live session.
    let mut m = relay.mac().await;
    m.json(resume_msg(&p.session_id, &p.browser_token, 0)).await;
    m.expect_error("INVALID_RESUME").await;

    // The browser drops and stays away past the grace period.
    let Some(session) = Some(p.session_id.clone()) else {
        unreachable!()
    };
    let token = p.browser_token.clone();
    p.browser.drop_connection();
    p.mac.expect("peer_disconnected").await;
    p.mac.expect("peer_left").await;
    let mut back = relay.browser().await;
    back.json(resume_msg(&session, &token, 0)).await;
    back.expect_error("RESUME_EXPIRED").await;
}

#[tokio::test]
async fn resume_after_the_mac_left_says_mac_disconnected() {
    let relay = Relay::start(&[]);
    let p = pair(&relay).await;
    let (session, token) = (p.session_id.clone(), p.browser_token.clone());
    p.browser.drop_connection();
    let mut mac = p.mac;
    mac.expect("peer_disconnected").await;
    mac.json(json!({"type": "leave"})).await;
    mac.expect_close(1000).await;
    let mut back = relay.browser().await;
    back.json(resume_msg(&session, &token, 0)).await;
    back.expect_error("MAC_DISCONNECTED").await;
    back.expect_close(1000).await;
}

#[tokio::test]
async fn handshake_timeout_closes_with_1008() {
    // Long enough for a loaded machine to connect and ping within it.
    let relay = Relay::start(&[("RELAY_HANDSHAKE_TIMEOUT", "1s")]);
    let mut mac = relay.mac().await;
    assert_eq!(mac.until_closed().await, Some(1008));
    let mut b = relay.browser().await;
    b.json(json!({"type": "ping", "ts": 1})).await; // a ping is not a handshake
    b.expect("pong").await;
    assert_eq!(b.until_closed().await, Some(1008));
    assert!(
        relay
            .metric("relay_disconnects_total{reason=\"handshake_timeout\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn wrong_role_messages_are_invalid() {
    let relay = Relay::start(&[]);
    let mut b = relay.browser().await;
    b.json(json!({"type": "register"})).await;
    b.expect_error("INVALID_MESSAGE").await;
    let mut r = register(&relay).await;
    r.ws.json(json!({"type": "register"})).await;
    r.ws.expect_error("INVALID_MESSAGE").await;
}

#[tokio::test]
async fn ping_pong_echoes_the_number() {
    let relay = Relay::start(&[]);
    let mut m = relay.mac().await;
    m.json(json!({"type": "ping", "ts": 1700000000123u64}))
        .await;
    assert_eq!(m.expect("pong").await["ts"], 1700000000123u64);
    m.json(json!({"type": "ping", "ts": 12.5})).await;
    assert_eq!(m.expect("pong").await["ts"], 12.5);
}

#[tokio::test]
async fn http_endpoints() {
    let relay = Relay::start(&[]);
    assert_eq!(relay.get("/healthz").await.0, 200);
    assert_eq!(relay.get("/readyz").await.0, 200);
    let (status, body) = relay.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "relay_connections_open{role=\"mac\"}",
        "relay_sessions_live",
        "relay_codes_issued_total",
        "relay_codes_expired_total",
        "relay_joins_total{result=\"ok\"}",
        "relay_frames_relayed_total{path=\"local\"}",
        "relay_bytes_relayed_total{path=\"local\"}",
        "relay_resumes_total{result=\"ok\"}",
        "relay_disconnects_total{reason=\"slow_consumer\"}",
        "process_resident_memory_bytes",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(relay.get("/nope").await.0, 404);
    // A WebSocket upgrade on another path is refused before the upgrade.
    let err = tokio_tungstenite::connect_async(relay.url("/elsewhere"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    // A plain GET on an endpoint is not an upgrade.
    assert_eq!(relay.get("/mac").await.0, 400);
}

#[tokio::test]
async fn metrics_count_the_flow() {
    let relay = Relay::start(&[]);
    let mut p = pair(&relay).await;
    p.mac.binary(vec![1, 2, 3]).await;
    p.browser.recv().await;
    assert_eq!(relay.metric("relay_codes_issued_total").await, 1.0);
    assert_eq!(relay.metric("relay_joins_total{result=\"ok\"}").await, 1.0);
    assert_eq!(relay.metric("relay_sessions_live").await, 1.0);
    assert_eq!(
        relay
            .metric("relay_connections_open{role=\"browser\"}")
            .await,
        1.0
    );
    assert_eq!(
        relay
            .metric("relay_frames_relayed_total{path=\"local\"}")
            .await,
        1.0
    );
    assert_eq!(
        relay
            .metric("relay_bytes_relayed_total{path=\"local\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn heartbeat_drops_a_client_that_stops_answering_pings() {
    let relay = Relay::start(&[
        ("RELAY_HEARTBEAT_INTERVAL", "200ms"),
        // The answering mac reads only between its app-level pings: a
        // timeout of a whole second keeps a loaded machine's pauses from
        // dropping it too, and still drops the silent browser within 1.2 s.
        ("RELAY_HEARTBEAT_TIMEOUT", "1s"),
        ("RELAY_GRACE", "60s"),
    ]);
    let mut p = pair(&relay).await;
    // The mac keeps reading (its client answers pings); the browser goes silent.
    let _silent = p.browser;
    p.mac.expect("peer_disconnected").await;
    assert_eq!(
        relay
            .metric("relay_disconnects_total{reason=\"heartbeat_timeout\"}")
            .await,
        1.0
    );
    // A client that answers stays: several heartbeat rounds of app-level pings later, still paired.
    for ts in 0..10 {
        p.mac.json(json!({"type": "ping", "ts": ts})).await;
        assert_eq!(p.mac.expect("pong").await["ts"], ts);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        relay.metric("relay_connections_open{role=\"mac\"}").await,
        1.0
    );
}

#[tokio::test]
async fn an_admin_listener_takes_metrics_off_the_main_port() {
    let relay = Relay::start(&[("RELAY_ADMIN_LISTEN", "127.0.0.1:0")]);
    let admin: std::net::SocketAddr = relay.start_fields()["admin"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(relay.get("/metrics").await.0, 404);
    assert_eq!(relay.get("/healthz").await.0, 200);
    assert_eq!(relay.get("/readyz").await.0, 200);
    let on_admin = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let metrics = on_admin("/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("relay_connections_open"));
    assert!(on_admin("/readyz").await.starts_with("HTTP/1.1 200"));
    assert!(on_admin("/mac").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test]
async fn metrics_count_sessions_by_state_buffers_latency_and_limits() {
    let relay = Relay::start(&[("RELAY_JOIN_RATE", "2")]);
    let _alone = register(&relay).await;
    let mut p = pair(&relay).await;
    for i in 0..32u8 {
        p.mac.binary(vec![i; 100]).await;
    }
    for _ in 0..32 {
        p.browser.recv().await;
    }
    assert_eq!(relay.metric("relay_sessions{state=\"waiting\"}").await, 1.0);
    assert_eq!(relay.metric("relay_sessions{state=\"paired\"}").await, 1.0);
    assert_eq!(relay.metric("relay_sessions{state=\"away\"}").await, 0.0);
    assert_eq!(
        relay
            .metric("relay_frame_latency_seconds_count{path=\"local\"}")
            .await,
        2.0,
        "one frame in 16 is timed: seq 16 and 32"
    );
    // Written but not yet acknowledged (no position ping was due): held for replay.
    assert!(relay.metric("relay_buffered_frames").await >= 1.0);
    assert!(relay.metric("relay_buffered_bytes").await >= 1000.0);
    p.browser.drop_connection();
    p.mac.expect("peer_disconnected").await;
    assert_eq!(relay.metric("relay_sessions{state=\"away\"}").await, 1.0);
    // The limit is 2 joins a minute: the pair used one, these two more go over.
    let mut b = relay.browser().await;
    for _ in 0..2 {
        b.json(json!({"type": "join", "code": "333333"})).await;
        b.expect("error").await;
    }
    assert_eq!(
        relay
            .metric("relay_rate_limited_total{limit=\"join\"}")
            .await,
        1.0
    );
}
