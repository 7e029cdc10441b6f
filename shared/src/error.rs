//! The error codes of the protocol's `error` message, each with the sentence
//! a person reads when it happens.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `code` of an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// No live session has that code, or it is not a code at all.
    InvalidCode,
    /// The code existed but its joining window has passed.
    ExpiredCode,
    /// The session already has a browser.
    AlreadyJoined,
    /// The mac left for good.
    MacDisconnected,
    /// Data sent before pairing.
    NotPaired,
    /// Malformed control message.
    InvalidMessage,
    /// Frame over the size limit.
    MessageTooLarge,
    /// Too many join attempts from one client address.
    RateLimited,
    /// Unknown session or wrong token.
    InvalidResume,
    /// The grace period passed; start over.
    ResumeExpired,
    /// The registry cannot be reached; retry later.
    Unavailable,
    /// The node is draining; reconnect.
    ShuttingDown,
    /// Rooms: the room holds as many guests as it may.
    RoomFull,
    /// Rooms: the host denied the guest, or did not answer in time.
    Denied,
    /// Rooms: the host removed the guest.
    Removed,
    /// Rooms: no such guest for `admit`, `deny`, `remove` or `to`.
    UnknownGuest,
}

impl ErrorCode {
    /// Every code, in the order of the protocol's table.
    pub const ALL: [ErrorCode; 16] = [
        Self::InvalidCode,
        Self::ExpiredCode,
        Self::AlreadyJoined,
        Self::MacDisconnected,
        Self::NotPaired,
        Self::InvalidMessage,
        Self::MessageTooLarge,
        Self::RateLimited,
        Self::InvalidResume,
        Self::ResumeExpired,
        Self::Unavailable,
        Self::ShuttingDown,
        Self::RoomFull,
        Self::Denied,
        Self::Removed,
        Self::UnknownGuest,
    ];

    /// The code as it appears on the wire, e.g. `INVALID_CODE`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidCode => "INVALID_CODE",
            Self::ExpiredCode => "EXPIRED_CODE",
            Self::AlreadyJoined => "ALREADY_JOINED",
            Self::MacDisconnected => "MAC_DISCONNECTED",
            Self::NotPaired => "NOT_PAIRED",
            Self::InvalidMessage => "INVALID_MESSAGE",
            Self::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Self::RateLimited => "RATE_LIMITED",
            Self::InvalidResume => "INVALID_RESUME",
            Self::ResumeExpired => "RESUME_EXPIRED",
            Self::Unavailable => "UNAVAILABLE",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::RoomFull => "ROOM_FULL",
            Self::Denied => "DENIED",
            Self::Removed => "REMOVED",
            Self::UnknownGuest => "UNKNOWN_GUEST",
        }
    }

    /// A sentence that tells the person or program what to do next.
    pub const fn default_message(self) -> &'static str {
        match self {
            Self::InvalidCode => {
                "No session has this code. Check the code shown on the Mac and type it again."
            }
            Self::ExpiredCode => {
                "This code has expired. Ask for a new code on the Mac and type that one."
            }
            Self::AlreadyJoined => {
                "Another browser has already joined this session. Close it there, or ask for a new code on the Mac."
            }
            Self::MacDisconnected => {
                "The Mac ended the session. Ask for a new code on the Mac to connect again."
            }
            Self::NotPaired => {
                "Nothing was sent: no peer is connected yet. Wait for the peer to join, then send again."
            }
            Self::InvalidMessage => {
                "The relay did not understand this message. Send a JSON object with a known \"type\"; see PROTOCOL.md."
            }
            Self::MessageTooLarge => {
                "This message is larger than the relay accepts. Split it into smaller messages."
            }
            Self::RateLimited => {
                "Too many join attempts from your address. Wait a minute, then try again."
            }
            Self::InvalidResume => {
                "This session cannot be resumed: it is unknown or the token is wrong. Start a new session."
            }
            Self::ResumeExpired => {
                "This session was closed while you were away. Start a new session."
            }
            Self::Unavailable => {
                "The relay cannot reach its registry right now. Try again in a few seconds."
            }
            Self::ShuttingDown => {
                "This relay node is shutting down. Reconnect; you will be sent to another node."
            }
            Self::RoomFull => {
                "This session has as many guests as the host allows. Ask the host to make room, then join again."
            }
            Self::Denied => {
                "The host did not let you in. Ask the host, then join again with the code."
            }
            Self::Removed => {
                "The host removed you from this session. Ask the host if you should join again."
            }
            Self::UnknownGuest => {
                "No guest with this id is in the room (it may have left). Check the guestId."
            }
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!(code.default_message().ends_with('.'));
        }
    }
}
