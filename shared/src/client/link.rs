//! One connection to the relay, whichever transport carries it: the
//! protocol's frames (tungstenite's [`Message`], the WebSocket's own frame
//! type) out through a sink and in through a stream. The connection task
//! speaks the protocol over a [`Link`] and never learns which transport it
//! is; this module owns only the shape, never a socket.

use std::pin::Pin;

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
