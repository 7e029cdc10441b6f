//! relay: a WebSocket pairing relay. A mac registers and gets a short code, a
//! browser joins with it, and frames flow between them both ways, surviving
//! reconnects. `server::start` runs a node; see README.md and PROTOCOL.md.
//!
//! The public modules are what the binaries use: the node (`server`), its
//! settings (`config`), the CLI clients (`cli`) and the load tool (`load`).
//! Everything else is private, so the compiler sees dead code; the fuzz
//! targets, which cargo-fuzz builds with `--cfg fuzzing`, reach into it.

/// Declares private modules, public to the fuzz targets.
macro_rules! internal {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(fuzzing)]
        pub mod $name;
        #[cfg(not(fuzzing))]
        mod $name;
    )*};
}

pub mod cli;
pub mod config;
pub mod load;
pub mod server;

internal!(
    admission, cluster, conns, frame, gate, metrics, pipe, queue, registry, shutdown, socket, tls,
);

pub use config::Config;
