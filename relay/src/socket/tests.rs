//! One socket actor in process, with tokio's clock paused: the client speaks
//! real WebSocket frames over an in-memory stream in place of the upgraded
//! connection and reads what the actor writes back. The
//! handshake and heartbeat timers are checked at their exact deadlines.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame, Message};
use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;
use crate::admission::Admission;
use crate::registry::MemoryRegistry;

/// What one test sees of the socket's end of a connection.
#[derive(Debug)]
enum Got {
    Text(Value),
    Ping(Bytes),
    Close(Option<u16>),
}

/// A client of one in-process socket actor.
struct Client {
    to_socket: Option<mpsc::UnboundedSender<Bytes>>,
    /// What the socket wrote.
    from_socket: mpsc::UnboundedReceiver<Bytes>,
    codec: Codec,
    buf: BytesMut,
}

impl Client {
    fn send(&mut self, msg: Message) {
        let mut out = BytesMut::new();
        // unwrap-free: encoding a small message into memory cannot fail.
        self.codec.encode(msg, &mut out).expect("encode");
        if let Some(tx) = &self.to_socket {
            let _ = tx.send(out.freeze());
        }
    }

    fn json(&mut self, v: Value) {
        self.send(Message::Text(v.to_string().into()));
    }

    /// The next frame the socket wrote, if one comes before the clock moves.
    async fn next(&mut self) -> Option<Got> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf).expect("valid framing") {
                return Some(match frame {
                    Frame::Text(t) => Got::Text(serde_json::from_slice(&t).expect("JSON")),
                    Frame::Ping(p) => Got::Ping(p),
                    Frame::Close(r) => Got::Close(r.map(|r| u16::from(r.code))),
                    other => panic!("unexpected {other:?}"),
                });
            }
            // Everything ready runs before a paused clock advances, so a
            // frame not ready by then was not written.
            let chunk = tokio::select! {
                biased;
                c = self.from_socket.recv() => c,
                _ = tokio::time::sleep(Duration::from_millis(1)) => return None,
            };
            match chunk {
                Some(b) => self.buf.extend_from_slice(&b),
                None => return None,
            }
        }
    }

    async fn expect_text(&mut self, ty: &str) -> Value {
        match self.next().await {
            Some(Got::Text(v)) if v["type"] == ty => v,
            Some(Got::Text(v)) => panic!("wanted {ty}, got {v}"),
            Some(Got::Ping(_)) => panic!("wanted {ty}, got a ping"),
            Some(Got::Close(c)) => panic!("wanted {ty}, got a close {c:?}"),
            None => panic!("wanted {ty}, got nothing"),
        }
    }
}

/// The node's side: one registry and what sockets share.
struct Node {
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    config: Arc<Config>,
}

impl Node {
    fn start() -> Self {
        tokio::time::pause();
        let config = Arc::new(Config::defaults());
        let metrics = Arc::new(Metrics::new("test").expect("metrics"));
        let registry = MemoryRegistry::new(
            crate::registry::RegistrySettings {
                code_ttl: config.code_ttl,
                grace: config.grace,
                join_rate: 0,
                failed_join_limit: 0,
                admit_timeout: std::time::Duration::from_secs(120),
                limits: crate::queue::Limits {
                    max_buffered: config.max_buffered,
                    stall: config.heartbeat_timeout,
                    away_frames: config.resume_buffer_frames,
                    away_bytes: config.resume_buffer_bytes,
                    paced: true,
                },
            },
            Arc::clone(&metrics),
        )
        .start();
        Node {
            shared: Shared::new(
                Arc::clone(&config),
                metrics,
                RegistryHandle::new(&registry),
                Connections::new(),
                Arc::new(Draining::default()),
            ),
            admission: Arc::new(Admission::new(0, 0)),
            config,
        }
    }

    /// Opens a WebSocket on `/mac` or `/browser` to a fresh socket actor,
    /// over an in-memory stream in place of the upgraded connection.
    async fn connect(&self, role: Role) -> Client {
        let (ours, theirs) = tokio::io::duplex(64 << 10);
        let addr = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let arrival = Arrival {
            addr,
            slot: self.admission.admit(addr).expect("room"),
            origin_allowed: true,
        };
        start(
            Io::Other(Box::new(theirs)),
            &[],
            role,
            arrival,
            Arc::clone(&self.shared),
        );
        let (mut rd, mut wr) = tokio::io::split(ours);
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        actix::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    return;
                }
            }
        });
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        actix::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 || out_tx.send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                    return;
                }
            }
        });
        Client {
            to_socket: Some(tx),
            from_socket: out_rx,
            codec: Codec::new().client_mode(),
            buf: BytesMut::new(),
        }
    }
}

fn in_paused_time(test: impl AsyncFnOnce(Node)) {
    actix::System::new().block_on(async {
        test(Node::start()).await;
    });
}

const MOMENT: Duration = Duration::from_millis(100);

#[test]
fn a_client_that_says_nothing_is_closed_at_the_handshake_timeout() {
    in_paused_time(async |node| {
        let mut c = node.connect(Role::Mac).await;
        tokio::time::sleep(node.config.handshake_timeout - MOMENT).await;
        assert!(c.next().await.is_none(), "closed before the timeout");
        tokio::time::sleep(2 * MOMENT).await;
        let got = c.next().await;
        assert!(matches!(got, Some(Got::Close(Some(1008)))), "{got:?}");
    });
}

#[test]
fn a_refused_join_gives_a_person_the_whole_handshake_time_again() {
    in_paused_time(async |node| {
        let mut c = node.connect(Role::Browser).await;
        tokio::time::sleep(node.config.handshake_timeout - MOMENT).await;
        c.json(json!({"type": "join", "code": "BBBBBB"}));
        assert_eq!(c.expect_text("error").await["code"], "INVALID_CODE");
        tokio::time::sleep(node.config.handshake_timeout - MOMENT).await;
        assert!(c.next().await.is_none(), "closed before the new timeout");
        tokio::time::sleep(2 * MOMENT).await;
        assert!(matches!(c.next().await, Some(Got::Close(Some(1008)))));
    });
}

#[test]
fn a_client_in_a_session_is_pinged_each_interval_and_closed_if_it_never_answers() {
    in_paused_time(async |node| {
        let (interval, timeout) = (
            node.config.heartbeat_interval,
            node.config.heartbeat_timeout,
        );
        let mut c = node.connect(Role::Mac).await;
        c.json(json!({"type": "register"}));
        c.expect_text("registered").await;
        // Answering keeps it open, interval after interval.
        tokio::time::sleep(interval).await;
        for round in 0..3 {
            let Some(Got::Ping(p)) = c.next().await else {
                panic!("round {round}: no ping after an interval");
            };
            c.send(Message::Pong(p));
            tokio::time::sleep(timeout).await;
            let got = c.next().await;
            assert!(
                got.is_none(),
                "round {round}: closed though it answered: {got:?}"
            );
            tokio::time::sleep(interval - timeout).await;
        }
        // Silent: closed (1001) when the timeout after the next ping passes.
        assert!(matches!(c.next().await, Some(Got::Ping(_))));
        tokio::time::sleep(timeout - MOMENT).await;
        assert!(c.next().await.is_none(), "closed before the timeout");
        tokio::time::sleep(2 * MOMENT).await;
        assert!(matches!(c.next().await, Some(Got::Close(Some(1001)))));
    });
}
