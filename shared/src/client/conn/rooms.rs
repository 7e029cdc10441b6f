//! The room side of the connection task: what a room host asks for and
//! hears (guests, their frames tagged by `from`), and what a guest hears
//! while it waits to be let in.

use super::{Data, Event, SendError, ServerMessage, Task};
use crate::ClientMessage;

impl Task {
    /// The `register` this mac sends: a room host's carries its room.
    pub(super) fn register_message(&self) -> ClientMessage {
        let room = self.config.room.filter(|_| self.room_host);
        ClientMessage::Register {
            client_id: None,
            max_guests: room.map(|r| r.max_guests),
            admit: room.map(|r| r.admit),
        }
    }

    /// Takes an `admit`, `deny` or `remove`, to be written after every
    /// frame handed over so far.
    pub(super) fn queue_room(&mut self, m: ClientMessage) -> Result<(), SendError> {
        if !self.room_host {
            return Err(SendError::NotRoomHost);
        }
        if self.session.is_none() {
            // No room yet (or it is gone): there is no guest to name.
            return Err(SendError::NotPaired);
        }
        if self.room_commands.push(self.outbox.total(), m) {
            Ok(())
        } else {
            Err(SendError::TooManyCommands)
        }
    }

    /// A data frame from the peer: counted (a room host's `lastSeq` counts
    /// data only, never `from`), and tagged with its guest in a room.
    pub(super) async fn data(&mut self, data: Data) {
        self.received += 1;
        let ev = match self.from {
            Some(guest) if self.room_host => {
                // Kept for every guest of the session, gone ones too: the
                // counts add up to `lastSeq`, as the contract says.
                *self.guest_seqs.entry(guest).or_default() += 1;
                Event::GuestData { guest, data }
            }
            _ => Event::Data(data),
        };
        self.emit(ev).await;
    }

    /// A room message from the relay.
    pub(super) async fn on_room(&mut self, m: ServerMessage) {
        let ev = match m {
            ServerMessage::Waiting { guest_id } => {
                let _ = self.watches.guest_id.send(Some(guest_id));
                Event::Waiting { guest: guest_id }
            }
            ServerMessage::From { guest_id } => {
                self.from = Some(guest_id);
                return;
            }
            ServerMessage::GuestJoined { guest_id, name } => Event::GuestJoined {
                guest: guest_id,
                name,
            },
            ServerMessage::GuestAdmitted { guest_id } => Event::GuestAdmitted(guest_id),
            ServerMessage::GuestLeft { guest_id, reason } => Event::GuestLeft {
                guest: guest_id,
                reason,
            },
            ServerMessage::GuestAway { guest_id } => Event::GuestAway(guest_id),
            ServerMessage::GuestBack { guest_id } => Event::GuestBack(guest_id),
            _ => return,
        };
        self.emit(ev).await;
    }
}
