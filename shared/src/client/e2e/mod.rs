//! End-to-end encryption inside the client (`relay-e2e/1`): a task between
//! the application's [`Client`](super::Client) handle and the connection
//! task. It runs the key exchange in the session's first data frames, seals
//! what the application sends and opens what the peer sends, so the
//! application sees the same events and data as without it. It never
//! touches the socket: the connection task below it resumes, re-sends and
//! counts exactly as for plain frames, which is what keeps the frame numbers
//! (the AEAD nonces) equal on both sides.
//!
//! It never waits for the connection task inline either: every command for
//! it goes into [`Task::hand`]'s queue, which [`run`] drains while it keeps
//! reading the connection task's events. Waiting for an answer (or for room
//! in its command channel) while not reading could deadlock the two tasks:
//! with a slow application the event channel fills, the connection task
//! blocks handing over an event, and this one would wait for it to take a
//! command. What needs an answer (the application's send) is awaited in
//! [`run`] through [`InFlight`].

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Duration, Instant};

use super::outbox::{Addressed, OutFrame, Target};
use super::{Command, Ended, Event, SendError};
use crate::e2e::{
    AbortReason, Binding, Handshake, HostConfirm, HostHello, JoinerConfirm, Opener, Plain, Sealer,
    Secret,
};
use crate::{GuestId, SessionCode};

mod flight;
mod guests;
mod pairing;

use flight::InFlight;

/// The default of [`Config::e2e_timeout`](super::Config::e2e_timeout): how
/// long a side waits for the other's next handshake message while both are
/// connected. A client that speaks `relay-e2e/1` answers at once, so
/// silence means the peer does not (e.g. an older page showing the `hello`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Commands waiting for room in the connection task's queue: at most one
/// application send (a frame per guest in a room) plus a few per event.
/// Past this the run loop stops reading events and commands until the
/// connection task took some (backpressure; it never drops a command).
const OUTGOING_MAX: usize = 4096;

/// The sentence both people see when the key confirmation fails.
pub const MISMATCH: &str = "the code was mistyped or someone else tried it";

/// Which side, and what it knows of the code.
pub(super) enum Side {
    /// The mac: draws a secret for every code it is given.
    Host,
    /// A room's host: as [`Side::Host`], with one exchange per admitted guest.
    RoomHost,
    /// The browser, with the secret of the code it was given, or none
    /// (a 6-character code: it then only refuses an encrypted host clearly).
    Joiner(SessionCode, Option<Secret>),
}

/// Where the exchange stands.
enum Phase {
    /// No peer (host), or not joined yet (joiner).
    Idle,
    /// Host: `hello` sent, waiting for the joiner's.
    HostShare(HostHello),
    /// Host: waiting for the joiner's `confirm`.
    HostConfirm(HostConfirm),
    /// Joiner: joined, waiting for the host's `hello`.
    JoinerHello,
    /// Joiner without a secret: in the session as a plain client, watching
    /// the first data only to refuse an encrypted host clearly.
    Detect,
    /// Joiner: answered, waiting for the host's `confirm`.
    JoinerConfirm(JoinerConfirm),
    /// Confirmed: every data frame from the peer is sealed (boxed: the
    /// ciphers' key schedules are large).
    Open(Box<Opener>),
    /// Joiner without a secret, host that does not encrypt: frames pass as they are.
    Plain,
}

/// What ends the exchange, and the session with it.
enum Stop {
    /// The inner client ended by itself (its `Ended` was passed on).
    Inner,
    /// This layer ends the session: tell the peer (if `abort`), leave, report.
    Leave(Option<AbortReason>, Ended),
}

pub(super) struct Task {
    side: Side,
    /// Host: the code of the current registration, with its secret.
    code: Option<(SessionCode, Secret)>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    inner: mpsc::Sender<Command>,
    inner_events: mpsc::Receiver<Event>,
    phase: Phase,
    /// Seals this side's frames, once confirmed.
    sealer: Option<Sealer>,
    /// The application's send waiting for the connection task's answers,
    /// each frame's fate deciding whether it took a number (of the sealers
    /// of that `epoch` only).
    in_flight: Option<InFlight>,
    /// Room host: each admitted guest's exchange and keys.
    guests: guests::Guests,
    /// Commands for the connection task, in the order they must reach it;
    /// drained by [`run`].
    outgoing: VecDeque<Command>,
    /// Joiner: the guest id the relay gave it in a room (CPace's CI carries it).
    guest_id: watch::Receiver<Option<GuestId>>,
    /// Counts sealers: a late answer never advances the next exchange's.
    epoch: u64,
    /// The application dropped every handle: no more commands.
    dropped: bool,
    /// Longest wait for the peer's next handshake message.
    timeout: Duration,
    /// When the peer's next handshake message is overdue.
    deadline: Option<Instant>,
    /// The event held back until the exchange is confirmed (`PeerJoined`, `Joined`).
    held: Option<Event>,
}

type Reply = oneshot::Sender<Result<(), SendError>>;

impl Task {
    pub(super) fn new(
        side: Side,
        timeout: Duration,
        guest_id: watch::Receiver<Option<GuestId>>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        inner: mpsc::Sender<Command>,
        inner_events: mpsc::Receiver<Event>,
    ) -> Self {
        Task {
            side,
            code: None,
            commands,
            events,
            inner,
            inner_events,
            phase: Phase::Idle,
            sealer: None,
            in_flight: None,
            guests: guests::Guests::default(),
            outgoing: VecDeque::new(),
            guest_id,
            deadline: None,
            held: None,
            epoch: 0,
            dropped: false,
            timeout,
        }
    }

    async fn emit(&self, e: Event) {
        // The application dropped its events: nothing to tell.
        let _ = self.events.send(e).await;
    }

    /// Queues `cmd` for the connection task, behind every earlier one.
    fn hand(&mut self, cmd: Command) {
        self.outgoing.push_back(cmd);
    }

    /// Queues a handshake message for `to`; nobody waits for its fate (one
    /// refused means the peer or guest left, and that event follows).
    fn hand_handshake(&mut self, to: Target, h: &Handshake) {
        let text = serde_json::json!({"type": "data", "payload": h.to_payload()}).to_string();
        let (tx, _) = oneshot::channel();
        let frame = Addressed {
            to,
            frame: OutFrame::Text(text),
        };
        self.hand(Command::Send(frame, tx));
    }

    /// Hands the next queued command to the connection task, or, when the
    /// task is gone, drops them all (its end is passed on by the caller).
    fn take_outgoing(
        &mut self,
        permit: Result<mpsc::Permit<'_, Command>, mpsc::error::SendError<()>>,
    ) {
        match (permit, self.outgoing.pop_front()) {
            (Ok(p), Some(cmd)) => p.send(cmd),
            _ => self.outgoing.clear(),
        }
    }

    fn binding(&self) -> Option<Binding> {
        match &self.side {
            Side::Host => self
                .code
                .as_ref()
                .map(|(c, s)| Binding::new(c.clone(), s.clone(), None)),
            // A room's exchanges are per guest (`guests.rs`).
            Side::RoomHost => None,
            // A guest of a room binds its id, known since `waiting` or `joined`.
            Side::Joiner(c, Some(s)) => {
                Some(Binding::new(c.clone(), s.clone(), *self.guest_id.borrow()))
            }
            Side::Joiner(_, None) => None,
        }
    }

    fn reset(&mut self) {
        self.epoch += 1;
        self.phase = Phase::Idle;
        self.sealer = None;
        self.deadline = None;
        self.held = None;
        self.guests = guests::Guests::default();
    }

    /// An application command: data is sealed, the rest passes through.
    fn on_command(&mut self, cmd: Command) {
        match cmd {
            cmd if matches!(self.side, Side::RoomHost) => self.on_room_command(cmd),
            Command::Send(Addressed { to, frame }, reply) => {
                if to != Target::All {
                    // Not a room host (those are handled above): there is
                    // no guest to address.
                    let _ = reply.send(Err(SendError::NotRoomHost));
                    return;
                }
                let frame = match (&self.phase, &self.sealer) {
                    (Phase::Plain | Phase::Detect, _) => frame,
                    (_, Some(sealer)) => {
                        let plain = match frame {
                            OutFrame::Text(t) => Plain::Text(text_payload(&t)),
                            OutFrame::Binary(b) => Plain::Binary(b.to_vec()),
                        };
                        OutFrame::Binary(Bytes::from(sealer.seal(&plain)))
                    }
                    (_, None) => {
                        let _ = reply.send(Err(SendError::NotPaired));
                        return;
                    }
                };
                let (tx, rx) = oneshot::channel();
                let addressed = Addressed {
                    to: Target::All,
                    frame,
                };
                self.hand(Command::Send(addressed, tx));
                self.in_flight = Some(InFlight::one(rx, reply, self.epoch));
            }
            Command::Leave => {
                if let Some(sealer) = self.sealer.as_ref() {
                    // The peer learns this was the last frame, not a cut
                    // (nothing is sealed after it, so its number needs no answer).
                    let end = sealer.seal(&Plain::End);
                    let (tx, _) = oneshot::channel();
                    let f = Addressed {
                        to: Target::All,
                        frame: OutFrame::Binary(Bytes::from(end)),
                    };
                    self.hand(Command::Send(f, tx));
                }
                self.hand(Command::Leave);
            }
            other => self.hand(other),
        }
    }

    /// An event of the connection task, seen by the exchange first.
    async fn on_event(&mut self, ev: Event) -> Result<(), Stop> {
        match ev {
            Event::Registered {
                code,
                expires_at,
                page,
            } => {
                self.reset();
                let (Side::Host | Side::RoomHost) = self.side else {
                    self.emit(Event::Registered {
                        code,
                        expires_at,
                        page,
                    })
                    .await;
                    return Ok(());
                };
                let Ok(relay) = SessionCode::parse(&code) else {
                    // A relay that hands out a malformed code: show it as it is.
                    self.emit(Event::Registered {
                        code,
                        expires_at,
                        page,
                    })
                    .await;
                    return Ok(());
                };
                let secret = Secret::generate();
                let full = format!("{relay}-{}", secret.as_str());
                self.code = Some((relay, secret));
                self.emit(Event::Registered {
                    code: full,
                    expires_at,
                    page,
                })
                .await;
            }
            Event::PeerJoined => {
                self.reset();
                let Some(binding) = self.binding() else {
                    self.emit(Event::PeerJoined).await;
                    return Ok(());
                };
                let (state, hello) = HostHello::start(&binding);
                self.held = Some(Event::PeerJoined);
                self.phase = Phase::HostShare(state);
                self.deadline = Some(Instant::now() + self.timeout);
                // Refused only when the browser left already; its `PeerLeft` follows.
                self.hand_handshake(Target::All, &hello);
            }
            Event::Joined => {
                self.reset();
                if self.binding().is_none() {
                    self.phase = Phase::Detect;
                    self.emit(Event::Joined).await;
                    return Ok(());
                }
                self.held = Some(Event::Joined);
                self.phase = Phase::JoinerHello;
                self.deadline = Some(Instant::now() + self.timeout);
            }
            Event::Data(d) => self.on_data(d).await?,
            ev @ (Event::GuestAdmitted(_)
            | Event::GuestData { .. }
            | Event::GuestLeft { .. }
            | Event::GuestAway(_)
            | Event::GuestBack(_))
                if matches!(self.side, Side::RoomHost) =>
            {
                self.on_guest_event(ev).await;
            }
            Event::PeerLeft(reason) => {
                self.unfinished().await;
                self.reset();
                self.emit(Event::PeerLeft(reason)).await;
            }
            Event::PeerDisconnected => {
                // Silence while the peer is away says nothing about it.
                self.deadline = None;
                self.emit(Event::PeerDisconnected).await;
            }
            Event::PeerResumed => {
                if self.awaiting() {
                    self.deadline = Some(Instant::now() + self.timeout);
                }
                self.emit(Event::PeerResumed).await;
            }
            Event::Ended(why) => {
                if why == Ended::MacDisconnected {
                    self.unfinished().await;
                }
                self.emit(Event::Ended(why)).await;
                return Err(Stop::Inner);
            }
            other => self.emit(other).await,
        }
        Ok(())
    }

    fn awaiting(&self) -> bool {
        matches!(
            self.phase,
            Phase::HostShare(_)
                | Phase::HostConfirm(_)
                | Phase::JoinerHello
                | Phase::JoinerConfirm(_)
        )
    }

    /// The peer is gone for good: say so when it did not send `end` first.
    async fn unfinished(&self) {
        if let Phase::Open(opener) = &self.phase {
            if !opener.ended() {
                self.emit(Event::Unfinished).await;
            }
        }
    }

    /// Ends the session from this layer: `abort` to the peer, `leave`, and
    /// the application told why (after the connection task's own end).
    async fn stop(&mut self, abort: Option<AbortReason>, why: Ended) {
        if let Some(reason) = abort {
            self.hand_handshake(Target::All, &Handshake::Abort(reason));
        }
        self.reset();
        self.hand(Command::Leave);
        // Hand over what is queued while swallowing the connection task's
        // events up to its own ending ("left").
        let _ = tokio::time::timeout(self.timeout, async {
            loop {
                let inner = self.inner.clone();
                tokio::select! {
                    permit = inner.reserve(), if !self.outgoing.is_empty() => {
                        self.take_outgoing(permit);
                    }
                    ev = self.inner_events.recv() => match ev {
                        None | Some(Event::Ended(_)) => break,
                        Some(_) => {}
                    },
                }
            }
        })
        .await;
        self.emit(Event::State(super::State::Disconnected)).await;
        self.emit(Event::Ended(why)).await;
    }

    /// The earliest handshake deadline: the pairing's, or any guest's.
    fn next_deadline(&self) -> Option<Instant> {
        [self.deadline, self.guests.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// A deadline passed: the pairing's ends the session; a guest's ends that guest.
    async fn on_deadline(&mut self) -> Option<Stop> {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| d <= now) {
            return Some(self.timed_out());
        }
        for g in self.guests.overdue(now) {
            let why =
                "it did not answer the key exchange: it may not support end-to-end encryption"
                    .into();
            self.fail_guest(g, Some(AbortReason::Timeout), Ended::NotEncrypted(why))
                .await;
        }
        None
    }

    fn timed_out(&self) -> Stop {
        let why = match self.side {
            Side::Host | Side::RoomHost => {
                "the browser that joined did not answer the key exchange: it may not support end-to-end encryption"
            }
            Side::Joiner(..) => {
                "the mac did not start the key exchange: it does not use end-to-end encryption"
            }
        };
        Stop::Leave(Some(AbortReason::Timeout), Ended::NotEncrypted(why.into()))
    }
}

/// The `payload` of a `data` text frame the handle built (the application's text).
fn text_payload(frame: &str) -> String {
    serde_json::from_str::<serde_json::Value>(frame)
        .ok()
        .and_then(|v| v.get("payload").and_then(|p| p.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

pub(super) async fn run(mut t: Task) {
    loop {
        let deadline = t.next_deadline();
        // A handle of its own, so that a permit does not borrow the task.
        let inner = t.inner.clone();
        let stop = tokio::select! {
            cmd = t.commands.recv(),
                if t.in_flight.is_none() && !t.dropped && t.outgoing.len() < OUTGOING_MAX =>
            {
                match cmd {
                    Some(cmd) => t.on_command(cmd),
                    None => {
                        // The application dropped its handle: leave (with the
                        // sealed end frame), as the plain client does.
                        t.dropped = true;
                        t.on_command(Command::Leave);
                    }
                }
                None
            }
            r = async {
                match t.in_flight.as_mut() {
                    Some(f) => f.next_answer().await,
                    None => std::future::pending().await,
                }
            } => {
                t.answered(r);
                None
            },
            permit = inner.reserve(), if !t.outgoing.is_empty() => {
                // A connection task that is gone: its end is passed on below.
                t.take_outgoing(permit);
                None
            },
            ev = t.inner_events.recv(), if t.outgoing.len() < OUTGOING_MAX => match ev {
                Some(ev) => t.on_event(ev).await.err(),
                None => Some(Stop::Inner),
            },
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => t.on_deadline().await,
        };
        match stop {
            None => {}
            Some(Stop::Inner) => return,
            Some(Stop::Leave(abort, why)) => {
                t.stop(abort, why).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
