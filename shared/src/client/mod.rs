//! A client of the relay that survives dropped networks, node restarts and
//! load-balancer reshuffles: it reconnects with backoff, resumes the session,
//! re-sends what the relay did not get and hands the application every data
//! frame exactly once, in order.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use relay_protocol::client::{Client, Config, Event};
//!
//! // The mac side: get a code, show it, then talk.
//! let (mac, mut events) = Client::mac(Config::new("ws://relay.example:8080"));
//! while let Some(ev) = events.next().await {
//!     match ev {
//!         Event::Registered { code, page, .. } => println!("open {page} and type {code}"),
//!         Event::Retrying { delay, cause, .. } => println!("{cause}; retrying in {delay:?}"),
//!         Event::PeerJoined => mac.send_text("hello").await?,
//!         Event::Data(d) => println!("got {d:?}"),
//!         Event::Ended(why) => { println!("over: {why}"); break }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The browser side is the same with [`Client::browser`] and a code. Only
//! available with the crate's `client` feature.

pub mod backoff;
mod config;
mod conn;
mod e2e;
mod failure;
mod http;
mod link;
pub mod outbox;
mod room;
pub mod url;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

pub use backoff::{AfterClose, Backoff, Next, Reconnector};
pub use config::{Config, Room};
pub use e2e::{HANDSHAKE_TIMEOUT, MISMATCH};
pub use link::{Transport, TransportMode, Transports};
pub use outbox::{OutboxLimits, QueueFull, Target};
pub use url::{RelayUrl, UrlError, page_url};

use crate::{ClientMessage, ErrorCode, GuestId, GuestLeftReason, PeerLeftReason, Role};

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The first connection is being made.
    Connecting,
    /// Connected, and the session (if any) taken back.
    Connected,
    /// The connection dropped; the next attempt is number `attempt`.
    Reconnecting {
        /// Attempts since the last success.
        attempt: u32,
    },
    /// Not connected and not trying: the session ended or the client gave up.
    Disconnected,
}

/// A data frame from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// The `payload` of a `data` text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

/// Why a session ended for this client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ended {
    /// This client called [`Client::leave`].
    #[error("left")]
    Left,
    /// The mac ended the session (browser side).
    #[error("the mac ended the session")]
    MacDisconnected,
    /// The relay refused the client (e.g. `INVALID_CODE`) or the session cannot be resumed.
    #[error("{code}: {message}")]
    Refused {
        /// The protocol's error code.
        code: ErrorCode,
        /// The relay's sentence.
        message: String,
    },
    /// The relay closed the connection with a code that means stop.
    #[error("closed by the relay ({0})")]
    Closed(u16),
    /// Reconnecting gave up after the configured number of attempts.
    #[error("gave up reconnecting after {0} attempts")]
    GaveUp(u32),
    /// The relay's address is wrong (scheme, path, or an HTTP answer that
    /// retrying will not change); reported before the first connection only.
    #[error(transparent)]
    BadUrl(#[from] UrlError),
    /// End-to-end encryption: the key confirmation failed on this side or
    /// the other, so the session was not continued (one guess per code).
    #[error("{}", e2e::MISMATCH)]
    CodeMismatch,
    /// End-to-end encryption: a frame was altered, dropped, replayed,
    /// reordered or injected on the way; the session was stopped.
    #[error("the session was tampered with on the way: {0}")]
    Tampered(String),
    /// End-to-end encryption: one side encrypts and the other does not.
    #[error("{0}")]
    NotEncrypted(String),
}

/// Something that happened, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The connection state changed.
    State(State),
    /// Mac: the code to show, valid until `expires_at` (unix ms).
    Registered {
        /// The code.
        code: String,
        /// When it stops being valid for joining.
        expires_at: u64,
        /// The page where a person types the code (`http://host:port/`),
        /// served by the relay that registered it.
        page: String,
    },
    /// Mac: the relay no longer knows the session (`INVALID_RESUME` after a
    /// restart, or `RESUME_EXPIRED`); the client registers again and
    /// [`Event::Registered`] follows with a new code. Only with
    /// [`Config::reregister_on_lost_session`].
    SessionLost {
        /// The relay's refusal.
        code: ErrorCode,
        /// The relay's sentence.
        message: String,
        /// Frames this client sent or queued that the relay had not
        /// confirmed; they are dropped and may not have reached the peer.
        unconfirmed: u64,
    },
    /// A connection attempt failed or the connection dropped: the next
    /// attempt, how long until it, and what went wrong. Follows
    /// [`State::Reconnecting`] with the same attempt number.
    Retrying {
        /// The attempt that comes next (1 after a drop).
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// What went wrong, for a person (e.g. "connection refused at ws://…").
        cause: String,
    },
    /// Mac: the code expired with no browser; call [`Client::register`] for a new one.
    CodeExpired {
        /// The code that expired.
        code: String,
    },
    /// Browser: joined the session (in a room: admitted; [`Client::guest_id`] says as whom).
    Joined,
    /// Browser, in a room that asks: the host is deciding whether to let this
    /// client in; [`Event::Joined`] or [`Ended::Refused`] (`DENIED`) follows.
    Waiting {
        /// The id the relay gave this guest.
        guest: GuestId,
    },
    /// Room host: a guest joined with the code (it waits for
    /// [`Client::admit`] unless the room admits all).
    GuestJoined {
        /// The guest.
        guest: GuestId,
        /// The name it gave, if any.
        name: Option<String>,
    },
    /// Room host: the guest is in the room; frames to all reach it.
    GuestAdmitted(GuestId),
    /// Room host: the guest is gone for good.
    GuestLeft {
        /// The guest.
        guest: GuestId,
        /// Why.
        reason: GuestLeftReason,
    },
    /// Room host: the guest's connection dropped; frames for it are kept while it may resume.
    GuestAway(GuestId),
    /// Room host: the guest resumed.
    GuestBack(GuestId),
    /// Room host, end-to-end encrypted: the guest's key exchange succeeded
    /// (its own keys); comes just before its [`Event::GuestAdmitted`].
    GuestEncrypted(GuestId),
    /// Room host, end-to-end encrypted: the guest's exchange or a frame of
    /// it failed; it was removed ([`Event::GuestLeft`] follows).
    GuestFailed {
        /// The guest.
        guest: GuestId,
        /// What failed, as [`Event::Ended`] would say it (of the guest: "it ...").
        why: Ended,
    },
    /// Room host, end-to-end encrypted: the guest left for good without its end frame.
    GuestUnfinished(GuestId),
    /// Room host: a data frame from one guest (a pairing's, and a guest's
    /// own, data is [`Event::Data`]).
    GuestData {
        /// The guest it came from.
        guest: GuestId,
        /// The frame.
        data: Data,
    },
    /// Mac: a browser joined.
    PeerJoined,
    /// Mac: the browser is gone for good.
    PeerLeft(PeerLeftReason),
    /// The peer dropped and may come back.
    PeerDisconnected,
    /// The peer came back.
    PeerResumed,
    /// The session was taken back on a new connection.
    Resumed,
    /// The connection moved to `transport`; never sent to a client that stays on WebSocket.
    Transport {
        /// The transport in use from now on.
        transport: Transport,
        /// Why it changed (e.g. the WebSocket upgrade was refused).
        cause: String,
    },
    /// A data frame from the peer.
    Data(Data),
    /// Round trip of the last app-level ping.
    Latency(Duration),
    /// An error the session survives (e.g. `NOT_PAIRED`).
    Error {
        /// The protocol's error code.
        code: ErrorCode,
        /// The relay's sentence.
        message: String,
    },
    /// Frames the relay lost that this client could no longer re-send.
    Lost(u64),
    /// End-to-end encryption: the key exchange succeeded; from now on the
    /// relay sees only ciphertext. Comes just before `PeerJoined` or `Joined`.
    Encrypted,
    /// End-to-end encryption: the peer is gone for good without its
    /// end-of-session frame, so its last frames may have been cut (a crash
    /// looks the same).
    Unfinished,
    /// The session is over for this client; no more events follow.
    Ended(Ended),
}

/// Why a frame was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No peer to send to (mac before a browser joined, or after it left;
    /// a guest not admitted yet).
    #[error("no peer is connected; wait for one to join")]
    NotPaired,
    /// A room command or a frame for one guest from a client that is not a room host.
    #[error("only a room host can address guests (register with Config::room)")]
    NotRoomHost,
    /// Too many room commands wait for the connection to come back.
    #[error("too many room commands wait for the connection; wait for it to come back")]
    TooManyCommands,
    /// The outbound queue is full while reconnecting.
    #[error(transparent)]
    Full(#[from] QueueFull),
    /// The session is over.
    #[error("the session is over")]
    Ended,
}

/// Commands from the application to the connection task.
#[derive(Debug)]
enum Command {
    Send(
        outbox::Addressed,
        tokio::sync::oneshot::Sender<Result<(), SendError>>,
    ),
    /// `admit`, `deny` or `remove`.
    Room(
        ClientMessage,
        tokio::sync::oneshot::Sender<Result<(), SendError>>,
    ),
    Register,
    Reconnect,
    Leave,
}

/// The application's handle on a client; cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<State>,
    latency: watch::Receiver<Option<Duration>>,
    guest_id: watch::Receiver<Option<GuestId>>,
}

/// The stream of [`Event`]s of one client.
#[derive(Debug)]
pub struct Events(mpsc::Receiver<Event>);

impl Events {
    /// The next event; `None` after [`Event::Ended`].
    pub async fn next(&mut self) -> Option<Event> {
        self.0.recv().await
    }
}

/// Events queued for the application before the client stops reading the
/// relay (so a slow application slows the relay down instead of using memory).
const EVENT_QUEUE: usize = 1024;

impl Client {
    /// Starts a mac: connects, registers, and keeps the session up.
    pub fn mac(config: Config) -> (Client, Events) {
        Self::start(config, Role::Mac, None, None)
    }

    /// Starts a browser: connects, joins with `code` (as typed), and keeps
    /// the session up. A full code (`6YM9AQ-K7P3X`, or a link with one in
    /// its fragment) encrypts end to end; only its first six characters go
    /// to the relay.
    pub fn browser(config: Config, code: impl Into<String>) -> (Client, Events) {
        let code = code.into();
        match crate::e2e::FullCode::parse(&code) {
            Ok(full) if full.secret.is_some() || config.e2e => {
                let relay = full.relay.to_string();
                let side = e2e::Side::Joiner(full.relay, full.secret);
                Self::start(config, Role::Browser, Some(relay), Some(side))
            }
            // A plain code, or one the relay will refuse as it stands.
            _ => Self::start(config, Role::Browser, Some(code), None),
        }
    }

    fn start(
        config: Config,
        role: Role,
        code: Option<String>,
        e2e: Option<e2e::Side>,
    ) -> (Client, Events) {
        let e2e = match (role, e2e) {
            (Role::Mac, _) if config.e2e && config.room.is_some() => Some(e2e::Side::RoomHost),
            (Role::Mac, _) if config.e2e => Some(e2e::Side::Host),
            (_, side) => side,
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let (state_tx, state_rx) = watch::channel(State::Connecting);
        let (lat_tx, lat_rx) = watch::channel(None);
        let (guest_tx, guest_rx) = watch::channel(None);
        let (transport_tx, _) = watch::channel(Transport::WebSocket);
        let watches = conn::Watches {
            state: state_tx,
            latency: lat_tx,
            guest_id: guest_tx,
            transport: transport_tx,
        };
        let (cmd_tx, ev_rx) = match e2e {
            None => {
                tokio::spawn(conn::run(conn::Task::new(
                    config, role, code, cmd_rx, ev_tx, watches,
                )));
                (cmd_tx, ev_rx)
            }
            Some(side) => {
                // The application's handle talks to the encryption task,
                // which talks to the connection task.
                let (outer_cmd_tx, outer_cmd_rx) = mpsc::channel(64);
                let (outer_ev_tx, outer_ev_rx) = mpsc::channel(EVENT_QUEUE);
                let timeout = config.e2e_timeout;
                tokio::spawn(conn::run(conn::Task::new(
                    config, role, code, cmd_rx, ev_tx, watches,
                )));
                tokio::spawn(e2e::run(e2e::Task::new(
                    side,
                    timeout,
                    guest_rx.clone(),
                    outer_cmd_rx,
                    outer_ev_tx,
                    cmd_tx,
                    ev_rx,
                )));
                (outer_cmd_tx, outer_ev_rx)
            }
        };
        (
            Client {
                commands: cmd_tx,
                state: state_rx,
                latency: lat_rx,
                guest_id: guest_rx,
            },
            Events(ev_rx),
        )
    }

    /// Sends `payload` as a `data` text frame. While reconnecting it is queued
    /// (bounded); it reaches the peer exactly once, in order.
    ///
    /// # Errors
    /// [`SendError`] when there is no peer, the queue is full, or the session is over.
    pub async fn send_text(&self, payload: &str) -> Result<(), SendError> {
        self.send_text_to(Target::All, payload).await
    }

    /// Sends `data` as a binary frame (see [`Client::send_text`]).
    ///
    /// # Errors
    /// [`SendError`] as for [`Client::send_text`].
    pub async fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_binary_to(Target::All, data).await
    }

    /// Room host: sends `payload` as a `data` text frame to `to` (one guest,
    /// or all admitted guests). It keeps its target across reconnects and
    /// resumes: a frame for one guest never reaches another.
    ///
    /// # Errors
    /// As [`Client::send_text`], and [`SendError::NotRoomHost`] for a
    /// [`Target::Guest`] from a client that is not a room host.
    pub async fn send_text_to(&self, to: Target, payload: &str) -> Result<(), SendError> {
        let text = serde_json::json!({"type": "data", "payload": payload}).to_string();
        self.send(to, outbox::OutFrame::Text(text)).await
    }

    /// Room host: sends `data` as a binary frame to `to` (see [`Client::send_text_to`]).
    ///
    /// # Errors
    /// As [`Client::send_text_to`].
    pub async fn send_binary_to(
        &self,
        to: Target,
        data: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.send(to, outbox::OutFrame::Binary(data.into())).await
    }

    async fn send(&self, to: Target, frame: outbox::OutFrame) -> Result<(), SendError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Send(outbox::Addressed { to, frame }, tx))
            .await
            .map_err(|_| SendError::Ended)?;
        rx.await.map_err(|_| SendError::Ended)?
    }

    /// Room host: lets a waiting guest in ([`Event::GuestAdmitted`] follows).
    /// Like every room command, it takes effect after the frames sent
    /// before it and before those sent after it, also across reconnects.
    ///
    /// # Errors
    /// [`SendError::NotRoomHost`], [`SendError::TooManyCommands`] or [`SendError::Ended`].
    pub async fn admit(&self, guest: GuestId) -> Result<(), SendError> {
        self.room(ClientMessage::Admit { guest_id: guest }).await
    }

    /// Room host: turns a waiting guest away (it is told `DENIED`).
    ///
    /// # Errors
    /// As [`Client::admit`].
    pub async fn deny(&self, guest: GuestId) -> Result<(), SendError> {
        self.room(ClientMessage::Deny { guest_id: guest }).await
    }

    /// Room host: ends a guest, waiting or admitted, at once (it is told
    /// `REMOVED` and cannot resume); no frame sent after this reaches it.
    ///
    /// # Errors
    /// As [`Client::admit`].
    pub async fn remove(&self, guest: GuestId) -> Result<(), SendError> {
        self.room(ClientMessage::Remove { guest_id: guest }).await
    }

    async fn room(&self, m: ClientMessage) -> Result<(), SendError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Room(m, tx))
            .await
            .map_err(|_| SendError::Ended)?;
        rx.await.map_err(|_| SendError::Ended)?
    }

    /// Mac: asks for a new code (after [`Event::CodeExpired`]).
    pub async fn register(&self) {
        let _ = self.commands.send(Command::Register).await;
    }

    /// Drops the connection and reconnects at once, resuming the session.
    pub async fn reconnect(&self) {
        let _ = self.commands.send(Command::Reconnect).await;
    }

    /// Ends this side of the session for good.
    pub async fn leave(&self) {
        let _ = self.commands.send(Command::Leave).await;
    }

    /// The current connection state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Browser in a room: the id the relay gave this guest (known from
    /// [`Event::Waiting`] or [`Event::Joined`]); `None` in a pairing.
    pub fn guest_id(&self) -> Option<GuestId> {
        *self.guest_id.borrow()
    }

    /// Round trip of the last app-level ping, if one was answered.
    pub fn latency(&self) -> Option<Duration> {
        *self.latency.borrow()
    }
}
