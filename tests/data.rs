//! Data frames: relayed verbatim, in order, both ways at once.

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Relay, Stream, WAIT, pair};

/// Frames of random kinds and sizes; text ones are `data` messages with odd payloads.
fn frames(seed: u64, n: usize) -> Vec<Message> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            if rng.random_bool(0.5) {
                let len = rng.random_range(0..=16 * 1024);
                let mut b = vec![0u8; len];
                rng.fill(&mut b[..]);
                Message::binary(b)
            } else {
                let len = rng.random_range(0..=2048);
                let payload: String = (0..len)
                    .map(|_| match rng.random_range(0..6) {
                        0 => '"',
                        1 => 'é',
                        2 => '\n',
                        3 => '😀',
                        _ => rng.random_range('a'..='z'),
                    })
                    .collect();
                // Extra fields and spacing must survive too: the relay does not re-encode.
                Message::text(format!(
                    "{{ \"type\" : \"data\", \"payload\": {}, \"n\": {i} }}",
                    json!(payload)
                ))
            }
        })
        .collect()
}

/// `n` binary frames of random sizes up to 64 KiB.
fn bulk_frames(seed: u64, n: usize) -> Vec<Message> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut b = vec![0u8; rng.random_range(0..=64 * 1024)];
            rng.fill(&mut b[..]);
            Message::binary(b)
        })
        .collect()
}

/// Sends both lists at once through a fresh pair, each side reading
/// everything the other sends, and checks both got them verbatim, in order.
async fn exchange(relay: &Relay, to_browser: Vec<Message>, to_mac: Vec<Message>) {
    let p = pair(relay).await;
    let (mut mac_tx, mac_rx) = p.mac.into_inner().split();
    let (mut browser_tx, browser_rx) = p.browser.into_inner().split();

    let send_mac = {
        let frames = to_browser.clone();
        async move {
            for f in frames {
                mac_tx.send(f).await.expect("mac sends");
            }
            mac_tx
        }
    };
    let send_browser = {
        let frames = to_mac.clone();
        async move {
            for f in frames {
                browser_tx.send(f).await.expect("browser sends");
            }
            browser_tx
        }
    };
    let recv = |expected: Vec<Message>, mut rx: futures_util::stream::SplitStream<Stream>| async move {
        for (i, want) in expected.into_iter().enumerate() {
            let got = loop {
                let m = tokio::time::timeout(WAIT, rx.next())
                    .await
                    .expect("frame in time")
                    .expect("stream open")
                    .expect("frame ok");
                if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
                    break m;
                }
            };
            assert!(
                got == want,
                "frame {i} differs: got {} bytes, want {} bytes",
                got.len(),
                want.len()
            );
        }
        rx
    };
    let (_, _, _, _) = tokio::join!(
        send_mac,
        send_browser,
        recv(to_browser, browser_rx),
        recv(to_mac, mac_rx)
    );
}

#[tokio::test]
async fn a_thousand_frames_of_random_sizes_both_ways_verbatim_in_order() {
    let relay = Relay::start(&[]);
    let to_browser = frames(1, 1000);
    let to_mac = frames(2, 1000);
    let total: usize = to_browser.iter().chain(&to_mac).map(Message::len).sum();
    exchange(&relay, to_browser, to_mac).await;
    assert!(
        relay
            .metric("relay_bytes_relayed_total{path=\"local\"}")
            .await as usize
            >= total / 2
    );
    assert_eq!(
        relay
            .metric("relay_frames_relayed_total{path=\"local\"}")
            .await,
        2000.0
    );
}

/// Both sides send bulk data at once, far more than the backlog either way,
/// each reading everything the other sends: flow control paces both senders
/// and never stops both, and nobody is cut (the one-node twin of the
/// cross-node test in tests/cluster/pairing.rs).
#[tokio::test]
async fn bulk_both_ways_at_once_never_stalls() {
    // Each side's acknowledgements (pongs) queue behind its own paused
    // sending, so what sits unacknowledged is everything in kernel buffers
    // on both ends: here up to 4 MiB sent and 32 MiB received
    // (net.ipv4.tcp_wmem / tcp_rmem), past the 32 MiB hard cap of the
    // default RELAY_MAX_BUFFERED on a loaded machine. 16 MiB puts the cap
    // (64 MiB) above what the kernel can hold (design.md, Known limits).
    let relay = Relay::start(&[("RELAY_MAX_BUFFERED", "16MiB")]);
    exchange(&relay, bulk_frames(3, 1000), bulk_frames(4, 1000)).await;
    assert_eq!(
        relay
            .metric("relay_disconnects_total{reason=\"slow_consumer\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn empty_and_limit_sized_frames_pass() {
    let relay = Relay::start(&[("RELAY_MAX_FRAME", "128KiB")]);
    let mut p = pair(&relay).await;
    p.mac.binary(Vec::new()).await;
    p.mac.binary(vec![0xAB; 128 * 1024]).await;
    p.browser.text(r#"{"type":"data","payload":""}"#).await;
    use crate::support::Got;
    assert_eq!(p.browser.recv().await, Got::Binary(Vec::new()));
    assert_eq!(p.browser.recv().await, Got::Binary(vec![0xAB; 128 * 1024]));
    assert_eq!(
        p.mac.recv().await,
        Got::Text(r#"{"type":"data","payload":""}"#.into())
    );
}

#[tokio::test]
async fn a_fast_sender_is_paced_to_a_slow_reader_without_loss() {
    // 48 MiB through a relay that may buffer 4 MiB for a reader: the sender
    // must be held back (flow control), not the reader cut.
    let relay = Relay::start(&[
        ("RELAY_MAX_BUFFERED", "4MiB"),
        ("RELAY_HEARTBEAT_TIMEOUT", "2s"),
    ]);
    let p = pair(&relay).await;
    const FRAMES: u32 = 768;
    let (mut tx, _mac_rx) = p.mac.into_inner().split();
    let (_btx, mut rx) = p.browser.into_inner().split();
    let sender = tokio::spawn(async move {
        for i in 0..FRAMES {
            let mut frame = vec![0u8; 64 * 1024];
            frame[..4].copy_from_slice(&i.to_be_bytes());
            tx.send(Message::binary(frame)).await.expect("send");
        }
        tx
    });
    let mut next = 0u32;
    while next < FRAMES {
        let m = tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("frame in time")
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = m {
            assert_eq!(u32::from_be_bytes(b[..4].try_into().unwrap()), next);
            next += 1;
            if next % 8 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
    let _tx = sender.await.unwrap();
    assert_eq!(
        relay
            .metric("relay_disconnects_total{reason=\"slow_consumer\"}")
            .await,
        0.0
    );
}
