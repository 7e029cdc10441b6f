//! Joins under a guessing attack (issue 16): many addresses guessing codes as
//! fast as the join rate allows put the relay *under attack*, which makes
//! new codes 8 characters long instead of refusing joins. A person's join
//! still succeeds, a code issued meanwhile is long and joins like any other,
//! and once the attack window passes codes are 6 characters again. On one
//! node, and on a cluster where the guessers spread over every node; and an
//! end-to-end encrypted pairing with an 8-character relay code.

use futures_util::future::join_all;
use serde_json::json;

use crate::limits::{away_from_a_minute_boundary, connect_with};
use crate::support::cluster::{Cluster, register_at};
use crate::support::{Relay, Ws};

/// Guessing addresses, as in the issue.
const GUESSERS: usize = 50;

/// Settings of an attack test: a per-address join rate, a failed-join limit
/// the guessers pass several times over, and a short attack window (the
/// test waits it out).
const ATTACK_ENV: &[(&str, &str)] = &[
    ("RELAY_TRUST_FORWARDED_FOR", "true"),
    ("RELAY_JOIN_RATE", "10"),
    ("RELAY_FAILED_JOIN_LIMIT", "100"),
    ("RELAY_UNDER_ATTACK_FOR", "5s"),
];

/// One guesser at `xff` tries wrong codes on every `/browser` URL until each
/// refuses it with `RATE_LIMITED`; returns its wrong guesses.
async fn guess_until_limited(urls: &[String], xff: String) -> usize {
    let mut wrong = 0;
    for url in urls {
        let mut g = connect_with(url, &[("x-forwarded-for", &xff)])
            .await
            .expect("a guesser connects");
        loop {
            // Well-formed (letters of the alphabet) but no live code.
            g.json(json!({"type": "join", "code": "YYYYYY"})).await;
            let e = g.expect("error").await;
            match e["code"].as_str() {
                Some("INVALID_CODE") => wrong += 1,
                Some("RATE_LIMITED") => break,
                _ => panic!("a guess answered {e}"),
            }
        }
    }
    wrong
}

/// [`GUESSERS`] addresses guess at once on every URL; returns the wrong guesses.
async fn attack(urls: &[String]) -> usize {
    let guessers = (0..GUESSERS).map(|i| guess_until_limited(urls, format!("203.0.113.{i}")));
    join_all(guessers).await.into_iter().sum()
}

/// One more wrong guess, from a fresh address: it renews the attack window
/// (the minute's count is past the limit), so what follows runs inside it.
async fn renew(url: &str) {
    let mut g = connect_with(url, &[("x-forwarded-for", "203.0.113.200")])
        .await
        .unwrap();
    g.json(json!({"type": "join", "code": "YYYYYY"})).await;
    g.expect_error("INVALID_CODE").await;
}

/// A person at an address of their own joins `code` at `url`; the session is joined.
async fn person_joins(url: &str, code: &str) -> Ws {
    let mut b = connect_with(url, &[("x-forwarded-for", "198.51.100.7")])
        .await
        .unwrap();
    b.json(json!({"type": "join", "code": code})).await;
    b.expect("joined").await;
    b
}

/// Codes of 7 and 9 characters are not codes: `INVALID_CODE`, and not a guess.
async fn wrong_lengths_are_invalid(url: &str) {
    let mut b = connect_with(url, &[("x-forwarded-for", "198.51.100.8")])
        .await
        .unwrap();
    for code in ["YYYYYYY", "yyyy-yyyyy"] {
        b.json(json!({"type": "join", "code": code})).await;
        let e = b.expect_error("INVALID_CODE").await;
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("not a session code"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn guessing_from_many_addresses_lengthens_codes_and_locks_no_one_out() {
    let relay = Relay::start(ATTACK_ENV);
    let url = relay.url("/browser");
    let mut mac = crate::support::register(&relay).await;
    assert_eq!(mac.code.len(), 6, "no attack yet");
    assert_eq!(relay.metric("relay_under_attack").await, 0.0);
    wrong_lengths_are_invalid(&url).await;
    away_from_a_minute_boundary(30).await;

    let wrong = attack(std::slice::from_ref(&url)).await;
    assert_eq!(wrong, GUESSERS * 10, "each address guesses its join rate");
    assert_eq!(relay.metric("relay_under_attack").await, 1.0);
    relay
        .wait_logged("under a guessing attack: new codes have 8 characters")
        .await;

    // Nobody is locked out: a person's join from another address succeeds.
    renew(&url).await;
    let _browser = person_joins(&url, &mac.code).await;
    mac.ws.expect("peer_joined").await;
    // A code issued now is long, and a browser joins with it (typed loosely).
    let mut long = crate::support::register(&relay).await;
    assert_eq!(long.code.len(), 8, "{}", long.code);
    let typed = format!("{}-{}", &long.code[..4], long.code[4..].to_lowercase());
    let _b2 = person_joins(&url, &typed).await;
    long.ws.expect("peer_joined").await;
    wrong_lengths_are_invalid(&url).await;
    assert_eq!(
        relay
            .metric(r#"relay_codes_issued_by_length_total{length="8"}"#)
            .await,
        1.0
    );

    // Once the window passes with no more guessing, codes are short again.
    relay.wait_metric("relay_under_attack", |v| v == 0.0).await;
    relay.wait_logged("the guessing attack is over").await;
    let short = crate::support::register(&relay).await;
    assert_eq!(short.code.len(), 6, "{}", short.code);
    assert_eq!(
        relay
            .metric(r#"relay_codes_issued_by_length_total{length="6"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn guessing_spread_over_a_cluster_lengthens_codes_on_every_node() {
    let cluster = Cluster::start(3, ATTACK_ENV);
    let urls: Vec<String> = cluster.nodes().iter().map(|n| n.url("/browser")).collect();
    let mut mac = register_at(&cluster.node(1).url("/mac")).await;
    assert_eq!(mac.code.len(), 6, "no attack yet");
    wrong_lengths_are_invalid(&urls[1]).await;
    away_from_a_minute_boundary(30).await;

    // The join rate is per node: each address guesses 10 a minute on each.
    let wrong = attack(&urls).await;
    assert_eq!(wrong, GUESSERS * 10 * urls.len());

    renew(&urls[2]).await;
    for node in cluster.nodes() {
        node.wait_metric("relay_under_attack", |v| v == 1.0).await;
    }
    // A person joins on another node than the mac's.
    let _browser = person_joins(&urls[1], &mac.code).await;
    mac.ws.expect("peer_joined").await;
    // Every node issues long codes now; one joins across nodes.
    renew(&urls[0]).await;
    for (i, node) in cluster.nodes().iter().enumerate() {
        let mut long = register_at(&node.url("/mac")).await;
        assert_eq!(long.code.len(), 8, "node {i}: {}", long.code);
        let _b = person_joins(&urls[(i + 1) % urls.len()], &long.code.to_lowercase()).await;
        long.ws.expect("peer_joined").await;
    }

    for node in cluster.nodes() {
        node.wait_metric("relay_under_attack", |v| v == 0.0).await;
    }
    let short = register_at(&cluster.node(2).url("/mac")).await;
    assert_eq!(short.code.len(), 6, "{}", short.code);
}

#[tokio::test]
async fn an_encrypted_pairing_under_attack_has_a_13_character_full_code() {
    use relay_protocol::client::{Client, Data, Event};

    use crate::client::config;
    use crate::e2e::{data, encrypted, host};

    let relay = Relay::start(&[("RELAY_FAILED_JOIN_LIMIT", "1")]);
    let mut g = relay.browser().await;
    g.json(json!({"type": "join", "code": "YYYYYY"})).await;
    g.expect_error("INVALID_CODE").await;
    assert_eq!(relay.metric("relay_under_attack").await, 1.0);

    let url = [format!("ws://{}", relay.addr)];
    let (mac, mut mac_ev, code, _) = host(&url).await;
    // Eight relay characters, a dash, five secret ones.
    assert_eq!(code.len(), 14, "{code}");
    assert_eq!(&code[8..9], "-");
    let typed = code.replace('-', " ").to_lowercase();
    let (_browser, mut browser_ev) = Client::browser(config(&url), typed);
    encrypted(&mut browser_ev, "browser", Event::Joined).await;
    encrypted(&mut mac_ev, "mac", Event::PeerJoined).await;
    mac.send_text("long code").await.unwrap();
    assert_eq!(
        data(&mut browser_ev, "browser").await,
        Data::Text("long code".into())
    );
}
