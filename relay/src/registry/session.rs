//! A session as the registry keeps it: its code, its two sides and their
//! pipes. Plain data with small helpers; the registry actor changes it.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use relay_protocol::{ErrorCode, Role, ServerMessage, SessionCode};

use super::deadlines::Key;
use super::secret::TokenHash;
use super::{Link, SessionId};
use crate::conns::{ConnCommand, ConnId};
use crate::pipe::Pipe;
use crate::queue::EventEffect;

/// One side of a session.
pub(super) struct Side {
    pub(super) token: TokenHash,
    /// The connection reading this side's pipe, if one is open.
    pub(super) conn: Option<(ConnId, Recipient<ConnCommand>)>,
    /// Ends the side when the grace period passes while it is away.
    pub(super) grace_timer: Option<Key>,
}

/// A registered mac, with or without a browser.
pub(super) struct Session {
    pub(super) id: SessionId,
    pub(super) code: SessionCode,
    /// Whether the code can still be joined with.
    pub(super) code_live: bool,
    pub(super) code_timer: Option<Key>,
    pub(super) mac: Side,
    pub(super) browser: Option<Side>,
    pub(super) to_mac: Arc<Pipe>,
    pub(super) to_browser: Arc<Pipe>,
}

impl Session {
    pub(super) fn side_mut(&mut self, role: Role) -> Option<&mut Side> {
        match role {
            Role::Mac => Some(&mut self.mac),
            Role::Browser => self.browser.as_mut(),
        }
    }

    /// Pipe toward `role`.
    pub(super) fn pipe_to(&self, role: Role) -> &Arc<Pipe> {
        match role {
            Role::Mac => &self.to_mac,
            Role::Browser => &self.to_browser,
        }
    }

    pub(super) fn link(&self, role: Role, written: u64) -> Link {
        Link {
            session_id: Arc::clone(&self.id),
            inbound: Arc::clone(self.pipe_to(role)),
            outbound: Arc::clone(self.pipe_to(role.peer())),
            written,
        }
    }

    /// Tells the side `role` something, if that side exists.
    pub(super) fn tell(&self, role: Role, msg: &ServerMessage, effect: EventEffect) {
        if role == Role::Browser && self.browser.is_none() {
            return;
        }
        self.pipe_to(role)
            .push_event(ByteString::from(msg.to_text()), effect);
    }
}

/// Why a side's session cannot be resumed any more.
#[derive(Clone, Copy)]
pub(super) struct Ended {
    pub(super) token: TokenHash,
    pub(super) code: ErrorCode,
}
