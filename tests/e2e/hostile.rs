//! A hostile relay stand-in: a WebSocket proxy between the browser and a
//! real relay that alters, drops, reorders, replays or cuts the mac's sealed
//! frames on their way. The browser must notice each and stop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use relay_protocol::client::{Client, Data, Ended, Event};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use super::{encrypted, host};
use crate::client::config;
use crate::support::Relay;

/// What the stand-in does to the mac's sealed (binary) frames.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Flips a bit of the second.
    Flip,
    /// Drops the second.
    Drop,
    /// Swaps the second and the third.
    Reorder,
    /// Sends the second twice.
    Replay,
    /// Drops every frame from the third on (the mac's end frame too).
    Truncate,
    /// Writes a `data` text frame of its own after the first.
    Inject,
}

/// Starts the stand-in in front of `relay`; returns its address.
async fn stand_in(relay: SocketAddr, attack: Attack) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(carry(tcp, relay, attack));
        }
    });
    addr
}

/// Carries one connection, attacking the relay-to-client direction.
async fn carry(tcp: tokio::net::TcpStream, relay: SocketAddr, attack: Attack) {
    let path = Arc::new(Mutex::new(String::new()));
    let seen = Arc::clone(&path);
    // The signature is tungstenite's; its error type is large by design.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| {
        *seen.lock().unwrap() = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(client) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let url = format!("ws://{relay}{}", path.lock().unwrap());
    let Ok((upstream, _)) = tokio_tungstenite::connect_async(url).await else {
        return;
    };
    let (mut to_client, mut from_client) = client.split();
    let (mut to_relay, mut from_relay) = upstream.split();
    let up = async move {
        while let Some(Ok(m)) = from_client.next().await {
            if matches!(m, Message::Ping(_) | Message::Pong(_)) {
                continue;
            }
            if to_relay.send(m).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut sealed = 0u32;
        let mut held: Option<Message> = None;
        while let Some(Ok(m)) = from_relay.next().await {
            // Pings are the stand-in's own business with the relay.
            if matches!(m, Message::Ping(_) | Message::Pong(_)) {
                continue;
            }
            let mut out = vec![m.clone()];
            if let Message::Binary(b) = &m {
                sealed += 1;
                out = match (attack, sealed) {
                    (Attack::Flip, 2) => {
                        let mut v = b.to_vec();
                        let last = v.len() - 1;
                        v[last] ^= 0x01;
                        vec![Message::binary(v)]
                    }
                    (Attack::Drop, 2) => vec![],
                    (Attack::Reorder, 2) => {
                        held = Some(m.clone());
                        vec![]
                    }
                    (Attack::Reorder, 3) => vec![m.clone(), held.take().unwrap()],
                    (Attack::Replay, 2) => vec![m.clone(), m.clone()],
                    (Attack::Truncate, n) if n >= 3 => vec![],
                    (Attack::Inject, 1) => vec![
                        m.clone(),
                        Message::text(r#"{"type":"data","payload":"from the relay"}"#),
                    ],
                    _ => out,
                };
            }
            for m in out {
                if to_client.send(m).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::join!(up, down);
}

/// Pairs an encrypted mac with a browser behind the stand-in, sends four
/// numbered frames from the mac, and returns what the browser received and
/// how it ended.
async fn attacked(attack: Attack) -> (Vec<u8>, Vec<Event>, Ended) {
    let relay = Relay::start(&[]);
    let direct = [format!("ws://{}", relay.addr)];
    let proxied = [format!("ws://{}", stand_in(relay.addr, attack).await)];
    let (mac, mut mac_ev, code, _) = host(&direct).await;
    let (_browser, mut browser_ev) = Client::browser(config(&proxied), code);
    encrypted(&mut browser_ev, "browser", Event::Joined).await;
    encrypted(&mut mac_ev, "mac", Event::PeerJoined).await;
    for i in 1..=4u8 {
        mac.send_binary(Bytes::from(vec![i])).await.unwrap();
    }
    let mut got = Vec::new();
    let mut others = Vec::new();
    let why = loop {
        let e =
            crate::client::until(&mut browser_ev, "the browser's end", |e| Some(e.clone())).await;
        match e {
            Event::Data(Data::Binary(b)) => {
                got.extend_from_slice(&b);
                if got.len() == 2 && matches!(attack, Attack::Truncate) {
                    // Whatever the mac sends now is cut, its end frame too.
                    mac.leave().await;
                }
            }
            Event::Ended(why) => break why,
            e => others.push(e),
        }
    };
    (got, others, why)
}

fn tampered(why: &Ended) -> bool {
    matches!(why, Ended::Tampered(s) if s.contains("does not open"))
}

#[tokio::test]
async fn a_flipped_bit_is_caught() {
    let (got, _, why) = attacked(Attack::Flip).await;
    assert_eq!(got, [1]);
    assert!(tampered(&why), "{why}");
}

#[tokio::test]
async fn a_dropped_frame_is_caught() {
    let (got, _, why) = attacked(Attack::Drop).await;
    assert_eq!(got, [1]);
    assert!(tampered(&why), "{why}");
}

#[tokio::test]
async fn reordered_frames_are_caught() {
    let (got, _, why) = attacked(Attack::Reorder).await;
    assert_eq!(got, [1]);
    assert!(tampered(&why), "{why}");
}

#[tokio::test]
async fn a_replayed_frame_is_caught() {
    let (got, _, why) = attacked(Attack::Replay).await;
    assert_eq!(got, [1, 2]);
    assert!(tampered(&why), "{why}");
}

#[tokio::test]
async fn a_cut_end_is_reported_as_unfinished() {
    let (got, others, why) = attacked(Attack::Truncate).await;
    assert_eq!(got, [1, 2]);
    assert_eq!(why, Ended::MacDisconnected);
    assert!(
        others.contains(&Event::Unfinished),
        "the missing end frame is told: {others:?}"
    );
}

#[tokio::test]
async fn text_injected_in_clear_is_caught() {
    let (got, _, why) = attacked(Attack::Inject).await;
    assert_eq!(got, [1]);
    assert!(
        matches!(&why, Ended::Tampered(s) if s.contains("in clear")),
        "{why}"
    );
}
