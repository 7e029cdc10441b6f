//! Cluster plumbing: the Redis connection, the pub/sub bus between nodes,
//! the registry's Lua scripts and the typed store that calls them, and node
//! leases. The cluster registry (`registry::cluster`) is built on these;
//! nothing here knows sockets.

pub mod bus;
pub mod envelope;
pub mod lease;
pub mod redis;
pub(crate) mod scripts;
pub(crate) mod store;

pub use self::redis::{Redis, RedisTarget};

/// Prefix of every Redis key and channel of the relay.
pub const PREFIX: &str = "relay:";
