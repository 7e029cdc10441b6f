//! The clients' HTTP fallback (issue 14) through a real haproxy that refuses
//! the WebSocket upgrade, as a corporate proxy does: `relay host` and
//! `relay join --url http://HOST` pair and pipe both ways; the library
//! clients carry binary and text verbatim; and a session moves WebSocket →
//! HTTP → WebSocket mid-stream with nothing lost, doubled or reordered; and
//! behind a proxy that buffers whole responses the client long-polls. The HTTP
//! side's requests go round robin over three nodes (no sticky sessions); the
//! WebSocket side is on a fourth.

use std::time::Duration;

use bytes::Bytes;
use relay_protocol::client::{
    Client, Config, Data, Ended, Event, Events, SendError, Transport, TransportMode, UrlError,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::cli::{ErrLines, client, code_in, exit_code, next_line, stderr_line};
use crate::client::{config, until};
use crate::support::buffering::BufferingProxy;
use crate::support::cluster::{Cluster, Lb};

/// A client config for `url` with the transports `mode` and fallback delays
/// short enough for a test (they bound waits, nothing asserts them).
fn over(url: &str, mode: TransportMode) -> Config {
    let mut c = config(&[url.to_owned()]);
    c.transports.mode = mode;
    c.transports.fallback_after = Duration::from_secs(1);
    c.transports.websocket_retry = Duration::from_millis(500);
    c
}

/// Four nodes, the first three behind a round-robin balancer that refuses
/// WebSocket with `block`; node 4 is the WebSocket side's.
fn cluster_behind(block: bool) -> (Cluster, Lb) {
    let c = Cluster::start(4, &[]);
    let lb = if block {
        Lb::start_refusing_websocket(&c.addrs()[..3])
    } else {
        Lb::start_blocking_websocket(&c.addrs()[..3])
    };
    (c, lb)
}

fn blocked_cluster() -> (Cluster, Lb) {
    cluster_behind(true)
}

#[tokio::test]
async fn cli_host_and_join_pair_through_a_proxy_that_refuses_websocket() {
    let (_c, lb) = blocked_cluster();
    let url = lb.base();
    let mut host = client(&["host", "--url", &url]);
    let mut host_err: ErrLines = BufReader::new(host.stderr.take().unwrap()).lines();
    let line = stderr_line(&mut host_err, "on the HTTP fallback").await;
    assert!(line.contains("refused with HTTP 403"), "{line}");
    let code = code_in(&stderr_line(&mut host_err, "code ").await);

    let mut join = client(&["join", "--url", &url, &code]);
    let mut join_err: ErrLines = BufReader::new(join.stderr.take().unwrap()).lines();
    stderr_line(&mut join_err, "on the HTTP fallback").await;
    // End to end encrypted by default: the frames are sealed binary.
    stderr_line(&mut join_err, "end-to-end encrypted").await;
    stderr_line(&mut join_err, "joined").await;
    stderr_line(&mut host_err, "browser joined").await;

    let mut host_in = host.stdin.take().unwrap();
    let mut join_in = join.stdin.take().unwrap();
    let mut host_out = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut join_out = BufReader::new(join.stdout.take().unwrap()).lines();
    host_in
        .write_all(b"hello browser \"q\" \xc3\xa9\n")
        .await
        .unwrap();
    join_in.write_all(b"hello mac\n").await.unwrap();
    assert_eq!(
        next_line(&mut join_out).await.as_deref(),
        Some("hello browser \"q\" \u{e9}")
    );
    assert_eq!(next_line(&mut host_out).await.as_deref(), Some("hello mac"));

    // End of input: the joiner leaves, the host hears it and ends too.
    drop(join_in);
    assert_eq!(exit_code(&mut join).await, 0);
    stderr_line(&mut host_err, "the browser is gone").await;
    assert_eq!(exit_code(&mut host).await, 0);
}

#[tokio::test]
async fn http_is_chosen_by_flag_or_by_relay_transport() {
    // No proxy: HTTP because it was asked for, on two nodes.
    let c = Cluster::start(2, &[]);
    let url = c.node(1).url("");
    let mut host = client(&["host", "--url", &url, "--transport", "http", "--no-e2e"]);
    let mut host_err: ErrLines = BufReader::new(host.stderr.take().unwrap()).lines();
    stderr_line(&mut host_err, "over HTTP (--transport http)").await;
    let code = code_in(&stderr_line(&mut host_err, "code ").await);
    let mut join = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["join", "--url", &c.node(2).url(""), &code])
        .env("RELAY_TRANSPORT", "http")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start relay join");
    let mut join_err: ErrLines = BufReader::new(join.stderr.take().unwrap()).lines();
    stderr_line(&mut join_err, "over HTTP (--transport http)").await;
    stderr_line(&mut join_err, "joined").await;
    let mut host_in = host.stdin.take().unwrap();
    let mut join_out = BufReader::new(join.stdout.take().unwrap()).lines();
    host_in.write_all(b"both sides on HTTP\n").await.unwrap();
    assert_eq!(
        next_line(&mut join_out).await.as_deref(),
        Some("both sides on HTTP")
    );
    drop(host_in);
    assert_eq!(exit_code(&mut host).await, 0);
    assert_eq!(exit_code(&mut join).await, 0);
}

#[tokio::test]
async fn a_websocket_only_cli_says_the_upgrade_was_refused() {
    let (_c, lb) = blocked_cluster();
    let url = lb.base();
    let mut join = client(&["join", "--url", &url, "--transport", "websocket", "333333"]);
    let mut err: ErrLines = BufReader::new(join.stderr.take().unwrap()).lines();
    let line = stderr_line(&mut err, "HTTP 403").await;
    assert!(line.contains("instead of a WebSocket upgrade"), "{line}");
    assert_eq!(exit_code(&mut join).await, 2);

    // A transport the CLI does not know is refused before anything runs.
    let mut bad = client(&["join", "--url", &url, "--transport", "sse", "333333"]);
    let mut err: ErrLines = BufReader::new(bad.stderr.take().unwrap()).lines();
    stderr_line(&mut err, "possible values: auto, websocket, http").await;
    assert_eq!(exit_code(&mut bad).await, 2);
}

/// A mac on node 4 (WebSocket) and a browser at `url` (auto), paired; the
/// browser's transport event.
async fn paired_across(c: &Cluster, url: &str) -> (Client, Events, Client, Events, String) {
    let (mac, mut mac_ev) = Client::mac(config(&[c.node(4).url("")]));
    let code = until(&mut mac_ev, "registered", |e| match e {
        Event::Registered { code, .. } => Some(code.clone()),
        _ => None,
    })
    .await;
    let (browser, mut browser_ev) = Client::browser(over(url, TransportMode::Auto), code);
    let cause = until(&mut browser_ev, "the fallback", |e| match e {
        Event::Transport {
            transport: Transport::Http,
            cause,
        } => Some(cause.clone()),
        _ => None,
    })
    .await;
    until(&mut browser_ev, "joined", |e| {
        matches!(e, Event::Joined).then_some(())
    })
    .await;
    until(&mut mac_ev, "peer_joined", |e| {
        matches!(e, Event::PeerJoined).then_some(())
    })
    .await;
    (mac, mac_ev, browser, browser_ev, cause)
}

#[tokio::test]
async fn library_clients_over_http_carry_binary_and_text_verbatim() {
    let (c, lb) = blocked_cluster();
    let (mac, mut mac_ev, browser, mut browser_ev, cause) = paired_across(&c, &lb.base()).await;
    assert!(cause.contains("HTTP 403"), "{cause}");

    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let text = "line\r\nnext \"quoted\" \\ tab\t \u{1F600} \u{0}";
    let big = vec![0x5a; 200 * 1024];
    browser.send_binary(every_byte.clone()).await.unwrap();
    browser.send_text(text).await.unwrap();
    browser.send_binary(big.clone()).await.unwrap();
    mac.send_binary(every_byte.clone()).await.unwrap();
    mac.send_text(text).await.unwrap();
    mac.send_binary(big.clone()).await.unwrap();
    for (events, who) in [(&mut mac_ev, "mac"), (&mut browser_ev, "browser")] {
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(
                until(events, &format!("{who}: data"), |e| match e {
                    Event::Data(d) => Some(d.clone()),
                    _ => None,
                })
                .await,
            );
        }
        assert_eq!(
            got,
            vec![
                Data::Binary(Bytes::from(every_byte.clone())),
                Data::Text(text.to_owned()),
                Data::Binary(Bytes::from(big.clone())),
            ],
            "{who}"
        );
    }

    // Leaving over HTTP ends the session for the mac as over WebSocket.
    browser.leave().await;
    until(&mut mac_ev, "peer_left", |e| {
        matches!(e, Event::PeerLeft(_)).then_some(())
    })
    .await;
    until(&mut browser_ev, "the end", |e| match e {
        Event::Ended(Ended::Left) => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn a_websocket_only_client_is_refused_where_auto_falls_back() {
    let (_c, lb) = blocked_cluster();
    let (_b, mut ev) = Client::browser(over(&lb.base(), TransportMode::WebSocket), "333333");
    let ended = until(&mut ev, "the end", |e| match e {
        Event::Ended(why) => Some(why.clone()),
        Event::Transport { .. } => panic!("a WebSocket-only client used another transport"),
        _ => None,
    })
    .await;
    assert!(
        matches!(
            ended,
            Ended::BadUrl(UrlError::NotARelay { status: 403, .. })
        ),
        "{ended:?}"
    );
}

/// Sends `from..=to` as binary frames carrying their number, waiting for
/// room while the queue is full.
async fn send_numbered(c: &Client, from: u32, to: u32) {
    for i in from..=to {
        loop {
            match c.send_binary(Bytes::from(i.to_be_bytes().to_vec())).await {
                Ok(()) => break,
                Err(SendError::Full(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("send {i}: {e}"),
            }
        }
        if i % 32 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// Receives numbered frames until `n` came, each the next one; reports
/// every transport change on `transport`.
async fn recv_numbered(
    events: &mut Events,
    n: u32,
    who: &str,
    transport: &watch::Sender<Vec<Transport>>,
) {
    let mut next = 1u32;
    while next <= n {
        match until(events, &format!("{who}: frame {next}"), |e| Some(e.clone())).await {
            Event::Data(Data::Binary(b)) => {
                let got = u32::from_be_bytes(b[..4].try_into().unwrap());
                assert_eq!(got, next, "{who}: lost, duplicated or reordered");
                next += 1;
            }
            Event::Transport { transport: t, .. } => transport.send_modify(|v| v.push(t)),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_switch_websocket_http_websocket_mid_stream_loses_nothing() {
    let (c, lb) = cluster_behind(false);
    let (mac, mut mac_ev) = Client::mac(config(&[c.node(4).url("")]));
    let code = until(&mut mac_ev, "registered", |e| match e {
        Event::Registered { code, .. } => Some(code.clone()),
        _ => None,
    })
    .await;
    // The balancer lets WebSocket through for now.
    let (browser, mut browser_ev) = Client::browser(over(&lb.base(), TransportMode::Auto), code);
    until(&mut browser_ev, "joined", |e| {
        matches!(e, Event::Joined).then_some(())
    })
    .await;
    until(&mut mac_ev, "peer_joined", |e| {
        matches!(e, Event::PeerJoined).then_some(())
    })
    .await;

    const N: u32 = 3000;
    // Phases: 0 on WebSocket, 1 on HTTP, 2 back on WebSocket.
    let (phase_tx, phase_rx) = watch::channel(0u32);
    let (seen_tx, mut seen_rx) = watch::channel(Vec::<Transport>::new());
    let (sent_tx, mut sent_rx) = watch::channel(0u32);
    let sender = |client: Client, mut phase: watch::Receiver<u32>, report: bool| {
        let sent_tx = sent_tx.clone();
        async move {
            send_numbered(&client, 1, 500).await;
            if report {
                let _ = sent_tx.send(1);
            }
            let _ = phase.wait_for(|p| *p >= 1).await;
            send_numbered(&client, 501, 1500).await;
            if report {
                let _ = sent_tx.send(2);
            }
            let _ = phase.wait_for(|p| *p >= 2).await;
            send_numbered(&client, 1501, N).await;
        }
    };
    let switcher = async {
        // Mid-stream: refuse WebSocket and cut the browser's connection; it
        // falls back to HTTP and resumes there.
        let _ = sent_rx.wait_for(|s| *s >= 1).await;
        lb.block_websocket(true);
        let _ = seen_rx.wait_for(|v| v.contains(&Transport::Http)).await;
        let _ = phase_tx.send(1);
        // Mid-stream again: let WebSocket through; a probe takes the
        // session back onto it.
        let _ = sent_rx.wait_for(|s| *s >= 2).await;
        lb.allow_websocket();
        let _ = seen_rx
            .wait_for(|v| v.ends_with(&[Transport::Http, Transport::WebSocket]))
            .await;
        let _ = phase_tx.send(2);
    };
    let (quiet, _) = watch::channel(Vec::new());
    tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(
            sender(mac.clone(), phase_rx.clone(), false),
            sender(browser.clone(), phase_rx.clone(), true),
            switcher,
            recv_numbered(&mut browser_ev, N, "browser", &seen_tx),
            recv_numbered(&mut mac_ev, N, "mac", &quiet),
        )
    })
    .await
    .expect("the stream and both switches finish");
    assert_eq!(
        *seen_rx.borrow(),
        vec![Transport::Http, Transport::WebSocket],
        "the browser moved to HTTP and back"
    );
}

#[tokio::test]
async fn behind_a_proxy_that_buffers_responses_the_client_long_polls() {
    let c = Cluster::start(4, &[]);
    // The proxy holds answers until they are whole and passes no upgrade:
    // the WebSocket fails, and a receive stream would arrive only when it
    // ends (after the relay's 25 s wait, longer than any wait here), so
    // frames coming both ways show the client moved to long polls.
    let proxy = BufferingProxy::start(&c.addrs()[..3]);
    let (mac, mut mac_ev, browser, mut browser_ev, _) = paired_across(&c, &proxy.base()).await;
    let (seen, _) = watch::channel(Vec::new());
    tokio::join!(
        send_numbered(&mac, 1, 200),
        send_numbered(&browser, 1, 200),
        recv_numbered(&mut browser_ev, 200, "browser", &seen),
        recv_numbered(&mut mac_ev, 200, "mac", &seen),
    );
}
