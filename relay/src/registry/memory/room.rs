//! What a room host does to its guests (`admit`, `deny`, `remove`), in
//! the in-memory registry.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use relay_protocol::{ErrorCode, GuestLeftReason, ServerMessage};
use tracing::info;

use super::super::member::Member;
use super::super::session::Change;
use super::super::{Host, Refusal, RoomOp};
use super::MemoryRegistry;
use crate::queue::EventEffect;

impl Handler<Host> for MemoryRegistry {
    type Result = Result<(), Refusal>;

    fn handle(&mut self, msg: Host, _: &mut Context<Self>) -> Self::Result {
        let Host {
            session_id,
            conn,
            op,
            guest_id,
        } = msg;
        let Some(s) = self.sessions.get_mut(&session_id) else {
            return Err(ErrorCode::UnknownGuest.into());
        };
        if s.room.is_none() || s.host.conn.as_ref().map(|(c, _)| *c) != Some(conn) {
            // A socket taken over, or a pairing's host: it holds no room.
            return Err(Refusal::with(
                ErrorCode::InvalidMessage,
                "admit, deny and remove are for a room host (register with maxGuests).",
            ));
        }
        let place = s.place_of(guest_id);
        let waiting = place.is_some_and(|i| !s.is_in(Member::Guest(i)));
        let unknown = |what: &str| {
            Refusal::with(
                ErrorCode::UnknownGuest,
                format!(
                    "No guest {guest_id} is {what}; it may have left or been answered already."
                ),
            )
        };
        match (op, place) {
            (RoomOp::Admit, Some(i)) if waiting => {
                let seat = s.places[i].seat.as_mut().expect("a room guest has a seat");
                let token = seat.pending_token.take().unwrap_or_default();
                if let Some(k) = seat.admit_timer.take() {
                    self.timers.remove(k);
                }
                s.admit(i);
                let joined = ServerMessage::Joined {
                    session_id: s.id.to_string(),
                    resume_token: token,
                    guest_id: Some(guest_id),
                };
                // Through its pipe: ordered before anything the host sends it.
                s.places[i]
                    .to_guest
                    .push_event(ByteString::from(joined.to_text()), EventEffect::None);
                s.announce(Member::Guest(i), Change::Admitted);
                self.metrics
                    .room_decisions
                    .with_label_values(&["admitted"])
                    .inc();
                info!(session = %session_id, guest_id, "guest admitted");
                Ok(())
            }
            (RoomOp::Deny, Some(i)) if waiting => {
                self.metrics
                    .room_decisions
                    .with_label_values(&["denied"])
                    .inc();
                info!(session = %session_id, guest_id, "guest denied");
                self.end_guest(&session_id, i, ErrorCode::Denied, GuestLeftReason::Denied);
                Ok(())
            }
            (RoomOp::Remove, Some(i)) => {
                self.metrics
                    .room_decisions
                    .with_label_values(&["removed"])
                    .inc();
                info!(session = %Arc::clone(&session_id), guest_id, "guest removed");
                self.end_guest(&session_id, i, ErrorCode::Removed, GuestLeftReason::Removed);
                Ok(())
            }
            (RoomOp::Remove, None) => Err(unknown("in the room")),
            (RoomOp::Admit | RoomOp::Deny, _) => Err(unknown("waiting to be let in")),
        }
    }
}
