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
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_from_the_wire() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"register"}"#).unwrap(),
            ClientMessage::Register {
                client_id: None,
                max_guests: None,
                admit: None
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"register","clientId":"abc"}"#).unwrap(),
            ClientMessage::Register {
                client_id: Some("abc".into()),
                max_guests: None,
                admit: None
            }
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"type":"resume","sessionId":"s","resumeToken":"t","lastSeq":7}"#
            )
            .unwrap(),
            ClientMessage::Resume {
                session_id: "s".into(),
                resume_token: "t".into(),
                last_seq: 7
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"leave","extra":1}"#).unwrap(),
            ClientMessage::Leave
        );
        let ping = ClientMessage::parse(r#"{"type":"ping","ts":1700000000123}"#).unwrap();
        let ClientMessage::Ping { ts } = ping else {
            panic!("not a ping")
        };
        assert_eq!(ts.to_string(), "1700000000123");
    }

    #[test]
    fn ping_timestamps_come_back_as_the_same_number() {
        // Found by `make fuzz` (client_message): without correctly rounded
        // float parsing this read one ULP off, so `pong` echoed another number.
        for ts in [
            "123456789012691357802469135780",
            "1700000000123.4567",
            "0.30000000000000004",
            "-2.5e-308",
        ] {
            let ping = ClientMessage::parse(&format!(r#"{{"type":"ping","ts":{ts}}}"#)).unwrap();
            assert_eq!(ClientMessage::parse(&ping.to_text()).unwrap(), ping, "{ts}");
            let ClientMessage::Ping { ts: n } = ping else {
                panic!("not a ping")
            };
            assert_eq!(n.as_f64(), ts.parse::<f64>().ok(), "{ts}");
        }
    }

    #[test]
    fn is_data_agrees_with_the_full_parse() {
        for text in [
            r#"{"type":"data","payload":"hi"}"#,
            r#"{"payload":"hi","type":"data"}"#,
            r#"{"type":"data","payload":"h\u00e9 \"q\"","extra":[1,{"a":null}]}"#,
            r#"{"type":"d\u0061ta","payload":""}"#,
            r#" {"type":"data","payload":"x"} "#,
            r#"{"type":"data","payload":"x"} x"#,
            r#"{"type":"data","payload":5}"#,
            r#"{"type":"data","payload":null}"#,
            r#"{"type":"data"}"#,
            r#"{"type":"data","payload":"a","payload":"b"}"#,
            r#"{"type":"data","type":"data","payload":"a"}"#,
            r#"{"type":"ping","ts":1,"payload":"x"}"#,
            r#"{"type":"DATA","payload":"x"}"#,
            r#"{"type":"data","payload":"\ud800"}"#,
            r#"["data","x"]"#,
            "",
        ] {
            let full = matches!(ClientMessage::parse(text), Ok(ClientMessage::Data { .. }));
            assert_eq!(ClientMessage::is_data(text), full, "{text}");
            assert!(!ClientMessage::is_plain_data(text) || full, "{text}");
        }
        assert!(ClientMessage::is_data(r#"{"type":"data","payload":"hi"}"#));
    }

    #[test]
    fn malformed_client_messages_are_errors() {
        for text in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"type":"nope"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","code":7}"#,
            r#"{"type":"resume","sessionId":"s","resumeToken":"t","lastSeq":-1}"#,
            r#"{"type":"data","payload":{"a":1}}"#,
            r#"{"type":"ping","ts":"x"}"#,
            r#"{"type":"Register"}"#,
        ] {
            assert!(ClientMessage::parse(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn room_messages_parse_from_the_wire() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"register","maxGuests":3,"admit":"auto"}"#).unwrap(),
            ClientMessage::Register {
                client_id: None,
                max_guests: Some(3),
                admit: Some(AdmitMode::Auto)
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"join","code":"abc","name":"Ana"}"#).unwrap(),
            ClientMessage::Join {
                code: "abc".into(),
                name: Some("Ana".into())
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"admit","guestId":2}"#).unwrap(),
            ClientMessage::Admit { guest_id: 2 }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"to"}"#).unwrap(),
            ClientMessage::To { guest_id: None }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"to","guestId":7}"#).unwrap(),
            ClientMessage::To { guest_id: Some(7) }
        );
        for bad in [
            r#"{"type":"register","maxGuests":-1}"#,
            r#"{"type":"register","admit":"maybe"}"#,
            r#"{"type":"admit"}"#,
            r#"{"type":"remove","guestId":"1"}"#,
            r#"{"type":"to","guestId":1.5}"#,
        ] {
            assert!(ClientMessage::parse(bad).is_err(), "{bad} parsed");
        }
        assert_eq!(
            ServerMessage::GuestLeft {
                guest_id: 4,
                reason: GuestLeftReason::Removed
            }
            .to_text(),
            r#"{"type":"guest_left","guestId":4,"reason":"removed"}"#
        );
        assert_eq!(
            ServerMessage::From { guest_id: 4 }.to_text(),
            r#"{"type":"from","guestId":4}"#
        );
    }

    #[test]
    fn a_malformed_message_still_says_what_it_meant_to_be() {
        let bad_to = r#"{"type":"to","guestId":"b"}"#;
        assert!(ClientMessage::parse(bad_to).is_err());
        assert!(ClientMessage::has_type(bad_to, "to"));
        assert!(!ClientMessage::has_type(bad_to, "admit"));
        assert!(!ClientMessage::has_type("not json", "to"));
        assert!(!ClientMessage::has_type(r#"{"guestId":1}"#, "to"));
    }

    #[test]
    fn v1_messages_carry_no_room_fields() {
        let joined = ServerMessage::Joined {
            session_id: "s".into(),
            resume_token: "t".into(),
            guest_id: None,
        };
        assert_eq!(
            joined.to_text(),
            r#"{"type":"joined","sessionId":"s","resumeToken":"t"}"#
        );
    }

    #[test]
    fn server_messages_use_camel_case_fields() {
        let text = ServerMessage::Registered {
            code: "H4F7KN".into(),
            expires_at: 1,
            session_id: "s".into(),
            resume_token: "t".into(),
            max_guests: None,
            admit: None,
        }
        .to_text();
        assert_eq!(
            text,
            r#"{"type":"registered","code":"H4F7KN","expiresAt":1,"sessionId":"s","resumeToken":"t"}"#
        );
        assert_eq!(
            ServerMessage::PeerLeft {
                reason: PeerLeftReason::Timeout
            }
            .to_text(),
            r#"{"type":"peer_left","reason":"timeout"}"#
        );
        assert_eq!(
            ServerMessage::error(ErrorCode::NotPaired).to_text(),
            format!(
                r#"{{"type":"error","code":"NOT_PAIRED","message":"{}"}}"#,
                ErrorCode::NotPaired.default_message()
            )
        );
    }
}
