//! Settings of a relay node: every one a CLI flag and a `RELAY_*` environment
//! variable, with the protocol's defaults. Parsing only; nothing here acts.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// How a node runs. Each field is a flag (`--code-ttl 5m`) and a variable (`RELAY_CODE_TTL=5m`).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address and port to listen on; port 0 picks a free one (logged at start).
    #[arg(long, env = "RELAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Separate address for `/metrics`, `/healthz` and `/readyz` (one the load
    /// balancer does not expose); empty serves them on the main listener.
    #[arg(long, env = "RELAY_ADMIN_LISTEN", default_value = "")]
    pub admin_listen: String,

    /// Redis shared by the nodes of a cluster (`redis://`, `rediss://`, or
    /// `redis+sentinel://host:port,host:port/service`); empty runs one node with an in-memory registry.
    #[arg(long, env = "RELAY_REDIS_URL", default_value = "")]
    pub redis_url: String,

    /// PEM file of the CA that signed Redis's TLS certificate (`rediss://`); empty trusts the system's roots.
    #[arg(long, env = "RELAY_REDIS_CA", default_value = "")]
    pub redis_ca: String,

    /// Longest a Redis command may take before it counts as failed.
    #[arg(long, env = "RELAY_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// How long a node's lease in Redis lasts without renewal; a node silent this long is dead.
    #[arg(long, env = "RELAY_LEASE_TTL", default_value = "3s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// Name of this node in logs and metrics; empty uses $HOSTNAME or a random name.
    #[arg(long, env = "RELAY_NODE_ID", default_value = "")]
    pub node_id: String,

    /// How long a code stays valid for joining after `registered`.
    #[arg(long, env = "RELAY_CODE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub code_ttl: Duration,

    /// How long a dropped side's session is kept for `resume`.
    #[arg(long, env = "RELAY_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Most guests a room host may ask for (`maxGuests`).
    #[arg(long, env = "RELAY_MAX_GUESTS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_guests: u32,

    /// How long a guest waits for a room host to admit it before it is denied.
    #[arg(long, env = "RELAY_ADMIT_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub admit_timeout: Duration,

    /// Largest frame accepted from a client (bytes; `1MiB` style suffixes allowed).
    #[arg(long, env = "RELAY_MAX_FRAME", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_frame: usize,

    /// Largest HTTP request head (request line and headers) accepted; a larger one gets 431.
    #[arg(long, env = "RELAY_MAX_REQUEST_HEAD", default_value = "16KiB", value_parser = parse_bytes)]
    pub max_request_head: usize,

    /// Join attempts a minute allowed from one client address (an IPv6 client: its /64);
    /// 0 turns the limit off.
    #[arg(long, env = "RELAY_JOIN_RATE", default_value_t = 10)]
    pub join_rate: u32,

    /// Interval between WebSocket pings the relay sends to each client.
    #[arg(long, env = "RELAY_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long after a ping a client has to answer before it is dropped.
    #[arg(long, env = "RELAY_HEARTBEAT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,

    /// How long a new connection has to send its HTTP request and then `register`/`join`/`resume`.
    #[arg(long, env = "RELAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Most frames queued for an absent side before its session ends with `RESUME_EXPIRED`.
    #[arg(long, env = "RELAY_RESUME_BUFFER_FRAMES", default_value_t = 1000)]
    pub resume_buffer_frames: usize,

    /// Most bytes queued for an absent side before its session ends with `RESUME_EXPIRED`.
    #[arg(long, env = "RELAY_RESUME_BUFFER_BYTES", default_value = "8MiB", value_parser = parse_bytes)]
    pub resume_buffer_bytes: usize,

    /// Longest a draining node (SIGTERM) waits for its clients to leave before it exits.
    #[arg(long, env = "RELAY_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in `tracing` syntax, e.g. `info` or `relay=debug`.
    #[arg(long, env = "RELAY_LOG", default_value = "info")]
    pub log: String,

    /// Failed joins (unknown or expired code) a minute allowed across the whole
    /// cluster before every join is refused with `RATE_LIMITED` for the rest of
    /// that minute: the ceiling on code guessing from many addresses; 0 turns it off.
    #[arg(long, env = "RELAY_FAILED_JOIN_LIMIT", default_value_t = 300)]
    pub failed_join_limit: u32,

    /// Control messages (`register`, `join`, `resume`, `ping`, `leave`) a second
    /// allowed from one connection; over it they get `RATE_LIMITED`. 0 turns it off.
    #[arg(long, env = "RELAY_MESSAGE_RATE", default_value_t = 20)]
    pub message_rate: u32,

    /// Most WebSockets this node holds; more get HTTP 503. 0 derives it from the
    /// open-files limit (one descriptor per connection).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: u32,

    /// Most WebSockets one client address (an IPv6 client: its /64) holds on this node;
    /// more get HTTP 503.
    /// 0 turns it off (do so behind a proxy that hides client addresses).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_ADDR", default_value_t = 256)]
    pub max_connections_per_addr: u32,

    /// Comma-separated origins allowed to open `/browser` (e.g.
    /// `https://app.example.com,https://*.example.com`); others are closed with
    /// 1008. Empty allows every origin. The relay's own page is always allowed.
    #[arg(long, env = "RELAY_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,

    /// PEM certificate chain to serve TLS (`wss://`) on the main listener; empty serves plain `ws://`.
    #[arg(long, env = "RELAY_TLS_CERT", default_value = "")]
    pub tls_cert: String,

    /// PEM private key for `RELAY_TLS_CERT`.
    #[arg(long, env = "RELAY_TLS_KEY", default_value = "")]
    pub tls_key: String,

    /// Take the client address from the last `X-Forwarded-For` entry (only behind a trusted load balancer).
    #[arg(long, env = "RELAY_TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub trust_forwarded_for: bool,

    /// Bytes queued for a client that it has provably not read before it is closed with 1013.
    #[arg(long, env = "RELAY_MAX_BUFFERED", default_value = "8MiB", value_parser = parse_bytes)]
    pub max_buffered: usize,

    /// Malformed messages in a row after which a client is closed with 1008.
    #[arg(long, env = "RELAY_MAX_MALFORMED", default_value_t = 10)]
    pub max_malformed: u32,

    /// HTTP worker threads; 0 uses one per CPU.
    #[arg(long, env = "RELAY_WORKERS", default_value_t = 0)]
    pub workers: usize,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses a human-readable duration such as `250ms`, `30s` or `5m`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}; write a duration like 250ms, 30s or 5m"))
}

/// Parses a size in bytes: a plain number or one with a unit such as `64KiB` or `8MiB`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("{e}; write a size like 1048576, 64KiB or 8MiB"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{s} is too large"))
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        // unwrap: the defaults above are valid by construction (tested below).
        #[allow(clippy::unwrap_used)]
        Wrapper::try_parse_from(["relay"]).unwrap().config
    }

    /// The node id to use: the configured one, else $HOSTNAME, else a random name.
    pub fn effective_node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        match std::env::var("HOSTNAME") {
            Ok(host) if !host.is_empty() => host,
            _ => format!("node-{}", nanoid::nanoid!(8)),
        }
    }

    /// Checks relations between settings that clap cannot express.
    ///
    /// # Errors
    /// A sentence naming the setting to change.
    pub fn validate(&self) -> Result<(), String> {
        if !self.redis_url.is_empty() {
            crate::cluster::RedisTarget::parse(&self.redis_url)?;
        }
        if !self.admin_listen.is_empty() && self.admin_listen.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "RELAY_ADMIN_LISTEN {:?} is not an address; write one like 0.0.0.0:9090",
                self.admin_listen
            ));
        }
        crate::admission::Origins::parse(&self.allowed_origins)?;
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return Err("RELAY_TLS_CERT and RELAY_TLS_KEY go together: set both or neither".into());
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err("RELAY_LEASE_TTL must be at least 1s".into());
        }
        if self.max_frame < 64 {
            return Err("RELAY_MAX_FRAME must be at least 64 bytes".into());
        }
        if self.max_request_head < 1024 {
            return Err("RELAY_MAX_REQUEST_HEAD must be at least 1KiB".into());
        }
        if self.max_request_head > crate::head::ACTIX_HEAD_CEILING {
            // Past this actix-http refuses the head itself, so a higher setting would mislead.
            return Err("RELAY_MAX_REQUEST_HEAD can be at most 128KiB".into());
        }
        if self.max_buffered < self.max_frame {
            return Err("RELAY_MAX_BUFFERED must be at least RELAY_MAX_FRAME".into());
        }
        if self.max_malformed == 0 {
            return Err("RELAY_MAX_MALFORMED must be at least 1".into());
        }
        for (name, d) in [
            ("RELAY_CODE_TTL", self.code_ttl),
            ("RELAY_REDIS_TIMEOUT", self.redis_timeout),
            ("RELAY_HEARTBEAT_INTERVAL", self.heartbeat_interval),
            ("RELAY_HEARTBEAT_TIMEOUT", self.heartbeat_timeout),
            ("RELAY_HANDSHAKE_TIMEOUT", self.handshake_timeout),
            ("RELAY_ADMIT_TIMEOUT", self.admit_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be longer than 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_protocol() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.code_ttl, Duration::from_secs(300));
        assert_eq!(c.grace, Duration::from_secs(60));
        assert_eq!(c.max_guests, 16);
        assert_eq!(c.admit_timeout, Duration::from_secs(120));
        assert_eq!(c.max_frame, 1 << 20);
        assert_eq!(c.max_request_head, 16 << 10);
        assert_eq!(c.join_rate, 10);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(10));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.resume_buffer_frames, 1000);
        assert_eq!(c.resume_buffer_bytes, 8 << 20);
        assert_eq!(c.max_buffered, 8 << 20);
        assert_eq!(c.max_malformed, 10);
        assert!(!c.trust_forwarded_for);
        assert_eq!(c.failed_join_limit, 300);
        assert_eq!(c.message_rate, 20);
        assert_eq!(c.max_connections, 0);
        assert_eq!(c.max_connections_per_addr, 256);
        assert!(c.allowed_origins.is_empty() && c.tls_cert.is_empty());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn human_readable_values_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("64 KiB"), Ok(64 << 10));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn the_request_head_ceiling_stays_where_it_means_something() {
        let mut c = Config::defaults();
        c.max_request_head = 512;
        assert!(c.validate().unwrap_err().contains("RELAY_MAX_REQUEST_HEAD"));
        c.max_request_head = 256 << 10;
        assert!(c.validate().unwrap_err().contains("at most 128KiB"));
        c.max_request_head = 128 << 10;
        assert!(c.validate().is_ok());
    }
}
