//! The Rust client library (relay_protocol::client) against real relay
//! processes: pairing, data in order, reconnects it makes itself, a node
//! killed mid-stream, its bounded queue, refusals, a relay restarted under a
//! mac, and wrong addresses.

use std::time::Duration;

use bytes::Bytes;
use relay_protocol::ErrorCode;
use relay_protocol::client::{
    Client, Config, Data, Ended, Event, Events, SendError, State, UrlError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::cluster::Cluster;
use crate::support::{Relay, WAIT};

/// The next event that `pick` accepts, skipping the others (bounded wait).
pub(crate) async fn until<T>(
    events: &mut Events,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} in time"))
            .unwrap_or_else(|| panic!("events ended before {what}"));
        if let Some(t) = pick(&ev) {
            return t;
        }
        if let Event::Ended(e) = ev {
            panic!("ended ({e}) before {what}");
        }
    }
}

pub(crate) fn config(urls: &[String]) -> Config {
    let mut c = Config::new(urls[0].clone());
    c.urls = urls.to_vec();
    // Tests should not wait a whole second between tries.
    c.backoff.first = Duration::from_millis(100);
    c.backoff.cap = Duration::from_millis(500);
    c.ping_every = Duration::from_millis(200);
    c
}

/// A mac and a browser client, paired.
async fn paired(mac_urls: &[String], browser_urls: &[String]) -> (Client, Events, Client, Events) {
    let (mac, mut mac_ev) = Client::mac(config(mac_urls));
    let code = until(&mut mac_ev, "registered", |e| match e {
        Event::Registered { code, .. } => Some(code.clone()),
        _ => None,
    })
    .await;
    let (browser, mut browser_ev) = Client::browser(config(browser_urls), code.to_lowercase());
    until(&mut browser_ev, "joined", |e| {
        matches!(e, Event::Joined).then_some(())
    })
    .await;
    until(&mut mac_ev, "peer_joined", |e| {
        matches!(e, Event::PeerJoined).then_some(())
    })
    .await;
    (mac, mac_ev, browser, browser_ev)
}

/// Sends `from..=to` as binary frames carrying their number.
/// Both sides send 2,000 numbered frames while node 1, the mac's, is killed
/// 400 frames in; returns what the browser and the mac heard once each got
/// all 2,000 (`recv_seq` fails on a frame lost, duplicated or out of order)
/// and checks the mac resumed.
pub(crate) async fn kill_node_1_mid_stream(
    c: &mut Cluster,
    mac: Client,
    mut mac_ev: Events,
    browser: Client,
    mut browser_ev: Events,
) -> (Vec<Event>, Vec<Event>) {
    let (tx, mut rx) = tokio::sync::watch::channel(0u32);
    let mac_side = async {
        send_seq(&mac, 1, 400).await;
        let _ = tx.send(1);
        send_seq(&mac, 401, 2000).await;
    };
    let browser_side = async {
        send_seq(&browser, 1, 2000).await;
    };
    let killer = async {
        // Kill the mac's node once the stream is going.
        let _ = rx.wait_for(|v| *v == 1).await;
        c.kill(1);
    };
    let (_, _, _, got_browser, got_mac) = tokio::join!(
        mac_side,
        browser_side,
        killer,
        recv_seq(&mut browser_ev, 2000, "browser"),
        recv_seq(&mut mac_ev, 2000, "mac"),
    );
    assert!(
        got_mac.iter().any(|e| matches!(e, Event::Resumed)),
        "the mac resumed: {got_mac:?}"
    );
    (got_browser, got_mac)
}

async fn send_seq(c: &Client, from: u32, to: u32) {
    for i in from..=to {
        loop {
            match c.send_binary(Bytes::from(i.to_be_bytes().to_vec())).await {
                Ok(()) => break,
                // While reconnecting the queue may fill up: wait for room.
                Err(SendError::Full(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("send {i}: {e}"),
            }
        }
        if i % 32 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// Receives frames until `n` came, checking each is the next number.
async fn recv_seq(events: &mut Events, n: u32, who: &str) -> Vec<Event> {
    let mut next = 1u32;
    let mut others = Vec::new();
    while next <= n {
        let ev = until(events, &format!("{who}: frame {next}"), |e| Some(e.clone())).await;
        match ev {
            Event::Data(Data::Binary(b)) => {
                let got = u32::from_be_bytes(b[..4].try_into().unwrap());
                assert_eq!(got, next, "{who}: lost, duplicated or reordered");
                next += 1;
            }
            other => others.push(other),
        }
    }
    others
}

#[tokio::test]
async fn clients_pair_exchange_in_order_and_leave() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    let (mac, mut mac_ev, browser, mut browser_ev) = paired(&url, &url).await;
    assert_eq!(mac.state(), State::Connected);
    mac.send_text("hello browser").await.unwrap();
    let got = until(&mut browser_ev, "text", |e| match e {
        Event::Data(Data::Text(t)) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(got, "hello browser");
    let (_, _, others) = tokio::join!(send_seq(&mac, 1, 500), send_seq(&browser, 1, 500), async {
        let a = recv_seq(&mut browser_ev, 500, "browser").await;
        let b = recv_seq(&mut mac_ev, 500, "mac").await;
        (a, b)
    });
    assert!(
        others
            .0
            .iter()
            .chain(&others.1)
            .all(|e| matches!(e, Event::Latency(_))),
        "{others:?}"
    );
    // Pings every 200 ms measure the round trip.
    let deadline = tokio::time::Instant::now() + WAIT;
    while mac.latency().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no latency measured"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.leave().await;
    until(&mut browser_ev, "ended", |e| {
        matches!(e, Event::Ended(Ended::Left)).then_some(())
    })
    .await;
    until(&mut mac_ev, "peer_left", |e| {
        matches!(e, Event::PeerLeft(_)).then_some(())
    })
    .await;
    // No peer now: sending says so at once.
    assert_eq!(mac.send_text("anyone?").await, Err(SendError::NotPaired));
    mac.leave().await;
    until(&mut mac_ev, "ended", |e| {
        matches!(e, Event::Ended(Ended::Left)).then_some(())
    })
    .await;
    assert_eq!(mac.state(), State::Disconnected);
}

#[tokio::test]
async fn a_manual_reconnect_resumes_with_nothing_lost() {
    let relay = Relay::start(&[]);
    let url = [format!("ws://{}", relay.addr)];
    let (mac, mut mac_ev, browser, mut browser_ev) = paired(&url, &url).await;
    let flow = async {
        send_seq(&mac, 1, 300).await;
        browser.reconnect().await;
        send_seq(&mac, 301, 600).await;
    };
    let (_, others) = tokio::join!(flow, recv_seq(&mut browser_ev, 600, "browser"));
    assert!(
        others.iter().any(|e| matches!(e, Event::Resumed)),
        "{others:?}"
    );
    // The mac saw its peer go and come back, or nothing at all (a quick takeover).
    let _ = &mut mac_ev;
}

#[tokio::test]
async fn a_node_killed_mid_stream_is_ridden_out_with_nothing_lost() {
    let mut c = Cluster::start(3, &[("RELAY_RESUME_BUFFER_FRAMES", "100000")]);
    let (n1, n2, n3) = (c.node(1).url(""), c.node(2).url(""), c.node(3).url(""));
    // The mac tries node 1 first and falls back to node 2; the browser is on node 3.
    let (mac, mac_ev, browser, browser_ev) = paired(&[n1, n2.clone()], &[n3, n2]).await;
    let (got_browser, got_mac) =
        kill_node_1_mid_stream(&mut c, mac, mac_ev, browser, browser_ev).await;
    // The browser hears peer_disconnected then peer_resumed, or nothing when
    // the mac resumed before the cluster noticed its node died.
    let heard: Vec<&Event> = got_browser
        .iter()
        .filter(|e| matches!(e, Event::PeerDisconnected | Event::PeerResumed))
        .collect();
    assert!(
        heard.is_empty() || heard == [&Event::PeerDisconnected, &Event::PeerResumed],
        "{got_browser:?}"
    );
    assert!(
        got_mac
            .iter()
            .any(|e| matches!(e, Event::State(State::Reconnecting { .. }))),
        "{got_mac:?}"
    );
}

#[tokio::test]
async fn the_queue_while_reconnecting_is_bounded_with_a_clear_error() {
    let mut relay = Some(Relay::start(&[]));
    let url = [format!("ws://{}", relay.as_ref().unwrap().addr)];
    let (mac, mut mac_ev, _browser, _bev) = paired(&url, &url).await;
    // The relay goes away: the mac keeps queueing until the bound.
    drop(relay.take());
    until(&mut mac_ev, "reconnecting", |e| {
        matches!(e, Event::State(State::Reconnecting { .. })).then_some(())
    })
    .await;
    let mut sent = 0;
    let err = loop {
        match mac.send_text("queued").await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= 1000, "the queue took more than its bound");
    };
    assert!(matches!(err, SendError::Full(_)), "{err}");
    assert!(err.to_string().contains("queue is full"), "{err}");
    assert_eq!(sent, 1000);
}

#[tokio::test]
async fn refusals_end_the_session_with_the_error_code() {
    let relay = Relay::start(&[]);
    let (_b, mut ev) = Client::browser(config(&[format!("ws://{}", relay.addr)]), "333333");
    let code = until(&mut ev, "refusal", |e| match e {
        Event::Ended(Ended::Refused { code, .. }) => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::InvalidCode);
}

#[tokio::test]
async fn a_capped_client_gives_up_and_says_so() {
    let mut cfg = config(&["ws://127.0.0.1:1".to_owned()]);
    cfg.max_retries = Some(2);
    let (c, mut ev) = Client::mac(cfg);
    let mut retries = Vec::new();
    let states: Vec<State> = {
        let mut seen = Vec::new();
        loop {
            let e = tokio::time::timeout(WAIT, ev.next())
                .await
                .unwrap()
                .unwrap();
            match e {
                Event::State(s) => seen.push(s),
                Event::Retrying {
                    attempt,
                    delay,
                    cause,
                } => retries.push((attempt, delay, cause)),
                Event::Ended(Ended::GaveUp(n)) => {
                    assert_eq!(n, 2);
                    break seen;
                }
                other => panic!("{other:?}"),
            }
        }
    };
    // Each retry says how long it waits (100 ms then 200 ms, ± 25 %) and why.
    assert_eq!(retries.len(), 2, "{retries:?}");
    for ((attempt, delay, cause), (n, base)) in retries.iter().zip([(1, 100.0), (2, 200.0)]) {
        assert_eq!(*attempt, n);
        let ms = delay.as_secs_f64() * 1000.0;
        assert!((base * 0.75..=base * 1.25).contains(&ms), "{delay:?}");
        assert_eq!(cause, "connection refused at ws://127.0.0.1:1/mac");
    }
    assert_eq!(
        states,
        [
            State::Reconnecting { attempt: 1 },
            State::Reconnecting { attempt: 2 },
            State::Disconnected
        ]
    );
    assert_eq!(c.state(), State::Disconnected);
}

#[tokio::test]
async fn a_mac_registers_again_when_the_relay_lost_its_session() {
    let relay = Relay::start(&[]);
    let addr = relay.addr;
    let url = [format!("ws://{addr}")];
    let (mac, mut mac_ev, _old, mut old_ev) = paired(&url, &url).await;

    // A single node forgets its sessions when it dies; a new one takes the port.
    drop(relay);
    let listen = addr.to_string();
    let _relay = Relay::start(&[("RELAY_LISTEN", listen.as_str())]);

    let lost = until(&mut mac_ev, "session_lost", |e| match e {
        Event::SessionLost { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(lost, ErrorCode::InvalidResume);
    let (code, page) = until(&mut mac_ev, "registered again", |e| match e {
        Event::Registered { code, page, .. } => Some((code.clone(), page.clone())),
        _ => None,
    })
    .await;
    assert_eq!(page, format!("http://{addr}/"));
    // The browser cannot get a new code by itself: it ends.
    let refused = until(&mut old_ev, "refusal", |e| match e {
        Event::Ended(Ended::Refused { code, .. }) => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(refused, ErrorCode::InvalidResume);

    let (_browser, mut browser_ev) = Client::browser(config(&url), code);
    until(&mut browser_ev, "joined", |e| {
        matches!(e, Event::Joined).then_some(())
    })
    .await;
    until(&mut mac_ev, "peer_joined", |e| {
        matches!(e, Event::PeerJoined).then_some(())
    })
    .await;
    mac.send_text("new session").await.unwrap();
    let got = until(&mut browser_ev, "text", |e| match e {
        Event::Data(Data::Text(t)) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(got, "new session");
}

#[tokio::test]
async fn without_reregistering_a_lost_session_ends_the_mac() {
    let relay = Relay::start(&[]);
    let addr = relay.addr;
    let url = [format!("ws://{addr}")];
    let mut cfg = config(&url);
    cfg.reregister_on_lost_session = false;
    let (_mac, mut mac_ev) = Client::mac(cfg);
    until(&mut mac_ev, "registered", |e| {
        matches!(e, Event::Registered { .. }).then_some(())
    })
    .await;
    drop(relay);
    let listen = addr.to_string();
    let _relay = Relay::start(&[("RELAY_LISTEN", listen.as_str())]);
    let refused = until(&mut mac_ev, "refusal", |e| match e {
        Event::SessionLost { .. } => panic!("registered again though told not to"),
        Event::Ended(Ended::Refused { code, .. }) => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(refused, ErrorCode::InvalidResume);
}

/// Runs a mac against `url` and returns how it ended, failing on any retry.
async fn ends_without_retrying(url: &str) -> Ended {
    let (_c, mut ev) = Client::mac(config(&[url.to_owned()]));
    until(&mut ev, "the end", |e| match e {
        Event::Retrying { cause, .. } => panic!("{url}: retried ({cause})"),
        Event::Ended(why) => Some(why.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_wrong_address_ends_the_client_at_once() {
    let relay = Relay::start(&[]);
    let root = format!("ws://{}", relay.addr);
    match ends_without_retrying(&format!("{root}/nothing/here")).await {
        Ended::BadUrl(UrlError::NotFound { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    match ends_without_retrying(&format!("{root}/mac")).await {
        Ended::BadUrl(UrlError::RolePath { suggest, .. }) => assert_eq!(suggest, root),
        other => panic!("{other:?}"),
    }
    match ends_without_retrying("mailto:someone").await {
        Ended::BadUrl(UrlError::NoScheme { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// Answers every connection on `listener` with HTTP 404, like a proxy
/// between deploys.
async fn answer_404(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            // Read the upgrade request first, so the answer is not cut by a reset.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let _ = s
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        });
    }
}

#[tokio::test]
async fn after_a_first_connection_an_http_404_is_retried() {
    let relay = Relay::start(&[]);
    let addr = relay.addr;
    let url = [format!("ws://{addr}")];
    let (_mac, mut mac_ev) = Client::mac(config(&url));
    until(&mut mac_ev, "registered", |e| {
        matches!(e, Event::Registered { .. }).then_some(())
    })
    .await;
    // The address worked: a 404 now is the infrastructure, not a typo.
    drop(relay);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("take the relay's port");
    let server = tokio::spawn(answer_404(listener));
    let cause = until(&mut mac_ev, "a retry after a 404", |e| match e {
        Event::Retrying { cause, .. } if cause.contains("HTTP 404") => Some(cause.clone()),
        _ => None,
    })
    .await;
    assert!(cause.contains("/mac"), "{cause}");
    server.abort();
}
