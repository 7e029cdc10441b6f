//! How a client connects, reconnects and which session it asks for: the
//! application's settings, fixed once the client starts.

use std::time::Duration;

use super::backoff::Backoff;
use super::{HANDSHAKE_TIMEOUT, OutboxLimits, Transports};
use crate::AdmitMode;

/// A room the mac asks for when it registers: several guests, each
/// admitted by the host or at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Guests at once (waiting or admitted), 1 up to the relay's `RELAY_MAX_GUESTS`.
    pub max_guests: u32,
    /// Whether the host answers each guest ([`Client::admit`](super::Client::admit), [`Client::deny`](super::Client::deny)) or all get in.
    pub admit: AdmitMode,
}

/// How a client connects and reconnects.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URLs of the relay (`ws://host:port`), tried in turn on each
    /// (re)connect; the role's path (`/mac`, `/browser`) is appended.
    /// `http://` and `https://` are taken as `ws://` and `wss://`; see
    /// [`RelayUrl::parse`](super::RelayUrl::parse) for what is refused.
    pub urls: Vec<String>,
    /// Longest one connection attempt (TCP, TLS, WebSocket handshake) may take.
    pub connect_timeout: Duration,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// Reconnect attempts in a row before giving up; `None` = never give up.
    pub max_retries: Option<u32>,
    /// Bounds of what waits to be sent while reconnecting.
    pub outbox: OutboxLimits,
    /// Interval of app-level pings (latency, and proof the relay read our frames).
    pub ping_every: Duration,
    /// Mac: when the relay no longer knows the session on a resume (it
    /// restarted, or the grace period passed), register again by itself and
    /// report [`Event::SessionLost`](super::Event::SessionLost) then [`Event::Registered`](super::Event::Registered) with the new
    /// code, instead of ending with [`Ended::Refused`](super::Ended::Refused). The browser side
    /// cannot get a new code by itself and always ends.
    pub reregister_on_lost_session: bool,
    /// Mac: register as a room host (several guests) instead of a pairing.
    /// `None` (the default) is the one-browser pairing, byte for byte.
    pub room: Option<Room>,
    /// Browser: the name a room's host sees when this client asks to join
    /// (at most 64 characters); a pairing's mac never sees it.
    pub name: Option<String>,
    /// End-to-end encryption (`relay-e2e/1`). Mac: every code gets a secret
    /// part ([`Event::Registered`](super::Event::Registered) shows the full code) and the session is
    /// sealed. Browser: a full code (11 characters) always encrypts; with
    /// this on, a 6-character code also refuses an encrypted mac clearly
    /// instead of showing its key exchange. A room host runs one exchange
    /// per guest and seals each frame for each guest it goes to. Off by
    /// default (the plain protocol, byte for byte).
    pub e2e: bool,
    /// End-to-end encryption: longest wait for the other side's next
    /// handshake message while both are connected (default 30 s).
    pub e2e_timeout: Duration,
    /// Which transports to use and when to move between them ([`Transports`]).
    pub transports: Transports,
}

impl Config {
    /// Defaults: 10 s connect timeout, 1 s→30 s backoff with 75–125 % jitter,
    /// unlimited retries, 1000 frames / 8 MiB outbound queue, a ping every 5 s,
    /// WebSocket with the HTTP fallback (after 5 s; WebSocket tried again every 60 s),
    /// and a mac that registers again when the relay lost its session (an
    /// app stays reachable: it only has to show the new code).
    pub fn new(url: impl Into<String>) -> Self {
        Config {
            urls: vec![url.into()],
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_retries: None,
            outbox: OutboxLimits::default(),
            ping_every: Duration::from_secs(5),
            reregister_on_lost_session: true,
            room: None,
            name: None,
            e2e: false,
            e2e_timeout: HANDSHAKE_TIMEOUT,
            transports: Transports::default(),
        }
    }

    /// This config, with end-to-end encryption on or off.
    pub fn with_e2e(mut self, on: bool) -> Self {
        self.e2e = on;
        self
    }

    /// This config, as a room host for up to `max_guests` guests admitted as `admit` says.
    pub fn with_room(mut self, max_guests: u32, admit: AdmitMode) -> Self {
        self.room = Some(Room { max_guests, admit });
        self
    }

    /// This config, giving `name` to a room's host when joining.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}
