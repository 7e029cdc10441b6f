//! Integration tests: real relay processes, real WebSocket clients, real sockets.

mod support;

mod bad_input;
mod codes;
mod data;
mod drain;
mod protocol;
mod resume;
