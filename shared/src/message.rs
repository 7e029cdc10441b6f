//! Control messages: JSON objects in text frames with a snake_case `type`
//! and camelCase fields. Parse once at the edge with [`ClientMessage::parse`].

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// Which side of a session a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The host (a desktop app) on `/mac`: registers and shows the code.
    Mac,
    /// The peer (a browser tab) on `/browser`: joins with the code.
    Browser,
}

impl Role {
    /// The other side of the session.
    pub const fn peer(self) -> Role {
        match self {
            Role::Mac => Role::Browser,
            Role::Browser => Role::Mac,
        }
    }

    /// Lower-case name, as used in metric labels and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Mac => "mac",
            Role::Browser => "browser",
        }
    }
}

/// A message a client sends to the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ClientMessage {
    /// Mac: ask for a session code.
    Register {
        /// Optional id the app keeps across runs; only logged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Rooms: how many guests at once; present makes a room host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_guests: Option<u32>,
        /// Rooms: how guests are admitted; present makes a room host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        admit: Option<AdmitMode>,
    },
    /// Browser: join the session with this code (as typed).
    Join {
        /// The code as the person typed it.
        code: String,
        /// Rooms: a name for the host to see.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Room host: let a waiting guest in.
    Admit {
        /// The guest.
        guest_id: GuestId,
    },
    /// Room host: turn a waiting guest away.
    Deny {
        /// The guest.
        guest_id: GuestId,
    },
    /// Room host: end a guest, waiting or admitted, at once.
    Remove {
        /// The guest.
        guest_id: GuestId,
    },
    /// Room host: send the data frames that follow to one guest, or to all.
    To {
        /// The guest; absent means every admitted guest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guest_id: Option<GuestId>,
    },
    /// Either side: take a session back after a dropped connection.
    Resume {
        /// `sessionId` from `registered`/`joined`.
        session_id: String,
        /// `resumeToken` from `registered`/`joined`.
        resume_token: String,
        /// Data frames this client has received in the session.
        last_seq: u64,
        /// Room host: data frames it received from each guest (from the
        /// `from` tags); sent only when non-empty. Malformed reads as absent.
        #[serde(
            default,
            skip_serializing_if = "GuestSeqs::is_empty",
            deserialize_with = "lenient_guest_seqs"
        )]
        guest_seqs: GuestSeqs,
    },
    /// Data as text; relayed verbatim to the peer.
    Data {
        /// Application payload.
        payload: String,
    },
    /// App-level ping; answered with `pong` carrying the same `ts`.
    Ping {
        /// Any number, echoed back.
        ts: serde_json::Number,
    },
    /// End this side of the session for good, at once.
    Leave,
}

impl ClientMessage {
    /// Parses one text frame.
    ///
    /// # Errors
    /// The serde error when the text is not a known, well-typed message.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Whether `text` is a well-formed `data` message: exactly when
    /// [`ClientMessage::parse`] would give [`ClientMessage::Data`], without
    /// building the message. The relay forwards a `data` frame's text
    /// verbatim, so it needs only this answer; the full parse of an
    /// internally tagged enum buffers the whole document (every key, and the
    /// payload twice) before it looks at the tag.
    pub fn is_data(text: &str) -> bool {
        Self::is_plain_data(text) || matches!(Self::parse(text), Ok(ClientMessage::Data { .. }))
    }

    /// True when `text` is a well-formed `data` message, found without
    /// building it; false says nothing (e.g. duplicate keys): parse it.
    /// One pass, no allocation for the usual data frame.
    pub fn is_plain_data(text: &str) -> bool {
        #[derive(Deserialize)]
        struct DataShape<'a> {
            #[serde(rename = "type", borrow)]
            ty: std::borrow::Cow<'a, str>,
            // Checked to be a string, never copied.
            #[allow(dead_code)]
            payload: AnyString,
        }
        serde_json::from_str::<DataShape<'_>>(text).is_ok_and(|d| d.ty == "data")
    }

    /// Whether `text` is a JSON object whose `type` is `ty`, whatever else
    /// in it is wrong: what a malformed message was meant to be.
    pub fn has_type(text: &str, ty: &str) -> bool {
        #[derive(Deserialize)]
        struct Typed<'a> {
            #[serde(rename = "type", borrow)]
            ty: std::borrow::Cow<'a, str>,
        }
        serde_json::from_str::<Typed<'_>>(text).is_ok_and(|t| t.ty == ty)
    }

    /// Serialises to the text of a frame.
    pub fn to_text(&self) -> String {
        // unwrap: these types hold only strings and numbers, which always serialise.
        #[allow(clippy::unwrap_used)]
        serde_json::to_string(self).unwrap()
    }
}

/// A JSON string, checked and not kept.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AnyString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }
        d.deserialize_str(V)
    }
}

/// Why the browser is gone for good (`peer_left`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerLeftReason {
    /// Its connection closed with 1000 (it meant to go).
    Closed,
    /// It dropped and did not resume within the grace period.
    Timeout,
    /// It sent `leave`.
    Left,
}

impl PeerLeftReason {
    /// Lower-case name, as on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Left => "left",
        }
    }
}

/// A guest's id within its room: positive, never reused in a session.
pub type GuestId = u64;

/// A room host's `guestSeqs`: data frames it received from each guest.
pub type GuestSeqs = std::collections::BTreeMap<GuestId, u64>;

/// Reads `guestSeqs`, taking anything malformed (keys that are not guest
/// ids, values that are not counts) as absent rather than refusing the
/// resume: the field is a hint the relay may need, never a condition.
fn lenient_guest_seqs<'de, D>(d: D) -> Result<GuestSeqs, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

/// How a room admits its guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmitMode {
    /// The host admits or denies each guest.
    #[default]
    Ask,
    /// Every guest is admitted at once.
    Auto,
}

/// Why a guest is gone for good (`guest_left`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestLeftReason {
    /// It sent `leave`.
    Left,
    /// It closed (with 1000, or any way while waiting).
    Closed,
    /// It stayed away past the grace period, its buffer overflowed, or the
    /// host did not answer its join in time.
    Timeout,
    /// The host denied it.
    Denied,
    /// The host removed it.
    Removed,
}

impl From<PeerLeftReason> for GuestLeftReason {
    fn from(r: PeerLeftReason) -> Self {
        match r {
            PeerLeftReason::Closed => Self::Closed,
            PeerLeftReason::Timeout => Self::Timeout,
            PeerLeftReason::Left => Self::Left,
        }
    }
}

/// A message the relay sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    /// To the mac: its code and the secrets to resume.
    Registered {
        /// The code to show.
        code: String,
        /// When the code stops being valid for joining (unix ms).
        expires_at: u64,
        /// Id of the session, for `resume`.
        session_id: String,
        /// Secret for `resume`; never shown to the user.
        resume_token: String,
        /// Rooms: how many guests the room holds (room hosts only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_guests: Option<u32>,
        /// Rooms: how guests are admitted (room hosts only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        admit: Option<AdmitMode>,
    },
    /// To the browser: it joined.
    Joined {
        /// Id of the session, for `resume`.
        session_id: String,
        /// Secret for `resume`.
        resume_token: String,
        /// Rooms: this guest's id (in a room only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guest_id: Option<GuestId>,
    },
    /// To a guest of a room that asks: wait for the host to admit it.
    Waiting {
        /// The guest's id.
        guest_id: GuestId,
    },
    /// To a room host: a guest joined with the code.
    GuestJoined {
        /// The guest.
        guest_id: GuestId,
        /// The name it gave.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// To a room host: the guest is in the room.
    GuestAdmitted {
        /// The guest.
        guest_id: GuestId,
    },
    /// To a room host: the guest is gone for good.
    GuestLeft {
        /// The guest.
        guest_id: GuestId,
        /// Why.
        reason: GuestLeftReason,
    },
    /// To a room host: the guest's connection dropped; it may resume.
    GuestAway {
        /// The guest.
        guest_id: GuestId,
    },
    /// To a room host: the guest resumed.
    GuestBack {
        /// The guest.
        guest_id: GuestId,
    },
    /// To a room host: the data frames after this are from that guest.
    From {
        /// The guest.
        guest_id: GuestId,
    },
    /// To the mac: a browser joined.
    PeerJoined,
    /// To the mac: the browser is gone for good.
    PeerLeft {
        /// Why it left.
        reason: PeerLeftReason,
    },
    /// The peer's connection dropped; it may resume within the grace period.
    PeerDisconnected,
    /// The peer is back.
    PeerResumed,
    /// To the mac: the code expired with no browser; `register` again for a new one.
    CodeExpired {
        /// The code that expired.
        code: String,
    },
    /// Answer to `resume`; replayed frames follow.
    Resumed {
        /// The session resumed.
        session_id: String,
        /// Data frames the relay accepted from this client; re-send those after it.
        last_seq: u64,
    },
    /// Answer to `ping`.
    Pong {
        /// The `ts` of the ping.
        ts: serde_json::Number,
    },
    /// Something went wrong; `code` says what.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// What to do, for a person.
        message: String,
    },
    /// Data as text from the peer (relayed verbatim, so clients parse it here).
    Data {
        /// Application payload.
        payload: String,
    },
}

impl ServerMessage {
    /// An `error` message with the code's standard sentence.
    pub fn error(code: ErrorCode) -> Self {
        Self::Error {
            code,
            message: code.default_message().to_owned(),
        }
    }

    /// An `error` message with a specific sentence.
    pub fn error_with(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }

    /// Serialises to the text of a frame.
    pub fn to_text(&self) -> String {
        // unwrap: these types hold only strings and numbers, which always serialise.
        #[allow(clippy::unwrap_used)]
        serde_json::to_string(self).unwrap()
    }

    /// Parses one text frame from the relay.
    ///
    /// # Errors
    /// The serde error when the text is not a known message.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests;
