//! Client traffic for the chaos and soak tests: pairs of Rust clients
//! (`relay_protocol::client`) sending frames that carry their pair, their
//! direction and a sequence number, and a record per side of what it sent,
//! what it received (checked frame by frame: lost, duplicated, reordered,
//! misrouted) and what happened to its connection and session.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_protocol::client::{
    Client, Config, Data, Event, Events, SendError, State, TransportMode,
};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::WAIT;

/// A binary frame: pair (2 bytes), direction (1 = from the mac), sequence
/// number (8 bytes), padding to a length that varies with the number.
pub fn frame(pair: usize, from_mac: bool, seq: u64) -> Bytes {
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(&(pair as u16).to_be_bytes());
    b.push(u8::from(from_mac));
    b.extend_from_slice(&seq.to_be_bytes());
    b.resize(frame_len(seq), (seq % 251) as u8);
    Bytes::from(b)
}

pub fn frame_len(seq: u64) -> usize {
    11 + (seq as usize * 37) % 240
}

/// (pair, from_mac, seq) of a [`frame`], or None if it is not one intact.
pub fn parse(b: &[u8]) -> Option<(usize, bool, u64)> {
    let seq = u64::from_be_bytes(b.get(3..11)?.try_into().ok()?);
    let pair = usize::from(u16::from_be_bytes([b[0], b[1]]));
    (seq > 0 && b.len() == frame_len(seq)).then_some((pair, b[2] == 1, seq))
}

/// What one side received from its peer, checked frame by frame.
#[derive(Default)]
pub struct Received {
    /// `seen[s - 1]`: frame `s` came.
    pub seen: Vec<bool>,
    /// Different frames that came.
    pub distinct: u64,
    /// Highest number that came.
    pub max: u64,
    /// Frames that came again.
    pub dup: u64,
    /// Frames that came after a higher number.
    pub reordered: u64,
    /// Frames of another pair or direction, or not intact.
    pub misrouted: u64,
}

impl Received {
    pub fn got(&mut self, seq: u64) {
        let i = (seq - 1) as usize;
        if self.seen.len() <= i {
            self.seen.resize(i + 1, false);
        }
        if self.seen[i] {
            self.dup += 1;
            return;
        }
        self.seen[i] = true;
        self.distinct += 1;
        if seq < self.max {
            self.reordered += 1;
        } else {
            self.max = seq;
        }
    }

    /// Of frames `1..=sent`, how many never came.
    pub fn missing(&self, sent: u64) -> u64 {
        let came = self.seen.iter().take(sent as usize).filter(|s| **s).count();
        sent - came as u64
    }
}

/// One side's record, written by its sender and its event listener.
#[derive(Default)]
pub struct SideLog {
    /// Frames the client accepted to send, numbered `1..=sent`: each must
    /// reach the peer exactly once, in order.
    pub sent: u64,
    /// Sends refused with a full queue (retried with the same number).
    pub full: u64,
    /// Sends refused for want of a peer.
    pub not_paired: u64,
    /// What came from the peer.
    pub from_peer: Received,
    /// The client's state is `Connected`.
    pub connected: bool,
    /// A browser joined (mac) or this browser joined.
    pub paired: bool,
    /// When the connection dropped (Connected to Reconnecting).
    pub drops: Vec<Instant>,
    /// `resumed` answers.
    pub resumes: u32,
    /// Frames the client library said the relay lost (`Event::Lost`).
    pub lost_reported: u64,
    /// `peer_disconnected` heard.
    pub peer_away: u32,
    /// Errors and `peer_left`s heard, with when.
    pub notes: Vec<(Instant, String)>,
    /// The session ended for this side: when and why.
    pub ended: Option<(Instant, String)>,
}

pub type Log = Arc<Mutex<SideLog>>;

pub fn lock(log: &Log) -> std::sync::MutexGuard<'_, SideLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a client's events until they end.
pub async fn listen(mut events: Events, log: Log, pair: usize, is_mac: bool) {
    while let Some(ev) = events.next().await {
        let now = Instant::now();
        let mut l = lock(&log);
        match ev {
            Event::Data(Data::Binary(b)) => match parse(&b) {
                Some((p, from_mac, seq)) if p == pair && from_mac != is_mac => {
                    l.from_peer.got(seq);
                }
                _ => l.from_peer.misrouted += 1,
            },
            Event::Data(Data::Text(_)) => l.from_peer.misrouted += 1,
            Event::State(State::Connected) => l.connected = true,
            Event::State(State::Reconnecting { .. }) => {
                if l.connected {
                    l.drops.push(now);
                }
                l.connected = false;
            }
            Event::State(_) => l.connected = false,
            Event::Joined | Event::PeerJoined => l.paired = true,
            Event::Resumed => l.resumes += 1,
            Event::Lost(n) => l.lost_reported += n,
            Event::PeerDisconnected => l.peer_away += 1,
            Event::PeerLeft(r) => l.notes.push((now, format!("peer_left {}", r.as_str()))),
            Event::Error { code, .. } => l.notes.push((now, format!("error {code}"))),
            Event::Ended(why) => l.ended = Some((now, why.to_string())),
            Event::Registered { .. }
            | Event::Retrying { .. }
            | Event::SessionLost { .. }
            | Event::CodeExpired { .. }
            | Event::PeerResumed
            | Event::Latency(_)
            | Event::Encrypted
            | Event::Unfinished
            | Event::Transport { .. } => {}
            // These fixtures pair; a room's events and tagged frames are
            // counted as misrouted should one ever arrive.
            Event::Waiting { .. }
            | Event::GuestJoined { .. }
            | Event::GuestAdmitted(_)
            | Event::GuestLeft { .. }
            | Event::GuestAway(_)
            | Event::GuestBack(_)
            | Event::GuestEncrypted(_)
            | Event::GuestFailed { .. }
            | Event::GuestUnfinished(_)
            | Event::GuestData { .. } => l.from_peer.misrouted += 1,
        }
    }
}

/// Sends numbered frames at `rate` a second until `stop`; a refused frame is tried
/// again with the same number, so the numbers the client accepted have no gaps.
pub async fn pump(
    client: Client,
    log: Log,
    pair: usize,
    is_mac: bool,
    rate: u64,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let seq = lock(&log).sent + 1;
        match client.send_binary(frame(pair, is_mac, seq)).await {
            Ok(()) => lock(&log).sent = seq,
            Err(SendError::Full(_)) => lock(&log).full += 1,
            Err(SendError::NotPaired) => lock(&log).not_paired += 1,
            Err(SendError::Ended | SendError::NotRoomHost | SendError::TooManyCommands) => return,
        }
    }
}

/// A client config for the balancer's URL, retrying fast (the tests should
/// not wait seconds between tries) and pinging often, so what the client
/// keeps for re-sending stays small.
pub fn config(url: &str) -> Config {
    let mut c = Config::new(url);
    c.backoff.first = Duration::from_millis(100);
    c.backoff.cap = Duration::from_secs(1);
    c.ping_every = Duration::from_millis(500);
    c.connect_timeout = Duration::from_secs(5);
    // A lost session is a failure these tests must see (an end), not a new code.
    c.reregister_on_lost_session = false;
    // These fixtures watch the WebSocket path under failures: a frozen node
    // must cost one WebSocket attempt, not an HTTP fallback attempt too.
    c.transports.mode = TransportMode::WebSocket;
    c
}

/// One side of a pair: its client and its record.
pub struct Side {
    pub client: Client,
    pub log: Log,
    pub listener: JoinHandle<()>,
}

/// Starts [`pump`] on both sides of pair `pair`, `rate` frames a second each way.
pub fn pump_both(
    mac: &Side,
    browser: &Side,
    pair: usize,
    rate: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    [(mac, true), (browser, false)]
        .into_iter()
        .map(|(s, is_mac)| {
            tokio::spawn(pump(
                s.client.clone(),
                Arc::clone(&s.log),
                pair,
                is_mac,
                rate,
                Arc::clone(stop),
            ))
        })
        .collect()
}

/// Waits (bounded) until `check` holds on `log`.
pub async fn wait_log(log: &Log, what: &str, check: impl Fn(&SideLog) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check(&lock(log)) {
        if let Some((_, why)) = &lock(log).ended {
            panic!("{what}: the session ended first ({why})");
        }
        assert!(Instant::now() < deadline, "{what}: not in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a mac through the balancer and waits for its code.
pub async fn start_mac(url: &str, pair: usize) -> (Side, String) {
    start_mac_with(config(url), pair).await
}

/// [`start_mac`] with a config of its own.
pub async fn start_mac_with(cfg: Config, pair: usize) -> (Side, String) {
    let (client, mut events) = Client::mac(cfg);
    let deadline = tokio::time::Instant::now() + WAIT;
    let code = loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("pair {pair}: no code in time"))
            .unwrap_or_else(|| panic!("pair {pair}: the mac ended before registering"));
        match ev {
            Event::Registered { code, .. } => break code,
            Event::Ended(why) => panic!("pair {pair}: the mac ended: {why}"),
            _ => {}
        }
    };
    let log: Log = Arc::default();
    lock(&log).connected = true;
    let listener = tokio::spawn(listen(events, Arc::clone(&log), pair, true));
    (
        Side {
            client,
            log,
            listener,
        },
        code,
    )
}

/// Starts a browser through the balancer with `code` and waits until it joined.
pub async fn start_browser(url: &str, pair: usize, code: &str) -> Side {
    start_browser_with(config(url), pair, code).await
}

/// [`start_browser`] with a config of its own.
pub async fn start_browser_with(cfg: Config, pair: usize, code: &str) -> Side {
    let (client, events) = Client::browser(cfg, code);
    let log: Log = Arc::default();
    let listener = tokio::spawn(listen(events, Arc::clone(&log), pair, false));
    wait_log(&log, &format!("pair {pair}: browser joined"), |l| l.paired).await;
    Side {
        client,
        log,
        listener,
    }
}
