//! Registry-to-registry messages (JSON: they are rare), and what they
//! carry. A kind a node does not know fails to decode there and is skipped
//! (counted as a bad envelope), so new kinds never confuse an older node:
//! rooms have kinds of their own rather than optional fields on a
//! pairing's, which an older node would read as the pairing's.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use bytestring::ByteString;
use relay_protocol::{GuestId, GuestLeftReason, Role};
use serde::{Deserialize, Serialize};

use super::GuestLane;
use crate::frame::Frame;

/// A frame in a [`Control::Handover`], by its pairing number. Control
/// messages are JSON, so a binary payload travels as base64: handovers are
/// rare, and bounded by what one reader may leave unacknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldFrame {
    /// Pairing number.
    pub p: u64,
    /// The frame.
    #[serde(flatten)]
    pub body: HeldBody,
}

/// A [`HeldFrame`]'s payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldBody {
    /// A text frame, verbatim.
    Text(String),
    /// A binary frame, base64 (standard alphabet, padded).
    Binary(String),
}

impl HeldFrame {
    /// The frame numbered `p`, for a handover.
    pub fn new(p: u64, frame: &Frame) -> Self {
        let body = match frame {
            Frame::Text(t) => HeldBody::Text(t.to_string()),
            Frame::Binary(b) => HeldBody::Binary(BASE64.encode(b)),
        };
        HeldFrame { p, body }
    }

    /// The pairing number and frame, or `None` for base64 that does not decode.
    pub fn into_frame(self) -> Option<(u64, Frame)> {
        let frame = match self.body {
            HeldBody::Text(t) => Frame::Text(ByteString::from(t)),
            HeldBody::Binary(b) => Frame::Binary(Bytes::from(BASE64.decode(b).ok()?)),
        };
        Some((self.p, frame))
    }

    /// Bytes it takes in a link's queue.
    pub fn size(&self) -> usize {
        match &self.body {
            HeldBody::Text(s) | HeldBody::Binary(s) => s.len(),
        }
    }
}

/// Why a side ended for good, as told to the peer's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// It sent `leave`.
    Left,
    /// It closed with 1000.
    Closed,
    /// It did not come back in time (grace passed or its buffer overflowed).
    Timeout,
}

/// Registry-to-registry messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// To the mac's node: a browser joined on `node`.
    Joined {
        /// Session id.
        sid: String,
        /// The browser's node.
        node: String,
    },
    /// To the peer's node: side `role` is away (it may resume).
    Away {
        /// Session id.
        sid: String,
        /// The side that went away.
        role: Role,
        /// The node it went away from. Another node's `Moved` can overtake
        /// this message (they come over different connections), so the
        /// peer's node ignores it once it knows the side is elsewhere.
        /// Absent from older nodes: taken as news, as they did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// To the nodes that hold the session: side `role` is now on `node`,
    /// having `p_last` frames of this pairing. Close its old connection,
    /// send it what follows, and answer with [`Control::Handover`].
    Moved {
        /// Session id.
        sid: String,
        /// The side that moved.
        role: Role,
        /// Where it is now.
        node: String,
        /// Frames of the current pairing it has received.
        p_last: u64,
        /// It was away (its peer is told `peer_resumed`), not taken over.
        was_away: bool,
        /// Matches the answer to the request.
        request: u64,
    },
    /// Answer to [`Control::Moved`], to the side's new node.
    Handover {
        /// Session id.
        sid: String,
        /// The side that moved.
        role: Role,
        /// Frames of the moved side its peer received this pairing, if the
        /// peer is on the answering node.
        received: Option<u64>,
        /// Control messages queued for the side while it was away.
        events: Vec<String>,
        /// Frames of the moved side that its peer (on the answering node)
        /// has not acknowledged: the side's new node holds them from now
        /// on, as it holds every frame it sends to the peer, so they
        /// survive the answering node going (a drain, a crash) before the
        /// peer reads them or moves too.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unacknowledged: Vec<HeldFrame>,
        /// Why its frames cannot be replayed, if so.
        error: Option<String>,
        /// Matches the request.
        request: u64,
    },
    /// To a sender's node: frames from pairing number `from` on were lost; send them again.
    Resend {
        /// Session id.
        sid: String,
        /// The receiving side.
        to: Role,
        /// First missing pairing number.
        from: u64,
    },
    /// As [`Control::Resend`], for one direction of a room.
    GuestResend {
        /// Session id.
        sid: String,
        /// The direction whose frames were lost.
        lane: GuestLane,
        /// First missing number.
        from: u64,
    },
    /// To the peer's node: side `role` ended for good.
    Ended {
        /// Session id.
        sid: String,
        /// The side that ended.
        role: Role,
        /// Why.
        reason: EndReason,
    },
    /// To the mac's node: the code expired with no browser; the session is over.
    CodeExpired {
        /// Session id.
        sid: String,
        /// The code.
        code: String,
    },
    /// To every node: resend what you hold for me (my subscription was down).
    Resync {
        /// The node that missed messages.
        node: String,
    },
    /// To the host's node: guest `guest` joined with the code on `node`,
    /// waiting for the host, or in at once when the room admits
    /// automatically (the host's node sends `guest_joined`, and
    /// `guest_admitted` if so, and starts the host's direction to it).
    GuestJoined {
        /// Session id.
        sid: String,
        /// The guest.
        guest: GuestId,
        /// The guest's node.
        node: String,
        /// The name the guest gave, if any.
        name: Option<String>,
        /// In at once (`admit: auto`).
        admitted: bool,
    },
    /// To a guest's node, after the script that decided ran: let guest
    /// `guest` in (queue its `joined`, with the token that node holds) or
    /// cut it (`DENIED` or `REMOVED`, 1000, dropping what is queued for
    /// it). Answered with [`Control::Decided`]; the host's node sends the
    /// guest no frame before that answer, since the guest's node takes
    /// frames straight into the guest's pipe and this message through its
    /// registry, so a frame sent at once could overtake `joined`.
    Decide {
        /// Session id.
        sid: String,
        /// The guest.
        guest: GuestId,
        /// What the host decided.
        verdict: Verdict,
        /// Matches the answer to the request.
        request: u64,
    },
    /// Answer to [`Control::Decide`], to the host's node.
    Decided {
        /// Session id.
        sid: String,
        /// The guest.
        guest: GuestId,
        /// The guest was there and was told (false: it was gone already).
        done: bool,
        /// Matches the request.
        request: u64,
    },
    /// To the host's node: guest `guest` is away (it may resume).
    GuestAway {
        /// Session id.
        sid: String,
        /// The guest.
        guest: GuestId,
    },
    /// To the host's node: guest `guest` ended for good.
    GuestEnded {
        /// Session id.
        sid: String,
        /// The guest.
        guest: GuestId,
        /// Why, as the host is told (`guest_left`).
        reason: GuestLeftReason,
    },
    /// As [`Control::Moved`], for a room guest that resumed on `node`:
    /// its old node closes the old connection, the host's node points
    /// the guest's direction there and replays what follows `p_last`;
    /// each answers with [`Control::GuestHandover`].
    GuestMoved {
        /// Session id.
        sid: String,
        /// The guest.
        guest: GuestId,
        /// Where it is now.
        node: String,
        /// Frames of its direction it has received.
        p_last: u64,
        /// It was away (the host is told `guest_back`), not taken over.
        was_away: bool,
        /// Matches the answer to the request.
        request: u64,
    },
    /// Answer to [`Control::Moved`] of a room host, from the node that
    /// held its room, to the host's new node: the room's guests and where
    /// each direction stands. The old node forgets the room; its own
    /// guests are closed to resume (1012), as in a drain.
    HostHandover {
        /// Session id.
        sid: String,
        /// Frames the relay accepted from the host.
        accepted: u64,
        /// The room's guests.
        guests: Vec<HandedGuest>,
        /// Matches the request.
        request: u64,
    },
    /// To a guest's node: the room's host is on `node` now. Each guest
    /// named sends there from after the count given (the frames of it the
    /// host has), and acknowledges there what it reads.
    HostAt {
        /// Session id.
        sid: String,
        /// The host's node.
        node: String,
        /// Each guest of that node, with the frames of it the host has.
        guests: Vec<(GuestId, u64)>,
        /// The host was away (its guests hear `peer_resumed`).
        was_away: bool,
    },
    /// To a node holding guests of a room whose host's node died: the host
    /// resumed on `node`, where the room is rebuilt. Each guest named
    /// sends there after the count given (the host's own count of that
    /// guest's frames, `guestSeqs`) or, without one, every frame of it
    /// held (the host may have read some of those: they come again), and
    /// acknowledges there what it reads. Answered with
    /// [`Control::HostRebuilt`].
    HostRebuild {
        /// Session id.
        sid: String,
        /// The host's node.
        node: String,
        /// Each guest of that node, with the host's count of its frames if known.
        guests: Vec<(GuestId, Option<u64>)>,
        /// Matches the answer to the request.
        request: u64,
    },
    /// Answer to [`Control::HostRebuild`], to the host's node: where each
    /// of its guests stands.
    HostRebuilt {
        /// Session id.
        sid: String,
        /// The answering node.
        #[serde(default)]
        node: String,
        /// The guests the node holds of those named.
        guests: Vec<RebuiltGuest>,
        /// Matches the request.
        request: u64,
    },
    /// As [`Control::Handover`], for a room guest: answer to
    /// [`Control::GuestMoved`], to the guest's new node.
    GuestHandover {
        /// Session id.
        sid: String,
        /// The guest.
        guest: GuestId,
        /// Frames of the guest the host received (its direction toward
        /// the host), if the host is on the answering node.
        received: Option<u64>,
        /// Control messages queued for the guest while it was away.
        events: Vec<String>,
        /// Frames of the guest the host has not read, if the host is on
        /// the answering node (held by the guest's new node from now on).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unacknowledged: Vec<HeldFrame>,
        /// Why its frames cannot be replayed, if so.
        error: Option<String>,
        /// The host is on the answering node and its room is not yet
        /// there (being rebuilt, or moving there): the guest is to come
        /// again. Absent (false) from a node of before.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        not_yet: bool,
        /// Matches the request.
        request: u64,
    },
}

/// A room guest as the host's old node hands it over (`HostHandover`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandedGuest {
    /// The guest.
    pub id: GuestId,
    /// Its node.
    pub node: String,
    /// In the room (false: waiting for the host).
    pub admitted: bool,
    /// Frames of its direction sent to it so far.
    pub sent: u64,
    /// Those it has not acknowledged, for the host's new node to hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldFrame>,
    /// Frames of it the host has (read, within the host's `lastSeq`).
    pub have: u64,
}

/// A room guest as its node answers a rebuild (`HostRebuilt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuiltGuest {
    /// The guest.
    pub id: GuestId,
    /// Frames of the host's direction toward it its node took.
    pub took: u64,
    /// The host's number of the last of them (0: not known).
    pub host_at: u64,
    /// The frames of it the host's node will get start after this one.
    pub from: u64,
    /// Frames taken and not yet acknowledged by the guest, for the host's
    /// node to hold (as [`HandedGuest::held`]): the replay source should
    /// the guest move.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldFrame>,
}

/// A room host's decision about one guest, for the guest's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let the waiting guest in.
    Admit,
    /// Turn the waiting guest away.
    Deny,
    /// End the guest at once, waiting or in.
    Remove,
}
