//! The HTTP transport's metrics, registered with the node's: beside
//! `relay_connections_open` (every connection, either transport) they say
//! how many clients fell back to HTTP and what that traffic costs.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};

use crate::metrics::Metrics;

/// Label values of `served`: run on this node, or carried to the connection's node.
pub const SERVED: [&str; 2] = ["here", "forwarded"];

/// Every metric of the HTTP transport.
pub struct HttpMetrics {
    /// Open virtual connections by role (also counted in `relay_connections_open`).
    pub open: IntGaugeVec,
    /// Virtual connections opened by role: clients on the fallback.
    pub opened: IntCounterVec,
    /// Frames by direction: `in` taken from clients' batches, `out` items
    /// handed to receives (resent ones included).
    pub frames: IntCounterVec,
    /// `send` and `receive` requests by `served` ([`SERVED`]).
    pub requests: IntCounterVec,
    /// Requests for another node's connection that got no answer from it.
    pub forward_failures: IntCounter,
}

impl HttpMetrics {
    /// Creates them, every label set at zero, in the node's registry.
    ///
    /// # Errors
    /// A prometheus error if a name is taken (a programming error).
    pub fn new(node: &Metrics) -> prometheus::Result<Self> {
        let m = HttpMetrics {
            open: IntGaugeVec::new(
                Opts::new(
                    "relay_http_connections_open",
                    "Open virtual connections of the HTTP transport, by role.",
                ),
                &["role"],
            )?,
            opened: IntCounterVec::new(
                Opts::new(
                    "relay_http_connections_total",
                    "Virtual connections opened (clients that fell back to HTTP), by role.",
                ),
                &["role"],
            )?,
            frames: IntCounterVec::new(
                Opts::new(
                    "relay_http_frames_total",
                    "Frames over the HTTP transport: in from clients' batches, out to their receives.",
                ),
                &["direction"],
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "relay_http_requests_total",
                    "HTTP transport send and receive requests, by op and by where they were served.",
                ),
                &["op", "served"],
            )?,
            forward_failures: IntCounter::new(
                "relay_http_forward_failures_total",
                "Requests for another node's virtual connection that got no answer from it.",
            )?,
        };
        for role in ["mac", "browser"] {
            m.open.with_label_values(&[role]);
            m.opened.with_label_values(&[role]);
        }
        for d in ["in", "out"] {
            m.frames.with_label_values(&[d]);
        }
        for op in ["send", "receive"] {
            for s in SERVED {
                m.requests.with_label_values(&[op, s]);
            }
        }
        node.register(Box::new(m.open.clone()))?;
        node.register(Box::new(m.opened.clone()))?;
        node.register(Box::new(m.frames.clone()))?;
        node.register(Box::new(m.requests.clone()))?;
        node.register(Box::new(m.forward_failures.clone()))?;
        Ok(m)
    }
}
