//! The application's one send in flight through the encryption task: the
//! connection task's answer for each frame it became (one in a pairing,
//! one per guest for a room host's frame to all) and whose sealer each
//! advances. A frame the connection task refused took no number, so the
//! sealer of its direction does not move on.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use super::super::SendError;
use super::super::outbox::OutFrame;
use super::{Reply, Task};
use crate::GuestId;

/// The connection task's answer for one frame.
type Answer = oneshot::Receiver<Result<(), SendError>>;

pub(super) struct InFlight {
    /// Answers still awaited, oldest first, each with the guest whose
    /// sealer it advances (`None`: the pairing's own sealer).
    waits: VecDeque<(Option<GuestId>, Answer)>,
    /// The first refusal, if any: the application hears it.
    refused: Option<SendError>,
    /// Guests the frame reached (with those an earlier try reached).
    reached: Vec<GuestId>,
    reply: Reply,
    /// The sealers' epoch when the frame was sealed.
    epoch: u64,
    /// Room host, a frame to all: the application's frame, kept so that a
    /// retry after a partial refusal skips the guests it reached.
    to_all: Option<OutFrame>,
}

impl InFlight {
    /// One frame of a pairing.
    pub(super) fn one(rx: Answer, reply: Reply, epoch: u64) -> Self {
        let mut f = Self::fan_out(reply, epoch, None, Vec::new());
        f.waits.push_back((None, rx));
        f
    }

    /// A room host's frame, sealed for each guest in turn ([`InFlight::push`]).
    pub(super) fn fan_out(
        reply: Reply,
        epoch: u64,
        to_all: Option<OutFrame>,
        reached: Vec<GuestId>,
    ) -> Self {
        InFlight {
            waits: VecDeque::new(),
            refused: None,
            reached,
            reply,
            epoch,
            to_all,
        }
    }

    /// The frame sealed for `guest` was handed to the connection task.
    pub(super) fn push(&mut self, guest: GuestId, rx: Answer) {
        self.waits.push_back((Some(guest), rx));
    }

    /// The frame could not be handed over at all.
    pub(super) fn refuse(&mut self, e: SendError) {
        self.refused.get_or_insert(e);
    }

    /// The next answer (cancel-safe: the receiver stays in place until it answered).
    pub(super) async fn next_answer(&mut self) -> Result<(), SendError> {
        match self.waits.front_mut() {
            Some((_, rx)) => rx.await.unwrap_or(Err(SendError::Ended)),
            None => std::future::pending().await,
        }
    }
}

impl Task {
    /// The connection task answered the oldest frame in flight.
    pub(super) fn answered(&mut self, r: Result<(), SendError>) {
        let Some(f) = self.in_flight.as_mut() else {
            return;
        };
        let Some((guest, _)) = f.waits.pop_front() else {
            return;
        };
        match r {
            Ok(()) => {
                // A late answer never advances the next exchange's sealer.
                if f.epoch == self.epoch {
                    match guest {
                        None => {
                            if let Some(s) = self.sealer.as_mut() {
                                s.sent();
                            }
                        }
                        Some(g) => self.guests.sent(g),
                    }
                }
                if let Some(g) = guest {
                    f.reached.push(g);
                }
            }
            Err(e) => f.refuse(e),
        }
        self.settle();
    }

    /// Replies to the application once every frame of its send is answered.
    pub(super) fn settle(&mut self) {
        if self.in_flight.as_ref().is_some_and(|f| !f.waits.is_empty()) {
            return;
        }
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let current = f.epoch == self.epoch;
        self.guests.partial = match (f.to_all, &f.refused) {
            (Some(frame), Some(_)) if current && !f.reached.is_empty() => Some((frame, f.reached)),
            _ => None,
        };
        let _ = f.reply.send(match f.refused {
            Some(e) => Err(e),
            None => Ok(()),
        });
    }
}
