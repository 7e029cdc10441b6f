//! A virtual connection: the edge of a socket whose client speaks HTTP
//! requests (shared/PROTOCOL.md, "HTTP transport") instead of a WebSocket.
//! The socket actor writes its frames into it through `Out` and takes the
//! client's frames from it in its pump, where a WebSocket's bytes would go;
//! the HTTP handlers (`crate::http`) fill and empty it from their requests.
//! It holds frames and positions only: it never decides anything about the
//! session, which stays the socket actor's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::OpCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use prometheus::IntGauge;
use tokio::sync::Notify;

use tracing::warn;

use super::Socket;
use super::decode::Inbound;
use super::pump::WRITE_HIGH;
use crate::metrics::DisconnectReason;

/// Client frames handed to the actor in one poll before it lets other work run.
const READ_BUDGET: u32 = 64;

/// A ping's payload: the socket's marker (generation and written position).
type Marker = [u8; 12];

/// How a virtual connection was closed, as its `close` item and 410 say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The WebSocket close code it stands for.
    pub code: u16,
    /// The close frame's text.
    pub reason: String,
}

/// One item for the client, kept until it is acknowledged.
struct Held {
    pos: u64,
    /// The item as JSON, `pos` included.
    json: Bytes,
    /// The socket's last marker written before the next item: acknowledging
    /// this item proves the client read everything the marker vouches for.
    marker: Option<Marker>,
}

/// What a `send` comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum SendStep {
    /// Every frame of the batch was taken (now or before).
    Taken,
    /// The batch was accepted now: wait for [`VirtualConn::taken`].
    Accepted,
    /// The batch is being applied: wait for [`VirtualConn::taken`].
    Applying,
    /// Not the batch the connection can take now; this one is.
    Refused { expected: u64 },
    /// The connection is closed.
    Closed(Closed),
}

/// Why a `receive` is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ReceiveRefused {
    /// `after` went back below an earlier acknowledgement.
    Backwards { acked: u64 },
    /// `after` is past anything sent.
    Beyond,
    /// Closed, and everything was acknowledged.
    Closed(Closed),
}

/// A `receive` the connection accepted.
pub struct Receiving {
    /// Tells this receive from a later one, which ends it.
    pub generation: u64,
    /// The newest marker the acknowledgement covers, for the socket.
    pub marker: Option<Marker>,
}

/// What a waiting `receive` gets.
pub enum Collected {
    /// Items after the last sent, as JSON, at least one.
    Items(Vec<Bytes>),
    /// A later `receive` took over, or the last item (close) was sent.
    Over,
}

/// Everything guarded by the lock, owned by whoever holds it.
struct State {
    /// Items not yet acknowledged, in `pos` order.
    items: VecDeque<Held>,
    next_pos: u64,
    acked: u64,
    /// Highest `pos` handed to a receive.
    sent: u64,
    /// Bytes of the items after `sent`.
    unsent_bytes: usize,
    /// Bytes of all items held.
    held_bytes: usize,
    /// A marker written when no item was held: everything before it was
    /// acknowledged already, so the next receive vouches for it.
    loose_marker: Option<Marker>,
    closed: Option<(Closed, Instant)>,
    /// The open receive's generation (0: none yet).
    generation: u64,
    /// A receive is open now.
    receiving: bool,
    /// The client's frames not yet taken, with their batch (`None`: an empty batch).
    inbound: VecDeque<(u64, Option<Inbound>)>,
    /// The last batch accepted, and the last whose frames were all taken.
    accepted: u64,
    taken: u64,
    /// The socket's pump, woken when frames arrive or items were taken.
    pump: Option<Waker>,
}

/// The shared state of one virtual connection.
pub struct VirtualConn {
    state: Mutex<State>,
    /// Wakes waiting requests on any change (items, batches taken, close, a new receive).
    changed: Notify,
    /// Counts this connection while it is open.
    gauge: Option<IntGauge>,
    /// Bytes of items it holds at most: past them the client is a slow
    /// consumer (it collects without acknowledging), closed with 1013.
    cap: usize,
}

impl Default for VirtualConn {
    fn default() -> Self {
        VirtualConn {
            state: Mutex::new(State {
                items: VecDeque::new(),
                next_pos: 1,
                acked: 0,
                sent: 0,
                unsent_bytes: 0,
                held_bytes: 0,
                loose_marker: None,
                closed: None,
                generation: 0,
                receiving: false,
                inbound: VecDeque::new(),
                accepted: 0,
                taken: 0,
                pump: None,
            }),
            changed: Notify::new(),
            gauge: None,
            cap: usize::MAX,
        }
    }
}

impl VirtualConn {
    /// A connection counted in `gauge` until it closes, holding at most
    /// `cap` bytes of items.
    pub fn new(gauge: IntGauge, cap: usize) -> Self {
        gauge.inc();
        VirtualConn {
            gauge: Some(gauge),
            cap,
            ..VirtualConn::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves positions whole (each change
        // is one step), so the state is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The notifier a waiting request listens on.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    // The socket's side.

    /// A frame from the socket (`Out`): text and binary become items, a
    /// ping's payload is the marker; pongs have no meaning here.
    pub(super) fn write(&self, payload: &[u8], op: OpCode) {
        let mut s = self.lock();
        if s.closed.is_some() {
            return;
        }
        match op {
            OpCode::Text => {
                let text = String::from_utf8_lossy(payload);
                s.push(|pos| serde_json::json!({ "text": text, "pos": pos }));
            }
            OpCode::Binary => {
                let b64 = BASE64.encode(payload);
                s.push(|pos| serde_json::json!({ "binary": b64, "pos": pos }));
            }
            OpCode::Ping => {
                let Ok(marker) = Marker::try_from(payload) else {
                    return;
                };
                match s.items.back_mut() {
                    Some(last) => last.marker = Some(marker),
                    None => s.loose_marker = Some(marker),
                }
                return;
            }
            _ => return,
        }
        if s.held_bytes > self.cap {
            // Bounded whatever the client does: the socket sees the close
            // at its next poll and stops (`pump_virtual`).
            self.close_locked(&mut s, 1013, "slow consumer");
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// The close item, the last one.
    pub(super) fn close(&self, code: u16, reason: &str) {
        let mut s = self.lock();
        self.close_locked(&mut s, code, reason);
        drop(s);
        self.changed.notify_waiters();
    }

    fn close_locked(&self, s: &mut State, code: u16, reason: &str) {
        if s.closed.is_some() {
            return;
        }
        s.push(|pos| serde_json::json!({ "close": code, "reason": reason, "pos": pos }));
        s.closed = Some((
            Closed {
                code,
                reason: reason.to_owned(),
            },
            Instant::now(),
        ));
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }

    /// The socket ended without a close: the client sees an abnormal drop.
    pub(super) fn lost(&self) {
        self.close(1006, "connection lost");
    }

    /// Bytes written and not yet handed to a receive.
    pub(super) fn unsent(&self) -> usize {
        self.lock().unsent_bytes
    }

    /// Whether a receive is open now.
    pub(super) fn receiving(&self) -> bool {
        self.lock().receiving
    }

    /// Wakes `cx` when frames arrive or items were taken.
    fn register(&self, cx: &TaskContext<'_>) {
        let mut s = self.lock();
        if !s.pump.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.pump = Some(cx.waker().clone());
        }
    }

    /// The client's next frame, if one is waiting.
    fn next_inbound(&self) -> Option<Inbound> {
        let mut s = self.lock();
        loop {
            let (batch, item) = s.inbound.pop_front()?;
            if s.inbound.front().is_none_or(|(b, _)| *b != batch) {
                s.taken = batch;
                self.changed.notify_waiters();
            }
            if let Some(item) = item {
                return Some(item);
            }
        }
    }

    fn wake_pump(s: &State) {
        if let Some(w) = &s.pump {
            w.wake_by_ref();
        }
    }

    // The HTTP side.

    /// A batch of the client's frames, numbered `batch`.
    pub fn send(&self, batch: u64, frames: Vec<Inbound>) -> SendStep {
        let mut s = self.lock();
        // Closed first, a retry of a taken batch included: the client
        // resumes, and `resumed` says which of its frames were taken.
        if let Some((closed, _)) = &s.closed {
            return SendStep::Closed(closed.clone());
        }
        if batch <= s.taken {
            return SendStep::Taken;
        }
        if batch == s.accepted {
            return SendStep::Applying;
        }
        if s.accepted != s.taken {
            // One batch at a time: the one being applied comes first.
            return SendStep::Refused {
                expected: s.accepted,
            };
        }
        if batch != s.taken + 1 {
            return SendStep::Refused {
                expected: s.taken + 1,
            };
        }
        s.accepted = batch;
        if frames.is_empty() {
            s.inbound.push_back((batch, None));
        }
        s.inbound
            .extend(frames.into_iter().map(|f| (batch, Some(f))));
        Self::wake_pump(&s);
        SendStep::Accepted
    }

    /// Whether batch `batch` was taken: `None` while it is being applied.
    pub fn taken(&self, batch: u64) -> Option<SendStep> {
        let s = self.lock();
        if batch <= s.taken {
            Some(SendStep::Taken)
        } else {
            s.closed.as_ref().map(|(c, _)| SendStep::Closed(c.clone()))
        }
    }

    /// Starts a receive: acknowledges everything up to `after` and ends the
    /// receive open before it.
    ///
    /// # Errors
    /// When `after` is out of order, or the connection is closed and
    /// everything was acknowledged.
    pub fn receive(&self, after: u64) -> Result<Receiving, ReceiveRefused> {
        let mut s = self.lock();
        if after < s.acked {
            return Err(ReceiveRefused::Backwards { acked: s.acked });
        }
        if after > s.sent {
            return Err(ReceiveRefused::Beyond);
        }
        let mut marker = s.loose_marker.take();
        while s.items.front().is_some_and(|h| h.pos <= after) {
            if let Some(h) = s.items.pop_front() {
                s.held_bytes -= h.json.len();
                marker = h.marker.or(marker);
            }
        }
        s.acked = after;
        // Everything after `after` goes again: its earlier answer was lost.
        s.sent = after;
        s.unsent_bytes = s.items.iter().map(|h| h.json.len()).sum();
        if let Some((closed, _)) = &s.closed
            && s.items.is_empty()
        {
            return Err(ReceiveRefused::Closed(closed.clone()));
        }
        s.generation += 1;
        s.receiving = true;
        let generation = s.generation;
        drop(s);
        // The receive before this one ends.
        self.changed.notify_waiters();
        Ok(Receiving { generation, marker })
    }

    /// The items after the last sent, at most about `max_bytes` (at least
    /// one), for the receive of `generation`; `None` when there are none yet.
    pub fn collect(&self, generation: u64, max_bytes: usize) -> Option<Collected> {
        let mut s = self.lock();
        if s.generation != generation {
            return Some(Collected::Over);
        }
        let start = s.sent;
        let mut out = Vec::new();
        let mut bytes = 0;
        for h in s.items.iter().filter(|h| h.pos > start) {
            if !out.is_empty() && bytes + h.json.len() > max_bytes {
                break;
            }
            bytes += h.json.len();
            out.push((h.pos, h.json.clone()));
        }
        let (last, _) = out.last()?;
        s.sent = *last;
        s.unsent_bytes = s.unsent_bytes.saturating_sub(bytes);
        Self::wake_pump(&s);
        Some(Collected::Items(out.into_iter().map(|(_, j)| j).collect()))
    }

    /// Whether everything up to the close item was sent (nothing more will come).
    pub fn finished(&self) -> bool {
        let s = self.lock();
        s.closed.is_some() && s.sent + 1 >= s.next_pos
    }

    /// The receive of `generation` ended.
    pub fn receive_ended(&self, generation: u64) {
        let mut s = self.lock();
        if s.generation == generation {
            s.receiving = false;
        }
    }

    /// How it was closed and when, once it was.
    pub fn closed(&self) -> Option<(Closed, Instant)> {
        self.lock().closed.clone()
    }
}

impl State {
    fn push(&mut self, item: impl FnOnce(u64) -> serde_json::Value) {
        let pos = self.next_pos;
        self.next_pos += 1;
        let json = Bytes::from(item(pos).to_string());
        self.unsent_bytes += json.len();
        self.held_bytes += json.len();
        self.items.push_back(Held {
            pos,
            json,
            marker: None,
        });
        VirtualConn::wake_pump(self);
    }
}

/// A receive arrived: the client is alive, and read what `marker` vouches for.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Heard(pub Option<Marker>);

impl Handler<Heard> for Socket {
    type Result = ();

    fn handle(&mut self, heard: Heard, _: &mut Self::Context) {
        if let Some(live) = &self.live {
            live.touch();
        }
        // A pong without a marker still counts as a sign of life.
        self.on_pong(heard.0.as_ref().map_or(&[][..], |m| &m[..]));
    }
}

impl Socket {
    /// The pump of a virtual connection: what the client sent, handed to the
    /// actor while the gate is open; what it took, letting the pipe follow.
    pub(super) fn pump_virtual(
        &mut self,
        conn: &Arc<VirtualConn>,
        ctx: &mut Context<Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        conn.register(cx);
        if self.ending.is_none() && conn.closed().is_some() {
            // Closed from the edge: it held more than it may for a client
            // that does not acknowledge.
            warn!(conn = %self.id, role = self.role.as_str(), "slow consumer over HTTP; closing");
            self.ending = Some(DisconnectReason::SlowConsumer);
            ctx.stop();
            return Poll::Ready(());
        }
        if self.held && self.out.len() < WRITE_HIGH {
            // The client collected: what waits in the pipe can follow.
            self.held = false;
            self.flush(ctx);
        }
        let mut budget = READ_BUDGET;
        loop {
            if ctx.waiting() || ctx.state().stopping() {
                break;
            }
            if self.gate.poll_open(cx).is_pending() {
                break;
            }
            let Some(item) = conn.next_inbound() else {
                break;
            };
            self.on_inbound(item, ctx);
            budget -= 1;
            if budget == 0 {
                cx.waker().wake_by_ref();
                break;
            }
        }
        if ctx.state().stopping() {
            return Poll::Ready(());
        }
        if self.held && self.out.len() < WRITE_HIGH {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
#[path = "virtual_conn_tests.rs"]
mod tests;
