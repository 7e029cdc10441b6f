//! Integration tests: real relay processes, real WebSocket clients, real sockets.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

mod attack;
mod bad_input;
mod chaos;
mod cli;
mod client;
mod cluster;
mod codes;
mod data;
mod drain;
mod e2e;
mod framing;
mod http;
mod http_clients;
mod limits;
mod load;
mod protocol;
mod resume;
mod room_clients;
mod rooms;
mod soak;
mod tls;
