//! A session as the in-memory registry keeps it: its code, its host, the
//! places its guests take, and the pipes between them. Plain data with small
//! helpers; the registry actor changes it.
//!
//! Each guest place has its own pipe from the host, with its own cursor
//! (what that guest read); frames from the guests reach the host through one
//! pipe, in the order they came, tagged with their guest. A plain pairing
//! has one place and no room; a room adds guest ids, admission, and the
//! host's way to all its admitted guests (`outbound::Room`).

use std::num::NonZeroU64;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use relay_protocol::{
    AdmitMode, ErrorCode, GuestId, GuestLeftReason, PeerLeftReason, ServerMessage, SessionCode,
};

use super::member::Member;
use super::secret::TokenHash;
use super::timers::Key;
use super::{Link, SessionId};
use crate::conns::{ConnCommand, ConnId};
use crate::outbound::{GuestOut, Outbound, Room};
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
    /// In a room: who holds the place, while a guest does (boxed: a
    /// pairing, most sessions, pays one pointer for it).
    pub(super) seat: Option<Box<Seat>>,
}

/// A room guest's standing.
pub(super) struct Seat {
    pub(super) id: GuestId,
    pub(super) name: Option<String>,
    /// Its token, until `joined` gives it to the guest (a room that asks).
    pub(super) pending_token: Option<String>,
    /// Denies the guest when the host does not answer in time.
    pub(super) admit_timer: Option<Key>,
    pub(super) out: Arc<GuestOut>,
}

impl Seat {
    pub(super) fn admitted(&self) -> bool {
        self.pending_token.is_none()
    }
}

/// What a room host asked for when it registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RoomRules {
    pub(super) max_guests: usize,
    pub(super) admit: AdmitMode,
}

/// A room: its rules, the next guest id and the host's way to its guests.
pub(super) struct RoomState {
    pub(super) rules: RoomRules,
    next_id: GuestId,
    pub(super) fanout: Arc<Room>,
    /// Bounds of the pipes made for guests as they come.
    limits: Limits,
}

/// Something about a side that those on the other side are told.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    /// A guest joined with the code.
    Joined,
    /// A room guest is in.
    Admitted,
    /// The side's connection dropped; it may resume.
    Away,
    /// It resumed.
    Back,
    /// A guest is gone for good.
    Left(GuestLeftReason),
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
    /// `None` for a pairing (boxed: a pairing pays one pointer for it).
    pub(super) room: Option<Box<RoomState>>,
}

impl Session {
    /// A session of `host`: a pairing (one guest place), or a room.
    pub(super) fn new(
        id: SessionId,
        code: SessionCode,
        code_timer: Key,
        host: Side,
        room: Option<RoomRules>,
        limits: Limits,
    ) -> Self {
        let places = match room {
            None => vec![Place {
                guest: None,
                to_guest: Pipe::new(limits),
                seat: None,
            }],
            // Made as guests come.
            Some(_) => Vec::new(),
        };
        Session {
            id,
            code,
            code_live: true,
            code_timer: Some(code_timer),
            host,
            to_host: Pipe::new(limits),
            places,
            room: room.map(|rules| {
                Box::new(RoomState {
                    rules,
                    next_id: 1,
                    fanout: Room::new(),
                    limits,
                })
            }),
        }
    }

    /// A place for a new guest, if there is room: in a room, with a fresh
    /// pipe (the guest's own count from 0) that never paces the host, and
    /// its seat. The caller puts the guest in it.
    pub(super) fn take_place(&mut self, name: Option<String>, token: &str) -> Option<usize> {
        let Some(room) = &mut self.room else {
            return self.places.iter().position(|p| p.guest.is_none());
        };
        let i = match self.places.iter().position(|p| p.guest.is_none()) {
            Some(i) => i,
            None if self.places.len() < room.rules.max_guests => {
                self.places.push(Place {
                    guest: None,
                    to_guest: Pipe::new(room.limits),
                    seat: None,
                });
                self.places.len() - 1
            }
            None => return None,
        };
        let id = room.next_id;
        room.next_id += 1;
        let auto = room.rules.admit == AdmitMode::Auto;
        let tag = NonZeroU64::new(id).expect("guest ids start at 1");
        let place = &mut self.places[i];
        place.to_guest.close();
        place.to_guest = Pipe::new(Limits {
            paced: false,
            ..room.limits
        });
        place.seat = Some(Box::new(Seat {
            id,
            name,
            pending_token: (!auto).then(|| token.to_owned()),
            admit_timer: None,
            out: GuestOut::new(Arc::clone(&self.to_host), tag, auto),
        }));
        Some(i)
    }

    /// Whether `m` is in the session: not a room guest still waiting for its host.
    pub(super) fn is_in(&self, m: Member) -> bool {
        match m {
            Member::Host => true,
            Member::Guest(i) => self
                .places
                .get(i)
                .is_some_and(|p| p.guest.is_some() && p.seat.as_ref().is_none_or(|s| s.admitted())),
        }
    }

    /// Room guest `id`'s place.
    pub(super) fn place_of(&self, id: GuestId) -> Option<usize> {
        self.places
            .iter()
            .position(|p| p.guest.is_some() && p.seat.as_ref().is_some_and(|s| s.id == id))
    }

    /// The guest in place `i` is in: its frames reach the host, the host's reach it.
    pub(super) fn admit(&mut self, i: usize) {
        let (Some(room), Some(place)) = (&self.room, self.places.get_mut(i)) else {
            return;
        };
        let Some(seat) = &mut place.seat else { return };
        seat.pending_token = None;
        seat.out.admit();
        room.fanout.add(seat.id, i, Arc::clone(&place.to_guest));
    }

    /// Frees place `i`: its guest gets nothing more from the host.
    pub(super) fn free_place(&mut self, i: usize) -> Option<Side> {
        let place = self.places.get_mut(i)?;
        if let (Some(room), Some(seat)) = (&self.room, place.seat.take()) {
            room.fanout.remove(seat.id);
            place.to_guest.close();
        } else {
            place.to_guest.end_receiver();
        }
        place.guest.take()
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

    /// Where `m`'s frames go: in a pairing, the other side's pipe; in a
    /// room, the host's guests or a guest's way to the host.
    fn outbound(&self, m: Member) -> Option<Outbound> {
        Some(match (&self.room, m) {
            (None, Member::Host) => Outbound::Peer(Arc::clone(&self.places.first()?.to_guest)),
            (None, Member::Guest(_)) => Outbound::Peer(Arc::clone(&self.to_host)),
            (Some(room), Member::Host) => Outbound::Host(Arc::clone(&room.fanout)),
            (Some(_), Member::Guest(i)) => {
                Outbound::Guest(Arc::clone(&self.places.get(i)?.seat.as_ref()?.out))
            }
        })
    }

    /// `m` resumes on `conn`: frames from its earlier connections are
    /// refused from now on; returns what the relay accepted from it (its
    /// resume `lastSeq`), final for those connections.
    pub(super) fn fence(&self, m: Member, conn: ConnId) -> u64 {
        self.outbound(m).map_or(0, |o| o.fence(conn))
    }

    /// `m`'s place in the session, having written up to `written` of its pipe.
    pub(super) fn link(&self, m: Member, written: u64) -> Option<Link> {
        Some(Link {
            session_id: Arc::clone(&self.id),
            inbound: Arc::clone(self.pipe_to(m)?),
            outbound: self.outbound(m)?,
            member: m,
            written,
        })
    }

    /// The member whose token is `token`, among the sides of `role`.
    pub(super) fn member_with_token(
        &self,
        role: relay_protocol::Role,
        token: &str,
    ) -> Option<Member> {
        self.sides()
            .find(|(m, side)| m.role() == role && side.token.matches(token))
            .map(|(m, _)| m)
    }

    /// Tells the other side of `m` about `change`: a room host hears it
    /// with the guest's id, a pairing's sides in the contract's words.
    pub(super) fn announce(&self, m: Member, change: Change) {
        let msg = match (m, &self.room) {
            (Member::Host, _) => match change {
                Change::Away => ServerMessage::PeerDisconnected,
                Change::Back => ServerMessage::PeerResumed,
                _ => return,
            },
            (Member::Guest(_), None) => match change {
                Change::Joined => ServerMessage::PeerJoined,
                Change::Admitted => return,
                Change::Away => ServerMessage::PeerDisconnected,
                Change::Back => ServerMessage::PeerResumed,
                Change::Left(r) => ServerMessage::PeerLeft {
                    reason: match r {
                        GuestLeftReason::Closed => PeerLeftReason::Closed,
                        GuestLeftReason::Timeout => PeerLeftReason::Timeout,
                        _ => PeerLeftReason::Left,
                    },
                },
            },
            (Member::Guest(i), Some(_)) => {
                let Some(seat) = self.places.get(i).and_then(|p| p.seat.as_ref()) else {
                    return;
                };
                let guest_id = seat.id;
                match change {
                    Change::Joined => ServerMessage::GuestJoined {
                        guest_id,
                        name: seat.name.clone(),
                    },
                    Change::Admitted => ServerMessage::GuestAdmitted { guest_id },
                    Change::Away => ServerMessage::GuestAway { guest_id },
                    Change::Back => ServerMessage::GuestBack { guest_id },
                    Change::Left(reason) => ServerMessage::GuestLeft { guest_id, reason },
                }
            }
        };
        self.tell_others(m, &msg, EventEffect::None);
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
