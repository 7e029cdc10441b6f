//! One actor per WebSocket: the handshake (`register`/`join`/`resume`),
//! heartbeat, the client's frames in, the pipe's frames out, and closing with
//! the right code. All socket I/O of the relay is in this module; nothing
//! outside it knows actix-web-actors.

pub mod decode;
mod frames;
mod messages;
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
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use relay_protocol::{CloseCode, ErrorCode, Role, ServerMessage};
use tracing::{debug, info, warn};

use crate::admission::Slot;
use crate::config::Config;
use crate::conns::Connections;
use crate::conns::{ConnCommand, ConnId, Killer, Liveness};
use crate::frame::Frame;
use crate::gate::Gate;
use crate::metrics::DisconnectReason;
use crate::metrics::Metrics;
use crate::outbound::Target;
use crate::pipe::Wake;
use crate::queue::Drained;
use crate::registry::RegistryHandle;
use crate::registry::{Departure, Gone, Link, Refusal};
use crate::shutdown::Draining;
use decode::{Frames, Inbound};

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
        target: Target::All,
        last_from: None,
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
    /// A room host's target (its last `to`).
    target: Target,
    /// The guest whose frames a room host was last told it hears (`from`).
    last_from: crate::frame::Sender,
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
            member: link.member,
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
            ConnCommand::Ended(code) => {
                info!(conn = %self.id, code = code.as_str(), "ended by the room's host");
                // Nothing more of the session reaches this socket.
                self.link = None;
                self.send_error(ctx, code, None);
                self.close(
                    ctx,
                    CloseCode::SessionOver,
                    DisconnectReason::SessionOver,
                    "",
                );
            }
        }
    }
}
