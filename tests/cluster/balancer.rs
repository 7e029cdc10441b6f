//! Behind the load balancer: clients know only haproxy's address (round
//! robin, no stickiness). Nodes are drained one at a time (SIGTERM) while both
//! sides keep sending; a client told `SHUTTING_DOWN` and closed with 1012
//! reconnects through the balancer, lands on another node and resumes with
//! nothing lost, duplicated or reordered.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{seq_frame, seq_of};
use crate::support::cluster::{Cluster, Lb, pair_at, try_connect};
use crate::support::{Stream, WAIT, Ws, resume_msg};

/// One side of the session, as a client library would run it: it keeps what
/// it sent for re-sending, counts what it received, and resumes through the
/// balancer when its connection goes.
struct Side {
    name: &'static str,
    path: &'static str,
    session: String,
    token: String,
    stream: Option<Stream>,
    /// Every frame this side sent, in order.
    sent: Vec<Message>,
    /// Frames of `sent` written to the current connection (or accepted by the
    /// relay, as `resumed` said).
    written: usize,
    /// Data frames received, each checked to be the next one.
    got: u64,
    /// Whether the current connection was told `SHUTTING_DOWN`.
    told_to_go: bool,
    /// `SHUTTING_DOWN` then close 1012, as seen by this side.
    drained: usize,
    /// Successful resumes.
    resumes: usize,
    /// App-level pings sent, and whether the last one was answered.
    pings: u64,
    ponged: bool,
}

impl Side {
    fn new(name: &'static str, path: &'static str, ws: Ws, session: &str, token: &str) -> Side {
        Side {
            name,
            path,
            session: session.to_owned(),
            token: token.to_owned(),
            stream: Some(ws.into_inner()),
            sent: Vec::new(),
            written: 0,
            got: 0,
            told_to_go: false,
            drained: 0,
            resumes: 0,
            pings: 0,
            ponged: false,
        }
    }

    /// Sends `n` more frames and reads until it has as many as it sent in
    /// all (both sides step together), resuming whenever its connection goes.
    ///
    /// Each round ends with an app-level ping: its pong proves the relay read
    /// everything written before it, so a connection closed right after a
    /// step cannot hold frames the relay never took (the peer would wait for
    /// them while this side, done reading, would not notice the close).
    async fn step(&mut self, lb: &Lb, n: u64) {
        let first = self.sent.len() as u64 + 1;
        self.sent.extend((first..first + n).map(seq_frame));
        let want = self.sent.len() as u64;
        loop {
            if self.stream.is_none() {
                self.resume(lb).await;
            }
            let wrote = self.write().await && self.ping().await;
            // A write that failed met the node's close: what the node sent
            // before it (SHUTTING_DOWN, the close frame) is still there to read.
            if self.read(want).await && wrote {
                return;
            }
            self.stream = None;
        }
    }

    /// Sends an app-level ping; `read` waits for its pong.
    async fn ping(&mut self) -> bool {
        self.pings += 1;
        self.ponged = false;
        let ping = serde_json::json!({"type": "ping", "ts": self.pings});
        let s = self.stream.as_mut().expect("connected");
        s.send(Message::text(ping.to_string())).await.is_ok()
    }

    /// Writes what the current connection has not had; false if it is gone.
    async fn write(&mut self) -> bool {
        let s = self.stream.as_mut().expect("connected");
        while self.written < self.sent.len() {
            if s.send(self.sent[self.written].clone()).await.is_err() {
                return false;
            }
            self.written += 1;
        }
        true
    }

    /// Reads until `want` frames and the last ping's pong came in; false if
    /// the connection went first.
    async fn read(&mut self, want: u64) -> bool {
        let s = self.stream.as_mut().expect("connected");
        while self.got < want || !self.ponged {
            let m = tokio::time::timeout(WAIT, s.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("{}: only {} of {want} frames came", self.name, self.got)
                });
            match m {
                Some(Ok(Message::Binary(b))) => {
                    let seq = seq_of(&b);
                    assert_eq!(
                        seq,
                        self.got + 1,
                        "{}: lost, duplicated or reordered",
                        self.name
                    );
                    self.got = seq;
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    match v["type"].as_str() {
                        // The peer's node went away and it came back.
                        Some("peer_disconnected" | "peer_resumed") => {}
                        Some("pong") if v["ts"] == self.pings => self.ponged = true,
                        Some("pong") => {}
                        Some("error") if v["code"] == "SHUTTING_DOWN" => self.told_to_go = true,
                        _ => panic!("{}: unexpected {v}", self.name),
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.map(|f| u16::from(f.code));
                    assert!(
                        self.told_to_go && code == Some(1012),
                        "{}: closed with {code:?} (SHUTTING_DOWN before: {})",
                        self.name,
                        self.told_to_go
                    );
                    self.drained += 1;
                    return false;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return false,
            }
        }
        true
    }

    /// Reconnects through the balancer until a node takes the resume.
    async fn resume(&mut self, lb: &Lb) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((stream, accepted)) = self.try_resume(lb).await {
                let accepted = usize::try_from(accepted).expect("lastSeq");
                assert!(
                    accepted <= self.sent.len(),
                    "{}: relay accepted {accepted} of {} frames",
                    self.name,
                    self.sent.len()
                );
                self.stream = Some(stream);
                self.told_to_go = false;
                self.written = accepted;
                self.resumes += 1;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no node took the resume",
                self.name
            );
            // It met a node still draining or no node at all; a client backs
            // off a moment before the next try.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One reconnect and resume: the new connection and the relay's
    /// `lastSeq`, or None if this node is going away.
    async fn try_resume(&self, lb: &Lb) -> Option<(Stream, u64)> {
        let mut s = try_connect(&lb.url(self.path)).await.ok()?.into_inner();
        let msg = resume_msg(&self.session, &self.token, self.got);
        s.send(Message::text(msg.to_string())).await.ok()?;
        loop {
            let m = tokio::time::timeout(WAIT, s.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no answer to resume", self.name))?
                .ok()?;
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    match (v["type"].as_str(), v["code"].as_str()) {
                        (Some("resumed"), _) => return Some((s, v["lastSeq"].as_u64()?)),
                        (Some("error"), Some("SHUTTING_DOWN")) => return None,
                        _ => panic!("{}: resume answered {v}", self.name),
                    }
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn clients_behind_the_balancer_ride_out_every_node_draining_in_turn() {
    const STEP: u64 = 20;
    // Each step ends with a ping as a delivery barrier, many a second: more
    // control messages than a real client sends, so no message rate here.
    let mut c = Cluster::start(
        3,
        &[("RELAY_DRAIN_TIMEOUT", "2s"), ("RELAY_MESSAGE_RATE", "0")],
    );
    let mut lb = Lb::start(&c.addrs());
    let p = pair_at(&lb.url("/mac"), &lb.url("/browser")).await;

    // Round robin put the two on different nodes.
    let mut mac_on = None;
    let mut browser_on = None;
    for n in 1..=3 {
        let node = c.node(n);
        if node.metric("relay_connections_open{role=\"mac\"}").await == 1.0 {
            mac_on = Some(n);
        }
        if node
            .metric("relay_connections_open{role=\"browser\"}")
            .await
            == 1.0
        {
            browser_on = Some(n);
        }
    }
    assert!(mac_on.is_some() && browser_on.is_some());
    assert_ne!(mac_on, browser_on, "both on one node: not round robin");

    let mut mac = Side::new("mac", "/mac", p.mac, &p.session_id, &p.mac_token);
    let mut browser = Side::new(
        "browser",
        "/browser",
        p.browser,
        &p.session_id,
        &p.browser_token,
    );
    tokio::join!(mac.step(&lb, STEP), browser.step(&lb, STEP));

    for n in 1..=3 {
        c.node(n).sigterm();
        // Both keep sending and reading while the node drains its clients.
        let deadline = Instant::now() + WAIT * 2;
        while !c.node_mut(n).has_exited() {
            assert!(Instant::now() < deadline, "node-{n} did not exit");
            tokio::join!(mac.step(&lb, STEP), browser.step(&lb, STEP));
        }
        assert!(c.node_mut(n).wait_exit().await.success());
        // Back to three nodes before the next one goes.
        let before = c.addrs();
        c.node_mut(n).restart();
        if c.addrs() != before {
            lb.reconfigure(&c.addrs());
        }
    }
    tokio::join!(mac.step(&lb, STEP), browser.step(&lb, STEP));

    // Each side's first node was drained at some point, so each moved.
    assert!(mac.resumes >= 1, "the mac never moved");
    assert!(browser.resumes >= 1, "the browser never moved");
    assert!(
        mac.drained + browser.drained >= 1,
        "no client saw SHUTTING_DOWN and 1012"
    );
    assert_eq!(mac.got, browser.sent.len() as u64);
    assert_eq!(browser.got, mac.sent.len() as u64);
}
