//! A room host's end-to-end encryption (PROTOCOL.md, "End-to-end
//! encryption" → "Rooms"): one `relay-e2e/1` run per admitted guest, its id
//! in CPace's CI; every handshake message and sealed frame goes `to` that
//! guest only, so a frame to all is sealed once per guest (an E2E host
//! never sends to all: nobody could open it). The numbers of a guest's
//! frames count what the host sent to it and what came `from` it, which is
//! what the relay counts for that guest, so a guest's resume and the host's
//! keep the nonces aligned. A guest whose exchange or frame fails is
//! removed and the room goes on; this never ends the host's session.
//!
//! Nothing here waits for the connection task: every command for it goes
//! into [`Task::hand`]'s queue (see `mod.rs`), which guests talking while
//! another joins would otherwise make likely to deadlock.

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::flight::InFlight;
use super::{Reply, Task, text_payload};
use crate::client::outbox::{Addressed, OutFrame, Target};
use crate::client::{Command, Data, Ended, Event, SendError};
use crate::e2e::{
    AbortReason, Binding, Channel, Failure, Handshake, HostConfirm, HostHello, Payload, Plain,
};
use crate::{ClientMessage, GuestId, GuestLeftReason};

/// Where one guest's exchange stands.
enum Phase {
    /// `hello` sent, waiting for the guest's.
    Share(HostHello),
    /// Waiting for the guest's `confirm`.
    Confirm(HostConfirm),
    /// Confirmed (boxed: the ciphers' key schedules are large).
    Open(Box<Channel>),
}

struct Guest {
    phase: Phase,
    /// When its next handshake message is overdue (`None` while open, or away).
    deadline: Option<Instant>,
}

/// Every admitted guest's exchange; owned by the encryption task.
#[derive(Default)]
pub(super) struct Guests {
    map: BTreeMap<GuestId, Guest>,
    /// A frame to all that reached some guests but was refused for others
    /// (the outbound queue filled up while reconnecting): the application
    /// is told it failed, and the same frame sent again skips the guests it
    /// reached, so none gets it twice.
    pub(super) partial: Option<(OutFrame, Vec<GuestId>)>,
}

impl Guests {
    /// The frame last sealed for `g` was sent.
    pub(super) fn sent(&mut self, g: GuestId) {
        if let Some(Guest {
            phase: Phase::Open(ch),
            ..
        }) = self.map.get_mut(&g)
        {
            ch.sealer.sent();
        }
    }

    fn open(&self) -> impl Iterator<Item = GuestId> + '_ {
        self.map
            .iter()
            .filter(|(_, g)| matches!(g.phase, Phase::Open(_)))
            .map(|(id, _)| *id)
    }

    fn seal(&self, g: GuestId, plain: &Plain) -> Option<Vec<u8>> {
        match self.map.get(&g)?.phase {
            Phase::Open(ref ch) => Some(ch.sealer.seal(plain)),
            _ => None,
        }
    }

    /// The earliest handshake deadline of any guest.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.map.values().filter_map(|g| g.deadline).min()
    }

    /// Guests whose handshake message is overdue at `now`.
    pub(super) fn overdue(&self, now: Instant) -> Vec<GuestId> {
        self.map
            .iter()
            .filter(|(_, g)| g.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect()
    }
}

impl Task {
    /// A room host's application command: frames sealed per guest, the
    /// rest passed on in its place among them.
    pub(super) fn on_room_command(&mut self, cmd: Command) {
        match cmd {
            Command::Send(Addressed { to, frame }, reply) => self.send_to_guests(to, frame, reply),
            Command::Leave => {
                self.end_guests();
                self.hand(Command::Leave);
            }
            other => self.hand(other),
        }
    }

    /// A room host's frame for `to`: sealed for each guest it goes to and
    /// sent `to` that guest alone.
    fn send_to_guests(&mut self, to: Target, frame: OutFrame, reply: Reply) {
        let partial = self.guests.partial.take();
        let (targets, reached, to_all): (Vec<GuestId>, _, _) = match to {
            Target::All => {
                let reached = match partial {
                    Some((f, reached)) if f == frame => reached,
                    _ => Vec::new(),
                };
                let targets = self.guests.open().filter(|g| !reached.contains(g));
                (targets.collect(), reached, Some(frame.clone()))
            }
            Target::Guest(g) if self.guests.open().any(|o| o == g) => (vec![g], Vec::new(), None),
            // No keys for that guest (not admitted, not confirmed, or gone):
            // nothing could be sealed for it.
            Target::Guest(_) => {
                let _ = reply.send(Err(SendError::NotPaired));
                return;
            }
        };
        let plain = match frame {
            OutFrame::Text(t) => Plain::Text(text_payload(&t)),
            OutFrame::Binary(b) => Plain::Binary(b.to_vec()),
        };
        let mut flight = InFlight::fan_out(reply, self.epoch, to_all, reached);
        for g in targets {
            let Some(sealed) = self.guests.seal(g, &plain) else {
                continue;
            };
            let (tx, rx) = oneshot::channel();
            let f = Addressed {
                to: Target::Guest(g),
                frame: OutFrame::Binary(Bytes::from(sealed)),
            };
            self.hand(Command::Send(f, tx));
            flight.push(g, rx);
        }
        // With no guest to send to, the frame reaches no one, as a plain
        // room host's does.
        self.in_flight = Some(flight);
        self.settle();
    }

    /// Leaving: each confirmed guest gets its end frame first (nothing is
    /// sealed after it, so its number needs no answer).
    fn end_guests(&mut self) {
        let open: Vec<GuestId> = self.guests.open().collect();
        for g in open {
            let Some(end) = self.guests.seal(g, &Plain::End) else {
                continue;
            };
            let (tx, _) = oneshot::channel();
            let f = Addressed {
                to: Target::Guest(g),
                frame: OutFrame::Binary(Bytes::from(end)),
            };
            self.hand(Command::Send(f, tx));
        }
    }

    /// A room host's guest event, seen by the guest's exchange first.
    pub(super) async fn on_guest_event(&mut self, ev: Event) {
        match ev {
            Event::GuestAdmitted(g) => self.start_guest(g).await,
            Event::GuestData { guest, data } => self.on_guest_data(guest, data).await,
            Event::GuestLeft { guest, reason } => {
                if let Some(Guest {
                    phase: Phase::Open(ch),
                    ..
                }) = self.guests.map.remove(&guest)
                {
                    if !ch.opener.ended() && reason != GuestLeftReason::Removed {
                        self.emit(Event::GuestUnfinished(guest)).await;
                    }
                }
                self.emit(Event::GuestLeft { guest, reason }).await;
            }
            Event::GuestAway(g) => {
                // Silence while the guest is away says nothing about it.
                if let Some(guest) = self.guests.map.get_mut(&g) {
                    guest.deadline = None;
                }
                self.emit(Event::GuestAway(g)).await;
            }
            Event::GuestBack(g) => {
                let timeout = self.timeout;
                if let Some(guest) = self.guests.map.get_mut(&g) {
                    if !matches!(guest.phase, Phase::Open(_)) {
                        guest.deadline = Some(Instant::now() + timeout);
                    }
                }
                self.emit(Event::GuestBack(g)).await;
            }
            other => self.emit(other).await,
        }
    }

    /// The guest is in the room: its exchange starts; the application
    /// hears `GuestAdmitted` once it is confirmed.
    async fn start_guest(&mut self, g: GuestId) {
        if self.guests.map.contains_key(&g) {
            // Told twice (a relay that repeats itself): a second exchange
            // would throw away the keys the guest holds.
            return;
        }
        let Some((code, secret)) = self.code.clone() else {
            // A relay code the host could not read: no secret was drawn.
            self.emit(Event::GuestAdmitted(g)).await;
            return;
        };
        let (state, hello) = HostHello::start(&Binding::new(code, secret, Some(g)));
        self.guests.map.insert(
            g,
            Guest {
                phase: Phase::Share(state),
                deadline: Some(Instant::now() + self.timeout),
            },
        );
        self.hand_handshake(Target::Guest(g), &hello);
    }

    async fn on_guest_data(&mut self, g: GuestId, d: Data) {
        // A guest removed or failed: the frames it sent before are moot.
        let Some(guest) = self.guests.map.remove(&g) else {
            return;
        };
        match (guest.phase, d) {
            (Phase::Open(mut ch), Data::Binary(b)) => match ch.opener.open(&b) {
                Ok(plain) => {
                    self.guests.map.insert(
                        g,
                        Guest {
                            phase: Phase::Open(ch),
                            deadline: None,
                        },
                    );
                    let data = match plain {
                        Plain::Text(t) => Data::Text(t),
                        Plain::Binary(b) => Data::Binary(b.into()),
                        Plain::End => return,
                    };
                    self.emit(Event::GuestData { guest: g, data }).await;
                }
                Err(t) => {
                    self.fail_guest(g, None, Ended::Tampered(t.to_string()))
                        .await
                }
            },
            (Phase::Open(_), Data::Text(_)) => {
                let why = "a frame in clear arrived in an encrypted session".into();
                self.fail_guest(g, None, Ended::Tampered(why)).await;
            }
            (phase, Data::Text(t)) => match Payload::parse(&t) {
                Payload::Handshake(h) => self.on_guest_handshake(g, phase, h).await,
                Payload::Invalid(why) => {
                    let why = format!("an invalid key exchange message ({why})");
                    self.fail_guest(g, Some(AbortReason::Invalid), Ended::Tampered(why))
                        .await;
                }
                Payload::Other => self.guest_not_encrypted(g).await,
            },
            (_, Data::Binary(_)) => self.guest_not_encrypted(g).await,
        }
    }

    async fn guest_not_encrypted(&mut self, g: GuestId) {
        let why = "it does not use end-to-end encryption".into();
        self.fail_guest(g, Some(AbortReason::Invalid), Ended::NotEncrypted(why))
            .await;
    }

    async fn on_guest_handshake(&mut self, g: GuestId, phase: Phase, h: Handshake) {
        let failed = |f: Failure| {
            let why = match f {
                Failure::Mismatch => Ended::CodeMismatch,
                Failure::Invalid => Ended::Tampered(f.to_string()),
            };
            (Some(f.reason()), why)
        };
        let outcome = match (phase, h) {
            (_, Handshake::Abort(reason)) => {
                let why = match reason {
                    AbortReason::Mismatch => Ended::CodeMismatch,
                    AbortReason::NoSecret => Ended::NotEncrypted(
                        "it joined with the first part of the code only: it needs the whole code, with the part after the dash".into(),
                    ),
                    AbortReason::Invalid => {
                        Ended::Tampered("it could not read the key exchange".into())
                    }
                    AbortReason::Timeout => {
                        Ended::NotEncrypted("it gave up waiting for the key exchange".into())
                    }
                };
                Err((None, why))
            }
            (Phase::Share(state), Handshake::JoinerHello { share }) => {
                state.on_share(&share).map_err(failed).map(|s| Guest {
                    phase: Phase::Confirm(s),
                    deadline: Some(Instant::now() + self.timeout),
                })
            }
            (Phase::Confirm(state), Handshake::Confirm { tag }) => match state.on_confirm(&tag) {
                Ok((channel, confirm)) => {
                    self.hand_handshake(Target::Guest(g), &confirm);
                    self.guests.map.insert(
                        g,
                        Guest {
                            phase: Phase::Open(Box::new(channel)),
                            deadline: None,
                        },
                    );
                    self.emit(Event::GuestEncrypted(g)).await;
                    self.emit(Event::GuestAdmitted(g)).await;
                    return;
                }
                Err(f) => Err(failed(f)),
            },
            (_, _) => Err((
                Some(AbortReason::Invalid),
                Ended::Tampered("a key exchange message out of its place".into()),
            )),
        };
        match outcome {
            Ok(guest) => {
                self.guests.map.insert(g, guest);
            }
            Err((abort, why)) => self.fail_guest(g, abort, why).await,
        }
    }

    /// Ends one guest: `abort` to it (when the exchange failed on this
    /// side), `remove`, and the application told why. The room goes on.
    pub(super) async fn fail_guest(&mut self, g: GuestId, abort: Option<AbortReason>, why: Ended) {
        self.guests.map.remove(&g);
        if let Some(reason) = abort {
            self.hand_handshake(Target::Guest(g), &Handshake::Abort(reason));
        }
        // Refused only when the session is over; its end follows.
        let (tx, _) = oneshot::channel();
        self.hand(Command::Room(ClientMessage::Remove { guest_id: g }, tx));
        self.emit(Event::GuestFailed { guest: g, why }).await;
    }
}
