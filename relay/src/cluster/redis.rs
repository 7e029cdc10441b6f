//! The connection to Redis: where it is (a server or a Sentinel-managed
//! master), one multiplexed command connection that is re-established with
//! backoff when it breaks, and whether Redis is reachable now. Never panics
//! on a Redis failure; every command has a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, FromRedisValue, IntoConnectionInfo, RedisResult};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// First wait before reconnecting to Redis; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where Redis is, parsed from `RELAY_REDIS_URL`.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One server: `redis://host:port/db` or `rediss://` for TLS, with the CA
    /// to trust for TLS if not the system's.
    Direct(String, Option<Vec<u8>>),
    /// A master found through Sentinel:
    /// `redis+sentinel://[:password@]host:port,host:port/service[/db]`
    /// (`rediss+sentinel://` for TLS to every server).
    Sentinel {
        /// Sentinel addresses as URLs.
        sentinels: Vec<String>,
        /// The monitored service (master) name.
        service: String,
        /// Password of the master, if any.
        password: Option<String>,
        /// Database number on the master.
        db: i64,
        /// Whether to use TLS.
        tls: bool,
    },
}

impl RedisTarget {
    /// Parses a Redis URL.
    ///
    /// # Errors
    /// A sentence saying what is wrong with the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("RELAY_REDIS_URL {:?}: {why}", redact(url));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://..."))?;
        match scheme {
            "redis" | "rediss" => {
                url.into_connection_info()
                    .map_err(|e| bad(&e.to_string()))?;
                Ok(RedisTarget::Direct(url.to_owned(), None))
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let tls = scheme.starts_with("rediss");
                let (auth, rest) = match rest.rsplit_once('@') {
                    Some((a, r)) => (Some(a), r),
                    None => (None, rest),
                };
                let password = auth
                    .map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_owned())
                    .filter(|p| !p.is_empty());
                let mut parts = rest.split('/');
                let hosts = parts.next().unwrap_or_default();
                let service = parts.next().filter(|s| !s.is_empty()).ok_or_else(|| {
                    bad("name the monitored service: redis+sentinel://host:26379/mymaster")
                })?;
                let db = match parts.next() {
                    Some(d) if !d.is_empty() => {
                        d.parse().map_err(|_| bad("db must be a number"))?
                    }
                    _ => 0,
                };
                let inner = if tls { "rediss" } else { "redis" };
                let sentinels: Vec<String> = hosts
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("{inner}://{h}"))
                    .collect();
                if sentinels.is_empty() {
                    return Err(bad("list at least one sentinel host:port"));
                }
                for s in &sentinels {
                    s.as_str()
                        .into_connection_info()
                        .map_err(|e| bad(&e.to_string()))?;
                }
                Ok(RedisTarget::Sentinel {
                    sentinels,
                    service: service.to_owned(),
                    password,
                    db,
                    tls,
                })
            }
            _ => Err(bad(
                "use redis://, rediss://, redis+sentinel:// or rediss+sentinel://",
            )),
        }
    }

    /// Trusts `ca` (PEM) for TLS to a single server.
    ///
    /// # Errors
    /// When the target is Sentinel (not supported with a custom CA yet).
    pub fn with_ca(self, ca: Vec<u8>) -> Result<Self, String> {
        match self {
            RedisTarget::Direct(url, _) => Ok(RedisTarget::Direct(url, Some(ca))),
            RedisTarget::Sentinel { .. } => Err(
                "RELAY_REDIS_CA works with redis:// and rediss:// URLs, not with Sentinel".into(),
            ),
        }
    }

    /// A client for the current master.
    async fn client(&self) -> RedisResult<Client> {
        match self {
            RedisTarget::Direct(url, None) => Client::open(url.as_str()),
            RedisTarget::Direct(url, Some(ca)) => Client::build_with_tls(
                url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            RedisTarget::Sentinel {
                sentinels,
                service,
                password,
                db,
                tls,
            } => {
                let mut info = redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(p) = password {
                    info = info.set_password(p);
                }
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                if *tls {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let mut sentinel = SentinelClient::build(
                    sentinels.clone(),
                    service.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                sentinel.async_get_client().await
            }
        }
    }

    /// The URL with any password hidden, for logs.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Direct(url, _) => redact(url),
            RedisTarget::Sentinel {
                sentinels, service, ..
            } => {
                format!("sentinel {} service {service}", sentinels.join(","))
            }
        }
    }
}

/// `url` with the password replaced by `***`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// A shared connection to Redis that heals itself.
pub struct Redis {
    target: RedisTarget,
    timeout: Duration,
    conn: RwLock<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// When the current connection was made.
    since: std::sync::Mutex<Instant>,
    broken: Notify,
    metrics: Arc<Metrics>,
}

impl Redis {
    /// Starts connecting in the background; the handle is usable at once
    /// (commands fail until the first connection is up).
    pub fn start(target: RedisTarget, timeout: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        // rediss:// needs a TLS crypto provider; rustls cannot pick one by
        // itself when several crates could provide it. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redis = Arc::new(Redis {
            target,
            timeout,
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            since: std::sync::Mutex::new(Instant::now()),
            broken: Notify::new(),
            metrics,
        });
        let me = Arc::clone(&redis);
        actix::spawn(async move { me.keep_connected().await });
        redis
    }

    /// Opens a client for the current master (also used for pub/sub connections).
    ///
    /// # Errors
    /// The Redis error when no client can be made (e.g. Sentinel unreachable).
    pub async fn client(&self) -> RedisResult<Client> {
        self.target.client().await
    }

    /// Where Redis is, for logs.
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// The command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long the command connection has been up (zero while down).
    pub fn connected_for(&self) -> Duration {
        if !self.is_up() {
            return Duration::ZERO;
        }
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Whether the command connection is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn keep_connected(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.connect().await {
                Ok(conn) => {
                    *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    self.up.store(true, Ordering::Relaxed);
                    self.metrics.redis_up.set(1);
                    info!(redis = %self.describe(), "connected to Redis");
                    backoff = MIN_BACKOFF;
                    self.broken.notified().await;
                    self.up.store(false, Ordering::Relaxed);
                    self.metrics.redis_up.set(0);
                    *self.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
                    warn!(redis = %self.describe(), "lost Redis; reconnecting");
                }
                Err(e) => {
                    warn!(redis = %self.describe(), error = %e, retry_in = ?backoff, "cannot reach Redis");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn connect(&self) -> RedisResult<MultiplexedConnection> {
        let client = tokio::time::timeout(self.timeout * 2, self.target.client())
            .await
            .map_err(|_| timeout_error())??;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // A connection that cannot answer PING is not up.
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(conn)
    }

    /// Runs one command or pipeline; a connection-level failure marks Redis
    /// down and starts reconnecting.
    ///
    /// # Errors
    /// The Redis error, or a timeout, or "not connected".
    pub async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &impl Queryable,
    ) -> RedisResult<T> {
        let Some(mut conn) = self.conn.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            self.metrics.redis_errors.with_label_values(&[op]).inc();
            return Err(not_connected());
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, cmd.run(&mut conn)).await;
        self.metrics
            .redis_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(timeout_error()),
        };
        if let Err(e) = &result {
            self.metrics.redis_errors.with_label_values(&[op]).inc();
            if connection_broken(e) {
                self.broken.notify_one();
            }
        }
        result.and_then(|v| T::from_redis_value(v).map_err(Into::into))
    }
}

/// A command or a pipeline, run on a connection.
pub trait Queryable {
    /// Runs it.
    fn run(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> impl std::future::Future<Output = RedisResult<redis::Value>> + Send;
}

impl Queryable for redis::Cmd {
    async fn run(&self, conn: &mut MultiplexedConnection) -> RedisResult<redis::Value> {
        self.query_async(conn).await
    }
}

impl Queryable for redis::Pipeline {
    async fn run(&self, conn: &mut MultiplexedConnection) -> RedisResult<redis::Value> {
        self.query_async(conn).await
    }
}

impl Queryable for redis::ScriptInvocation<'_> {
    async fn run(&self, conn: &mut MultiplexedConnection) -> RedisResult<redis::Value> {
        self.invoke_async(conn).await
    }
}

/// Whether an error means the connection (or the server's role) is no good:
/// reconnect, asking Sentinel again. A master demoted by a failover answers
/// writes with READONLY; one cut off from its replicas with MASTERDOWN.
fn connection_broken(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

fn not_connected() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "not connected to Redis"))
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert!(matches!(
            RedisTarget::parse("redis://127.0.0.1:6379"),
            Ok(RedisTarget::Direct(_, None))
        ));
        assert!(matches!(
            RedisTarget::parse("rediss://h:6380/2"),
            Ok(RedisTarget::Direct(_, None))
        ));
        let s = RedisTarget::parse("redis+sentinel://:pw@a:26379,b:26380/mymaster/3").unwrap();
        let RedisTarget::Sentinel {
            sentinels,
            service,
            password,
            db,
            tls,
        } = s
        else {
            panic!()
        };
        assert_eq!(sentinels, ["redis://a:26379", "redis://b:26380"]);
        assert_eq!(
            (service.as_str(), password.as_deref(), db, tls),
            ("mymaster", Some("pw"), 3, false)
        );
        assert!(RedisTarget::parse("redis+sentinel://a:26379").is_err());
        assert!(RedisTarget::parse("http://x").is_err());
        assert!(RedisTarget::parse("nonsense").is_err());
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("redis://:secret@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
