//! One actor per WebSocket: the handshake (`register`/`join`/`resume`),
//! heartbeat, the client's frames in, the pipe's frames out, and closing with
//! the right code. All socket I/O of the relay is in this module; nothing
//! outside it knows actix-web-actors.

pub mod decode;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws::{self, CloseReason, WebsocketContext};
use bytes::Bytes;
use bytestring::ByteString;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use relay_protocol::{ClientMessage, CloseCode, ErrorCode, Role, ServerMessage};
use tracing::{debug, info, warn};

use crate::admission::Slot;
use crate::config::Config;
use crate::conns::Connections;
use crate::conns::{ConnCommand, ConnId, Killer, Liveness};
use crate::frame::Frame;
use crate::gate::Gate;
use crate::metrics::DisconnectReason;
use crate::metrics::Metrics;
use crate::pipe::{Pushed, Wake};
use crate::queue::{Drained, EventEffect, Item, Status};
use crate::registry::RegistryHandle;
use crate::registry::{
    Client, Deadline, Departure, Gone, Join, Link, Overflowed, Refusal, Register, Resume,
};
use crate::shutdown::Draining;
use decode::{Frames, Inbound};

/// Written bytes after which the socket asks the client to prove it read them
/// (a ping carrying the position). Smaller means finer slow-consumer
/// detection and a shorter replay buffer; larger means fewer pings.
const MARKER_BYTES: usize = 64 * 1024;

/// Written frames after which the socket sends a position ping anyway, so a
/// stream of small frames is acknowledged often enough to trim the buffer.
const MARKER_FRAMES: u32 = 64;

/// How often a paused sender checks whether its peer stopped reading.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What every socket of the node shares: the settings and the node's handles.
pub struct Shared {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    registry: RegistryHandle,
    conns: Connections,
    draining: Arc<Draining>,
}

impl Shared {
    /// The handles every socket of the node gets.
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        registry: RegistryHandle,
        conns: Connections,
        draining: Arc<Draining>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            config,
            metrics,
            registry,
            conns,
            draining,
        })
    }

    fn is_draining(&self) -> bool {
        self.draining.is_set()
    }
}

/// What the HTTP side learned about a connection before its upgrade.
pub struct Arrival {
    /// Client address, for join rate limiting.
    pub addr: IpAddr,
    /// Its place under the connection ceilings, given back when the socket ends.
    pub slot: Slot,
    /// False for a `/browser` upgrade from an origin the allow-list refuses.
    pub origin_allowed: bool,
    /// Cuts the TCP socket when the actor cannot run (see `conns`).
    pub killer: Option<Killer>,
}

/// Accepts a WebSocket on `/mac` or `/browser` and starts its actor.
///
/// # Errors
/// The handshake error (HTTP 400 and kin) when the request is not a valid upgrade.
pub fn accept(
    req: &HttpRequest,
    body: web::Payload,
    role: Role,
    arrival: Arrival,
    shared: Arc<Shared>,
) -> Result<HttpResponse, actix_web::Error> {
    let Arrival {
        addr,
        slot,
        origin_allowed,
        killer,
    } = arrival;
    // actix-web-actors also accepts draft versions 7 and 8 and any key;
    // hold clients to RFC 6455 (version 13, a 16-byte base64 key).
    actix_http::ws::verify_handshake(req.head())?;
    let mut res = ws::handshake(req)?;
    let socket = Socket {
        id: ConnId::next(),
        role,
        addr,
        shared,
        killer: killer.map(Arc::new),
        _slot: slot,
        origin_allowed,
        gate: Gate::new(),
        stall_watch: None,
        live: None,
        body: Some(body),
        link: None,
        generation: 0,
        written: 0,
        measured: 0,
        marker_bytes: 0,
        marker_frames: 0,
        malformed: 0,
        message_rate: None,
        last_pong: Instant::now(),
        handshake_timer: None,
        ending: None,
        clean_close: false,
        left: false,
        drained: Drained::default(),
    };
    // The context's own reader is unbounded; frames come from `decode`
    // instead (added in `started`), so hand the context an empty stream.
    let nothing = futures_util::stream::pending::<Result<Bytes, actix_web::error::PayloadError>>();
    Ok(res.streaming(WebsocketContext::create(socket, nothing)))
}

/// The actor of one WebSocket connection.
pub struct Socket {
    id: ConnId,
    role: Role,
    /// Client address, for join rate limiting.
    addr: IpAddr,
    shared: Arc<Shared>,
    /// Cuts the TCP socket when the actor cannot run (see `conns`).
    killer: Option<Arc<Killer>>,
    /// Held for its drop, which frees the place under the connection ceilings.
    _slot: Slot,
    origin_allowed: bool,
    /// Closed by the peer's pipe while the peer is behind; pauses reading.
    gate: Arc<Gate>,
    /// Checks the peer for a stall while the gate is closed.
    stall_watch: Option<SpawnHandle>,
    /// Stamped on every sign of life from the client.
    live: Option<Liveness>,
    /// The request body, until `started` turns it into the frame stream.
    body: Option<web::Payload>,
    /// The session this socket is in, once registered, joined or resumed.
    link: Option<Link>,
    /// Counts links, so a late pong for an earlier link is not taken for this one.
    generation: u32,
    /// Position in the inbound pipe written to the client so far.
    written: u64,
    /// Highest position whose latency was observed.
    measured: u64,
    /// Bytes and frames written since the last position ping.
    marker_bytes: usize,
    marker_frames: u32,
    /// Malformed (or over-rate) messages in a row.
    malformed: u32,
    /// Paces control messages (`RELAY_MESSAGE_RATE`); made on the first one.
    message_rate: Option<DefaultDirectRateLimiter>,
    last_pong: Instant,
    handshake_timer: Option<SpawnHandle>,
    /// Why the connection is ending, once it is.
    ending: Option<DisconnectReason>,
    /// The client closed with 1000: it meant to go (no grace period).
    clean_close: bool,
    /// The client sent `leave`.
    left: bool,
    /// Reused buffer for draining the inbound pipe.
    drained: Drained,
}

impl Actor for Socket {
    type Context = WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let cfg = Arc::clone(&self.shared.config);
        if let Some(body) = self.body.take() {
            ctx.add_stream(Frames::new(body, cfg.max_frame, Arc::clone(&self.gate)));
        }
        let addr = ctx.address();
        self.live = Some(
            self.shared
                .conns
                .add(self.id, addr.recipient(), self.killer.clone()),
        );
        self.shared
            .metrics
            .connections_open
            .with_label_values(&[self.role.as_str()])
            .inc();
        debug!(conn = %self.id, role = self.role.as_str(), addr = %self.addr, "connected");

        if !self.origin_allowed {
            self.close(
                ctx,
                CloseCode::Policy,
                DisconnectReason::OriginRefused,
                "origin not allowed",
            );
            return;
        }
        if self.shared.is_draining() {
            self.drain(ctx);
            return;
        }
        self.arm_handshake_timer(ctx);
        let (interval, timeout) = (cfg.heartbeat_interval, cfg.heartbeat_timeout);
        ctx.run_interval(interval, move |act, ctx| {
            act.send_marker(ctx);
            let sent = Instant::now();
            ctx.run_later(timeout, move |act, ctx| {
                // A paused socket reads nothing, its pongs included; its
                // client was sending, so it is alive.
                if act.last_pong < sent && !act.gate.is_closed() {
                    act.close(
                        ctx,
                        CloseCode::GoingAway,
                        DisconnectReason::HeartbeatTimeout,
                        "no pong",
                    );
                }
            });
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.conns.remove(self.id);
        self.shared
            .metrics
            .connections_open
            .with_label_values(&[self.role.as_str()])
            .dec();
        let reason = self.ending.unwrap_or_else(|| match &self.link {
            Some(l) if l.inbound.was_cut(self.id) => DisconnectReason::SlowConsumer,
            _ => DisconnectReason::ClientGone,
        });
        self.shared.metrics.disconnected(reason);
        debug!(conn = %self.id, role = self.role.as_str(), reason = reason.as_str(), "disconnected");
        let Some(link) = self.link.take() else { return };
        let how = if self.left {
            Departure::Left
        } else if matches!(
            reason,
            DisconnectReason::Replaced | DisconnectReason::SessionOver
        ) {
            // Already settled with the registry: it replaced us, or the session is over.
            return;
        } else if self.clean_close {
            Departure::Closed
        } else {
            Departure::Dropped
        };
        self.shared.registry.gone(Gone {
            session_id: link.session_id,
            role: self.role,
            conn: self.id,
            how,
        });
    }
}

impl Socket {
    fn arm_handshake_timer(&mut self, ctx: &mut WebsocketContext<Self>) {
        if let Some(h) = self.handshake_timer.take() {
            ctx.cancel_future(h);
        }
        let timeout = self.shared.config.handshake_timeout;
        self.handshake_timer = Some(ctx.run_later(timeout, |act, ctx| {
            act.handshake_timer = None;
            if act.link.is_none() {
                act.close(
                    ctx,
                    CloseCode::Policy,
                    DisconnectReason::HandshakeTimeout,
                    "handshake timeout",
                );
            }
        }));
    }

    fn cancel_handshake_timer(&mut self, ctx: &mut WebsocketContext<Self>) {
        if let Some(h) = self.handshake_timer.take() {
            ctx.cancel_future(h);
        }
    }

    /// Closes with `code` and stops; the first reason given wins.
    fn close(
        &mut self,
        ctx: &mut WebsocketContext<Self>,
        code: CloseCode,
        reason: DisconnectReason,
        description: &str,
    ) {
        if self.ending.is_some() {
            return;
        }
        self.ending = Some(reason);
        let description = (!description.is_empty()).then(|| description.to_owned());
        ctx.close(Some(CloseReason {
            code: ws::CloseCode::from(code.code()),
            description,
        }));
        ctx.stop();
    }

    fn send(&self, ctx: &mut WebsocketContext<Self>, msg: &ServerMessage) {
        ctx.text(msg.to_text());
    }

    fn send_error(&self, ctx: &mut WebsocketContext<Self>, code: ErrorCode, message: Option<&str>) {
        self.shared.metrics.error_sent(code);
        let message = message.unwrap_or(code.default_message());
        self.send(ctx, &ServerMessage::error_with(code, message));
    }

    fn refuse(&mut self, ctx: &mut WebsocketContext<Self>, r: Refusal) {
        self.send_error(ctx, r.code, r.message.as_deref());
        if let Some(code) = r.close {
            let reason = match code {
                CloseCode::SessionOver => DisconnectReason::SessionOver,
                _ => DisconnectReason::ClientGone,
            };
            self.close(ctx, code, reason, "");
        }
    }

    /// A malformed or out-of-place message: say so, and close after too many in a row.
    fn malformed(&mut self, ctx: &mut WebsocketContext<Self>, why: &str) {
        self.misbehaved(ctx, ErrorCode::InvalidMessage, why);
    }

    /// Whether one more control message fits the per-connection rate.
    fn within_message_rate(&mut self) -> bool {
        let rate = self.shared.config.message_rate;
        let Some(per_second) = NonZeroU32::new(rate) else {
            return true;
        };
        self.message_rate
            .get_or_insert_with(|| RateLimiter::direct(Quota::per_second(per_second)))
            .check()
            .is_ok()
    }

    /// A message refused with `code`; like malformed ones, too many in a row
    /// close the connection (1008), so a flood cannot queue unbounded replies.
    fn misbehaved(&mut self, ctx: &mut WebsocketContext<Self>, code: ErrorCode, why: &str) {
        self.malformed += 1;
        self.send_error(ctx, code, Some(why));
        if self.malformed >= self.shared.config.max_malformed {
            warn!(conn = %self.id, count = self.malformed, "closing after malformed messages");
            self.close(
                ctx,
                CloseCode::Policy,
                DisconnectReason::Malformed,
                "too many malformed messages",
            );
        }
    }

    fn drain(&mut self, ctx: &mut WebsocketContext<Self>) {
        if self.ending.is_some() {
            // Already closing: a second SHUTTING_DOWN would follow the close frame.
            return;
        }
        self.send_error(ctx, ErrorCode::ShuttingDown, None);
        self.close(
            ctx,
            CloseCode::Draining,
            DisconnectReason::Drained,
            "node draining",
        );
    }

    fn client(&self, ctx: &mut WebsocketContext<Self>) -> Client {
        let addr = ctx.address();
        Client {
            conn: self.id,
            addr: self.addr,
            wake: addr.clone().recipient(),
            commands: addr.recipient(),
            killer: self.killer.clone(),
        }
    }

    /// Asks the registry for a place in a session, reading nothing else from
    /// the client until it answers (so frames sent right after the request
    /// are handled once the socket is in the session). On success, replies
    /// and writes whatever is already queued; on refusal, says why. The
    /// request carries its deadline, set where it is built; the wait for the
    /// answer follows from it (`RegistryHandle`).
    fn ask<T: 'static>(
        &mut self,
        ctx: &mut WebsocketContext<Self>,
        request: impl Future<Output = Result<T, Refusal>> + 'static,
        accept: fn(T) -> (Link, ServerMessage, Vec<String>),
    ) {
        ctx.wait(
            request
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(v) => {
                        let (link, reply, events) = accept(v);
                        act.linked(link, ctx);
                        act.send(ctx, &reply);
                        for e in events {
                            ctx.text(e);
                        }
                        act.flush(ctx);
                    }
                    Err(r) => {
                        // A person may retype a code: a socket still in its handshake
                        // gets the full handshake time again.
                        if act.handshake_timer.is_some() {
                            act.arm_handshake_timer(ctx);
                        }
                        act.refuse(ctx, r);
                    }
                }),
        );
    }

    /// Takes a place in a session and writes whatever is already queued.
    fn linked(&mut self, link: Link, ctx: &mut WebsocketContext<Self>) {
        self.cancel_handshake_timer(ctx);
        self.generation = self.generation.wrapping_add(1);
        self.written = link.written;
        self.measured = link.written;
        self.marker_bytes = 0;
        self.marker_frames = 0;
        self.link = Some(link);
    }

    /// Writes everything new in the inbound pipe.
    fn flush(&mut self, ctx: &mut WebsocketContext<Self>) {
        let Some(link) = &self.link else { return };
        let inbound = Arc::clone(&link.inbound);
        let mut d = std::mem::take(&mut self.drained);
        match inbound.drain(self.id, self.written, &mut d) {
            Status::Cut => {
                warn!(conn = %self.id, role = self.role.as_str(), "slow consumer; closing");
                self.close(
                    ctx,
                    CloseCode::TryAgainLater,
                    DisconnectReason::SlowConsumer,
                    "slow consumer",
                );
                return;
            }
            Status::NotMine => return,
            Status::Reading | Status::Closed => {}
        }
        let latency = self
            .shared
            .metrics
            .relay_seconds
            .with_label_values(&[if d.remote { "redis" } else { "local" }]);
        // One clock read for the whole batch.
        let mut now: Option<Instant> = None;
        for (pos, item, queued_at) in d.items.drain(..) {
            self.written = pos;
            match item {
                Item::Data { frame, .. } => {
                    // Frames written again after a resume were measured the first time.
                    if let Some(at) = queued_at.filter(|_| pos > self.measured) {
                        let now = *now.get_or_insert_with(Instant::now);
                        latency.observe(now.saturating_duration_since(at).as_secs_f64());
                        self.measured = pos;
                    }
                    self.marker_bytes += frame.len();
                    self.marker_frames += 1;
                    match frame {
                        Frame::Binary(b) => ctx.binary(b),
                        Frame::Text(t) => ctx.text(t),
                    }
                }
                Item::Event { text, effect } => {
                    ctx.text(text);
                    match effect {
                        EventEffect::None => {}
                        EventEffect::Detach => {
                            // The session is over for this socket; it may register again.
                            self.link = None;
                            break;
                        }
                        EventEffect::Close(code) => {
                            self.close(ctx, code, DisconnectReason::SessionOver, "");
                            break;
                        }
                    }
                }
            }
        }
        d.items.clear();
        self.drained = d;
        if self.marker_bytes >= MARKER_BYTES || self.marker_frames >= MARKER_FRAMES {
            self.send_marker(ctx);
        }
    }

    /// A ping carrying the written position: its pong proves everything
    /// before it was read.
    fn send_marker(&mut self, ctx: &mut WebsocketContext<Self>) {
        let mut marker = [0u8; 12];
        marker[..4].copy_from_slice(&self.generation.to_be_bytes());
        marker[4..].copy_from_slice(&self.written.to_be_bytes());
        ctx.ping(&marker);
        self.marker_bytes = 0;
        self.marker_frames = 0;
    }

    fn on_pong(&mut self, payload: &[u8]) {
        self.last_pong = Instant::now();
        let Ok(marker) = <[u8; 12]>::try_from(payload) else {
            return;
        };
        let (generation, pos) = marker.split_at(4);
        let generation = u32::from_be_bytes(generation.try_into().unwrap_or_default());
        let pos = u64::from_be_bytes(pos.try_into().unwrap_or_default());
        if let Some(link) = &self.link {
            // A pong can only vouch for what this link has written.
            if generation == self.generation && pos <= self.written {
                link.inbound.ack(pos);
            }
        }
    }

    /// While the gate is closed (the peer is behind), checks every second
    /// whether the peer stopped reading altogether, and keeps this socket
    /// counted as alive: it reads nothing, but its client is not silent.
    fn watch_stall(&mut self, ctx: &mut WebsocketContext<Self>) {
        if self.stall_watch.is_some() {
            return;
        }
        self.stall_watch = Some(ctx.run_interval(STALL_CHECK, |act, ctx| {
            if !act.gate.is_closed() {
                if let Some(h) = act.stall_watch.take() {
                    ctx.cancel_future(h);
                }
                return;
            }
            if let Some(live) = &act.live {
                live.touch();
            }
            if let Some(peer) = act.link.as_ref().and_then(|l| l.outbound.cut_if_stalled()) {
                act.peer_cut(peer);
            }
        }));
    }

    /// The peer was cut as a slow consumer: tell the registry now, as its
    /// socket may be stalled and only notice when the TCP cut reaches it.
    fn peer_cut(&self, peer: ConnId) {
        let Some(link) = &self.link else { return };
        warn!(conn = %peer, peer_of = %self.id, "peer stopped reading; cutting it");
        self.shared.registry.gone(Gone {
            session_id: Arc::clone(&link.session_id),
            role: self.role.peer(),
            conn: peer,
            how: Departure::Dropped,
        });
    }

    /// A data frame from the client.
    fn on_data(&mut self, frame: Frame, ctx: &mut WebsocketContext<Self>) {
        let Some(link) = &self.link else {
            self.send_error(ctx, ErrorCode::NotPaired, None);
            return;
        };
        let len = frame.len() as u64;
        let metrics = &self.shared.metrics;
        let count = |remote: bool| {
            let (frames, bytes) = if remote {
                (&metrics.frames_remote, &metrics.bytes_remote)
            } else {
                (&metrics.frames_local, &metrics.bytes_local)
            };
            frames.inc();
            bytes.inc_by(len);
        };
        match link.outbound.push(frame, &self.gate) {
            Pushed::Queued { remote } => count(remote),
            Pushed::SlowConsumer(peer) => {
                count(false);
                self.peer_cut(peer);
            }
            Pushed::Backlogged { remote } => {
                count(remote);
                self.watch_stall(ctx);
            }
            Pushed::NotPaired => {
                debug!(conn = %self.id, "data refused: not paired");
                self.send_error(ctx, ErrorCode::NotPaired, None)
            }
            Pushed::Overflow => self.shared.registry.overflowed(Overflowed {
                session_id: Arc::clone(&link.session_id),
                role: self.role.peer(),
            }),
        }
    }

    fn on_text(&mut self, text: ByteString, ctx: &mut WebsocketContext<Self>) {
        // Most text frames are data: recognised without building a message.
        if ClientMessage::is_plain_data(&text) {
            self.malformed = 0;
            self.on_data(Frame::Text(text), ctx);
            return;
        }
        let msg = match ClientMessage::parse(&text) {
            Ok(m) => m,
            Err(e) => {
                let why = format!(
                    "The relay did not understand this message ({e}). Send a JSON object with a known \"type\"; see PROTOCOL.md."
                );
                self.malformed(ctx, &why);
                return;
            }
        };
        if !matches!(msg, ClientMessage::Data { .. }) && !self.within_message_rate() {
            self.shared
                .metrics
                .rate_limited
                .with_label_values(&["messages"])
                .inc();
            let why = format!(
                "Too many control messages on this connection; send at most {} a second.",
                self.shared.config.message_rate
            );
            self.misbehaved(ctx, ErrorCode::RateLimited, &why);
            return;
        }
        let in_session = self.link.is_some();
        match (msg, self.role) {
            (ClientMessage::Data { .. }, _) => {
                self.malformed = 0;
                self.on_data(Frame::Text(text), ctx);
            }
            (ClientMessage::Ping { ts }, _) => {
                self.malformed = 0;
                self.send(ctx, &ServerMessage::Pong { ts });
            }
            (ClientMessage::Leave, _) => {
                self.malformed = 0;
                self.left = true;
                self.close(
                    ctx,
                    CloseCode::SessionOver,
                    DisconnectReason::SessionOver,
                    "left",
                );
            }
            (
                ClientMessage::Register { .. }
                | ClientMessage::Join { .. }
                | ClientMessage::Resume { .. },
                _,
            ) if in_session => {
                self.malformed(
                    ctx,
                    "This connection is already in a session; send data, ping or leave.",
                );
            }
            (_, _) if self.shared.is_draining() => self.drain(ctx),
            (ClientMessage::Register { client_id }, Role::Mac) => {
                self.malformed = 0;
                if client_id.as_ref().is_some_and(|id| id.len() > 128) {
                    self.malformed(ctx, "clientId is too long; send at most 128 characters.");
                    return;
                }
                let msg = Register {
                    client: self.client(ctx),
                    deadline: Deadline::for_request(),
                    client_id,
                };
                let registry = self.shared.registry.clone();
                self.ask(ctx, async move { registry.register(msg).await }, |r| {
                    let reply = ServerMessage::Registered {
                        code: r.code,
                        expires_at: r.expires_at,
                        session_id: r.link.session_id.to_string(),
                        resume_token: r.resume_token,
                    };
                    (r.link, reply, Vec::new())
                });
            }
            (ClientMessage::Join { code }, Role::Browser) => {
                self.malformed = 0;
                let msg = Join {
                    client: self.client(ctx),
                    deadline: Deadline::for_request(),
                    code,
                };
                let registry = self.shared.registry.clone();
                self.ask(ctx, async move { registry.join(msg).await }, |j| {
                    let reply = ServerMessage::Joined {
                        session_id: j.link.session_id.to_string(),
                        resume_token: j.resume_token,
                    };
                    (j.link, reply, Vec::new())
                });
            }
            (
                ClientMessage::Resume {
                    session_id,
                    resume_token,
                    last_seq,
                },
                role,
            ) => {
                self.malformed = 0;
                let msg = Resume {
                    client: self.client(ctx),
                    deadline: Deadline::for_request(),
                    role,
                    session_id,
                    resume_token,
                    last_seq,
                };
                let registry = self.shared.registry.clone();
                self.ask(ctx, async move { registry.resume(msg).await }, |r| {
                    let reply = ServerMessage::Resumed {
                        session_id: r.link.session_id.to_string(),
                        last_seq: r.accepted,
                    };
                    (r.link, reply, r.events)
                });
            }
            (ClientMessage::Register { .. }, Role::Browser) => {
                self.malformed(
                    ctx,
                    "register is for the Mac (/mac); a browser sends join with the code.",
                );
            }
            (ClientMessage::Join { .. }, Role::Mac) => {
                self.malformed(
                    ctx,
                    "join is for the browser (/browser); the Mac sends register.",
                );
            }
        }
    }
}

impl StreamHandler<Inbound> for Socket {
    fn handle(&mut self, item: Inbound, ctx: &mut Self::Context) {
        if let Some(live) = &self.live {
            live.touch();
        }
        match item {
            Inbound::Binary(b) => self.on_data(Frame::Binary(b), ctx),
            Inbound::Text(t) => self.on_text(t, ctx),
            Inbound::BadUtf8 => self.malformed(
                ctx,
                "Text frames must be valid UTF-8; send binary frames for raw bytes.",
            ),
            Inbound::Ping(p) => ctx.pong(&p),
            Inbound::Pong(p) => self.on_pong(&p),
            Inbound::Close(reason) => {
                self.clean_close = reason
                    .as_ref()
                    .is_some_and(|r| r.code == ws::CloseCode::Normal);
                // Echo the client's close, as RFC 6455 asks.
                if self.ending.is_none() {
                    self.ending = Some(DisconnectReason::ClientGone);
                    ctx.close(reason);
                    ctx.stop();
                }
            }
            Inbound::TooLarge => {
                let max = self.shared.config.max_frame;
                let msg = format!(
                    "This message is larger than the relay accepts ({max} bytes). Split it into smaller messages."
                );
                self.send_error(ctx, ErrorCode::MessageTooLarge, Some(&msg));
                self.close(
                    ctx,
                    CloseCode::TooLarge,
                    DisconnectReason::TooLarge,
                    "message too large",
                );
            }
            Inbound::Broken(e) => {
                info!(conn = %self.id, error = %e, "broken WebSocket framing");
                self.close(
                    ctx,
                    CloseCode::ProtocolError,
                    DisconnectReason::ProtocolError,
                    "protocol error",
                );
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client went away (EOF, reset, or after a fatal framing error).
        ctx.stop();
    }
}

/// The context's own reader gets an empty stream (see [`accept`]); nothing arrives here.
impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Socket {
    fn handle(&mut self, _: Result<ws::Message, ws::ProtocolError>, _: &mut Self::Context) {}
}

impl Handler<Wake> for Socket {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.flush(ctx);
    }
}

impl Handler<ConnCommand> for Socket {
    type Result = ();

    fn handle(&mut self, cmd: ConnCommand, ctx: &mut Self::Context) {
        match cmd {
            ConnCommand::Drain => self.drain(ctx),
            ConnCommand::Replaced => {
                info!(conn = %self.id, role = self.role.as_str(), "replaced by a resumed connection");
                self.close(
                    ctx,
                    CloseCode::Replaced,
                    DisconnectReason::Replaced,
                    "replaced",
                );
            }
        }
    }
}
