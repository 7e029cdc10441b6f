//! The HTTP side of a node: routes, the shared state handlers see, and the
//! node's life from bind to drained exit.

use std::any::Any;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::{Extensions, ServerHandle};
use actix_web::http::header;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use relay_protocol::Role;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Full, Origins};
use crate::cluster::bus::Bus;
use crate::cluster::lease::Lease;
use crate::cluster::{Redis, RedisTarget};
use crate::config::Config;
use crate::conns::{Connections, Killer, RawSocket};
use crate::metrics::Metrics;
use crate::queue::Limits;
use crate::registry::{ClusterRegistry, MemoryRegistry, RegistryHandle, RegistrySettings};
use crate::shutdown::{self, Draining};
use crate::socket;

/// Floor of the HTTP request-head timeout (see `client_request_timeout` below).
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the node's request handlers share.
struct AppState {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// Asked for counts at a scrape.
    registry: RegistryHandle,
    /// Handed to every socket.
    sockets: Arc<socket::Shared>,
    draining: Arc<Draining>,
    /// Redis and the bus, in cluster mode.
    cluster: Option<ClusterHealth>,
    /// The connection ceilings.
    admission: Arc<Admission>,
    /// The origins allowed to open `/browser`.
    origins: Origins,
}

/// What decides whether a cluster node can take sessions.
struct ClusterHealth {
    redis: Arc<Redis>,
    bus: Arc<Bus>,
}

impl AppState {
    /// Why the node cannot take new sessions now, if it cannot.
    fn not_ready(&self) -> Option<&'static str> {
        if self.draining.is_set() {
            return Some("draining");
        }
        match &self.cluster {
            Some(c) if !c.redis.is_up() => Some("redis unreachable"),
            Some(c) if !c.bus.is_listening() => Some("pub/sub not delivering"),
            _ => None,
        }
    }
}

/// A node that is serving.
pub struct Node {
    /// The address it listens on (the real port when configured with port 0).
    pub addr: SocketAddr,
    /// Every open WebSocket, to drain.
    conns: Connections,
    draining: Arc<Draining>,
    metrics: Arc<Metrics>,
    drain_timeout: Duration,
    handle: ServerHandle,
    server: actix_web::dev::Server,
    /// The admin listener's server, if one is configured.
    admin: Option<actix_web::dev::Server>,
    /// In a cluster, this node's lease, given up once it has drained.
    lease: Option<Lease>,
}

/// Binds the listener and starts serving; call from inside an actix system.
///
/// # Errors
/// When the address cannot be bound or the metrics cannot be registered.
pub fn start(config: Config) -> anyhow::Result<Node> {
    let config = Arc::new(config);
    // Bind first: a failure here must come before any actor or task exists.
    let listener = TcpListener::bind(config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let admin_listener = match config.admin_listen.as_str() {
        "" => None,
        a => Some(TcpListener::bind(a).map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?),
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let node_id = config.effective_node_id();
    let metrics = Arc::new(Metrics::new(&node_id)?);
    let settings = RegistrySettings {
        code_ttl: config.code_ttl,
        grace: config.grace,
        join_rate: config.join_rate,
        failed_join_limit: config.failed_join_limit,
        admit_timeout: config.admit_timeout,
        limits: Limits {
            max_buffered: config.max_buffered,
            stall: config.heartbeat_timeout,
            away_frames: config.resume_buffer_frames,
            away_bytes: config.resume_buffer_bytes,
            paced: true,
        },
    };
    let (registry, cluster, lease) = if config.redis_url.is_empty() {
        let addr = MemoryRegistry::new(settings, Arc::clone(&metrics)).start();
        (RegistryHandle::new(&addr), None, None)
    } else {
        let mut target = RedisTarget::parse(&config.redis_url).map_err(anyhow::Error::msg)?;
        if !config.redis_ca.is_empty() {
            let ca = std::fs::read(&config.redis_ca).map_err(|e| {
                anyhow::anyhow!("cannot read RELAY_REDIS_CA {}: {e}", config.redis_ca)
            })?;
            target = target.with_ca(ca).map_err(anyhow::Error::msg)?;
        }
        let redis = Redis::start(target, config.redis_timeout, Arc::clone(&metrics));
        let node: Arc<str> = Arc::from(node_id.as_str());
        let (addr, bus, lease) = ClusterRegistry::start(
            settings,
            Arc::clone(&metrics),
            node,
            Arc::clone(&redis),
            config.lease_ttl,
        );
        (
            RegistryHandle::new(&addr),
            Some(ClusterHealth { redis, bus }),
            Some(lease),
        )
    };
    let registry_kind = match &cluster {
        Some(c) => format!("redis ({})", c.redis.describe()),
        None => "memory".to_owned(),
    };
    let origins = Origins::parse(&config.allowed_origins).map_err(anyhow::Error::msg)?;
    let max_connections = match config.max_connections {
        0 => connections_the_fd_limit_allows(),
        n => n,
    };
    metrics.connections_limit.set(i64::from(max_connections));
    let conns = Connections::new();
    let draining = Arc::new(Draining::default());
    let state = Arc::new(AppState {
        config: Arc::clone(&config),
        metrics: Arc::clone(&metrics),
        sockets: socket::Shared::new(
            Arc::clone(&config),
            Arc::clone(&metrics),
            registry.clone(),
            conns.clone(),
            Arc::clone(&draining),
        ),
        registry,
        draining: Arc::clone(&draining),
        cluster,
        admission: Arc::new(Admission::new(
            max_connections,
            config.max_connections_per_addr,
        )),
        origins,
    });

    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.workers
    };

    let data = web::Data::from(Arc::clone(&state));
    // With an admin listener, /metrics is served only there.
    let metrics_on_main = admin_listener.is_none();
    let head_limit = config.max_request_head;
    let server = HttpServer::new(move || {
        let app = App::new()
            .wrap(from_fn(move |req, next| {
                crate::head::cap(head_limit, req, next)
            }))
            .app_data(data.clone())
            .route("/mac", web::get().to(mac))
            .route("/browser", web::get().to(browser))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/", web::get().to(page))
            .route("/client.js", web::get().to(client_js));
        let app = if metrics_on_main {
            app.route("/metrics", web::get().to(metrics_text))
        } else {
            app
        };
        app.default_service(web::to(not_found))
    })
    .workers(workers)
    .disable_signals()
    .on_connect(remember_socket)
    // A client must send its whole HTTP request within the handshake timeout.
    // actix measures this from a clock it refreshes every 500 ms, so shorter
    // values could refuse a prompt client: keep a floor.
    .client_request_timeout(config.handshake_timeout.max(MIN_REQUEST_TIMEOUT))
    .client_disconnect_timeout(Duration::from_secs(1))
    // Sockets are closed by the drain before the server stops; what is left
    // after that gets one second.
    .shutdown_timeout(1);
    let server = match (config.tls_cert.as_str(), config.tls_key.as_str()) {
        ("", _) | (_, "") => server.listen(listener)?,
        (cert, key) => server
            .tls_handshake_timeout(config.handshake_timeout)
            .listen_rustls_0_23(listener, crate::tls::server_config(cert, key)?)?,
    }
    .run();
    let handle = server.handle();
    let admin = match admin_listener {
        None => None,
        Some(l) => {
            let data = web::Data::from(Arc::clone(&state));
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(from_fn(move |req, next| {
                        crate::head::cap(head_limit, req, next)
                    }))
                    .app_data(data.clone())
                    .route("/healthz", web::get().to(healthz))
                    .route("/readyz", web::get().to(readyz))
                    .route("/metrics", web::get().to(metrics_text))
                    .default_service(web::to(not_found))
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .listen(l)?
            .run();
            Some(server)
        }
    };

    info!(
    addr = %addr,
            admin = %admin_addr.map_or_else(|| "main listener".to_owned(), |a| a.to_string()),
            node = %node_id,
            registry = %registry_kind,
            workers,
            code_ttl = %humantime::format_duration(config.code_ttl),
            grace = %humantime::format_duration(config.grace),
            max_frame = config.max_frame,
            max_request_head = config.max_request_head,
            join_rate = config.join_rate,
            heartbeat_interval = %humantime::format_duration(config.heartbeat_interval),
            heartbeat_timeout = %humantime::format_duration(config.heartbeat_timeout),
            handshake_timeout = %humantime::format_duration(config.handshake_timeout),
            resume_buffer_frames = config.resume_buffer_frames,
            resume_buffer_bytes = config.resume_buffer_bytes,
            drain_timeout = %humantime::format_duration(config.drain_timeout),
            trust_forwarded_for = config.trust_forwarded_for,
            tls = !config.tls_cert.is_empty(),
            max_buffered = config.max_buffered,
            max_malformed = config.max_malformed,
            max_connections,
            max_connections_per_addr = config.max_connections_per_addr,
            failed_join_limit = config.failed_join_limit,
            message_rate = config.message_rate,
            allowed_origins = %if state.origins.allows_all() { "any" } else { config.allowed_origins.as_str() },
            "relay listening"
        );

    // Backstop for sockets whose actor cannot run its own heartbeat (see conns).
    let swept = conns.clone();
    let silence = config.heartbeat_interval + config.heartbeat_timeout * 2;
    actix::spawn(async move {
        let mut tick = tokio::time::interval(crate::conns::SWEEP_EVERY);
        loop {
            tick.tick().await;
            let cut = swept.sweep(silence);
            if cut > 0 {
                warn!(cut, "cut sockets whose clients stopped reading");
            }
        }
    });

    Ok(Node {
        addr,
        conns,
        draining,
        metrics: state.metrics.clone(),
        drain_timeout: config.drain_timeout,
        handle,
        server,
        admin,
        lease,
    })
}

impl Node {
    /// Serves until SIGTERM or SIGINT, drains, and returns once stopped.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed or the server fails.
    pub async fn run_until_signalled(self) -> anyhow::Result<()> {
        let Node {
            conns,
            draining,
            metrics,
            drain_timeout,
            handle,
            server,
            admin,
            lease,
            ..
        } = self;
        let server = actix::spawn(server);
        // The admin server answers probes and scrapes until the very end.
        let admin = admin.map(|a| (a.handle(), actix::spawn(a)));
        shutdown::wait_for_signal().await?;
        shutdown::drain(&draining, &conns, &metrics, drain_timeout).await;
        if let Some(lease) = lease {
            lease.give_up().await;
        }
        handle.stop(true).await;
        server.await??;
        if let Some((h, task)) = admin {
            h.stop(true).await;
            task.await??;
        }
        info!("stopped");
        Ok(())
    }
}

/// Keeps the raw descriptor of every accepted connection, so a WebSocket
/// handler can duplicate it (see [`Killer`]), and turns off Nagle's delay.
fn remember_socket(conn: &dyn Any, ext: &mut Extensions) {
    let tcp = conn
        .downcast_ref::<actix_web::rt::net::TcpStream>()
        .or_else(|| {
            conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>()
                .map(|tls| tls.get_ref().0)
        });
    if let Some(tcp) = tcp {
        let _ = tcp.set_nodelay(true);
        ext.insert(RawSocket(tcp.as_raw_fd()));
    }
}

/// The client's address: the peer, or with `RELAY_TRUST_FORWARDED_FOR` the
/// last `X-Forwarded-For` entry (the one the trusted load balancer added).
fn client_addr(req: &HttpRequest, trust_forwarded_for: bool) -> IpAddr {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    if !trust_forwarded_for {
        return peer;
    }
    let values = req
        .headers()
        .get_all("x-forwarded-for")
        .map(|v| v.to_str().unwrap_or(""));
    last_forwarded_for(values).unwrap_or(peer)
}

/// The address the nearest proxy put in `X-Forwarded-For`: the last entry of
/// the last header, as `ip`, `ip:port` or `[ipv6]:port`. Only that entry: the
/// ones before it are whatever the client sent, so when the last one does
/// not parse there is no trusted address (None), never an earlier entry.
fn last_forwarded_for<'a>(values: impl Iterator<Item = &'a str>) -> Option<IpAddr> {
    let last = values.last()?.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// Descriptors kept free for Redis, listeners and logs when the connection
/// ceiling is derived from the open-files limit.
const RESERVED_FDS: u64 = 64;

/// The most WebSockets the open-files limit lets this process hold: each
/// takes two descriptors (the socket and the duplicate [`Killer`] keeps).
fn connections_the_fd_limit_allows() -> u32 {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    u32::try_from(soft.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(u32::MAX)
        .max(1)
}

async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    role: Role,
) -> Result<HttpResponse, actix_web::Error> {
    let addr = client_addr(&req, state.config.trust_forwarded_for);
    // Refuse before the upgrade, so a full node spends nothing on the socket.
    let slot = match state.admission.admit(addr) {
        Ok(slot) => slot,
        Err(full) => {
            state
                .metrics
                .connections_refused
                .with_label_values(&[full.as_str()])
                .inc();
            debug!(addr = %addr, reason = full.as_str(), "connection refused");
            let body = match full {
                Full::Node => "node full: it holds its maximum of connections; retry later\n",
                Full::Address => "too many connections from your address; close some, then retry\n",
            };
            return Ok(HttpResponse::ServiceUnavailable()
                .insert_header((header::RETRY_AFTER, "5"))
                .content_type("text/plain")
                .body(body));
        }
    };
    let origin_allowed = role != Role::Browser || {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or(""));
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        state.origins.allows(origin, host)
    };
    let arrival = socket::Arrival {
        addr,
        slot,
        origin_allowed,
        killer: req
            .conn_data::<RawSocket>()
            .and_then(|raw| Killer::from_raw(*raw)),
    };
    socket::accept(&req, body, role, arrival, Arc::clone(&state.sockets))
}

async fn mac(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    upgrade(req, body, state, Role::Mac).await
}

async fn browser(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    upgrade(req, body, state, Role::Browser).await
}

/// The browser side's page (`relay/static/index.html`), built into the binary.
const PAGE: &str = include_str!("../static/index.html");

/// The browser client module (`relay/static/client.js`), built into the binary.
const CLIENT_JS: &str = include_str!("../static/client.js");

async fn page(req: HttpRequest) -> HttpResponse {
    // `/` is not a WebSocket endpoint: an upgrade there is refused (404).
    if wants_websocket(&req) {
        return not_found(req).await;
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(PAGE)
}

async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(CLIENT_JS)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.not_ready() {
        Some(why) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("{why}\n")),
        None => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
    }
}

async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    let stats = state.registry.stats().await;
    state.metrics.set_stats(&stats);
    state
        .metrics
        .ready
        .set(i64::from(state.not_ready().is_none()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

fn wants_websocket(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    let body = if wants_websocket(&req) {
        "invalid path: WebSocket endpoints are /mac and /browser\n"
    } else {
        "not found\n"
    };
    HttpResponse::NotFound()
        .content_type("text/plain")
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_entry_the_proxy_added_counts() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        let one = |v: &'static str| last_forwarded_for(std::iter::once(v));
        assert_eq!(one("203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(one("1.2.3.4, 203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(one("1.2.3.4,203.0.113.9:4711"), ip("203.0.113.9"));
        assert_eq!(one("1.2.3.4, [2001:db8::1]:443"), ip("2001:db8::1"));
        assert_eq!(one("1.2.3.4, 2001:db8::1"), ip("2001:db8::1"));
        // The client wrote 1.2.3.4; what the proxy added does not parse.
        assert_eq!(one("1.2.3.4, unknown"), None);
        assert_eq!(one("1.2.3.4,"), None);
        assert_eq!(
            last_forwarded_for(["6.6.6.6", "1.2.3.4, 203.0.113.9"].into_iter()),
            ip("203.0.113.9")
        );
        assert_eq!(last_forwarded_for(std::iter::empty()), None);
    }
}
