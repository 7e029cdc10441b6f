//! The HTTP side of a node: routes, the shared state handlers see, and the
//! node's life from bind to drained exit.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_codec::Framed;
use actix_http::{HttpMessage, HttpService, Method, Request, StatusCode, TlsAcceptorConfig, h1};
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
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
use crate::conns::Connections;
use crate::http;
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
        under_attack_for: config.under_attack_for,
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
    let http_edge = web::Data::from(http::Edge::new(
        Arc::clone(&config),
        Arc::clone(&metrics),
        Arc::clone(&state.sockets),
        Arc::clone(&state.admission),
        state.origins.clone(),
        (state.cluster.as_ref())
            .map(|c| http::Forwarder::new(node_id.as_str().into(), c.redis.clone())),
    )?);
    // With an admin listener, /metrics is served only there.
    let metrics_on_main = admin_listener.is_none();
    let head_limit = config.max_request_head;
    let app = move || {
        let app = App::new()
            .wrap(from_fn(move |req, next| {
                crate::head::cap(head_limit, req, next)
            }))
            .app_data(data.clone())
            .app_data(http_edge.clone())
            .configure(http::routes)
            .route("/mac", web::get().to(not_an_upgrade))
            .route("/browser", web::get().to(not_an_upgrade))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/", web::get().to(page))
            .configure(crate::scripts::routes);
        let app = if metrics_on_main {
            app.route("/metrics", web::get().to(metrics_text))
        } else {
            app
        };
        app.default_service(web::to(not_found))
    };
    // A client must send its whole HTTP request within the handshake timeout.
    // actix measures this from a clock it refreshes every 500 ms, so shorter
    // values could refuse a prompt client: keep a floor.
    let request_timeout = config.handshake_timeout.max(MIN_REQUEST_TIMEOUT);
    // Not actix-web's `HttpServer`: it has no way to take a connection over
    // after an upgrade, which is what keeps an idle WebSocket small (see
    // docs/design.md, "The edge"). The same pieces, put together here.
    // The upgrade's future is boxed: actix-http keeps it inline in every
    // connection's dispatcher, where it would cost each HTTP request
    // waiting on the connection its size (docs/design.md, "The HTTP edge").
    macro_rules! http {
        () => {
            HttpService::build()
                .client_request_timeout(request_timeout)
                .client_disconnect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .local_addr(addr)
        };
    }
    let builder = actix_server::Server::build()
        .workers(workers)
        .disable_signals()
        // Sockets are closed by the drain before the server stops; what is
        // left after that gets one second.
        .shutdown_timeout(1);
    let edge = Arc::clone(&state);
    let builder = match (config.tls_cert.as_str(), config.tls_key.as_str()) {
        ("", _) | (_, "") => builder.listen("relay", listener, move || {
            let edge = Arc::clone(&edge);
            http!()
                .upgrade(fn_service(move |(req, framed)| {
                    Box::pin(take_over(Arc::clone(&edge), req, framed))
                }))
                .finish(app_service(app()))
                .tcp()
        })?,
        (cert, key) => {
            let tls = crate::tls::server_config(cert, key)?;
            let handshake = config.handshake_timeout;
            builder.listen("relay-tls", listener, move || {
                let edge = Arc::clone(&edge);
                http!()
                    .upgrade(fn_service(move |(req, framed)| {
                        Box::pin(take_over(Arc::clone(&edge), req, framed))
                    }))
                    .finish(app_service(app()))
                    .rustls_0_23_with_config(
                        tls.clone(),
                        TlsAcceptorConfig::default().handshake_timeout(handshake),
                    )
            })?
        }
    };
    let server = builder.run();
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
            under_attack_for = %humantime::format_duration(config.under_attack_for),
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

/// An actix-web app as the HTTP service of a hand-built server, the way
/// `HttpServer` serves one (its defaults: no host, the secure flag unset).
fn app_service<T, B>(
    app: App<T>,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = ServiceResponse<B>,
    Error = HttpResponse,
    InitError = (),
>
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    map_config(app.into_factory().map_err(|e| e.error_response()), |_| {
        AppConfig::default()
    })
}

/// Descriptors kept free for Redis, listeners and logs when the connection
/// ceiling is derived from the open-files limit.
const RESERVED_FDS: u64 = 64;

/// The most WebSockets the open-files limit lets this process hold: each
/// takes one descriptor, its socket.
fn connections_the_fd_limit_allows() -> u32 {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    u32::try_from(soft.saturating_sub(RESERVED_FDS))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Takes over a connection whose request asks for a WebSocket (actix-http
/// hands every such request here, whatever its path): the head ceiling,
/// the two endpoints, the connection ceilings and the origin, then the
/// upgrade itself, in that order, as the app's middleware and routes would.
async fn take_over<T: socket::io::Upgraded>(
    state: Arc<AppState>,
    req: Request,
    framed: Framed<T, h1::Codec>,
) -> Result<(), actix_web::Error> {
    let timeout = state.config.handshake_timeout;
    let limit = state.config.max_request_head;
    let len = crate::head::head_len(req.head());
    if len > limit {
        debug!(len, limit, path = req.path(), "request head too large");
        let body = format!("request head over {limit} bytes\n");
        let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        socket::refuse(framed, status, &[], body, timeout).await;
        return Ok(());
    }
    let role = match (req.method() == Method::GET, req.path()) {
        (true, "/mac") => Role::Mac,
        (true, "/browser") => Role::Browser,
        _ => {
            let body = "invalid path: WebSocket endpoints are /mac and /browser\n";
            socket::refuse(framed, StatusCode::NOT_FOUND, &[], body.to_owned(), timeout).await;
            return Ok(());
        }
    };
    let addr = crate::forwarded::client_addr(req.head(), state.config.trust_forwarded_for);
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
            let retry = [(header::RETRY_AFTER, "5")];
            let status = StatusCode::SERVICE_UNAVAILABLE;
            socket::refuse(framed, status, &retry, body.to_owned(), timeout).await;
            return Ok(());
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
    };
    socket::accept(req, framed, role, arrival, Arc::clone(&state.sockets)).await;
    Ok(())
}

/// `/mac` and `/browser` without `Upgrade: websocket`: not a WebSocket.
async fn not_an_upgrade(req: HttpRequest) -> HttpResponse {
    match actix_http::ws::verify_handshake(req.head()) {
        Err(e) => HttpResponse::from_error(e),
        // Unreachable: a request that asks for a WebSocket is taken over.
        Ok(()) => HttpResponse::BadRequest().finish(),
    }
}

/// The browser side's page (`relay/static/index.html`), built into the binary.
const PAGE: &str = include_str!("../static/index.html");

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
