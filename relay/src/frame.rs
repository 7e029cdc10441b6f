//! A data frame as the relay carries it: the client's bytes, verbatim.

use bytes::Bytes;
use bytestring::ByteString;

/// Which room guest sent a frame toward its host (`None` in a pairing):
/// the host's writer says so with a `from` message when it changes.
pub type Sender = Option<std::num::NonZeroU64>;

/// A data frame, relayed verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A binary frame.
    Binary(Bytes),
    /// A `data` text frame, exactly as the sender wrote it.
    Text(ByteString),
}

impl Frame {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Binary(b) => b.len(),
            Frame::Text(t) => t.len(),
        }
    }
}
