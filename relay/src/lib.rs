//! relay: a WebSocket pairing relay. A mac registers and gets a short code, a
//! browser joins with it, and frames flow between them both ways, surviving
//! reconnects. `server::start` runs a node; see README.md and PROTOCOL.md.

pub mod admission;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conns;
pub mod frame;
pub mod gate;
pub mod load;
pub mod metrics;
pub mod pipe;
pub mod queue;
pub mod registry;
pub mod server;
pub mod shutdown;
pub mod socket;
pub mod tls;

pub use config::Config;
