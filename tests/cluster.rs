//! The cluster: relay nodes sharing a real Redis, clients on different nodes
//! and behind a real haproxy. Each test starts its own Redis and nodes
//! (`support::cluster`); the contract is shared/PROTOCOL.md's "Cluster" part.
//!
//! Helpers shared by the cluster tests live here: data frames that carry a
//! sequence number, so a test can tell a lost, duplicated or reordered frame.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Stream, WAIT};

mod balancer;
mod failover;
mod fixtures;
mod pairing;
mod probe;
mod prometheus;
mod resume;
mod rooms;
mod sentinel;
mod tls;

/// A binary data frame carrying `seq`, padded to a length that varies with it.
pub fn seq_frame(seq: u64) -> Message {
    let mut b = seq.to_be_bytes().to_vec();
    b.resize(8 + (seq as usize * 37) % 900, (seq % 251) as u8);
    Message::binary(b)
}

/// The sequence number of a [`seq_frame`], checking its length.
pub fn seq_of(m: &[u8]) -> u64 {
    let seq = u64::from_be_bytes(m[..8].try_into().expect("8 bytes of seq"));
    assert_eq!(
        m.len(),
        8 + (seq as usize * 37) % 900,
        "frame {seq} has the wrong length"
    );
    seq
}

/// Sends the [`seq_frame`]s `from..=to`.
pub async fn send_range(tx: &mut SplitSink<Stream, Message>, from: u64, to: u64) {
    for seq in from..=to {
        tx.send(seq_frame(seq)).await.expect("send");
        if seq % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// Reads until `count` data frames came in; returns their seqs and the control
/// messages seen. Each control message's type is also published on `events`
/// as it arrives, so other tasks can wait for it.
pub async fn collect(
    rx: &mut SplitStream<Stream>,
    count: usize,
    events: Option<&watch::Sender<Vec<String>>>,
) -> (Vec<u64>, Vec<Value>) {
    let mut seqs = Vec::new();
    let mut seen = Vec::new();
    while seqs.len() < count {
        let m = tokio::time::timeout(WAIT, rx.next())
            .await
            .unwrap_or_else(|_| {
                let mut ranges: Vec<(u64, u64)> = Vec::new();
                for &s in &seqs {
                    match ranges.last_mut() {
                        Some((_, e)) if *e + 1 == s => *e = s,
                        _ => ranges.push((s, s)),
                    }
                }
                panic!(
                    "only {} of {count} frames came (runs: {ranges:?}; control messages: {seen:?})",
                    seqs.len()
                )
            })
            .expect("open")
            .expect("ok");
        match m {
            Message::Binary(b) => seqs.push(seq_of(&b)),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if let Some(tx) = events {
                    let ty = v["type"].as_str().unwrap_or("").to_owned();
                    tx.send_modify(|e| e.push(ty));
                }
                seen.push(v);
            }
            Message::Close(c) => panic!("closed {c:?} after {} frames", seqs.len()),
            _ => {}
        }
    }
    (seqs, seen)
}

/// Waits until `event` was published on `events` (fails after [`WAIT`]).
pub async fn wait_event(events: &mut watch::Receiver<Vec<String>>, event: &str) {
    tokio::time::timeout(WAIT, events.wait_for(|e| e.iter().any(|t| t == event)))
        .await
        .unwrap_or_else(|_| panic!("no {event} in time"))
        .expect("event publisher alive");
}

/// Asserts `seqs` is exactly `1..=n`.
pub fn assert_sequence(seqs: &[u64], n: u64, who: &str) {
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(
            *s,
            i as u64 + 1,
            "{who}: frame {} should be {} (lost, duplicated or reordered)",
            s,
            i + 1
        );
    }
    assert_eq!(seqs.len() as u64, n, "{who}: frame count");
}
