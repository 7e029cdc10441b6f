//! Prometheus metrics of one node. Owns the registry and every metric; labels
//! come from small fixed sets (never a code or session id).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use relay_protocol::{ErrorCode, Role};

mod labels;

pub use labels::{DisconnectReason, DropReason, JOIN_RESULTS, RESUME_RESULTS, ROOM_DECISIONS};

/// Every metric of the node, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections by role (`role` = mac | browser).
    pub connections_open: IntGaugeVec,
    /// Sessions that exist (registered and not yet over).
    pub sessions_live: IntGauge,
    /// Codes handed out by `registered` (see [`Metrics::code_issued`]).
    pub codes_issued: IntCounter,
    /// Codes handed out, by length (`length` = 6 | 8).
    pub codes_issued_by_length: IntCounterVec,
    /// 1 while new codes are long because of a guessing attack.
    pub under_attack: IntGauge,
    /// Codes whose joining window passed with no browser joined.
    pub codes_expired: IntCounter,
    /// Joins by result.
    pub joins: IntCounterVec,
    /// Resumes by result.
    pub resumes: IntCounterVec,
    /// Room guests let in or turned away, by decision.
    pub room_decisions: IntCounterVec,
    /// Data frames relayed between two sockets of this node.
    pub frames_local: IntCounter,
    /// Bytes of data frames relayed between two sockets of this node.
    pub bytes_local: IntCounter,
    /// `error` messages sent, by code.
    pub errors: IntCounterVec,
    /// Connections ended, by reason.
    pub disconnects: IntCounterVec,
    /// Sides whose resume buffer overflowed while they were away.
    pub resume_buffer_overflows: IntCounter,
    /// 1 while the node drains.
    pub draining: IntGauge,
    /// Sessions by state (`waiting`, `paired`, `away`), set at each scrape.
    pub sessions: IntGaugeVec,
    /// Rooms (sessions of a room host), set at each scrape.
    pub rooms: IntGauge,
    /// Guests of rooms by state (`waiting`, `in`, `away`), set at each scrape.
    pub room_guests: IntGaugeVec,
    /// Guests in the fullest room, set at each scrape.
    pub room_guests_max: IntGauge,
    /// Frames held in this node's pipes (queued or unacknowledged), set at each scrape.
    pub buffered_frames: IntGauge,
    /// Bytes held in this node's pipes, set at each scrape.
    pub buffered_bytes: IntGauge,
    /// Time from a frame entering this node to its being written to the receiving socket, by path.
    pub relay_seconds: HistogramVec,
    /// Requests refused by a rate limit, by limit.
    pub rate_limited: IntCounterVec,
    /// Data frames sent to another node through Redis.
    pub frames_remote: IntCounter,
    /// Bytes of data frames sent to another node through Redis.
    pub bytes_remote: IntCounter,
    /// 1 while the Redis command connection is up (cluster mode).
    pub redis_up: IntGauge,
    /// Failed Redis commands, by operation.
    pub redis_errors: IntCounterVec,
    /// Redis command latency, by operation.
    pub redis_seconds: HistogramVec,
    /// Pub/sub messages received on this node's channel.
    pub pubsub_in: IntCounter,
    /// Pub/sub messages published.
    pub pubsub_out: IntCounter,
    /// Bytes queued for publishing.
    pub bus_queued_bytes: IntGauge,
    /// Envelopes from other nodes that could not be read.
    pub bus_malformed: IntCounter,
    /// Envelopes this node's bus dropped instead of publishing, by
    /// [`DropReason`].
    pub bus_dropped: IntCounterVec,
    /// Frames from other nodes that arrived after a gap (lost envelopes; resent).
    pub bus_gaps: IntCounter,
    /// Times this node's own probe did not come back (it resubscribed).
    pub probe_failures: IntCounter,
    /// Nodes whose lease is live, as last seen by this node.
    pub nodes_live: IntGauge,
    /// Lease renewals that failed.
    pub lease_failures: IntCounter,
    /// Dead nodes this node cleaned up after.
    pub nodes_reaped: IntCounter,
    /// WebSocket upgrades refused before they started (`reason` = node_full | address_full).
    pub connections_refused: IntCounterVec,
    /// 1 while the node takes new sessions (what `/readyz` answers), set at each scrape.
    pub ready: IntGauge,
    /// The most WebSockets this node takes (`RELAY_MAX_CONNECTIONS`, or derived from the open-files limit).
    pub connections_limit: IntGauge,
}

/// Operation label values of the Redis metrics.
pub const REDIS_OPS: [&str; 14] = [
    "publish",
    "register",
    "join",
    "resume",
    "away",
    "end",
    "expire",
    "grace",
    "lease",
    "nodes",
    "checkpoint",
    "reap",
    "room",
    "attack",
];

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// A prometheus error if two metrics share a name (a programming error).
    pub fn new(node_id: &str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                "relay_build_info",
                "Build of this node; the value is always 1.",
            ),
            &["version", "node"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), node_id])
            .set(1);
        registry.register(Box::new(build))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        let connections_open = IntGaugeVec::new(
            Opts::new(
                "relay_connections_open",
                "Open WebSocket connections by role.",
            ),
            &["role"],
        )?;
        let frames = IntCounterVec::new(
            Opts::new(
                "relay_frames_relayed_total",
                "Data frames relayed, by path.",
            ),
            &["path"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "relay_bytes_relayed_total",
                "Bytes of data frames relayed, by path.",
            ),
            &["path"],
        )?;
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "relay_redis_errors_total",
                "Failed Redis commands, by operation.",
            ),
            &["op"],
        )?;
        let redis_seconds = HistogramVec::new(
            HistogramOpts::new(
                "relay_redis_command_seconds",
                "Redis command latency, by operation.",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["op"],
        )?;
        let relay_seconds = HistogramVec::new(
            HistogramOpts::new(
                "relay_frame_latency_seconds",
                "Time from a frame entering this node (read from a socket, or from Redis) to its being written to the receiving socket; sampled, one data frame in 16 (seq divisible by 16).",
            )
            .buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["path"],
        )?;
        let m = Metrics {
            sessions: IntGaugeVec::new(
                Opts::new(
                    "relay_sessions",
                    "Sessions by state, on the node of their mac.",
                ),
                &["state"],
            )?,
            rooms: IntGauge::new(
                "relay_rooms",
                "Rooms (sessions whose host asked for maxGuests), on the node of their host.",
            )?,
            room_guests: IntGaugeVec::new(
                Opts::new(
                    "relay_room_guests",
                    "Guests of rooms by state: waiting for the host, in the room, or away (may resume).",
                ),
                &["state"],
            )?,
            room_guests_max: IntGauge::new(
                "relay_room_guests_max",
                "Guests (waiting or in) in this node's fullest room.",
            )?,
            buffered_frames: IntGauge::new(
                "relay_buffered_frames",
                "Frames held in this node's pipes (queued, or sent and not yet acknowledged).",
            )?,
            buffered_bytes: IntGauge::new(
                "relay_buffered_bytes",
                "Bytes held in this node's pipes (queued, or sent and not yet acknowledged).",
            )?,
            relay_seconds,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "relay_rate_limited_total",
                    "Requests refused by a rate limit, by limit.",
                ),
                &["limit"],
            )?,
            frames_remote: frames.with_label_values(&["redis"]),
            bytes_remote: bytes.with_label_values(&["redis"]),
            redis_up: IntGauge::new(
                "relay_redis_up",
                "1 while the Redis connection is up (cluster mode).",
            )?,
            redis_errors,
            redis_seconds,
            pubsub_in: IntCounter::new(
                "relay_pubsub_messages_in_total",
                "Pub/sub messages received.",
            )?,
            pubsub_out: IntCounter::new(
                "relay_pubsub_messages_out_total",
                "Pub/sub messages published.",
            )?,
            bus_queued_bytes: IntGauge::new(
                "relay_bus_queued_bytes",
                "Bytes waiting to be published.",
            )?,
            bus_malformed: IntCounter::new(
                "relay_bus_malformed_total",
                "Envelopes from other nodes that could not be read.",
            )?,
            bus_dropped: IntCounterVec::new(
                Opts::new(
                    "relay_bus_dropped_total",
                    "Envelopes to other nodes dropped instead of published, by reason (a full link, or a failed publish).",
                ),
                &["reason"],
            )?,
            bus_gaps: IntCounter::new(
                "relay_bus_gaps_total",
                "Frames from other nodes that came after missing ones (lost envelopes, resent).",
            )?,
            probe_failures: IntCounter::new(
                "relay_pubsub_probe_failures_total",
                "Times the node's own probe did not come back (it resubscribed).",
            )?,
            nodes_live: IntGauge::new(
                "relay_cluster_nodes_live",
                "Nodes with a live lease, as seen by this node.",
            )?,
            lease_failures: IntCounter::new(
                "relay_lease_failures_total",
                "Lease renewals that failed.",
            )?,
            nodes_reaped: IntCounter::new(
                "relay_nodes_reaped_total",
                "Dead nodes this node cleaned up after.",
            )?,
            sessions_live: IntGauge::new(
                "relay_sessions_live",
                "Sessions registered and not over.",
            )?,
            codes_issued: IntCounter::new("relay_codes_issued_total", "Codes handed out.")?,
            codes_issued_by_length: IntCounterVec::new(
                Opts::new(
                    "relay_codes_issued_by_length_total",
                    "Codes handed out, by length (8 while the cluster is under a guessing attack).",
                ),
                &["length"],
            )?,
            under_attack: IntGauge::new(
                "relay_under_attack",
                "1 while the cluster (a single node: this node) is under a guessing attack: failed joins passed RELAY_FAILED_JOIN_LIMIT within RELAY_UNDER_ATTACK_FOR, and new codes are 8 characters.",
            )?,
            codes_expired: IntCounter::new(
                "relay_codes_expired_total",
                "Codes whose joining window passed with no browser joined.",
            )?,
            joins: IntCounterVec::new(
                Opts::new("relay_joins_total", "Join attempts by result."),
                &["result"],
            )?,
            resumes: IntCounterVec::new(
                Opts::new("relay_resumes_total", "Resume attempts by result."),
                &["result"],
            )?,
            room_decisions: IntCounterVec::new(
                Opts::new(
                    "relay_room_decisions_total",
                    "Room guests admitted (auto, admitted), denied (denied, timeout) or removed, by decision.",
                ),
                &["decision"],
            )?,
            frames_local: frames.with_label_values(&["local"]),
            bytes_local: bytes.with_label_values(&["local"]),
            errors: IntCounterVec::new(
                Opts::new(
                    "relay_errors_sent_total",
                    "Error messages sent to clients, by code.",
                ),
                &["code"],
            )?,
            disconnects: IntCounterVec::new(
                Opts::new("relay_disconnects_total", "Connections ended, by reason."),
                &["reason"],
            )?,
            resume_buffer_overflows: IntCounter::new(
                "relay_resume_buffer_overflows_total",
                "Absent sides whose resume buffer overflowed (their session ended).",
            )?,
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "relay_connections_refused_total",
                    "WebSocket upgrades refused with HTTP 503 because a connection ceiling was reached, by ceiling.",
                ),
                &["reason"],
            )?,
            ready: IntGauge::new(
                "relay_ready",
                "1 while the node takes new sessions (/readyz 200): not draining, Redis and pub/sub working.",
            )?,
            connections_limit: IntGauge::new(
                "relay_connections_limit",
                "The most WebSockets this node takes before refusing with 503.",
            )?,
            draining: IntGauge::new("relay_draining", "1 while the node drains after SIGTERM.")?,
            connections_open,
            registry,
        };
        m.registry.register(Box::new(m.connections_open.clone()))?;
        m.registry.register(Box::new(m.sessions_live.clone()))?;
        m.registry.register(Box::new(m.codes_issued.clone()))?;
        m.registry
            .register(Box::new(m.codes_issued_by_length.clone()))?;
        m.registry.register(Box::new(m.under_attack.clone()))?;
        for len in [
            relay_protocol::code::CODE_LEN,
            relay_protocol::code::LONG_CODE_LEN,
        ] {
            m.codes_issued_by_length
                .with_label_values(&[&len.to_string()]);
        }
        m.registry.register(Box::new(m.codes_expired.clone()))?;
        m.registry.register(Box::new(m.joins.clone()))?;
        m.registry.register(Box::new(m.resumes.clone()))?;
        m.registry.register(Box::new(m.room_decisions.clone()))?;
        m.registry.register(Box::new(frames))?;
        m.registry.register(Box::new(bytes))?;
        m.registry.register(Box::new(m.errors.clone()))?;
        m.registry.register(Box::new(m.disconnects.clone()))?;
        m.registry
            .register(Box::new(m.resume_buffer_overflows.clone()))?;
        m.registry.register(Box::new(m.draining.clone()))?;
        m.registry.register(Box::new(m.redis_up.clone()))?;
        m.registry.register(Box::new(m.sessions.clone()))?;
        m.registry.register(Box::new(m.rooms.clone()))?;
        m.registry.register(Box::new(m.room_guests.clone()))?;
        m.registry.register(Box::new(m.room_guests_max.clone()))?;
        m.registry.register(Box::new(m.buffered_frames.clone()))?;
        m.registry.register(Box::new(m.buffered_bytes.clone()))?;
        m.registry.register(Box::new(m.relay_seconds.clone()))?;
        m.registry.register(Box::new(m.rate_limited.clone()))?;
        for state in ["waiting", "paired", "away"] {
            m.sessions.with_label_values(&[state]);
        }
        for path in ["local", "redis"] {
            m.relay_seconds.with_label_values(&[path]);
        }
        for limit in ["join", "failed_joins", "messages"] {
            m.rate_limited.with_label_values(&[limit]);
        }
        m.registry
            .register(Box::new(m.connections_refused.clone()))?;
        m.registry.register(Box::new(m.connections_limit.clone()))?;
        m.registry.register(Box::new(m.ready.clone()))?;
        for full in [
            crate::admission::Full::Node,
            crate::admission::Full::Address,
        ] {
            m.connections_refused.with_label_values(&[full.as_str()]);
        }
        m.registry.register(Box::new(m.redis_errors.clone()))?;
        m.registry.register(Box::new(m.redis_seconds.clone()))?;
        m.registry.register(Box::new(m.pubsub_in.clone()))?;
        m.registry.register(Box::new(m.pubsub_out.clone()))?;
        m.registry.register(Box::new(m.bus_queued_bytes.clone()))?;
        m.registry.register(Box::new(m.bus_malformed.clone()))?;
        m.registry.register(Box::new(m.bus_dropped.clone()))?;
        for r in DropReason::ALL {
            m.bus_dropped.with_label_values(&[r.as_str()]);
        }
        m.registry.register(Box::new(m.bus_gaps.clone()))?;
        m.registry.register(Box::new(m.probe_failures.clone()))?;
        m.registry.register(Box::new(m.nodes_live.clone()))?;
        m.registry.register(Box::new(m.lease_failures.clone()))?;
        m.registry.register(Box::new(m.nodes_reaped.clone()))?;
        for op in REDIS_OPS {
            m.redis_errors.with_label_values(&[op]);
        }

        // Pre-create every label value so dashboards see zeros, not gaps.
        for role in [Role::Mac, Role::Browser] {
            m.connections_open.with_label_values(&[role.as_str()]);
        }
        for r in JOIN_RESULTS {
            m.joins.with_label_values(&[r]);
        }
        for r in RESUME_RESULTS {
            m.resumes.with_label_values(&[r]);
        }
        for d in ROOM_DECISIONS {
            m.room_decisions.with_label_values(&[d]);
        }
        for c in ErrorCode::ALL {
            m.errors.with_label_values(&[c.as_str()]);
        }
        for r in DisconnectReason::ALL {
            m.disconnects.with_label_values(&[r.as_str()]);
        }
        Ok(m)
    }

    /// Counts one code handed out, in total and by its length.
    pub fn code_issued(&self, code: &str) {
        self.codes_issued.inc();
        self.codes_issued_by_length
            .with_label_values(&[&code.len().to_string()])
            .inc();
    }

    /// Counts one ended connection.
    pub fn disconnected(&self, reason: DisconnectReason) {
        self.disconnects.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts one `error` message sent.
    pub fn error_sent(&self, code: ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    /// Counts one join's answer: `Ok`, or the code it was refused with.
    pub fn join_answered(&self, answer: Result<(), ErrorCode>) {
        let label = match answer {
            Ok(()) => "ok",
            Err(ErrorCode::InvalidCode) => "invalid_code",
            Err(ErrorCode::ExpiredCode) => "expired_code",
            Err(ErrorCode::AlreadyJoined) => "already_joined",
            Err(ErrorCode::RoomFull) => "room_full",
            Err(ErrorCode::RateLimited) => "rate_limited",
            Err(_) => "unavailable",
        };
        self.joins.with_label_values(&[label]).inc();
    }

    /// Counts one resume's answer: `Ok(takeover)` (whether it replaced a
    /// connection that still looked open), or the code it was refused with.
    pub fn resume_answered(&self, answer: Result<bool, ErrorCode>) {
        let label = match answer {
            Ok(true) => "takeover",
            Ok(false) => "ok",
            Err(ErrorCode::ResumeExpired) => "resume_expired",
            Err(ErrorCode::MacDisconnected) => "mac_disconnected",
            Err(ErrorCode::Unavailable) => "unavailable",
            Err(_) => "invalid_resume",
        };
        self.resumes.with_label_values(&[label]).inc();
    }

    /// Sets the gauges the registry counts at a scrape.
    pub fn set_stats(&self, st: &SessionStats) {
        self.sessions
            .with_label_values(&["waiting"])
            .set(st.waiting);
        self.sessions.with_label_values(&["paired"]).set(st.paired);
        self.sessions.with_label_values(&["away"]).set(st.away);
        self.buffered_frames.set(st.buffered_frames);
        self.buffered_bytes.set(st.buffered_bytes);
        self.rooms.set(st.rooms);
        for (state, n) in [
            ("waiting", st.guests_waiting),
            ("in", st.guests_in),
            ("away", st.guests_away),
        ] {
            self.room_guests.with_label_values(&[state]).set(n);
        }
        self.room_guests_max.set(st.room_guests_max);
    }

    /// Registers a metric kept elsewhere (the HTTP transport's).
    ///
    /// # Errors
    /// A prometheus error if its name is taken.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // An encode error would mean a metric with invalid UTF-8 names, which we never create.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// What the registry counts at a scrape. In a cluster, sessions count on the
/// node where their mac is; buffers on the node that holds them.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionStats {
    /// Registered, no browser yet (or it left).
    pub waiting: i64,
    /// Both sides connected.
    pub paired: i64,
    /// A side dropped and may resume.
    pub away: i64,
    /// Frames held in this node's pipes (queued or not yet acknowledged).
    pub buffered_frames: i64,
    /// Bytes held in this node's pipes.
    pub buffered_bytes: i64,
    /// Rooms.
    pub rooms: i64,
    /// Room guests waiting for their host.
    pub guests_waiting: i64,
    /// Room guests in their room and connected.
    pub guests_in: i64,
    /// Room guests in their room and away.
    pub guests_away: i64,
    /// Guests in the fullest room.
    pub room_guests_max: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_render() {
        let m = Metrics::new("test").unwrap();
        m.frames_local.inc();
        let text = m.render();
        assert!(text.contains("relay_frames_relayed_total{path=\"local\"} 1"));
        assert!(text.contains("relay_connections_open{role=\"mac\"} 0"));
        assert!(text.contains("relay_build_info"));
    }
}
