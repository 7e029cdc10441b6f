//! Encrypted sessions across relay nodes sharing a real Redis: what Redis
//! carries (recorded with `MONITOR`) and what every node logs hold none of
//! the plaintext, and a node killed mid-stream loses nothing: the sealed
//! frames' numbers stay the relay's across the resume.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use relay_protocol::client::{Client, Data, Event, State};

use super::{data, secure_pair};
use crate::client::{config, kill_node_1_mid_stream, until};
use crate::support::WAIT;
use crate::support::cluster::Cluster;

/// Everything a Redis `MONITOR` prints, recorded by a thread until dropped.
struct Monitor {
    seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Monitor {
    fn start(port: u16) -> Monitor {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s.write_all(b"MONITOR\r\n").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (keep, done) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !done.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => keep.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        });
        let m = Monitor { seen, stop };
        // MONITOR answers +OK before it prints commands.
        let deadline = std::time::Instant::now() + WAIT;
        while !m.holds("OK") {
            assert!(
                std::time::Instant::now() < deadline,
                "MONITOR did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// Whether the recording holds `needle` as it is, or in the escaped
    /// form `MONITOR` prints bytes in.
    fn holds(&self, needle: &str) -> bool {
        let seen = self.seen.lock().unwrap();
        let text = String::from_utf8_lossy(&seen);
        text.contains(needle)
    }

    async fn wait_for(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.holds(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "MONITOR never showed {needle:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn redis_and_the_logs_see_none_of_an_encrypted_sessions_plaintext() {
    let c = Cluster::start(2, &[("RELAY_LOG", "relay=trace,info")]);
    let monitor = Monitor::start(c.redis.port());
    let (n1, n2) = ([c.node(1).url("")], [c.node(2).url("")]);

    // An encrypted pair across the two nodes: every frame goes through Redis.
    let secret_text = format!("SECRET-TEXT-{}", std::process::id());
    let secret_bytes = format!("SECRET-BYTES-{}", std::process::id());
    let (mac, mut mac_ev, browser, mut browser_ev) = secure_pair(&n1, &n2).await;
    for _ in 0..3 {
        mac.send_text(&secret_text).await.unwrap();
        browser.send_text(&secret_text).await.unwrap();
        mac.send_binary(Bytes::from(secret_bytes.clone()))
            .await
            .unwrap();
        browser
            .send_binary(Bytes::from(secret_bytes.clone()))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        assert_eq!(
            data(&mut browser_ev, "browser").await,
            Data::Text(secret_text.clone())
        );
        assert_eq!(
            data(&mut browser_ev, "browser").await,
            Data::Binary(Bytes::from(secret_bytes.clone()))
        );
        assert_eq!(
            data(&mut mac_ev, "mac").await,
            Data::Text(secret_text.clone())
        );
        assert_eq!(
            data(&mut mac_ev, "mac").await,
            Data::Binary(Bytes::from(secret_bytes.clone()))
        );
    }

    // The control: a plain pair across the same nodes, whose text Redis
    // does carry. Once it shows, everything before it was recorded too.
    let control = format!("PLAIN-CONTROL-{}", std::process::id());
    let (plain_mac, mut plain_mac_ev) = Client::mac(config(&n1));
    let code = until(&mut plain_mac_ev, "registered", |e| match e {
        Event::Registered { code, .. } => Some(code.clone()),
        _ => None,
    })
    .await;
    let (_plain_browser, mut plain_browser_ev) = Client::browser(config(&n2), code);
    until(&mut plain_mac_ev, "peer joined", |e| {
        matches!(e, Event::PeerJoined).then_some(())
    })
    .await;
    plain_mac.send_text(&control).await.unwrap();
    assert_eq!(
        data(&mut plain_browser_ev, "plain browser").await,
        Data::Text(control.clone())
    );
    monitor.wait_for(&control).await;

    for needle in [&secret_text, &secret_bytes] {
        assert!(!monitor.holds(needle), "Redis carried {needle}");
        for n in 1..=2 {
            assert!(!c.node(n).logged(needle), "node {n} logged {needle}");
        }
    }
}

#[tokio::test]
async fn a_node_killed_mid_stream_loses_no_sealed_frame() {
    let mut c = Cluster::start(3, &[("RELAY_RESUME_BUFFER_FRAMES", "100000")]);
    let (n1, n2, n3) = (c.node(1).url(""), c.node(2).url(""), c.node(3).url(""));
    // The mac tries node 1 first and falls back to node 2; the browser is on node 3.
    let (mac, mac_ev, browser, browser_ev) = secure_pair(&[n1, n2.clone()], &[n3, n2]).await;
    // A sealed frame that did not open would end the client instead.
    let (_, got_mac) = kill_node_1_mid_stream(&mut c, mac, mac_ev, browser, browser_ev).await;
    assert!(
        got_mac
            .iter()
            .any(|e| matches!(e, Event::State(State::Reconnecting { .. }))),
        "{got_mac:?}"
    );
}
