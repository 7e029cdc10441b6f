//! WebSocket close codes of the protocol: each tells a client whether to
//! reconnect and resume or to stop.

/// A close code the relay sends, named for what it means to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the session is over (`MAC_DISCONNECTED`, `leave`); stop.
    SessionOver,
    /// 1001: the relay goes away; reconnect with backoff and resume.
    GoingAway,
    /// 1002: the client broke the WebSocket framing; stop.
    ProtocolError,
    /// 1008: policy violation (malformed flood, handshake timeout); stop and report.
    Policy,
    /// 1009: a frame over the size limit; stop and report.
    TooLarge,
    /// 1011: unexpected server error; reconnect with backoff and resume.
    ServerError,
    /// 1012: the node is draining; reconnect at once (with jitter) and resume.
    Draining,
    /// 1013: try again later (slow consumer, node full); reconnect with backoff and resume.
    TryAgainLater,
    /// 4000: the path is not an endpoint of the relay; stop.
    InvalidPath,
    /// 4001: a newer connection of the same side took over; stop.
    Replaced,
}

impl CloseCode {
    /// The numeric code on the wire.
    pub const fn code(self) -> u16 {
        match self {
            Self::SessionOver => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::Policy => 1008,
            Self::TooLarge => 1009,
            Self::ServerError => 1011,
            Self::Draining => 1012,
            Self::TryAgainLater => 1013,
            Self::InvalidPath => 4000,
            Self::Replaced => 4001,
        }
    }

    /// Whether a client that sees `code` should reconnect and resume (the table of PROTOCOL.md).
    ///
    /// 1006 never travels on the wire; a client uses it for a connection that
    /// dropped without a close frame, and should reconnect.
    pub const fn should_reconnect(code: u16) -> bool {
        matches!(code, 1001 | 1006 | 1011 | 1012 | 1013)
    }
}
