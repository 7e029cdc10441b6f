//! One connection to the relay, whichever transport carries it: the
//! protocol's frames (tungstenite's [`Message`], the WebSocket's own frame
//! type) out through a sink and in through a stream. The connection task
//! speaks the protocol over a [`Link`] and never learns which transport it
//! is; this module owns only the shape, never a socket.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Which transport carries the connection to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A WebSocket (`/mac`, `/browser`).
    WebSocket,
    /// The HTTP fallback (`/http/...`): POSTs up, a stream or long polls down.
    Http,
}

impl Transport {
    /// `websocket` or `http`, as the command line and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which transports a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// WebSocket first; HTTP when the upgrade is refused or the WebSocket
    /// stays silent, and back to WebSocket as soon as it works again.
    #[default]
    Auto,
    /// WebSocket only (the protocol before the HTTP fallback existed).
    WebSocket,
    /// HTTP only.
    Http,
}

impl TransportMode {
    /// `auto`, `websocket` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportMode::Auto => "auto",
            TransportMode::WebSocket => "websocket",
            TransportMode::Http => "http",
        }
    }
}

impl std::str::FromStr for TransportMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(TransportMode::Auto),
            "websocket" | "ws" => Ok(TransportMode::WebSocket),
            "http" => Ok(TransportMode::Http),
            _ => Err(format!("{s:?}: give auto, websocket or http")),
        }
    }
}

/// Which transports a client uses, and when it moves between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports {
    /// WebSocket with the HTTP fallback (the default), or only one of them.
    pub mode: TransportMode,
    /// Auto: how long the WebSocket may take to open and to answer the
    /// first message before the client falls back to HTTP; also how long an
    /// HTTP receive stream may take to open before the client takes it as
    /// buffered by a proxy and long-polls (default 5 s).
    pub fallback_after: Duration,
    /// Auto, on the HTTP fallback: how often to try the WebSocket again
    /// (the session moves back by resuming on it; default 60 s).
    pub websocket_retry: Duration,
}

impl Default for Transports {
    fn default() -> Self {
        Transports {
            mode: TransportMode::Auto,
            fallback_after: Duration::from_secs(5),
            websocket_retry: Duration::from_secs(60),
        }
    }
}

/// A link that failed: the connection is gone (the task reconnects).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(super) struct LinkError(pub(super) String);

/// Frames to the relay. `flush` means handed to the transport, as for a
/// WebSocket (written to the socket): only a `pong` proves the relay read them.
pub(super) type Tx = Pin<Box<dyn Sink<Message, Error = LinkError> + Send>>;
/// Frames from the relay, in order; `None` or an error when the link is gone.
pub(super) type Rx = Pin<Box<dyn Stream<Item = Result<Message, LinkError>> + Send>>;

/// One connection: its two directions and what carries them.
pub(super) struct Link {
    pub(super) tx: Tx,
    pub(super) rx: Rx,
    pub(super) transport: Transport,
}

/// An open WebSocket as the connection task dials it.
pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Link {
    /// A WebSocket as a link.
    pub(super) fn websocket(ws: Ws) -> Link {
        let (tx, rx) = ws.split();
        Link {
            tx: Box::pin(tx.sink_map_err(|e| LinkError(e.to_string()))),
            rx: Box::pin(rx.map(|r| r.map_err(|e| LinkError(e.to_string())))),
            transport: Transport::WebSocket,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_the_command_line_spells_them() {
        for m in [
            TransportMode::Auto,
            TransportMode::WebSocket,
            TransportMode::Http,
        ] {
            assert_eq!(m.as_str().parse::<TransportMode>(), Ok(m));
        }
        assert_eq!("WS".parse::<TransportMode>(), Ok(TransportMode::WebSocket));
        assert!("sse".parse::<TransportMode>().is_err());
        assert!("".parse::<TransportMode>().is_err());
    }
}
