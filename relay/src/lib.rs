//! relay: a WebSocket pairing relay. A mac registers and gets a short code, a
//! browser joins with it, and frames flow between them both ways, surviving
//! reconnects. `server::start` runs a node; see README.md and PROTOCOL.md.
//!
//! The public modules are what the binaries use: the node (`server`), its
//! settings (`config`), the CLI clients (`cli`) and the load tool (`load`).
//! Everything else is private, so the compiler sees dead code; the fuzz
//! targets, which cargo-fuzz builds with `--cfg fuzzing`, reach into it.
//! (Declared one by one, not by a macro: rustfmt only formats modules it can
//! see declared.)

pub mod cli;
pub mod config;
pub mod load;
mod scripts;
pub mod server;

#[cfg(fuzzing)]
pub mod admission;
#[cfg(not(fuzzing))]
mod admission;
#[cfg(fuzzing)]
pub mod client_key;
#[cfg(not(fuzzing))]
mod client_key;
#[cfg(fuzzing)]
pub mod cluster;
#[cfg(not(fuzzing))]
mod cluster;
#[cfg(fuzzing)]
pub mod conns;
#[cfg(not(fuzzing))]
mod conns;
#[cfg(fuzzing)]
pub mod forwarded;
#[cfg(not(fuzzing))]
mod forwarded;
#[cfg(fuzzing)]
pub mod frame;
#[cfg(not(fuzzing))]
mod frame;
#[cfg(fuzzing)]
pub mod gate;
#[cfg(not(fuzzing))]
mod gate;
#[cfg(fuzzing)]
pub mod head;
#[cfg(not(fuzzing))]
mod head;
#[cfg(fuzzing)]
pub mod http;
#[cfg(not(fuzzing))]
mod http;
#[cfg(fuzzing)]
pub mod metrics;
#[cfg(not(fuzzing))]
mod metrics;
#[cfg(fuzzing)]
pub mod outbound;
#[cfg(not(fuzzing))]
mod outbound;
#[cfg(fuzzing)]
pub mod pipe;
#[cfg(not(fuzzing))]
mod pipe;
#[cfg(fuzzing)]
pub mod queue;
#[cfg(not(fuzzing))]
mod queue;
#[cfg(fuzzing)]
pub mod registry;
#[cfg(not(fuzzing))]
mod registry;
#[cfg(fuzzing)]
pub mod shutdown;
#[cfg(not(fuzzing))]
mod shutdown;
#[cfg(fuzzing)]
pub mod socket;
#[cfg(not(fuzzing))]
mod socket;
#[cfg(fuzzing)]
pub mod tls;
#[cfg(not(fuzzing))]
mod tls;

pub use config::Config;
