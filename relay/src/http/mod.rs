//! The HTTP transport's edge (shared/PROTOCOL.md, "HTTP transport"): the
//! `/http/...` routes that open virtual connections and carry their frames.
//! A virtual connection is served by the same socket actor as a WebSocket
//! (`socket::start_virtual`); this module only turns requests into its
//! frames and its frames into answers, and never touches the session.

mod exchange;
mod forward;
mod metrics;
mod table;
mod wire;

use std::sync::Arc;

use std::time::Duration;
use tokio::sync::Semaphore;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use relay_protocol::Role;
use tracing::debug;

use crate::admission::{Admission, Full, Origins};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::socket::{self, VirtualConn};
pub use forward::Forwarder;
use table::Entry;
pub use table::Table;
use wire::Refused;

/// The header that names a virtual connection (never the URL: URLs land in logs).
pub const CONNECTION_HEADER: &str = "relay-connection";

/// How many `send` bodies at the cap the node holds at once at most.
const BODIES_AT_THE_CAP: usize = 16;

/// The longest a receive (or a send waiting for its batch) is held.
const MAX_WAIT: Duration = Duration::from_secs(25);

/// What the HTTP transport's handlers share.
pub struct Edge {
    config: Arc<Config>,
    node_metrics: Arc<Metrics>,
    sockets: Arc<socket::Shared>,
    admission: Arc<Admission>,
    origins: Origins,
    table: Table,
    /// In a cluster: requests for other nodes' connections go there.
    forwarder: Option<Arc<Forwarder>>,
    /// Bytes of `send` bodies the node may hold at once (one permit a byte).
    bodies: Arc<Semaphore>,
    metrics: metrics::HttpMetrics,
}

impl Edge {
    /// The edge of a node; starts the sweep of closed connections and, in
    /// a cluster (`forwarder`), the forwarding between nodes.
    ///
    /// # Errors
    /// When its metrics cannot be registered (a name taken).
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        sockets: Arc<socket::Shared>,
        admission: Arc<Admission>,
        origins: Origins,
        forwarder: Option<Arc<Forwarder>>,
    ) -> prometheus::Result<Arc<Self>> {
        let table = Table::default();
        table.sweep_forever();
        // Sixteen sends at the body cap at once, however many are in flight.
        let budget = wire::send_body_limit(config.max_frame).saturating_mul(BODIES_AT_THE_CAP);
        let edge = Arc::new(Edge {
            bodies: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
            config,
            metrics: metrics::HttpMetrics::new(&metrics)?,
            node_metrics: metrics,
            sockets,
            admission,
            origins,
            table,
            forwarder,
        });
        Forwarder::run(Arc::clone(&edge));
        Ok(edge)
    }

    /// A share of the node's body budget for this request: its declared
    /// length, or the cap when it declares none.
    ///
    /// # Errors
    /// 503 (retry) when the node holds its budget of bodies already.
    fn body_budget(
        &self,
        req: &HttpRequest,
        limit: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Refused> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(limit)
            .min(limit);
        let permits = u32::try_from(declared.max(1)).unwrap_or(u32::MAX);
        Arc::clone(&self.bodies)
            .try_acquire_many_owned(permits)
            .map_err(|_| {
                Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The node is taking in as many requests as it can hold; send the same batch again.",
                    serde_json::json!({}),
                )
                .retry_after(1)
            })
    }

    fn count_request(&self, op: &str, here: bool) {
        let served = metrics::SERVED[usize::from(!here)];
        self.metrics.requests.with_label_values(&[op, served]).inc();
    }

    /// A forwarded request's result, its failure to get an answer counted.
    fn forwarded<T>(&self, r: Result<T, wire::Refused>) -> Result<T, wire::Refused> {
        if let Err(e) = &r
            && e.status() == StatusCode::SERVICE_UNAVAILABLE
        {
            self.metrics.forward_failures.inc();
        }
        r
    }

    /// How long a receive is held: 25 s, or less with a shorter heartbeat.
    fn wait(&self) -> Duration {
        MAX_WAIT.min(self.config.heartbeat_interval)
    }
}

/// The routes, for the node's app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/http/mac", web::post().to(open_mac))
        .route("/http/browser", web::post().to(open_browser))
        .route("/http/send", web::post().to(exchange::send))
        .route("/http/receive", web::post().to(exchange::receive))
        .route(
            "/http/{what}",
            web::method(actix_web::http::Method::OPTIONS).to(preflight),
        );
}

/// The request's origin, when it has one the allow-list lets through.
///
/// # Errors
/// 403 for an origin it refuses.
fn origin(req: &HttpRequest, edge: &Edge) -> Result<Option<String>, Refused> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(None);
    };
    let origin = origin.to_str().unwrap_or("");
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if edge.origins.allows(Some(origin), host) {
        Ok(Some(origin.to_owned()))
    } else {
        debug!(origin, "HTTP transport: origin refused");
        Err(Refused::new(
            StatusCode::FORBIDDEN,
            "This page's origin may not use the relay (RELAY_ALLOWED_ORIGINS).",
            serde_json::json!({ "close": 1008 }),
        ))
    }
}

/// Lets the page of an allowed origin read the answer.
fn cors(mut res: HttpResponse, origin: Option<&str>) -> HttpResponse {
    if let Some(o) = origin.and_then(|o| header::HeaderValue::from_str(o).ok()) {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    res
}

async fn open_mac(req: HttpRequest, edge: web::Data<Edge>) -> HttpResponse {
    open(&req, &edge, Role::Mac).await
}

async fn open_browser(req: HttpRequest, edge: web::Data<Edge>) -> HttpResponse {
    open(&req, &edge, Role::Browser).await
}

/// Opens a virtual connection of `role`: a socket actor like a WebSocket's.
async fn open(req: &HttpRequest, edge: &Edge, role: Role) -> HttpResponse {
    let origin = match origin(req, edge) {
        Ok(o) => o,
        Err(res) => return res.response(),
    };
    let addr = crate::forwarded::client_addr(req.head(), edge.config.trust_forwarded_for);
    let slot = match edge.admission.admit(addr) {
        Ok(slot) => slot,
        Err(full) => {
            edge.node_metrics
                .connections_refused
                .with_label_values(&[full.as_str()])
                .inc();
            let sentence = match full {
                Full::Node => "Node full: it holds its maximum of connections; retry later.",
                Full::Address => "Too many connections from your address; close some, then retry.",
            };
            let res = Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                sentence,
                serde_json::json!({}),
            )
            .retry_after(5);
            return cors(res.response(), origin.as_deref());
        }
    };
    let gauge = edge.metrics.open.with_label_values(&[role.as_str()]);
    // Room for a whole pipe's worth of frames as items (base64 and JSON
    // grow them), whatever the client acknowledges.
    let cap = edge.config.max_buffered.saturating_mul(4);
    let conn = Arc::new(VirtualConn::new(gauge, cap));
    edge.metrics
        .opened
        .with_label_values(&[role.as_str()])
        .inc();
    let arrival = socket::Arrival {
        addr,
        slot,
        origin_allowed: true,
    };
    let actor = socket::start_virtual(Arc::clone(&conn), role, arrival, Arc::clone(&edge.sockets));
    let cid = edge.table.insert(Entry { conn, actor });
    if let Some(f) = &edge.forwarder {
        // Before the answer: the client's next request may land anywhere.
        f.record(&cid).await;
    }
    debug!(role = role.as_str(), addr = %addr, "HTTP transport: connection opened");
    cors(
        wire::ok(&serde_json::json!({ "connection": cid })),
        origin.as_deref(),
    )
}

/// The CORS preflight, answered from the origin allow-list.
async fn preflight(req: HttpRequest, edge: web::Data<Edge>) -> HttpResponse {
    let origin = match origin(&req, &edge) {
        Ok(o) => o,
        Err(res) => return res.response(),
    };
    let mut res = HttpResponse::NoContent()
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Content-Type, Relay-Connection",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
        .finish();
    res = cors(res, origin.as_deref());
    res
}
