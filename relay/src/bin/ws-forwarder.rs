//! The benchmark's reference: the least a WebSocket relay can do. It speaks
//! just enough of the protocol for `relay-load` (`register` → a code,
//! `join` → paired) and then forwards every frame to the peer, with nothing
//! else: no resume, no buffers beyond a channel, no metrics. What `relay`
//! costs beyond this is the price of its guarantees.
//!
//! Usage: `ws-forwarder [ADDR]` (default 127.0.0.1:9000).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Where to write frames for a connection.
type Outbox = mpsc::Sender<Message>;

/// What a joining browser hands its mac: its outbox, and where to send back the mac's.
type Handshake = (Outbox, oneshot::Sender<Outbox>);

/// Macs waiting for a browser, by code.
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Handshake>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("ws-forwarder listening on {}", listener.local_addr()?);
    let waiting: Waiting = Arc::default();
    let mut next = 0u64;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        next += 1;
        tokio::spawn(serve(tcp, Arc::clone(&waiting), next));
    }
}

// The callback's error type is tungstenite's own response type; it is never built here.
#[allow(clippy::result_large_err)]
async fn serve(tcp: TcpStream, waiting: Waiting, n: u64) {
    let mut path = String::new();
    let accepted = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    })
    .await;
    let Ok(ws) = accepted else { return };
    let (mut tx, mut rx) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(1024);
    // The first text message is `register` or `join`.
    let first = loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => break t.to_string(),
            Some(Ok(_)) => continue,
            _ => return,
        }
    };
    let peer: Outbox = if path == "/mac" {
        let code = format!("{n:06}");
        let (hand_tx, hand_rx) = oneshot::channel();
        waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(code.clone(), hand_tx);
        let reply = format!(
            r#"{{"type":"registered","code":"{code}","expiresAt":0,"sessionId":"s{n}","resumeToken":"t"}}"#
        );
        if tx.send(Message::text(reply)).await.is_err() {
            return;
        }
        let Ok((browser_out, back)) = hand_rx.await else {
            return;
        };
        let _ = back.send(out_tx.clone());
        if tx
            .send(Message::text(r#"{"type":"peer_joined"}"#))
            .await
            .is_err()
        {
            return;
        }
        browser_out
    } else {
        let v: serde_json::Value = serde_json::from_str(&first).unwrap_or_default();
        let code = v["code"].as_str().unwrap_or("").to_uppercase();
        let hand = waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&code);
        let Some(hand) = hand else {
            let refusal = r#"{"type":"error","code":"INVALID_CODE","message":"no such code"}"#;
            let _ = tx.send(Message::text(refusal)).await;
            return;
        };
        let (back_tx, back_rx) = oneshot::channel();
        if hand.send((out_tx.clone(), back_tx)).is_err() {
            return;
        }
        let Ok(mac_out) = back_rx.await else { return };
        let joined = r#"{"type":"joined","sessionId":"s","resumeToken":"t"}"#;
        if tx.send(Message::text(joined)).await.is_err() {
            return;
        }
        mac_out
    };
    // Our outbox to our socket, batching what is waiting into one flush.
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if tx.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = out_rx.try_recv() {
                if tx.feed(m).await.is_err() {
                    return;
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
        }
    });
    // Our socket to the peer's outbox.
    while let Some(Ok(m)) = rx.next().await {
        let forward = match m {
            Message::Binary(_) | Message::Text(_) => m,
            Message::Close(_) => break,
            _ => continue,
        };
        if peer.send(forward).await.is_err() {
            break;
        }
    }
    writer.abort();
}
