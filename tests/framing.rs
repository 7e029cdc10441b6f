//! WebSocket framing over real sockets, byte by byte where it matters: the
//! relay reads and writes frames itself once it took the connection over
//! from the HTTP layer, so what Autobahn's cases check (fragmentation,
//! control frames between fragments, close handshake, reserved bits, length
//! encodings) is checked here against the relay process.

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::bad_input::{Raw, request};
use crate::support::Relay;

/// A masked client frame, as bytes.
fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

fn register() -> Vec<u8> {
    json!({"type": "register"}).to_string().into_bytes()
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_read() {
    let relay = Relay::start(&[]);
    let mut r = Raw::connect(relay.addr).await;
    let mut bytes = request("/mac", "13").into_bytes();
    bytes.extend(masked(true, 1, &register()));
    r.send(&bytes).await;
    let head = r.http_head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(r.json().await["type"], "registered");
}

#[tokio::test]
async fn a_fragmented_message_with_a_ping_inside_arrives_byte_by_byte() {
    let relay = Relay::start(&[]);
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    r.s.set_nodelay(true).unwrap();
    let text = register();
    let mut bytes = masked(false, 1, &text[..5]);
    bytes.extend(masked(true, 9, b"between"));
    bytes.extend(masked(false, 0, &text[5..9]));
    bytes.extend(masked(true, 0, &text[9..]));
    for b in bytes {
        r.s.write_all(&[b]).await.unwrap();
        r.s.flush().await.unwrap();
    }
    // The ping is answered at once, with its payload; the message follows.
    assert_eq!(r.read_frame().await, Some((10, b"between".to_vec())));
    assert_eq!(r.json().await["type"], "registered");
}

#[tokio::test]
async fn framing_that_breaks_the_protocol_closes_with_1002() {
    let relay = Relay::start(&[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a new message inside a fragmented one", {
            let mut b = masked(false, 1, b"{\"ty");
            b.extend(masked(true, 1, b"{}"));
            b
        }),
        ("a reserved bit set", {
            let mut b = masked(true, 1, b"{}");
            b[0] |= 0x40;
            b
        }),
        ("a ping over 125 bytes", masked(true, 9, &[7; 126])),
        (
            "a fragmented close",
            masked(false, 8, &1000u16.to_be_bytes()),
        ),
    ];
    for (what, bytes) in cases {
        let mut r = Raw::upgrade(relay.addr, "/mac").await;
        r.send(&bytes).await;
        assert_eq!(r.close_code().await, Some(1002), "{what}");
    }
}

#[tokio::test]
async fn the_close_handshake_echoes_the_code_and_ends_the_connection() {
    let relay = Relay::start(&[]);
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    r.frame(true, 8, &close, true).await;
    assert_eq!(
        r.read_frame().await.map(|(op, p)| (op, p[..2].to_vec())),
        Some((8, close[..2].to_vec()))
    );
    // Then the relay closes the TCP connection.
    assert_eq!(r.read_frame().await, None);

    // The relay's own close (here the handshake timeout): the client echoes,
    // and the connection ends.
    let quick = Relay::start(&[("RELAY_HANDSHAKE_TIMEOUT", "300ms")]);
    let mut r = Raw::upgrade(quick.addr, "/mac").await;
    let (op, payload) = r.read_frame().await.expect("a close frame");
    assert_eq!((op, &payload[..2]), (8, &1008u16.to_be_bytes()[..]));
    r.frame(true, 8, &payload[..2], true).await;
    assert_eq!(r.read_frame().await, None);
}

/// The next binary frame, skipping the relay's pings and text events.
async fn next_binary(r: &mut Raw) -> Vec<u8> {
    loop {
        match r.read_frame().await.expect("a frame") {
            (2, p) => return p,
            (1 | 9 | 10, _) => continue,
            (op, p) => panic!("unexpected opcode {op}: {p:?}"),
        }
    }
}

#[tokio::test]
async fn binary_messages_of_every_length_encoding_cross_intact() {
    let relay = Relay::start(&[]);
    let mut mac = Raw::upgrade(relay.addr, "/mac").await;
    mac.frame(true, 1, &register(), true).await;
    let code = mac.json().await["code"].as_str().unwrap().to_owned();
    let mut browser = Raw::upgrade(relay.addr, "/browser").await;
    let join = json!({"type": "join", "code": code}).to_string();
    browser.frame(true, 1, join.as_bytes(), true).await;
    assert_eq!(browser.json().await["type"], "joined");
    assert_eq!(mac.json().await["type"], "peer_joined");
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 300_000] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        // One way as a single frame, the other in fragments.
        mac.frame(true, 2, &data, true).await;
        assert_eq!(
            next_binary(&mut browser).await,
            data,
            "{len} bytes to the browser"
        );
        let half = len / 2;
        browser.frame(false, 2, &data[..half], true).await;
        browser.frame(true, 0, &data[half..], true).await;
        assert_eq!(next_binary(&mut mac).await, data, "{len} bytes to the mac");
    }
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_its_answer() {
    let relay = Relay::start(&[]);
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    r.frame(true, 1, &register(), true).await;
    // The client is done sending (FIN) but still reads.
    r.s.shutdown().await.unwrap();
    assert_eq!(r.json().await["type"], "registered");
    // Then the relay closes its side too.
    while r.read_frame().await.is_some() {}
}
