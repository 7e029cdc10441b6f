//! Resume over HTTP, and a client switching WebSocket -> HTTP -> WebSocket
//! mid-stream: numbered frames both ways prove nothing is lost, duplicated
//! or reordered.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::client::{Http, Mode, base, binary};
use crate::support::{Got, Pair, Relay, WAIT, Ws, pair, register, resume_msg};

/// A frame carrying `seq`, its length varying with it.
fn frame(seq: u64) -> Vec<u8> {
    let mut b = seq.to_be_bytes().to_vec();
    b.resize(8 + (seq as usize * 37) % 900, (seq % 251) as u8);
    b
}

fn seq_of(b: &[u8]) -> u64 {
    let seq = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    assert_eq!(b, frame(seq), "frame {seq} arrived altered");
    seq
}

/// Either transport, as the switching browser holds it.
enum Side {
    Ws(Box<Ws>),
    Http(Box<Http>),
}

impl Side {
    async fn recv(&mut self) -> Got {
        match self {
            Side::Ws(ws) => ws.recv().await,
            Side::Http(h) => h.recv().await,
        }
    }

    async fn json(&mut self, v: Value) {
        match self {
            Side::Ws(ws) => ws.json(v).await,
            Side::Http(h) => h.json(v).await,
        }
    }

    async fn send_frames(&mut self, from: u64, to: u64) {
        match self {
            Side::Ws(ws) => {
                for s in from..=to {
                    ws.binary(frame(s)).await;
                }
            }
            Side::Http(h) => {
                let seqs: Vec<u64> = (from..=to).collect();
                for chunk in seqs.chunks(7) {
                    h.send(chunk.iter().map(|s| binary(&frame(*s))).collect())
                        .await;
                }
            }
        }
    }

    /// Reads data frames until `upto` arrived, checking each is the next.
    async fn read_until(&mut self, got: &mut u64, upto: u64) {
        while *got < upto {
            match self.recv().await {
                Got::Binary(b) => {
                    let seq = seq_of(&b);
                    assert_eq!(seq, *got + 1, "frames in order, once each");
                    *got = seq;
                }
                Got::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    assert!(
                        ["resumed", "peer_disconnected", "peer_resumed"]
                            .contains(&v["type"].as_str().unwrap_or("")),
                        "{v}"
                    );
                }
                other => panic!("after frame {got}: {other:?}"),
            }
        }
    }

    /// Resumes the browser on this side; returns the relay's `lastSeq`.
    async fn resume(&mut self, session: &str, token: &str, got: u64) -> u64 {
        self.json(resume_msg(session, token, got)).await;
        loop {
            if let Got::Text(t) = self.recv().await {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["type"] == "resumed" {
                    return v["lastSeq"].as_u64().expect("lastSeq");
                }
                panic!("expected resumed, got {v}");
            }
        }
    }
}

/// The mac: sends `total` frames as fast as the relay takes them and
/// collects what the browser sends, checking the order.
async fn run_mac(ws: Ws, total: u64, expect_back: u64) -> u64 {
    let (mut tx, mut rx) = ws.into_inner().split();
    let sender = tokio::spawn(async move {
        for s in 1..=total {
            tx.send(Message::binary(frame(s))).await.expect("mac sends");
        }
        tx
    });
    let mut got = 0;
    while got < expect_back {
        let m = tokio::time::timeout(WAIT * 2, rx.next())
            .await
            .unwrap_or_else(|_| panic!("mac got only {got} of {expect_back}"))
            .expect("open")
            .expect("ok");
        match m {
            Message::Binary(b) => {
                let seq = seq_of(&b);
                assert_eq!(seq, got + 1, "browser frames in order, once each");
                got = seq;
            }
            Message::Close(c) => panic!("mac closed {c:?}"),
            _ => {}
        }
    }
    let _tx = sender.await.expect("sender");
    got
}

#[tokio::test]
async fn a_browser_switches_websocket_http_websocket_mid_stream_and_loses_nothing() {
    let relay = Relay::start(&[]);
    let p = pair(&relay).await;
    switch_mid_stream(p, &[base(relay.addr)], &relay.url("/browser")).await;
}

/// The browser of `p` reads numbered frames on its WebSocket, switches to
/// HTTP (requests to each of `http` in turn), then to a WebSocket at
/// `ws_back`, sending numbered frames of its own all along.
pub async fn switch_mid_stream(p: Pair, http: &[String], ws_back: &str) {
    let (session, token) = (p.session_id.clone(), p.browser_token.clone());
    const TOTAL: u64 = 1200;
    let mac = tokio::spawn(run_mac(p.mac, TOTAL, 90));

    let mut got = 0u64;
    let mut sent = 0u64;
    let mut side = Side::Ws(Box::new(p.browser));
    side.read_until(&mut got, 100).await;
    side.send_frames(1, 30).await;
    sent = sent.max(30);

    // To HTTP, by stream: a takeover of the WebSocket that still looks open.
    let mut http = Side::Http(Box::new(
        Http::open_over(http, "browser", Mode::Stream).await,
    ));
    let accepted = http.resume(&session, &token, got).await;
    match std::mem::replace(&mut side, http) {
        Side::Ws(mut old) => assert_eq!(old.until_closed().await, Some(4001)),
        Side::Http(_) => unreachable!(),
    }
    side.send_frames(accepted + 1, sent).await;
    side.send_frames(sent + 1, 60).await;
    sent = 60;
    side.read_until(&mut got, 700).await;

    // Back to a WebSocket: the virtual connection is replaced (4001).
    let mut ws = Side::Ws(Box::new(Ws::connect(ws_back).await));
    let accepted = ws.resume(&session, &token, got).await;
    let old = std::mem::replace(&mut side, ws);
    let Side::Http(mut old) = old else {
        unreachable!()
    };
    loop {
        match old.recv().await {
            Got::Close(Some((code, _))) => {
                assert_eq!(code, 4001);
                break;
            }
            Got::Ended => break,
            _ => {}
        }
    }
    let (status, body) = old.send_batch(vec![]).await;
    assert_eq!((status, &body["close"]), (410, &json!(4001)), "{body}");
    side.send_frames(accepted + 1, sent).await;
    side.send_frames(sent + 1, 90).await;
    side.read_until(&mut got, TOTAL).await;
    assert_eq!(mac.await.expect("mac"), 90);
}

#[tokio::test]
async fn an_http_browser_resumes_on_a_new_virtual_connection_by_long_poll() {
    let relay = Relay::start(&[]);
    let mut reg = register(&relay).await;
    let b = base(relay.addr);
    let mut browser = Http::open(&b, "browser", Mode::Poll).await;
    browser
        .json(json!({"type": "join", "code": reg.code}))
        .await;
    let joined = browser.expect("joined").await;
    let token = joined["resumeToken"].as_str().expect("token").to_owned();
    reg.ws.expect("peer_joined").await;
    for s in 1..=50 {
        reg.ws.binary(frame(s)).await;
    }
    let mut side = Side::Http(Box::new(browser));
    let mut got = 0;
    side.read_until(&mut got, 20).await;
    side.send_frames(1, 10).await;
    for s in 1..=10 {
        assert_eq!(reg.ws.recv().await, Got::Binary(frame(s)));
    }

    // The browser's network changes: a new virtual connection resumes.
    let mut again = Side::Http(Box::new(Http::open(&b, "browser", Mode::Poll).await));
    let accepted = again.resume(&reg.session_id, &token, got).await;
    assert_eq!(accepted, 10);
    again.read_until(&mut got, 50).await;
    again.send_frames(11, 20).await;
    for s in 11..=20 {
        assert_eq!(reg.ws.recv().await, Got::Binary(frame(s)));
    }
    // The mac was told nothing was lost: a takeover needs no grace period.
    reg.ws.json(json!({"type": "ping", "ts": 9})).await;
    loop {
        let v = reg.ws.recv_json().await;
        if v["type"] == "pong" {
            break;
        }
    }
}
