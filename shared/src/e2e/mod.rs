//! End-to-end encryption keyed by the pairing code (`relay-e2e/1`, the
//! "End-to-end encryption" section of `PROTOCOL.md`): full codes with a
//! secret part the relay never sees, a CPace key exchange with explicit key
//! confirmation, and AES-256-GCM frames numbered as the relay counts them.
//! Built only from audited parts (curve25519-dalek, RustCrypto); no I/O
//! here: [`crate::client`] drives it over a connection.

pub mod code;
mod cpace;
pub mod handshake;
pub mod wire;

pub use code::{FullCode, FullCodeError, Secret};
pub use handshake::{
    Binding, Channel, Failure, HostConfirm, HostHello, JoinerConfirm, Opener, Sealer, Tampered,
};
pub use wire::{AbortReason, Handshake, Payload, Plain};
