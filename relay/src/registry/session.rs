//! A session as the in-memory registry keeps it: its code, its host, the
//! places its guests take, and the pipes between them. Plain data with small
//! helpers; the registry actor changes it.
//!
//! Each guest place has its own pipe from the host, with its own cursor
//! (what that guest read); frames from the guests reach the host through one
//! pipe, in the order they came. A plain pairing has one place.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use relay_protocol::{ErrorCode, ServerMessage, SessionCode};

use super::member::Member;
use super::secret::TokenHash;
use super::timers::Key;
use super::{Link, SessionId};
use crate::conns::{ConnCommand, ConnId};
use crate::pipe::Pipe;
use crate::queue::{EventEffect, Limits};

/// One side of a session.
pub(super) struct Side {
    pub(super) token: TokenHash,
    /// The connection reading this side's pipe, if one is open.
    pub(super) conn: Option<(ConnId, Recipient<ConnCommand>)>,
    /// Ends the side when the grace period passes while it is away.
    pub(super) grace_timer: Option<Key>,
}

/// A place a guest takes: the guest, once one joined, and the frames from
/// the host toward it (the pipe outlives the guests that come and go).
pub(super) struct Place {
    pub(super) guest: Option<Side>,
    pub(super) to_guest: Arc<Pipe>,
}

/// A registered host, with or without guests.
pub(super) struct Session {
    pub(super) id: SessionId,
    pub(super) code: SessionCode,
    /// Whether the code can still be joined with.
    pub(super) code_live: bool,
    pub(super) code_timer: Option<Key>,
    pub(super) host: Side,
    /// Frames from the guests toward the host.
    pub(super) to_host: Arc<Pipe>,
    pub(super) places: Vec<Place>,
}

impl Session {
    /// A session of `host` with `places` empty guest places.
    pub(super) fn new(
        id: SessionId,
        code: SessionCode,
        code_timer: Key,
        host: Side,
        places: usize,
        limits: Limits,
    ) -> Self {
        Session {
            id,
            code,
            code_live: true,
            code_timer: Some(code_timer),
            host,
            to_host: Pipe::new(limits),
            places: (0..places)
                .map(|_| Place {
                    guest: None,
                    to_guest: Pipe::new(limits),
                })
                .collect(),
        }
    }

    pub(super) fn side(&self, m: Member) -> Option<&Side> {
        match m {
            Member::Host => Some(&self.host),
            Member::Guest(i) => self.places.get(i)?.guest.as_ref(),
        }
    }

    pub(super) fn side_mut(&mut self, m: Member) -> Option<&mut Side> {
        match m {
            Member::Host => Some(&mut self.host),
            Member::Guest(i) => self.places.get_mut(i)?.guest.as_mut(),
        }
    }

    /// Every side there is, with who it is.
    pub(super) fn sides(&self) -> impl Iterator<Item = (Member, &Side)> {
        std::iter::once((Member::Host, &self.host)).chain(
            self.places
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((Member::Guest(i), p.guest.as_ref()?))),
        )
    }

    /// Whether any guest is in the session (connected or away).
    pub(super) fn has_guests(&self) -> bool {
        self.places.iter().any(|p| p.guest.is_some())
    }

    /// The first place no guest holds.
    pub(super) fn free_place(&self) -> Option<usize> {
        self.places.iter().position(|p| p.guest.is_none())
    }

    /// Pipe toward `m`.
    pub(super) fn pipe_to(&self, m: Member) -> Option<&Arc<Pipe>> {
        match m {
            Member::Host => Some(&self.to_host),
            Member::Guest(i) => Some(&self.places.get(i)?.to_guest),
        }
    }

    /// Every pipe of the session.
    pub(super) fn pipes(&self) -> impl Iterator<Item = &Arc<Pipe>> {
        std::iter::once(&self.to_host).chain(self.places.iter().map(|p| &p.to_guest))
    }

    /// The pipe `m`'s frames go into: a guest's toward the host; the
    /// host's toward its guest (one place: a pairing).
    fn pipe_from(&self, m: Member) -> Option<&Arc<Pipe>> {
        match m {
            Member::Host => self.places.first().map(|p| &p.to_guest),
            Member::Guest(_) => Some(&self.to_host),
        }
    }

    /// Frames the relay accepted from `m` (its resume `lastSeq`).
    pub(super) fn accepted_from(&self, m: Member) -> u64 {
        self.pipe_from(m).map_or(0, |p| p.accepted())
    }

    /// `m`'s place in the session, having written up to `written` of its pipe.
    pub(super) fn link(&self, m: Member, written: u64) -> Option<Link> {
        Some(Link {
            session_id: Arc::clone(&self.id),
            inbound: Arc::clone(self.pipe_to(m)?),
            outbound: Arc::clone(self.pipe_from(m)?),
            written,
        })
    }

    /// Tells the side `m` something, if that side exists.
    pub(super) fn tell(&self, m: Member, msg: &ServerMessage, effect: EventEffect) {
        if self.side(m).is_none() {
            return;
        }
        if let Some(p) = self.pipe_to(m) {
            p.push_event(ByteString::from(msg.to_text()), effect);
        }
    }

    /// Tells those on the other side of `m` something: the host's guests, or
    /// a guest's host.
    pub(super) fn tell_others(&self, m: Member, msg: &ServerMessage, effect: EventEffect) {
        match m {
            Member::Host => {
                for i in 0..self.places.len() {
                    self.tell(Member::Guest(i), msg, effect);
                }
            }
            Member::Guest(_) => self.tell(Member::Host, msg, effect),
        }
    }
}

/// Why a side's session cannot be resumed any more.
#[derive(Clone, Copy)]
pub(super) struct Ended {
    pub(super) token: TokenHash,
    pub(super) code: ErrorCode,
}
