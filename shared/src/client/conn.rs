//! The client's connection task: connect, take the session (register, join
//! or resume), pump frames both ways, and on a drop decide from the close
//! code whether to reconnect. One task per client; the application talks to
//! it through [`super::Client`] and hears from it through [`super::Events`].

use std::collections::HashMap;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tracing::debug;

use super::backoff::{AfterClose, Next, Reconnector, after_close};
use super::failure::{Cause, DROPPED, Failure, closed_by_relay};
use super::link::{Link, Transport, Tx};
use super::outbox::{Addressed, OutFrame, Outbox, Target};
use super::room::Commands;
use super::url::{RelayUrl, UrlError};
use super::{Command, Config, Data, Ended, Event, SendError, State};
use crate::{ClientMessage, GuestId, GuestSeqs, Role, ServerMessage};
use dial::Switched;

mod dial;
mod refusal;
mod rooms;

/// Close code a client sends when it reconnects on purpose: not 1000, so the
/// relay keeps the session for the grace period.
const RECONNECTING: u16 = 4002;

/// How one connection ended.
enum Outcome {
    /// Reconnect as the close code says.
    Closed(AfterClose, Cause),
    /// The application asked to reconnect now (or the transport failed
    /// over): connect again at once.
    Reconnect,
    /// A better transport answered: resume on this link at once.
    Switch(Link),
    /// The session is over.
    Ended(Ended),
}

/// What the application can read at any time, written by the task.
pub(super) struct Watches {
    pub(super) state: watch::Sender<State>,
    pub(super) latency: watch::Sender<Option<std::time::Duration>>,
    pub(super) guest_id: watch::Sender<Option<GuestId>>,
    pub(super) transport: watch::Sender<Transport>,
}

pub(super) struct Task {
    config: Config,
    /// `config.urls`, checked; empty until [`run`] checked them.
    urls: Vec<RelayUrl>,
    /// Index in `urls` of the last connection attempt.
    current: usize,
    /// A connection was made once: from then on an odd HTTP answer is a
    /// passing state of the infrastructure, not a wrong address.
    ever_connected: bool,
    role: Role,
    /// Browser: the code to join with (until joined).
    code: Option<String>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    watches: Watches,
    /// `sessionId` and `resumeToken`, once registered or joined.
    session: Option<(String, String)>,
    /// Mac: register on the next connection.
    want_register: bool,
    /// Data frames received in the session (the `lastSeq` to resume with).
    received: u64,
    outbox: Outbox,
    /// A peer is there to take data (it may be away; the relay keeps its frames).
    paired: bool,
    reconnector: Reconnector,
    next_url: usize,
    next_ping: u64,
    pings: HashMap<u64, Instant>,
    /// Mac: registers as a room host (from the config).
    room_host: bool,
    /// Room host: admit, deny and remove, in their place among the frames.
    room_commands: Commands,
    /// Room host: the target the relay holds for this connection (a new
    /// connection starts at all).
    wire_target: Target,
    /// Room host: the guest the last `from` on this connection named.
    from: Option<GuestId>,
    /// Room host: data frames received from each guest (`guestSeqs`).
    guest_seqs: GuestSeqs,
    /// The HTTP transport's connection pool and what it learned of the path.
    http: super::http::Dialer,
    /// Auto: the WebSocket did not work last time, so connect over HTTP
    /// (a probe brings the client back to WebSocket).
    prefer_http: bool,
    /// Why the transport last changed, for the [`Event::Transport`] to come.
    transport_cause: Option<String>,
}

impl Task {
    pub(super) fn new(
        config: Config,
        role: Role,
        code: Option<String>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        watches: Watches,
    ) -> Self {
        let reconnector = Reconnector::new(config.backoff, config.max_retries);
        let outbox = Outbox::new(config.outbox);
        let room_host = role == Role::Mac && config.room.is_some();
        let http =
            super::http::Dialer::new(config.connect_timeout, config.transports.fallback_after);
        Task {
            config,
            urls: Vec::new(),
            current: 0,
            ever_connected: false,
            want_register: role == Role::Mac,
            role,
            code,
            commands,
            events,
            watches,
            session: None,
            received: 0,
            outbox,
            paired: false,
            reconnector,
            next_url: 0,
            next_ping: 0,
            pings: HashMap::new(),
            room_host,
            room_commands: Commands::default(),
            wire_target: Target::All,
            from: None,
            guest_seqs: GuestSeqs::new(),
            http,
            prefer_http: false,
            transport_cause: None,
        }
    }

    async fn emit(&self, e: Event) {
        // The application dropped its events: nothing to tell.
        let _ = self.events.send(e).await;
    }

    async fn set_state(&self, s: State) {
        if *self.watches.state.borrow() != s {
            let _ = self.watches.state.send(s);
            self.emit(Event::State(s)).await;
        }
    }

    /// Checks every configured address; the first mistake ends the client.
    fn check_urls(&mut self) -> Result<(), UrlError> {
        if self.config.urls.is_empty() {
            // No address at all reads as an empty one.
            return Err(UrlError::NoHost { url: String::new() });
        }
        self.urls = self
            .config
            .urls
            .iter()
            .map(|u| RelayUrl::parse(u))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Waits before the next attempt; false when the client gives up or the
    /// application leaves meanwhile.
    async fn wait_to_retry(&mut self, how: AfterClose, cause: Cause) -> bool {
        match self.reconnector.failed(how, rand::random::<f64>()) {
            Next::GiveUp => {
                self.end(Ended::GaveUp(self.reconnector.attempt())).await;
                false
            }
            Next::Retry(delay) => {
                let attempt = self.reconnector.attempt();
                self.set_state(State::Reconnecting { attempt }).await;
                self.emit(Event::Retrying {
                    attempt,
                    delay,
                    cause: cause.into_owned(),
                })
                .await;
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => return true,
                        cmd = self.commands.recv() => match cmd {
                            None | Some(Command::Leave) => {
                                self.end(Ended::Left).await;
                                return false;
                            }
                            Some(Command::Reconnect) => return true,
                            Some(Command::Register) => self.want_register = true,
                            Some(Command::Send(f, reply)) => {
                                let _ = reply.send(self.queue(f));
                            }
                            Some(Command::Room(m, reply)) => {
                                let _ = reply.send(self.queue_room(m));
                            }
                        },
                    }
                }
            }
        }
    }

    async fn end(&mut self, why: Ended) {
        let _ = self.watches.state.send(State::Disconnected);
        self.emit(Event::State(State::Disconnected)).await;
        self.emit(Event::Ended(why)).await;
    }

    fn queue(&mut self, f: Addressed) -> Result<(), SendError> {
        if f.to != Target::All && !self.room_host {
            return Err(SendError::NotRoomHost);
        }
        if !self.paired {
            return Err(SendError::NotPaired);
        }
        self.outbox.push(f).map_err(SendError::from)
    }

    /// Runs one connection; returns how it ended.
    async fn session(&mut self, link: Link) -> Outcome {
        let Link {
            mut tx,
            mut rx,
            transport,
        } = link;
        self.on_transport(transport).await;
        // The relay's view of this connection starts afresh.
        self.wire_target = Target::All;
        self.from = None;
        self.room_commands.reconnected();
        let hello = match (&self.session, self.role) {
            (Some((id, token)), _) => Some(ClientMessage::Resume {
                session_id: id.clone(),
                resume_token: token.clone(),
                last_seq: self.received,
                guest_seqs: self.guest_seqs.clone(),
            }),
            (None, Role::Mac) if self.want_register => Some(self.register_message()),
            (None, Role::Mac) => None,
            (None, Role::Browser) => self.code.clone().map(|code| ClientMessage::Join {
                code,
                name: self.config.name.clone(),
            }),
        };
        let mut switch = self.switch(transport, hello.is_some());
        if let Some(m) = hello {
            if tx.send(Message::text(m.to_text())).await.is_err() {
                return Outcome::Closed(AfterClose::Reconnect, DROPPED);
            }
        }
        let mut taken = false; // the session is up on this connection
        let mut ticker = tokio::time::interval(self.config.ping_every);
        ticker.tick().await;
        loop {
            if taken && self.paired {
                if let Err(o) = self.flush(&mut tx).await {
                    return o;
                }
            }
            tokio::select! {
                msg = rx.next() => {
                    let silent = switch.heard();
                    match self.on_message(msg, &mut tx, &mut taken).await {
                        Ok(()) => {}
                        Err(o) => return self.dropped(o, silent),
                    }
                }
                sw = switch.next() => match sw {
                    Switched::Silent => return self.silent(),
                    // Only a session can move (a waiting guest has no token).
                    Switched::Upgraded(ws) if taken && self.session.is_some() => {
                        return self.upgraded(ws);
                    }
                    Switched::Upgraded(_) => switch.later(),
                },
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Send(f, reply)) => {
                        let _ = reply.send(self.queue(f));
                    }
                    Some(Command::Room(m, reply)) => {
                        let _ = reply.send(self.queue_room(m));
                    }
                    Some(Command::Register) => {
                        if self.role == Role::Mac && self.session.is_none() {
                            let m = self.register_message();
                            if tx.send(Message::text(m.to_text())).await.is_err() {
                                return Outcome::Closed(AfterClose::Reconnect, DROPPED);
                            }
                        }
                    }
                    Some(Command::Reconnect) => {
                        close(&mut tx, RECONNECTING).await;
                        return Outcome::Reconnect;
                    }
                    None | Some(Command::Leave) => {
                        let _ = tx.send(Message::text(ClientMessage::Leave.to_text())).await;
                        let _ = tokio::time::timeout(self.config.connect_timeout, async {
                            while let Some(Ok(m)) = rx.next().await {
                                if matches!(m, Message::Close(_)) {
                                    break;
                                }
                            }
                        })
                        .await;
                        return Outcome::Ended(Ended::Left);
                    }
                },
                _ = ticker.tick() => {
                    if taken {
                        let m = self.ping();
                        if tx.send(m).await.is_err() {
                            return Outcome::Closed(AfterClose::Reconnect, DROPPED);
                        }
                    }
                }
            }
        }
    }

    /// A ping, counted as the sync point of every frame and room command
    /// written before it.
    fn ping(&mut self) -> Message {
        self.next_ping += 1;
        let ts = self.next_ping;
        self.pings.insert(ts, Instant::now());
        self.outbox.ping_sent(ts);
        self.room_commands.ping_sent(ts);
        Message::text(ClientMessage::Ping { ts: ts.into() }.to_text())
    }

    /// Writes what waits (a room host's commands in their place among the
    /// frames, and a `to` before each frame whose target differs from the
    /// connection's); when too much is unconfirmed, asks for a pong first.
    async fn flush(&mut self, tx: &mut Tx) -> Result<(), Outcome> {
        let dropped = || Outcome::Closed(AfterClose::Reconnect, DROPPED);
        loop {
            while let Some(c) = self.room_commands.due(self.outbox.total_sent()) {
                tx.feed(Message::text(c.to_text()))
                    .await
                    .map_err(|_| dropped())?;
            }
            let Some(Addressed { to, frame }) = self.outbox.next_to_send() else {
                break;
            };
            if to != self.wire_target {
                let guest_id = match to {
                    Target::All => None,
                    Target::Guest(id) => Some(id),
                };
                let m = ClientMessage::To { guest_id };
                tx.feed(Message::text(m.to_text()))
                    .await
                    .map_err(|_| dropped())?;
                self.wire_target = to;
            }
            let m = match frame {
                OutFrame::Text(t) => Message::text(t),
                OutFrame::Binary(b) => Message::binary(b),
            };
            tx.feed(m).await.map_err(|_| dropped())?;
        }
        if self.outbox.blocked() && self.pings.len() < 2 {
            let m = self.ping();
            tx.feed(m).await.map_err(|_| dropped())?;
        }
        tx.flush()
            .await
            .map_err(|_| Outcome::Closed(AfterClose::Reconnect, DROPPED))
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Message, super::link::LinkError>>,
        tx: &mut Tx,
        taken: &mut bool,
    ) -> Result<(), Outcome> {
        let msg = match msg {
            Some(Ok(m)) => m,
            None | Some(Err(_)) => return Err(Outcome::Closed(AfterClose::Reconnect, DROPPED)),
        };
        match msg {
            Message::Binary(b) => self.data(Data::Binary(b)).await,
            Message::Text(t) => match ServerMessage::parse(&t) {
                Ok(m) => self.on_control(m, tx, taken).await?,
                Err(e) => debug!(error = %e, "unreadable message from the relay"),
            },
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                return Err(match after_close(code) {
                    AfterClose::Stop => Outcome::Ended(Ended::Closed(code.unwrap_or(1000))),
                    how => Outcome::Closed(how, closed_by_relay(code)),
                });
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_control(
        &mut self,
        m: ServerMessage,
        tx: &mut Tx,
        taken: &mut bool,
    ) -> Result<(), Outcome> {
        match m {
            ServerMessage::Data { payload } => self.data(Data::Text(payload)).await,
            ServerMessage::Registered {
                code,
                expires_at,
                session_id,
                resume_token,
                ..
            } => {
                // A new session: counts start over.
                self.session = Some((session_id, resume_token));
                self.outbox = Outbox::new(self.config.outbox);
                self.room_commands.clear();
                // A room host's frames are always accepted, guests or not.
                self.paired = self.room_host;
                self.want_register = false;
                self.received = 0;
                self.guest_seqs.clear();
                self.took(taken).await;
                let page = self.urls[self.current].page();
                self.emit(Event::Registered {
                    code,
                    expires_at,
                    page,
                })
                .await;
            }
            ServerMessage::Joined {
                session_id,
                resume_token,
                guest_id,
            } => {
                if guest_id.is_some() {
                    let _ = self.watches.guest_id.send(guest_id);
                }
                self.session = Some((session_id, resume_token));
                self.code = None;
                self.paired = true;
                self.took(taken).await;
                self.emit(Event::Joined).await;
            }
            ServerMessage::Resumed { last_seq, .. } => {
                let r = self.outbox.resumed(last_seq);
                self.took(taken).await;
                self.emit(Event::Resumed).await;
                if r.lost > 0 {
                    self.emit(Event::Lost(r.lost)).await;
                }
            }
            ServerMessage::PeerJoined => {
                self.paired = true;
                self.emit(Event::PeerJoined).await;
            }
            ServerMessage::PeerLeft { reason } => {
                // Stop sending; a ping tells which frames in flight the relay refused.
                self.paired = false;
                self.sync(tx).await?;
                self.emit(Event::PeerLeft(reason)).await;
            }
            ServerMessage::PeerDisconnected => self.emit(Event::PeerDisconnected).await,
            ServerMessage::PeerResumed => self.emit(Event::PeerResumed).await,
            ServerMessage::CodeExpired { code } => {
                self.session = None;
                self.paired = false;
                self.emit(Event::CodeExpired { code }).await;
            }
            ServerMessage::Pong { ts } => {
                if let Some(ts) = ts.as_u64() {
                    if let Some(at) = self.pings.remove(&ts) {
                        let rtt = at.elapsed();
                        let _ = self.watches.latency.send(Some(rtt));
                        self.emit(Event::Latency(rtt)).await;
                    }
                    self.outbox.pong(ts);
                    self.room_commands.pong(ts);
                }
            }
            ServerMessage::Error { code, message } => {
                return self.on_error(code, message, tx).await;
            }
            ServerMessage::Waiting { .. }
            | ServerMessage::GuestJoined { .. }
            | ServerMessage::GuestAdmitted { .. }
            | ServerMessage::GuestLeft { .. }
            | ServerMessage::GuestAway { .. }
            | ServerMessage::GuestBack { .. }
            | ServerMessage::From { .. } => self.on_room(m).await,
        }
        Ok(())
    }

    async fn took(&mut self, taken: &mut bool) {
        *taken = true;
        self.pings.clear();
        self.reconnector.connected();
        self.set_state(State::Connected).await;
    }

    async fn sync(&mut self, tx: &mut Tx) -> Result<(), Outcome> {
        let m = self.ping();
        tx.send(m)
            .await
            .map_err(|_| Outcome::Closed(AfterClose::Reconnect, DROPPED))
    }
}

async fn close(tx: &mut Tx, code: u16) {
    let frame = CloseFrame {
        code: WsCloseCode::from(code),
        reason: "".into(),
    };
    let _ = tx.send(Message::Close(Some(frame))).await;
}

pub(super) async fn run(mut t: Task) {
    if let Err(e) = t.check_urls() {
        t.end(Ended::BadUrl(e)).await;
        return;
    }
    let mut next: Option<Link> = None;
    loop {
        let attempt = match next.take() {
            Some(link) => Ok(link),
            None => t.connect().await,
        };
        let link = match attempt {
            Ok(link) => link,
            Err(Failure::Permanent(e)) => {
                t.end(Ended::BadUrl(e)).await;
                return;
            }
            Err(Failure::Transient(e)) => {
                debug!(error = %e, "connect failed");
                if t.wait_to_retry(AfterClose::Reconnect, e.into()).await {
                    continue;
                }
                return;
            }
        };
        match t.session(link).await {
            Outcome::Ended(why) => {
                t.end(why).await;
                return;
            }
            Outcome::Reconnect => {}
            Outcome::Switch(link) => next = Some(link),
            Outcome::Closed(how, cause) => {
                if !t.wait_to_retry(how, cause).await {
                    return;
                }
            }
        }
    }
}
