//! The relay wire protocol (v1): the types every relay node, client library
//! and test speaks. `PROTOCOL.md` beside this crate is the contract; this
//! crate is its executable form and never does I/O.

#[cfg(feature = "client")]
pub mod client;
pub mod close;
pub mod code;
#[cfg(feature = "e2e")]
pub mod e2e;
pub mod error;
pub mod message;

pub use close::CloseCode;
pub use code::{CodeError, SessionCode};
pub use error::ErrorCode;
pub use message::{
    AdmitMode, ClientMessage, GuestId, GuestLeftReason, GuestSeqs, PeerLeftReason, Role,
    ServerMessage,
};
