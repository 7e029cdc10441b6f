//! End-to-end encryption (`relay-e2e/1`, PROTOCOL.md) between real clients
//! through real relays: encrypted pairing with data verbatim both ways, a
//! wrong secret refused on both sides, clear refusals when one side does
//! not encrypt, a hostile relay stand-in caught (`hostile`), and a cluster
//! whose Redis and logs never see the plaintext, across a node killed
//! mid-stream (`cluster`); rooms encrypt per guest (`rooms`).

use bytes::Bytes;
use relay_protocol::client::{Client, Config, Data, Ended, Event, Events, MISMATCH};
use serde_json::json;

use crate::client::{config, until};
use crate::support::{Relay, WAIT};

mod cli;
mod cluster;
mod hostile;
mod rooms;

/// `config(urls)` with end-to-end encryption on.
pub(crate) fn secure(urls: &[String]) -> Config {
    config(urls).with_e2e(true)
}

/// Starts an encrypted mac and returns it with its full code and page.
pub(crate) async fn host(urls: &[String]) -> (Client, Events, String, String) {
    let (mac, mut ev) = Client::mac(secure(urls));
    let (code, page) = until(&mut ev, "registered", |e| match e {
        Event::Registered { code, page, .. } => Some((code.clone(), page.clone())),
        _ => None,
    })
    .await;
    (mac, ev, code, page)
}

/// Waits for `Encrypted` then `then` (`PeerJoined` or `Joined`), in that order.
pub(crate) async fn encrypted(ev: &mut Events, who: &str, then: Event) {
    until(ev, &format!("{who}: encrypted"), |e| {
        assert_ne!(
            e, &then,
            "{who}: {then:?} before the exchange was confirmed"
        );
        matches!(e, Event::Encrypted).then_some(())
    })
    .await;
    until(ev, &format!("{who}: {then:?}"), |e| {
        (e == &then).then_some(())
    })
    .await;
}

/// An encrypted pair: (mac, its events, browser, its events).
pub(crate) async fn secure_pair(
    mac_urls: &[String],
    browser_urls: &[String],
) -> (Client, Events, Client, Events) {
    let (mac, mut mac_ev, code, _) = host(mac_urls).await;
    let (browser, mut browser_ev) = Client::browser(config(browser_urls), code.to_lowercase());
    encrypted(&mut browser_ev, "browser", Event::Joined).await;
    encrypted(&mut mac_ev, "mac", Event::PeerJoined).await;
    (mac, mac_ev, browser, browser_ev)
}

/// The next data event.
pub(crate) async fn data(ev: &mut Events, who: &str) -> Data {
    until(ev, &format!("{who}: data"), |e| match e {
        Event::Data(d) => Some(d.clone()),
        _ => None,
    })
    .await
}

/// How the client ended.
pub(crate) async fn ended(ev: &mut Events, who: &str) -> Ended {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, ev.next())
            .await
            .unwrap_or_else(|_| panic!("{who}: no end in time"))
            .unwrap_or_else(|| panic!("{who}: events stopped without Ended"));
        if let Event::Ended(why) = e {
            return why;
        }
    }
}

#[tokio::test]
async fn encrypted_clients_pair_and_exchange_data_verbatim_both_ways() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    let (mac, mut mac_ev, code, page) = host(&url).await;
    // The full code: six relay characters, a dash, five secret ones.
    assert_eq!(code.len(), 12, "{code}");
    assert_eq!(&code[6..7], "-");
    assert!(page.ends_with('/'), "{page}");
    let (browser, mut browser_ev) = Client::browser(config(&url), code.clone());
    encrypted(&mut browser_ev, "browser", Event::Joined).await;
    encrypted(&mut mac_ev, "mac", Event::PeerJoined).await;

    let text = "héllo {\"type\":\"data\"} \u{0} end";
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0, 1]).collect();
    mac.send_text(text).await.unwrap();
    mac.send_binary(Bytes::from(bytes.clone())).await.unwrap();
    mac.send_text("").await.unwrap();
    mac.send_binary(Bytes::new()).await.unwrap();
    assert_eq!(
        data(&mut browser_ev, "browser").await,
        Data::Text(text.into())
    );
    assert_eq!(
        data(&mut browser_ev, "browser").await,
        Data::Binary(bytes.clone().into())
    );
    assert_eq!(
        data(&mut browser_ev, "browser").await,
        Data::Text(String::new())
    );
    assert_eq!(
        data(&mut browser_ev, "browser").await,
        Data::Binary(Bytes::new())
    );
    browser
        .send_binary(Bytes::from(bytes.clone()))
        .await
        .unwrap();
    browser.send_text(text).await.unwrap();
    assert_eq!(data(&mut mac_ev, "mac").await, Data::Binary(bytes.into()));
    assert_eq!(data(&mut mac_ev, "mac").await, Data::Text(text.into()));

    // A clean end: the browser hears the mac's end frame, so no truncation.
    mac.leave().await;
    let mut unfinished = false;
    let why = loop {
        match browser_ev.next().await {
            Some(Event::Unfinished) => unfinished = true,
            Some(Event::Ended(why)) => break why,
            Some(_) => {}
            None => panic!("no end"),
        }
    };
    assert_eq!(why, Ended::MacDisconnected);
    assert!(
        !unfinished,
        "a mac that left with its end frame is not a truncation"
    );
    // The relay never saw the plaintext: it logged none of it.
    assert!(!relay.logged("héllo"));
}

#[tokio::test]
async fn a_link_with_the_code_in_its_fragment_joins_encrypted() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    let (mac, mut mac_ev, code, page) = host(&url).await;
    let link = format!("{page}#{code}");
    let (_browser, mut browser_ev) = Client::browser(config(&url), link);
    encrypted(&mut browser_ev, "browser", Event::Joined).await;
    encrypted(&mut mac_ev, "mac", Event::PeerJoined).await;
    mac.send_text("via the link").await.unwrap();
    assert_eq!(
        data(&mut browser_ev, "browser").await,
        Data::Text("via the link".into())
    );
}

#[tokio::test]
async fn a_wrong_secret_fails_on_both_sides_and_the_session_ends() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    let (_mac, mut mac_ev, code, _) = host(&url).await;
    // The relay code is right; the secret part is not.
    let last = code.chars().last().unwrap();
    let other = if last == '3' { '4' } else { '3' };
    let wrong = format!("{}{other}", &code[..code.len() - 1]);
    let (_browser, mut browser_ev) = Client::browser(config(&url), wrong);
    let b = ended(&mut browser_ev, "browser").await;
    let m = ended(&mut mac_ev, "mac").await;
    assert_eq!(b, Ended::CodeMismatch);
    assert_eq!(m, Ended::CodeMismatch);
    assert_eq!(m.to_string(), MISMATCH);
    assert_eq!(MISMATCH, "the code was mistyped or someone else tried it");
    // The mac left: the code is gone, one guess per code.
    let (_late, mut late_ev) = Client::browser(config(&url), code);
    match ended(&mut late_ev, "late browser").await {
        Ended::Refused { code, .. } => assert_eq!(code, relay_protocol::ErrorCode::InvalidCode),
        other => panic!("the right code after a failed guess: {other}"),
    }
}

#[tokio::test]
async fn a_browser_given_only_the_relay_code_is_told_to_type_the_whole_code() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    let (_mac, mut mac_ev, code, _) = host(&url).await;
    let (_browser, mut browser_ev) = Client::browser(secure(&url), code[..6].to_owned());
    let b = ended(&mut browser_ev, "browser").await;
    assert!(
        matches!(&b, Ended::NotEncrypted(m) if m.contains("whole code")),
        "{b}"
    );
    let m = ended(&mut mac_ev, "mac").await;
    assert!(
        matches!(&m, Ended::NotEncrypted(s) if s.contains("first part of the code")),
        "{m}"
    );
}

#[tokio::test]
async fn an_encrypted_mac_refuses_a_browser_that_does_not_encrypt() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    let (_mac, mut mac_ev, code, _) = host(&url).await;
    // A client written to the original protocol, given the six characters.
    let mut old = relay.browser().await;
    old.json(json!({"type": "join", "code": &code[..6]})).await;
    old.expect("joined").await;
    // What it shows its person is the hello, whose note says what happened.
    let hello = old.expect("data").await;
    let payload: serde_json::Value =
        serde_json::from_str(hello["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["e2e"], "relay-e2e/1");
    assert!(
        payload["note"]
            .as_str()
            .unwrap()
            .contains("end-to-end encrypted"),
        "{payload}"
    );
    old.data("hello?").await;
    let m = ended(&mut mac_ev, "mac").await;
    assert!(
        matches!(&m, Ended::NotEncrypted(s) if s.contains("does not use end-to-end encryption")),
        "{m}"
    );
}

#[tokio::test]
async fn a_full_code_refuses_a_mac_that_does_not_encrypt_sending_nothing_in_clear() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    let (mac, mut mac_ev) = Client::mac(config(&url));
    let code = until(&mut mac_ev, "registered", |e| match e {
        Event::Registered { code, .. } => Some(code.clone()),
        _ => None,
    })
    .await;
    let (_browser, mut browser_ev) = Client::browser(config(&url), format!("{code}-K7P3X"));
    until(&mut mac_ev, "peer joined", |e| {
        matches!(e, Event::PeerJoined).then_some(())
    })
    .await;
    mac.send_text("plain hello").await.unwrap();
    let b = ended(&mut browser_ev, "browser").await;
    assert!(
        matches!(&b, Ended::NotEncrypted(s) if s.contains("mac does not use")),
        "{b}"
    );
    // Only the browser's abort reached the mac before it left, never
    // application data.
    let mut got = Vec::new();
    until(&mut mac_ev, "the browser leaving", |e| match e {
        Event::Data(Data::Text(t)) => {
            got.push(t.clone());
            None
        }
        Event::Data(d) => panic!("the browser sent {d:?}"),
        Event::PeerLeft(_) => Some(()),
        _ => None,
    })
    .await;
    assert!(got.iter().all(|t| t.contains("\"abort\"")), "{got:?}");
}

#[tokio::test]
async fn a_mac_whose_handle_is_dropped_leaves_with_its_end_frame() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    let (mac, _mac_ev, _browser, mut browser_ev) = secure_pair(&url, &url).await;
    mac.send_text("last words").await.unwrap();
    drop(mac);
    let mut seen = Vec::new();
    let why = loop {
        match crate::client::until(&mut browser_ev, "the end", |e| Some(e.clone())).await {
            Event::Ended(why) => break why,
            e => seen.push(e),
        }
    };
    assert_eq!(why, Ended::MacDisconnected);
    assert!(
        seen.contains(&Event::Data(Data::Text("last words".into()))),
        "{seen:?}"
    );
    assert!(!seen.contains(&Event::Unfinished), "{seen:?}");
}

#[tokio::test]
async fn a_full_code_gives_up_on_a_mac_that_never_starts_the_exchange() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    // A mac written to the original protocol that sends nothing.
    let mut old = relay.mac().await;
    old.json(json!({"type": "register"})).await;
    let code = old.expect("registered").await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut c = config(&url);
    c.e2e_timeout = std::time::Duration::from_millis(500);
    let (_browser, mut browser_ev) = Client::browser(c, format!("{code}-K7P3X"));
    let b = ended(&mut browser_ev, "browser").await;
    assert!(
        matches!(&b, Ended::NotEncrypted(s) if s.contains("did not start the key exchange")),
        "{b}"
    );
    // It told the mac why (abort timeout) and left.
    old.expect("peer_joined").await;
    let abort = old.expect("data").await;
    assert!(
        abort["payload"].as_str().unwrap().contains("\"timeout\""),
        "{abort}"
    );
    old.expect("peer_left").await;
}
