//! Bad input at the HTTP and WebSocket level: each gets a clear answer and
//! leaves the relay serving, with bounded memory.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Got, Relay, WAIT, pair};

/// A hand-driven client, for frames no WebSocket library would send.
pub(crate) struct Raw {
    pub(crate) s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub(crate) async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    /// Connects and upgrades to a WebSocket on `path`.
    pub(crate) async fn upgrade(addr: SocketAddr, path: &str) -> Raw {
        let mut r = Raw::connect(addr).await;
        r.send(request(path, "13").as_bytes()).await;
        let head = r.http_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        r
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    pub(crate) async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(WAIT, self.s.read(&mut chunk))
            .await
            .expect("data in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The response head (status line and headers).
    pub(crate) async fn http_head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 4);
                return head;
            }
            if !self.fill().await {
                return String::from_utf8_lossy(&self.buf).into_owned();
            }
        }
    }

    /// Sends one client frame (masked unless `masked` is false).
    pub(crate) async fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        let len = payload.len();
        if len < 126 {
            out.push(m | len as u8);
        } else if len < 65536 {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.send(&out).await;
    }

    /// The next server frame: (opcode, payload), or None when the connection ended.
    pub(crate) async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let len7 = (self.buf[1] & 0x7f) as usize;
                let (len, start) = match len7 {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next text frame as JSON (skipping pings).
    pub(crate) async fn json(&mut self) -> Value {
        loop {
            let (op, p) = self.read_frame().await.expect("a frame");
            match op {
                1 => return serde_json::from_slice(&p).expect("JSON"),
                9 | 10 => continue,
                other => panic!("expected text, got opcode {other}: {p:?}"),
            }
        }
    }

    /// Reads until a close frame (its code) or the end of the connection (None).
    pub(crate) async fn close_code(&mut self) -> Option<u16> {
        while let Some((op, p)) = self.read_frame().await {
            if op == 8 {
                return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
            }
        }
        None
    }
}

pub(crate) fn request(path: &str, version: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

/// The status code of an HTTP response head; 0 for none.
fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn still_serving(relay: &Relay) {
    assert_eq!(relay.get("/healthz").await.0, 200);
    let mut m = relay.mac().await;
    m.json(json!({"type": "register"})).await;
    m.expect("registered").await;
}

#[tokio::test]
async fn garbage_bytes_and_malformed_upgrades_get_http_errors() {
    let relay = Relay::start(&[]);
    let cases: Vec<Vec<u8>> = vec![
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
        (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        b"GET /mac HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_vec(),
        request("/mac", "8").into_bytes(),
        request("/browser", "banana").into_bytes(),
        b"POST /mac HTTP/1.1\r\nHost: relay\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        b"GET /mac HTTP/9.9\r\n\r\n".to_vec(),
    ];
    for bytes in cases {
        let mut r = Raw::connect(relay.addr).await;
        r.send(&bytes).await;
        let head = r.http_head().await;
        let status = status_of(&head);
        assert!(
            (400..500).contains(&status) || head.is_empty(),
            "{:?} got {head:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
        );
    }
    still_serving(&relay).await;
}

#[tokio::test]
async fn an_http_request_that_never_completes_is_cut() {
    let relay = Relay::start(&[("RELAY_HANDSHAKE_TIMEOUT", "300ms")]);
    let mut r = Raw::connect(relay.addr).await;
    r.send(b"GET /mac HTTP/1.1\r\nHost: rel").await;
    // The relay answers 408 or just closes; either way the connection ends.
    let head = r.http_head().await;
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 408"),
        "{head}"
    );
    while r.fill().await {}
    still_serving(&relay).await;
}

#[tokio::test]
async fn invalid_utf8_text_is_an_invalid_message_and_the_socket_goes_on() {
    let relay = Relay::start(&[]);
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    r.frame(true, 1, &[0xc3, 0x28, 0xff], true).await;
    let v = r.json().await;
    assert_eq!(v["code"], "INVALID_MESSAGE");
    assert!(v["message"].as_str().unwrap().contains("UTF-8"));
    // Fragmented text whose UTF-8 is split across fragments is fine...
    let text = r#"{"type":"register","clientId":"é"}"#.as_bytes();
    let cut = text.iter().position(|b| *b == 0xc3).unwrap() + 1;
    r.frame(false, 1, &text[..cut], true).await;
    r.frame(true, 0, &text[cut..], true).await;
    assert_eq!(r.json().await["type"], "registered");
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_harm() {
    let relay = Relay::start(&[]);
    let mut m = relay.mac().await;
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    m.text(nested).await;
    m.expect_error("INVALID_MESSAGE").await;
    let nested_obj = format!(
        r#"{{"type":"register","clientId":{}1{}}}"#,
        "{\"a\":".repeat(5000),
        "}".repeat(5000)
    );
    m.text(nested_obj).await;
    m.expect_error("INVALID_MESSAGE").await;
    m.json(json!({"type": "register"})).await;
    m.expect("registered").await;
}

#[tokio::test]
async fn a_frame_announcing_a_terabyte_is_refused_before_it_arrives() {
    let relay = Relay::start(&[]);
    let before = relay.rss_bytes();
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    // Header only: binary, 64-bit length of 1 TiB, masked.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    r.send(&header).await;
    assert_eq!(r.json().await["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(r.close_code().await, Some(1009));
    assert!(
        relay.rss_bytes() < before + (64 << 20),
        "no allocation for the announced size"
    );
    still_serving(&relay).await;
}

#[tokio::test]
async fn a_huge_fragmented_message_is_refused() {
    let relay = Relay::start(&[("RELAY_MAX_FRAME", "64KiB")]);
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    let chunk = vec![b'a'; 30 * 1024];
    r.frame(false, 1, &chunk, true).await;
    r.frame(false, 0, &chunk, true).await;
    r.frame(false, 0, &chunk, true).await;
    assert_eq!(r.json().await["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(r.close_code().await, Some(1009));
}

#[tokio::test]
async fn broken_framing_closes_with_1002() {
    let relay = Relay::start(&[]);
    // A client frame without a mask.
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    r.frame(true, 2, b"hi", false).await;
    assert_eq!(r.close_code().await, Some(1002));
    // A fragmented ping (control frames cannot be fragmented).
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    r.frame(false, 9, b"p", true).await;
    assert_eq!(r.close_code().await, Some(1002));
    // A reserved opcode.
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    r.frame(true, 3, b"?", true).await;
    assert_eq!(r.close_code().await, Some(1002));
    // A continuation with nothing to continue.
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    r.frame(true, 0, b"?", true).await;
    assert_eq!(r.close_code().await, Some(1002));
    still_serving(&relay).await;
}

#[tokio::test]
async fn close_codes_from_clients_are_checked() {
    let relay = Relay::start(&[]);
    for (sent, echoed) in [
        (999u16, 1002u16),
        (1005, 1002),
        (1006, 1002),
        (5000, 1002),
        (4100, 4100),
        (1001, 1001),
    ] {
        let mut r = Raw::upgrade(relay.addr, "/mac").await;
        r.frame(true, 8, &sent.to_be_bytes(), true).await;
        assert_eq!(r.close_code().await, Some(echoed), "client sent {sent}");
    }
    // A close with a one-byte payload is malformed framing.
    let mut r = Raw::upgrade(relay.addr, "/mac").await;
    r.frame(true, 8, &[3], true).await;
    assert_eq!(r.close_code().await, Some(1002));
    still_serving(&relay).await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_and_memory_stays_bounded() {
    // The stall time is the heartbeat timeout: how long a client over the
    // limit may go without reading anything before it is cut.
    let relay = Relay::start(&[
        ("RELAY_MAX_BUFFERED", "1MiB"),
        ("RELAY_HEARTBEAT_TIMEOUT", "500ms"),
    ]);
    let p = pair(&relay).await;
    let before = relay.rss_bytes();
    let silent_browser = p.browser; // never read from here on
    let (mut tx, mut rx) = p.mac.into_inner().split();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, rx.next()).await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                let ty = v["type"].as_str().unwrap().to_owned();
                if ty == "error" {
                    assert_eq!(v["code"], "NOT_PAIRED", "{v}");
                }
                let done = ty == "peer_left";
                seen.push(ty);
                if done {
                    break;
                }
            }
        }
        seen
    });
    // Push up to 256 MiB at the browser; the relay must cut it long before.
    let frame = vec![0x5a; 64 * 1024];
    for _ in 0..4096 {
        if watcher.is_finished() {
            break;
        }
        if tx.send(Message::binary(frame.clone())).await.is_err() {
            break;
        }
    }
    // Frames sent after the browser's side ended are refused with NOT_PAIRED,
    // which may come before or after the events.
    let seen = watcher.await.unwrap();
    let events: Vec<&String> = seen.iter().filter(|t| *t != "error").collect();
    assert_eq!(events, ["peer_disconnected", "peer_left"], "{seen:?}");
    let grown = relay.rss_bytes().saturating_sub(before);
    assert!(
        grown < 96 << 20,
        "relay grew by {} MiB for one slow client",
        grown >> 20
    );

    // The silent browser, reading at last, finds its connection closed (1013, or cut).
    let mut b = silent_browser;
    let code = b.until_closed().await;
    assert!(matches!(code, Some(1013) | None), "{code:?}");
    let cut = relay
        .metric("relay_disconnects_total{reason=\"slow_consumer\"}")
        .await;
    assert_eq!(cut, 1.0);
    drop(tx);
    still_serving(&relay).await;
}

#[tokio::test]
async fn paths_other_than_the_endpoints_are_refused() {
    let relay = Relay::start(&[]);
    for path in ["/", "/mac/extra", "/MAC", "/browser?x=1/../mac", "/%00"] {
        let mut r = Raw::connect(relay.addr).await;
        r.send(request(path, "13").as_bytes()).await;
        let head = r.http_head().await;
        if path.starts_with("/browser?") {
            // A query string does not change the path.
            assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
        } else {
            assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head}");
        }
    }
    let _ = Got::Ended;
}

#[tokio::test]
async fn a_browser_that_vanishes_right_after_join_is_noticed() {
    let relay = Relay::start(&[("RELAY_GRACE", "300ms")]);
    // The reset may reach the relay before or after it reads the join; try
    // until the join went through, which is the case under test.
    for attempt in 1..=20 {
        let mut r = crate::support::register(&relay).await;
        let mut raw = Raw::upgrade(relay.addr, "/browser").await;
        raw.frame(
            true,
            1,
            json!({"type": "join", "code": r.code})
                .to_string()
                .as_bytes(),
            true,
        )
        .await;
        raw.s.set_zero_linger().unwrap();
        drop(raw); // reset, possibly before the relay answered the join
        relay
            .wait_metric("relay_connections_open{role=\"browser\"}", |v| v == 0.0)
            .await;
        if relay.metric("relay_joins_total{result=\"ok\"}").await == 0.0 {
            r.ws.close(1000).await;
            continue;
        }
        r.ws.expect("peer_joined").await;
        r.ws.expect("peer_disconnected").await;
        assert_eq!(r.ws.expect("peer_left").await["reason"], "timeout");
        eprintln!("join went through on attempt {attempt}");
        return;
    }
    panic!("the join never reached the relay before the reset");
}

#[tokio::test]
async fn compression_is_never_negotiated() {
    // No permessage-deflate means no compression bomb: a frame's size on
    // the wire is its size in memory, and RELAY_MAX_FRAME bounds both.
    let relay = Relay::start(&[]);
    let mut r = Raw::connect(relay.addr).await;
    let req = request("/mac", "13").replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    );
    r.send(req.as_bytes()).await;
    let head = r.http_head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    // A frame with RSV1 set (a compressed frame) is broken framing.
    r.send(&[0xc1, 0x82, 0, 0, 0, 0, b'h', b'i']).await;
    assert_eq!(r.close_code().await, Some(1002));
    still_serving(&relay).await;
}

/// A WebSocket upgrade request for `path`, padded with `X-Pad-<n>` headers of
/// `each` bytes (the last one shorter) to exactly `total` bytes.
pub fn padded_upgrade(path: &str, total: usize, each: usize) -> String {
    let mut head = request(path, "13");
    head.truncate(head.len() - 2);
    for i in 0.. {
        let room = total - head.len() - 2;
        if room == 0 {
            break;
        }
        // Leave the last line room for at least its name.
        let len = if room >= each + 32 { each } else { room };
        let name = format!("X-Pad-{i}: ");
        head += &format!("{name}{}\r\n", "a".repeat(len - name.len() - 2));
    }
    head += "\r\n";
    assert_eq!(head.len(), total);
    head
}

/// Sends `req` on a fresh connection; the status, and whether the relay then
/// closed the connection (only asked of refusals: an upgrade stays open).
async fn answer(relay: &Relay, req: &str) -> (u16, bool) {
    let mut r = Raw::connect(relay.addr).await;
    r.send(req.as_bytes()).await;
    let status = status_of(&r.http_head().await);
    if status == 101 {
        return (status, false);
    }
    while r.fill().await {}
    (status, true)
}

#[tokio::test]
async fn request_heads_over_16_kib_get_431_and_the_upgrade_too() {
    let relay = Relay::start(&[]);
    // At and under the ceiling the upgrade and the probes are served; the
    // head is measured as sent, so one byte over is refused.
    assert_eq!(
        answer(&relay, &padded_upgrade("/mac", 15 << 10, 4000))
            .await
            .0,
        101
    );
    assert_eq!(
        answer(&relay, &padded_upgrade("/mac", 16 << 10, 4000))
            .await
            .0,
        101
    );
    assert_eq!(
        answer(&relay, &padded_upgrade("/mac", (16 << 10) + 1, 4000)).await,
        (431, true)
    );
    let probe = "GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n";
    let small = format!("{probe}X-Pad: {}\r\n\r\n", "a".repeat(15 << 10));
    assert_eq!(answer(&relay, &small).await.0, 200);
    // 17 KiB as one header, as 70 headers (under actix-http's 96, so the
    // relay's own ceiling), and as 170 (over actix's, which answers 431 too).
    for (each, path) in [(17 << 10, "/mac"), (250, "/browser"), (100, "/mac")] {
        let req = padded_upgrade(path, 17 << 10, each);
        assert_eq!(
            answer(&relay, &req).await,
            (431, true),
            "{each}-byte headers"
        );
    }
    let big = format!("{probe}X-Pad: {}\r\n\r\n", "a".repeat(17 << 10));
    assert_eq!(answer(&relay, &big).await, (431, true));
    still_serving(&relay).await;

    // The ceiling is a setting.
    let roomy = Relay::start(&[("RELAY_MAX_REQUEST_HEAD", "32KiB")]);
    assert_eq!(
        answer(&roomy, &padded_upgrade("/mac", 17 << 10, 250))
            .await
            .0,
        101
    );
    assert_eq!(
        answer(&roomy, &padded_upgrade("/mac", 33 << 10, 4000))
            .await
            .0,
        431
    );
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let relay = Relay::start(&[]);
    // One huge header, then very many small ones; both must be refused
    // before the relay buffers more than a bounded head.
    let huge = format!(
        "GET /mac HTTP/1.1\r\nHost: relay\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let many = format!(
        "GET /mac HTTP/1.1\r\nHost: relay\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    for req in [huge, many] {
        let mut r = Raw::connect(relay.addr).await;
        r.send(req.as_bytes()).await;
        let head = r.http_head().await;
        let status = status_of(&head);
        // actix-http's ceilings (a 128 KiB head, 96 headers) answer these
        // before the relay's own sees a parsed head.
        assert_eq!(status, 431, "{} bytes got {head:?}", req.len());
    }
    still_serving(&relay).await;
}
