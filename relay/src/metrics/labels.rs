//! The fixed label sets of the node's metrics: every value a label can
//! take, so dashboards see zeros rather than gaps.

/// Why a connection ended; the `reason` label of `relay_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client closed or dropped the connection.
    ClientGone,
    /// No pong within the heartbeat timeout.
    HeartbeatTimeout,
    /// No `register`/`join`/`resume` within the handshake timeout.
    HandshakeTimeout,
    /// Too many malformed messages in a row (1008).
    Malformed,
    /// A frame over the size limit (1009).
    TooLarge,
    /// Broken WebSocket framing (1002).
    ProtocolError,
    /// The client stopped reading (1013).
    SlowConsumer,
    /// A newer connection resumed the same side (4001).
    Replaced,
    /// The node drained (1012).
    Drained,
    /// The session ended for good (1000).
    SessionOver,
    /// A `/browser` upgrade from an origin not in `RELAY_ALLOWED_ORIGINS` (1008).
    OriginRefused,
}

impl DisconnectReason {
    /// Every reason, for pre-registering label values.
    pub const ALL: [DisconnectReason; 11] = [
        Self::ClientGone,
        Self::HeartbeatTimeout,
        Self::HandshakeTimeout,
        Self::Malformed,
        Self::TooLarge,
        Self::ProtocolError,
        Self::SlowConsumer,
        Self::Replaced,
        Self::Drained,
        Self::SessionOver,
        Self::OriginRefused,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientGone => "client_gone",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::ProtocolError => "protocol_error",
            Self::SlowConsumer => "slow_consumer",
            Self::Replaced => "replaced",
            Self::Drained => "drained",
            Self::SessionOver => "session_over",
            Self::OriginRefused => "origin_refused",
        }
    }
}

/// Result label values of `relay_joins_total`.
///
/// A draining node refuses new connections before they can ask (counted in
/// `relay_errors_sent_total{code="SHUTTING_DOWN"}`), so there is no
/// `shutting_down` result.
pub const JOIN_RESULTS: [&str; 7] = [
    "ok",
    "invalid_code",
    "expired_code",
    "already_joined",
    "room_full",
    "rate_limited",
    "unavailable",
];

/// Values of `decision` on `relay_room_decisions_total`.
pub const ROOM_DECISIONS: [&str; 5] = ["auto", "admitted", "denied", "timeout", "removed"];

/// Result label values of `relay_resumes_total`.
pub const RESUME_RESULTS: [&str; 6] = [
    "ok",
    "takeover",
    "invalid_resume",
    "resume_expired",
    "mac_disconnected",
    "unavailable",
];

/// Why the bus dropped an envelope: the `reason` label of
/// `relay_bus_dropped_total`. None happens in normal operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A replayed or resent frame, the link over [`HARD_LIMIT`](crate::cluster::bus::link::HARD_LIMIT). The frame
    /// stays held at this node; it is sent again once the link has room.
    ReplayFull,
    /// An ack, the link over [`HARD_LIMIT`](crate::cluster::bus::link::HARD_LIMIT). The next ack covers it; until
    /// then the sender's node holds those frames a little longer.
    AckFull,
    /// A written report, the link over [`HARD_LIMIT`](crate::cluster::bus::link::HARD_LIMIT). The next report or
    /// ack covers it; until then the sender may stay paused a little longer.
    WrittenFull,
    /// A control message, [`MAX_CONTROLS`](crate::cluster::bus::link::MAX_CONTROLS) already queued. It is lost: a
    /// lost `Moved` or `Handover` makes that resume wait out its handover
    /// time (2 s) and go on without the other node's answer; a lost `Away`,
    /// `Ended` or `Joined` leaves the peer's node untold; a lost `Resend` is
    /// asked for again by a later frame after the retry interval.
    ControlFull,
    /// A probe of this node's own subscription, the link over
    /// [`HARD_LIMIT`](crate::cluster::bus::link::HARD_LIMIT). Two in a row make the node resubscribe.
    ProbeFull,
    /// Any envelope of a publish that failed (Redis down or slow). Frames
    /// are sent again by their holders, as after a replay drop.
    PublishFailed,
}

impl DropReason {
    /// Every reason, for pre-registering label values.
    pub const ALL: [DropReason; 6] = [
        Self::ReplayFull,
        Self::AckFull,
        Self::WrittenFull,
        Self::ControlFull,
        Self::ProbeFull,
        Self::PublishFailed,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReplayFull => "replay_full",
            Self::AckFull => "ack_full",
            Self::WrittenFull => "written_full",
            Self::ControlFull => "control_full",
            Self::ProbeFull => "probe_full",
            Self::PublishFailed => "publish_failed",
        }
    }
}
