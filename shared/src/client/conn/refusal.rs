//! What the relay's `error` messages mean for the client: an error the
//! session survives, a refusal that ends it, or a lost session a mac
//! starts over.

use std::borrow::Cow;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use super::{AfterClose, DROPPED, Ended, Event, Outbox, Outcome, Task, Tx};
use crate::{ErrorCode, Role};

impl Task {
    pub(super) async fn on_error(
        &mut self,
        code: ErrorCode,
        message: String,
        tx: &mut Tx,
    ) -> Result<(), Outcome> {
        match code {
            ErrorCode::InvalidResume | ErrorCode::ResumeExpired
                if self.role == Role::Mac
                    && self.config.reregister_on_lost_session
                    && self.session.is_some() =>
            {
                self.reregister(code, message, tx).await
            }
            ErrorCode::NotPaired => {
                self.outbox.not_paired();
                self.emit(Event::Error { code, message }).await;
                Ok(())
            }
            ErrorCode::MacDisconnected => Err(Outcome::Ended(Ended::MacDisconnected)),
            // The close that follows says to reconnect (1012); or for
            // UNAVAILABLE, the client backs off and tries again.
            ErrorCode::ShuttingDown => Ok(()),
            ErrorCode::Unavailable => Err(Outcome::Closed(
                AfterClose::Reconnect,
                Cow::Owned(format!("{code}: {message}")),
            )),
            ErrorCode::InvalidCode
            | ErrorCode::ExpiredCode
            | ErrorCode::AlreadyJoined
            | ErrorCode::RateLimited
            | ErrorCode::InvalidResume
            | ErrorCode::ResumeExpired
            | ErrorCode::RoomFull
            | ErrorCode::Denied
            | ErrorCode::Removed => Err(Outcome::Ended(Ended::Refused { code, message })),
            ErrorCode::InvalidMessage | ErrorCode::MessageTooLarge | ErrorCode::UnknownGuest => {
                self.emit(Event::Error { code, message }).await;
                Ok(())
            }
        }
    }
    /// The relay forgot the mac's session: start a new one on this
    /// connection (the relay keeps it open after refusing a resume).
    async fn reregister(
        &mut self,
        code: ErrorCode,
        message: String,
        tx: &mut Tx,
    ) -> Result<(), Outcome> {
        let unconfirmed = self.outbox.unconfirmed();
        self.session = None;
        self.paired = false;
        self.received = 0;
        self.outbox = Outbox::new(self.config.outbox);
        self.room_commands.clear();
        // If this connection drops first, the next one registers.
        self.want_register = true;
        self.emit(Event::SessionLost {
            code,
            message,
            unconfirmed,
        })
        .await;
        let m = self.register_message();
        tx.send(Message::text(m.to_text()))
            .await
            .map_err(|_| Outcome::Closed(AfterClose::Reconnect, DROPPED))
    }
}
