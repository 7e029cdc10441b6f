//! One actor per WebSocket: the handshake (`register`/`join`/`resume`),
//! heartbeat, the client's frames in, the pipe's frames out, and closing with
//! the right code. All socket I/O of the relay is in this module: the actor
//! owns its connection after the HTTP upgrade (`upgrade.rs`) and runs the
//! WebSocket framing itself (`pump.rs`, `decode.rs`). A client of the HTTP
//! transport gets the same actor, its edge a virtual connection
//! (`virtual_conn.rs`) that `crate::http` fills and empties.

mod beat;
pub mod decode;
mod frames;
pub mod io;
mod messages;
mod pump;
#[cfg(test)]
mod tests;
mod upgrade;
mod virtual_conn;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_codec::Framed;
use actix_http::Request;
use actix_http::ws::{self, CloseReason};
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
use io::{Io, Upgraded};
use pump::{Out, Pump};
pub use upgrade::refuse;
pub use virtual_conn::{Closed, Collected, Heard, ReceiveRefused, SendStep, VirtualConn};

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
}

/// Answers a WebSocket upgrade on `/mac` or `/browser` and starts its actor,
/// which owns the connection from then on; refuses (400) a request that is
/// not a valid RFC 6455 upgrade.
pub async fn accept<T: Upgraded>(
    req: Request,
    framed: Framed<T, actix_http::h1::Codec>,
    role: Role,
    arrival: Arrival,
    shared: Arc<Shared>,
) {
    let timeout = shared.config.handshake_timeout;
    if let Ok((io, rest)) = upgrade::switch(&req, framed, timeout).await {
        start(io.into_io(), &rest, role, arrival, shared);
    }
}

/// Starts the actor of an upgraded connection; `rest` is what the client
/// sent after its request, already read.
pub fn start(
    io: Io,
    rest: &[u8],
    role: Role,
    arrival: Arrival,
    shared: Arc<Shared>,
) -> Addr<Socket> {
    let mut frames = Frames::new(shared.config.max_frame);
    frames.extend(rest);
    spawn(Some(io), frames, Out::default(), role, arrival, shared)
}

/// Starts the actor of a virtual connection (the HTTP transport): the same
/// actor as a WebSocket's, whose edge is `conn`.
pub fn start_virtual(
    conn: Arc<VirtualConn>,
    role: Role,
    arrival: Arrival,
    shared: Arc<Shared>,
) -> Addr<Socket> {
    let frames = Frames::new(shared.config.max_frame);
    spawn(None, frames, Out::virtual_conn(conn), role, arrival, shared)
}

fn spawn(
    io: Option<Io>,
    frames: Frames,
    out: Out,
    role: Role,
    arrival: Arrival,
    shared: Arc<Shared>,
) -> Addr<Socket> {
    let Arrival {
        addr,
        slot,
        origin_allowed,
    } = arrival;
    Socket {
        id: ConnId::next(),
        role,
        addr,
        shared,
        killer: Some(Arc::new(Killer::new())),
        _slot: slot,
        origin_allowed,
        gate: Gate::new(),
        stall_watch: None,
        live: None,
        io,
        frames,
        out,
        held: false,
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
    }
    .start()
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
    /// The client's connection; gone once the actor stops or it is cut.
    io: Option<Io>,
    /// What was read from the client and not yet handled.
    frames: Frames,
    /// What is still to be written to the client.
    out: Out,
    /// The pipe was left undrained while the client was behind on reading.
    held: bool,
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
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let cfg = Arc::clone(&self.shared.config);
        ctx.spawn(Pump);
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
        // Pings and their timeouts come from this thread's one timer (beat.rs).
        beat::ping_after(cfg.heartbeat_interval, ctx.address().downgrade());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.retire();
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
    fn arm_handshake_timer(&mut self, ctx: &mut Context<Self>) {
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

    fn cancel_handshake_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.handshake_timer.take() {
            ctx.cancel_future(h);
        }
    }

    /// Closes with `code` and stops; the first reason given wins.
    fn close(
        &mut self,
        ctx: &mut Context<Self>,
        code: CloseCode,
        reason: DisconnectReason,
        description: &str,
    ) {
        if self.ending.is_some() {
            return;
        }
        self.ending = Some(reason);
        let description = (!description.is_empty()).then(|| description.to_owned());
        self.out.close(Some(CloseReason {
            code: ws::CloseCode::from(code.code()),
            description,
        }));
        ctx.stop();
    }

    fn send(&self, _: &mut Context<Self>, msg: &ServerMessage) {
        self.out.text(msg.to_text());
    }

    fn send_error(&self, ctx: &mut Context<Self>, code: ErrorCode, message: Option<&str>) {
        self.shared.metrics.error_sent(code);
        let message = message.unwrap_or(code.default_message());
        self.send(ctx, &ServerMessage::error_with(code, message));
    }

    fn refuse(&mut self, ctx: &mut Context<Self>, r: Refusal) {
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
    fn malformed(&mut self, ctx: &mut Context<Self>, why: &str) {
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
    fn misbehaved(&mut self, ctx: &mut Context<Self>, code: ErrorCode, why: &str) {
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

    fn drain(&mut self, ctx: &mut Context<Self>) {
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

impl Socket {
    /// One thing read from the client.
    fn on_inbound(&mut self, item: Inbound, ctx: &mut Context<Self>) {
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
            Inbound::Ping(p) => self.out.pong(&p),
            Inbound::Pong(p) => self.on_pong(&p),
            Inbound::Close(reason) => {
                self.clean_close = reason
                    .as_ref()
                    .is_some_and(|r| r.code == ws::CloseCode::Normal);
                // Echo the client's close, as RFC 6455 asks.
                if self.ending.is_none() {
                    self.ending = Some(DisconnectReason::ClientGone);
                    self.out.close(reason);
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
