//! The pairing's exchange, as the joiner or the host of one browser: the
//! peer's data read as handshake messages until confirmed, then opened as
//! sealed frames. A room host's per-guest exchanges are in `guests.rs`.
//! Like them, nothing here waits for the connection task: messages go into
//! [`Task::hand`]'s queue.

use super::{Phase, Side, Stop, Task};
use crate::client::outbox::Target;
use crate::client::{Data, Ended, Event};
use tokio::time::Instant;

use crate::e2e::{AbortReason, Failure, Handshake, JoinerConfirm, Payload, Plain};

impl Task {
    pub(super) async fn on_data(&mut self, d: Data) -> Result<(), Stop> {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        match (phase, d) {
            (Phase::Plain, d) => {
                self.phase = Phase::Plain;
                self.emit(Event::Data(d)).await;
            }
            (Phase::Open(mut opener), Data::Binary(b)) => {
                let plain = opener
                    .open(&b)
                    .map_err(|t| Stop::Leave(None, Ended::Tampered(t.to_string())))?;
                self.phase = Phase::Open(opener);
                match plain {
                    Plain::Text(t) => self.emit(Event::Data(Data::Text(t))).await,
                    Plain::Binary(b) => self.emit(Event::Data(Data::Binary(b.into()))).await,
                    Plain::End => {}
                }
            }
            (Phase::Open(_), Data::Text(_)) => {
                return Err(Stop::Leave(
                    None,
                    Ended::Tampered("a frame in clear arrived in an encrypted session".into()),
                ));
            }
            (Phase::Detect, Data::Text(t)) => {
                if let Payload::Handshake(Handshake::HostHello { .. }) = Payload::parse(&t) {
                    return Err(Stop::Leave(
                        Some(AbortReason::NoSecret),
                        Ended::NotEncrypted(
                            "this session is end-to-end encrypted: type the whole code the mac shows, with the part after the dash".into(),
                        ),
                    ));
                }
                self.phase = Phase::Plain;
                self.emit(Event::Data(Data::Text(t))).await;
            }
            (Phase::Detect, d) => {
                self.phase = Phase::Plain;
                self.emit(Event::Data(d)).await;
            }
            (Phase::Idle, d) => {
                // Data outside an exchange (a plain host's joiner that has
                // not joined yet cannot get here): pass it on.
                self.emit(Event::Data(d)).await;
            }
            (phase, Data::Binary(_)) => {
                self.phase = phase;
                return Err(self.not_encrypted());
            }
            (phase, Data::Text(t)) => match Payload::parse(&t) {
                Payload::Handshake(h) => self.on_handshake(phase, h).await?,
                Payload::Invalid(why) => {
                    return Err(Stop::Leave(
                        Some(AbortReason::Invalid),
                        Ended::Tampered(format!("an invalid key exchange message ({why})")),
                    ));
                }
                Payload::Other => {
                    self.phase = phase;
                    return Err(self.not_encrypted());
                }
            },
        }
        Ok(())
    }

    /// The peer sent something that is not `relay-e2e/1` where a handshake message belongs.
    fn not_encrypted(&self) -> Stop {
        let why = match self.side {
            Side::Host | Side::RoomHost => {
                "the browser that joined does not use end-to-end encryption; session not continued"
            }
            Side::Joiner(..) => {
                "the mac does not use end-to-end encryption; nothing was sent to it in clear"
            }
        };
        Stop::Leave(Some(AbortReason::Invalid), Ended::NotEncrypted(why.into()))
    }

    async fn on_handshake(&mut self, phase: Phase, h: Handshake) -> Result<(), Stop> {
        let fail = |f: Failure| {
            let end = match f {
                Failure::Mismatch => Ended::CodeMismatch,
                Failure::Invalid => Ended::Tampered(f.to_string()),
            };
            Stop::Leave(Some(f.reason()), end)
        };
        match (phase, h) {
            (_, Handshake::Abort(reason)) => {
                let end = match reason {
                    AbortReason::Mismatch => Ended::CodeMismatch,
                    AbortReason::NoSecret => Ended::NotEncrypted(
                        "the browser joined with the first part of the code only: type the whole code, with the part after the dash".into(),
                    ),
                    AbortReason::Invalid => Ended::Tampered(
                        "the other side could not read the key exchange".into(),
                    ),
                    AbortReason::Timeout => Ended::NotEncrypted(
                        "the other side gave up waiting for the key exchange".into(),
                    ),
                };
                return Err(Stop::Leave(None, end));
            }
            (Phase::HostShare(state), Handshake::JoinerHello { share }) => {
                self.phase = Phase::HostConfirm(state.on_share(&share).map_err(fail)?);
                self.deadline = Some(Instant::now() + self.timeout);
            }
            (Phase::HostConfirm(state), Handshake::Confirm { tag }) => {
                let (channel, confirm) = state.on_confirm(&tag).map_err(fail)?;
                // Refused only when the browser left meanwhile: its
                // `PeerLeft` follows and ends this exchange.
                self.hand_handshake(Target::All, &confirm);
                self.open(channel).await;
            }
            (Phase::JoinerHello, Handshake::HostHello { sid, share }) => {
                let Some(binding) = self.binding() else {
                    return Err(Stop::Leave(
                        Some(AbortReason::Invalid),
                        Ended::Tampered("a key exchange without a code".into()),
                    ));
                };
                let (state, [hello, confirm]) =
                    JoinerConfirm::answer(&binding, &sid, &share).map_err(fail)?;
                self.phase = Phase::JoinerConfirm(state);
                self.deadline = Some(Instant::now() + self.timeout);
                // Refused only when the session is over; the connection
                // task's end follows.
                self.hand_handshake(Target::All, &hello);
                self.hand_handshake(Target::All, &confirm);
            }
            (Phase::JoinerConfirm(state), Handshake::Confirm { tag }) => {
                let channel = state.on_confirm(&tag).map_err(fail)?;
                self.open(channel).await;
            }
            (_, _) => {
                return Err(Stop::Leave(
                    Some(AbortReason::Invalid),
                    Ended::Tampered("a key exchange message out of its place".into()),
                ));
            }
        }
        Ok(())
    }

    async fn open(&mut self, channel: crate::e2e::Channel) {
        self.epoch += 1;
        self.sealer = Some(channel.sealer);
        self.phase = Phase::Open(Box::new(channel.opener));
        self.deadline = None;
        self.emit(Event::Encrypted).await;
        if let Some(e) = self.held.take() {
            self.emit(e).await;
        }
    }
}
