//! The HTTP transport's edge (shared/PROTOCOL.md, "HTTP transport"): the
//! `/http/...` routes that open virtual connections and carry their frames.
//! A virtual connection is served by the same socket actor as a WebSocket
//! (`socket::start_virtual`); this module only turns requests into its
//! frames and its frames into answers, and never touches the session.

mod table;
mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{BufMut, Bytes, BytesMut};
use relay_protocol::Role;
use tokio::time::Instant;
use tracing::debug;

use crate::admission::{Admission, Full, Origins};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::socket::{self, Collected, Heard, ReceiveRefused, SendStep, VirtualConn};
use table::Entry;
pub use table::Table;
use wire::{Mode, Refused};

/// The header that names a virtual connection (never the URL: URLs land in logs).
pub const CONNECTION_HEADER: &str = "relay-connection";

/// The longest a receive (or a send waiting for its batch) is held.
const MAX_WAIT: Duration = Duration::from_secs(25);

/// Bytes of items after which a stream ends, so the client acknowledges
/// them with its next receive.
const STREAM_BYTES: usize = 1 << 20;

/// Items' bytes in one poll answer at most (at least one item).
const POLL_BYTES: usize = 1 << 20;

/// What the HTTP transport's handlers share.
pub struct Edge {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    sockets: Arc<socket::Shared>,
    admission: Arc<Admission>,
    origins: Origins,
    table: Table,
}

impl Edge {
    /// The edge of a node; starts the sweep of closed connections.
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        sockets: Arc<socket::Shared>,
        admission: Arc<Admission>,
        origins: Origins,
    ) -> Arc<Self> {
        let table = Table::default();
        table.sweep_forever();
        Arc::new(Edge {
            config,
            metrics,
            sockets,
            admission,
            origins,
            table,
        })
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
        .route("/http/send", web::post().to(send))
        .route("/http/receive", web::post().to(receive))
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

/// The connection a request names.
///
/// # Errors
/// 400 without the header, 404 for a cid this node does not hold.
fn entry(req: &HttpRequest, edge: &Edge) -> Result<Entry, Refused> {
    let Some(cid) = req.headers().get(CONNECTION_HEADER) else {
        return Err(wire::bad(
            "Name the connection in the Relay-Connection header.",
        ));
    };
    cid.to_str()
        .ok()
        .and_then(|cid| edge.table.get(cid))
        .ok_or_else(|| {
            Refused::new(
                StatusCode::NOT_FOUND,
                "No such connection here (it ended long ago, or never was): open a new one and resume.",
                serde_json::json!({}),
            )
        })
}

fn gone(closed: &socket::Closed) -> Refused {
    Refused::new(
        StatusCode::GONE,
        "This connection is closed; act on its close code.",
        serde_json::json!({ "close": closed.code, "reason": closed.reason }),
    )
}

async fn open_mac(req: HttpRequest, edge: web::Data<Edge>) -> HttpResponse {
    open(&req, &edge, Role::Mac)
}

async fn open_browser(req: HttpRequest, edge: web::Data<Edge>) -> HttpResponse {
    open(&req, &edge, Role::Browser)
}

/// Opens a virtual connection of `role`: a socket actor like a WebSocket's.
fn open(req: &HttpRequest, edge: &Edge, role: Role) -> HttpResponse {
    let origin = match origin(req, edge) {
        Ok(o) => o,
        Err(res) => return res.response(),
    };
    let addr = crate::forwarded::client_addr(req.head(), edge.config.trust_forwarded_for);
    let slot = match edge.admission.admit(addr) {
        Ok(slot) => slot,
        Err(full) => {
            edge.metrics
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
            .retry_after("5");
            return cors(res.response(), origin.as_deref());
        }
    };
    let conn = Arc::new(VirtualConn::default());
    let arrival = socket::Arrival {
        addr,
        slot,
        origin_allowed: true,
    };
    let actor = socket::start_virtual(Arc::clone(&conn), role, arrival, Arc::clone(&edge.sockets));
    let cid = edge.table.insert(Entry { conn, actor });
    debug!(role = role.as_str(), addr = %addr, "HTTP transport: connection opened");
    cors(
        wire::ok(&serde_json::json!({ "connection": cid })),
        origin.as_deref(),
    )
}

/// Waits until `check` has an answer (it is asked after every change of
/// `conn`) or `deadline` passes.
async fn wait_until<T>(
    conn: &VirtualConn,
    deadline: Instant,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        let changed = conn.changed().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(t) = check() {
            return Some(t);
        }
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep_until(deadline) => return check(),
        }
    }
}

async fn send(req: HttpRequest, body: web::Payload, edge: web::Data<Edge>) -> HttpResponse {
    let origin = match origin(&req, &edge) {
        Ok(o) => o,
        Err(res) => return res.response(),
    };
    let res = send_batch(&req, body, &edge).await;
    cors(res.unwrap_or_else(Refused::response), origin.as_deref())
}

async fn send_batch(
    req: &HttpRequest,
    body: web::Payload,
    edge: &Edge,
) -> Result<HttpResponse, Refused> {
    let entry = entry(req, edge)?;
    let max_frame = edge.config.max_frame;
    let body = wire::read_body(body, wire::send_body_limit(max_frame)).await?;
    let batch = wire::batch(&body, max_frame)?;
    drop(body);
    let n = batch.number;
    let conn = &entry.conn;
    let step = match conn.send(n, batch.frames) {
        SendStep::Applying => {
            let deadline = Instant::now() + edge.wait();
            wait_until(conn, deadline, || conn.taken(n)).await
        }
        step => Some(step),
    };
    match step {
        Some(SendStep::Taken) => Ok(wire::ok(&serde_json::json!({ "batch": n }))),
        Some(SendStep::Closed(c)) => Err(gone(&c)),
        Some(SendStep::Refused { expected }) => Err(Refused::new(
            StatusCode::CONFLICT,
            "Not the batch expected next: send that one (one batch at a time).",
            serde_json::json!({ "expected": expected }),
        )),
        Some(SendStep::Applying) | None => Err(Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The batch is still being taken (the peer is behind); send it again.",
            serde_json::json!({}),
        )
        .retry_after("1")),
    }
}

/// Ends a receive when its answer is done or dropped (the client went).
struct ReceiveGuard {
    conn: Arc<VirtualConn>,
    generation: u64,
}

impl Drop for ReceiveGuard {
    fn drop(&mut self) {
        self.conn.receive_ended(self.generation);
    }
}

async fn receive(req: HttpRequest, body: web::Payload, edge: web::Data<Edge>) -> HttpResponse {
    let origin = match origin(&req, &edge) {
        Ok(o) => o,
        Err(res) => return res.response(),
    };
    let res = start_receive(&req, body, &edge).await;
    cors(res.unwrap_or_else(Refused::response), origin.as_deref())
}

async fn start_receive(
    req: &HttpRequest,
    body: web::Payload,
    edge: &Edge,
) -> Result<HttpResponse, Refused> {
    let entry = entry(req, edge)?;
    let body = wire::read_body(body, wire::RECEIVE_BODY).await?;
    let asked = wire::receive(&body)?;
    let conn = entry.conn;
    let receiving = match conn.receive(asked.after) {
        Ok(r) => r,
        Err(ReceiveRefused::Backwards { acked }) => {
            return Err(Refused::new(
                StatusCode::CONFLICT,
                "`after` went back below an earlier acknowledgement.",
                serde_json::json!({ "acked": acked }),
            ));
        }
        Err(ReceiveRefused::Beyond) => {
            return Err(wire::bad("`after` is past the last item sent."));
        }
        Err(ReceiveRefused::Closed(c)) => return Err(gone(&c)),
    };
    entry.actor.do_send(Heard(receiving.marker));
    let guard = ReceiveGuard {
        conn,
        generation: receiving.generation,
    };
    let deadline = Instant::now() + edge.wait();
    Ok(match asked.mode {
        Mode::Poll => poll(guard, deadline).await,
        Mode::Stream => stream(guard, deadline),
    })
}

/// A long poll: the items there are, as soon as there is one, or `[]`.
async fn poll(guard: ReceiveGuard, deadline: Instant) -> HttpResponse {
    let conn = &guard.conn;
    let got = wait_until(conn, deadline, || {
        conn.collect(guard.generation, POLL_BYTES)
    })
    .await;
    let mut body = BytesMut::from(&b"["[..]);
    if let Some(Collected::Items(items)) = got {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.put_u8(b',');
            }
            body.extend_from_slice(item);
        }
    }
    body.put_u8(b']');
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(body.freeze())
}

/// Server-sent events: `: open` at once, then one event per item until the
/// wait, [`STREAM_BYTES`], the close item or a newer receive ends it.
fn stream(guard: ReceiveGuard, deadline: Instant) -> HttpResponse {
    struct Streaming {
        guard: ReceiveGuard,
        deadline: Instant,
        bytes: usize,
        opened: bool,
        done: bool,
    }
    let start = Streaming {
        guard,
        deadline,
        bytes: 0,
        opened: false,
        done: false,
    };
    let events = futures_util::stream::unfold(start, |mut st| async move {
        if st.done || st.bytes >= STREAM_BYTES {
            return None;
        }
        if !st.opened {
            st.opened = true;
            return Some((Ok::<_, Infallible>(Bytes::from_static(b": open\n\n")), st));
        }
        let conn = Arc::clone(&st.guard.conn);
        let generation = st.guard.generation;
        let room = STREAM_BYTES - st.bytes;
        let got = wait_until(&conn, st.deadline, || conn.collect(generation, room)).await;
        let Some(Collected::Items(items)) = got else {
            return None;
        };
        let mut chunk = BytesMut::new();
        for item in &items {
            chunk.extend_from_slice(b"data: ");
            chunk.extend_from_slice(item);
            chunk.extend_from_slice(b"\n\n");
        }
        st.bytes += chunk.len();
        st.done = conn.finished();
        Some((Ok(chunk.freeze()), st))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events)
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
