//! The HTTP transport (issue 14): virtual connections served by the same
//! socket actor as a WebSocket, paired with WebSocket peers, through real
//! proxies, across cluster nodes, and switched mid-session.

mod bad_input;
mod basics;
pub mod client;
mod cluster;
pub mod proxies;
pub mod switch;
