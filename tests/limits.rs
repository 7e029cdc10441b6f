//! Abuse limits on one node: connection ceilings (HTTP 503 before the
//! upgrade), the `Origin` allow-list for `/browser` (close 1008), the
//! ceiling on failed joins, and the control-message rate. Each refusal is
//! clear to the client and counted in a metric, and the node keeps serving.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{Got, Relay, WAIT, Ws, pair, register};

/// Connects to `url` with extra request headers; the HTTP status of a refused upgrade on failure.
async fn connect_with(url: &str, headers: &[(&'static str, &str)]) -> Result<Ws, (u16, String)> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("an answer in time")
    {
        Ok((stream, _)) => Ok(Ws::from_stream(stream)),
        Err(tungstenite::Error::Http(res)) => {
            let retry = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = String::from_utf8_lossy(res.body().as_deref().unwrap_or_default());
            Err((res.status().as_u16(), format!("{retry}|{body}")))
        }
        Err(e) => panic!("connect to {url}: {e}"),
    }
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let relay = Relay::start(&[
        ("RELAY_MAX_CONNECTIONS_PER_ADDR", "3"),
        ("RELAY_TRUST_FORWARDED_FOR", "true"),
    ]);
    let url = relay.url("/mac");
    let a = [("x-forwarded-for", "198.51.100.7")];
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_with(&url, &a).await.expect("under the ceiling"));
    }
    let (status, detail) = connect_with(&url, &a).await.err().expect("refused");
    assert_eq!(status, 503);
    assert!(detail.starts_with("5|"), "Retry-After 5: {detail}");
    assert!(
        detail.contains("too many connections from your address"),
        "{detail}"
    );
    // Another address is not affected.
    let mut other = connect_with(&url, &[("x-forwarded-for", "198.51.100.8")])
        .await
        .expect("another address");
    other.json(json!({"type": "register"})).await;
    other.expect("registered").await;
    assert_eq!(
        relay
            .metric(r#"relay_connections_refused_total{reason="address_full"}"#)
            .await,
        1.0
    );
    // A closed connection gives its place back.
    held.pop().unwrap().close(1000).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match connect_with(&url, &a).await {
            Ok(_) => break,
            Err((503, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("place never given back: {e:?}"),
        }
    }
}

#[tokio::test]
async fn a_full_node_refuses_upgrades_but_answers_probes() {
    let relay = Relay::start(&[("RELAY_MAX_CONNECTIONS", "2")]);
    assert_eq!(relay.metric("relay_connections_limit").await, 2.0);
    let _m = relay.mac().await;
    let _b = relay.browser().await;
    let (status, detail) = connect_with(&relay.url("/browser"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 503);
    assert!(detail.contains("node full"), "{detail}");
    assert_eq!(relay.get("/healthz").await.0, 200);
    assert_eq!(relay.get("/readyz").await.0, 200);
    assert_eq!(
        relay
            .metric(r#"relay_connections_refused_total{reason="node_full"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn without_a_setting_the_ceiling_follows_the_open_files_limit() {
    let relay = Relay::start(&[]);
    let limit = relay.metric("relay_connections_limit").await;
    assert!(limit >= 1.0, "{limit}");
    assert_eq!(
        relay.start_fields()["max_connections"].as_f64(),
        Some(limit)
    );
}

#[tokio::test]
async fn browsers_from_origins_off_the_allow_list_are_closed_with_1008() {
    let relay = Relay::start(&[(
        "RELAY_ALLOWED_ORIGINS",
        "https://app.example.com,https://*.example.org",
    )]);
    let url = relay.url("/browser");
    let mut evil = connect_with(&url, &[("origin", "https://evil.example.net")])
        .await
        .expect("upgraded, then closed");
    match evil.recv().await {
        Got::Close(Some((1008, reason))) => assert!(reason.contains("origin"), "{reason}"),
        other => panic!("expected close 1008, got {other:?}"),
    }
    relay
        .wait_metric(r#"relay_disconnects_total{reason="origin_refused"}"#, |v| {
            v == 1.0
        })
        .await;

    let r = register(&relay).await;
    for origin in [
        Some("https://app.example.com"),
        Some("https://tab.example.org"),
        // The relay's own page.
        Some(&*format!("http://{}", relay.addr)),
        // Not a web page: no cross-site hijack possible.
        None,
    ] {
        let headers: Vec<(&'static str, &str)> =
            origin.map(|o| ("origin", o)).into_iter().collect();
        let mut b = connect_with(&url, &headers).await.expect("allowed origin");
        b.json(json!({"type": "join", "code": "ZZZZZZ"})).await;
        b.expect_error("INVALID_CODE").await;
    }
    // The allow-list is for browsers; a mac from any origin is served.
    let mut m = connect_with(
        &relay.url("/mac"),
        &[("origin", "https://evil.example.net")],
    )
    .await
    .expect("mac");
    m.json(json!({"type": "register"})).await;
    m.expect("registered").await;
    drop(r);
}

/// Waits until at least `need` seconds remain in the current wall-clock
/// minute, the window of the failed-join count, so a test's count is not
/// split across two windows.
pub async fn away_from_a_minute_boundary(need: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = now.as_secs() % 60;
    if 60 - into < need {
        tokio::time::sleep(Duration::from_secs(60 - into) + Duration::from_millis(200)).await;
    }
}

/// Joins with `code` on `ws` and expects the failed-join ceiling's refusal.
pub async fn refused_by_the_failed_join_ceiling(ws: &mut Ws, code: &str) {
    ws.json(json!({"type": "join", "code": code})).await;
    let e = ws.expect_error("RATE_LIMITED").await;
    assert!(
        e["message"].as_str().unwrap().contains("wrong codes"),
        "{e}"
    );
}

#[tokio::test]
async fn wrong_codes_from_many_addresses_hit_the_failed_join_ceiling() {
    let relay = Relay::start(&[
        ("RELAY_FAILED_JOIN_LIMIT", "3"),
        ("RELAY_TRUST_FORWARDED_FOR", "true"),
    ]);
    let r = register(&relay).await;
    away_from_a_minute_boundary(20).await;
    let url = relay.url("/browser");
    // Malformed codes cannot match any code, so they do not count.
    let mut b = relay.browser().await;
    b.json(json!({"type": "join", "code": "??"})).await;
    b.expect_error("INVALID_CODE").await;
    // Three guesses, each from its own address: a per-address limit sees one each.
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        let mut g = connect_with(&url, &[("x-forwarded-for", &xff)])
            .await
            .unwrap();
        // Well-formed (letters of the alphabet) but not a live code.
        g.json(json!({"type": "join", "code": "YYYYYY"})).await;
        g.expect_error("INVALID_CODE").await;
    }
    // Now even the right code from a fresh address is refused for this minute.
    let mut late = connect_with(&url, &[("x-forwarded-for", "203.0.113.99")])
        .await
        .unwrap();
    refused_by_the_failed_join_ceiling(&mut late, &r.code).await;
    assert_eq!(
        relay
            .metric(r#"relay_rate_limited_total{limit="failed_joins"}"#)
            .await,
        1.0
    );
    assert_eq!(
        relay
            .metric(r#"relay_joins_total{result="rate_limited"}"#)
            .await,
        1.0
    );
    // The node goes on: registering is unaffected.
    let mut m = relay.mac().await;
    m.json(json!({"type": "register"})).await;
    m.expect("registered").await;
}

#[tokio::test]
async fn a_control_message_flood_is_refused_then_closed_while_data_flows_freely() {
    let relay = Relay::start(&[("RELAY_MESSAGE_RATE", "3")]);
    let mut p = pair(&relay).await;
    // Data is paced by flow control, never by the message rate.
    for i in 0..200 {
        p.mac.data(&format!("d{i}")).await;
    }
    for i in 0..200 {
        let v = p.browser.recv_json().await;
        assert_eq!(v["payload"], format!("d{i}"));
    }
    // A burst of pings far over 3 a second.
    for ts in 0..40 {
        p.mac.json(json!({"type": "ping", "ts": ts})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    let close = loop {
        match p.mac.recv().await {
            Got::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(v["code"], "RATE_LIMITED", "{v}");
                        limited += 1;
                    }
                    _ => panic!("unexpected {v}"),
                }
            }
            Got::Close(c) => break c.map(|c| c.0),
            other => panic!("unexpected {other:?}"),
        }
    };
    // `register` took one of the burst of 3.
    assert!((1..40).contains(&pongs), "pongs {pongs}");
    assert!(limited >= 10, "refused {limited}");
    assert_eq!(close, Some(1008), "a flood that goes on is closed");
    assert!(
        relay
            .metric(r#"relay_rate_limited_total{limit="messages"}"#)
            .await
            >= 10.0
    );
    // Its peer learns the mac went away (it may resume), and the node serves on.
    let v = p.browser.recv_json().await;
    assert_eq!(v["type"], "peer_disconnected", "{v}");
    let mut m = relay.mac().await;
    m.json(json!({"type": "register"})).await;
    m.expect("registered").await;
}

/// IPv6 is counted by /64, the block one host is usually given: two
/// addresses of one /64 share its ceiling and its join rate; another /64 has
/// its own. (IPv4 stays per address, above.)
#[tokio::test]
async fn ipv6_clients_are_counted_by_their_64_prefix() {
    let relay = Relay::start(&[
        ("RELAY_MAX_CONNECTIONS_PER_ADDR", "2"),
        ("RELAY_JOIN_RATE", "1"),
        ("RELAY_TRUST_FORWARDED_FOR", "true"),
    ]);
    let url = relay.url("/browser");
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let mut first = connect_with(&url, &from("2001:db8:7:1::1"))
        .await
        .expect("under the ceiling");
    let mut second = connect_with(&url, &from("2001:db8:7:1:ffff::2"))
        .await
        .expect("under the ceiling");
    let (status, _) = connect_with(&url, &from("2001:db8:7:1::3"))
        .await
        .err()
        .expect("a third address of the same /64 is over its ceiling");
    assert_eq!(status, 503);
    let mut elsewhere = connect_with(&url, &from("2001:db8:7:2::1"))
        .await
        .expect("another /64 has its own ceiling");
    // One join a minute for the /64, whichever address of it asks.
    first.json(json!({"type": "join", "code": "333333"})).await;
    first.expect_error("INVALID_CODE").await;
    second.json(json!({"type": "join", "code": "333333"})).await;
    second.expect_error("RATE_LIMITED").await;
    elsewhere
        .json(json!({"type": "join", "code": "333333"}))
        .await;
    elsewhere.expect_error("INVALID_CODE").await;
}
