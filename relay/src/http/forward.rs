//! No sticky sessions: a request for a virtual connection that lives on
//! another node (its home) is carried there over Redis pub/sub, run there
//! by the same steps as a local one (`exchange.rs`), and its result carried
//! back. Each node subscribes to its own channel `relay:h:<node>`; the home
//! of a connection is recorded at `relay:http:<cid>` when it opens.
//!
//! Cost of a forwarded request: one Redis lookup the first time a node sees
//! the cid (then cached), and two publishes. A stream served by another
//! node is a run of forwarded collections, one per batch of items.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Edge;
use super::exchange::{self, Got};
use super::wire::Refused;
use crate::cluster::Redis;

/// How long the record of a connection's home lasts unless renewed; its
/// home renews it every [`RENEW_EVERY`] while the connection lives.
const HOME_TTL: Duration = Duration::from_secs(3600);
const RENEW_EVERY: Duration = Duration::from_secs(600);

/// Homes remembered at most (a cache: cleared whole when full).
const MAX_CACHED: usize = 100_000;

/// Requests in flight to other nodes at most; more get 503 (bounded memory).
const MAX_PENDING: usize = 10_000;

fn channel(node: &str) -> String {
    format!("relay:h:{node}")
}

fn home_key(cid: &str) -> String {
    format!("relay:http:{cid}")
}

/// What one node asks of another's connection.
#[derive(Serialize, Deserialize)]
enum Op {
    Send {
        body: String,
    },
    Receive {
        after: u64,
        room: usize,
        wait_ms: u64,
    },
    More {
        generation: u64,
        room: usize,
        wait_ms: u64,
    },
}

/// What the home answers.
#[derive(Serialize, Deserialize)]
enum Answer {
    Sent {
        batch: u64,
    },
    Items {
        generation: u64,
        items: Vec<String>,
        over: bool,
    },
}

#[derive(Serialize, Deserialize)]
enum Message {
    Ask {
        id: u64,
        from: String,
        cid: String,
        op: Op,
    },
    Reply {
        id: u64,
        result: Result<Answer, Refused>,
    },
}

/// This node's side of the forwarding.
pub struct Forwarder {
    node: Arc<str>,
    redis: Arc<Redis>,
    next_id: AtomicU64,
    /// Requests waiting for their reply, by id.
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Answer, Refused>>>>,
    /// cid -> home node, as learned from Redis.
    homes: Mutex<HashMap<String, Arc<str>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unavailable(why: &str) -> Refused {
    Refused::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("The connection's node cannot be reached ({why}); retry the same request."),
        serde_json::json!({}),
    )
    .retry_after(1)
}

impl Forwarder {
    /// The forwarder of `node`.
    pub fn new(node: Arc<str>, redis: Arc<Redis>) -> Arc<Self> {
        Arc::new(Forwarder {
            node,
            redis,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            homes: Mutex::new(HashMap::new()),
        })
    }

    /// The edge's forwarder; without a cluster, no other node holds anything.
    ///
    /// # Errors
    /// 404 on a single node.
    pub(super) fn of(edge: &Edge) -> Result<Arc<Forwarder>, Refused> {
        edge.forwarder.clone().ok_or_else(exchange::unknown)
    }

    /// Records that `cid` lives here.
    pub(super) async fn record(&self, cid: &str) {
        let cmd = redis::cmd("SET")
            .arg(home_key(cid))
            .arg(&*self.node)
            .arg("EX")
            .arg(HOME_TTL.as_secs())
            .to_owned();
        if let Err(e) = self.redis.query::<()>("http_home", &cmd).await {
            warn!(error = %e, "cannot record an HTTP connection's home; only this node serves it");
        }
    }

    async fn home_of(&self, cid: &str) -> Result<Arc<str>, Refused> {
        if let Some(h) = lock(&self.homes).get(cid) {
            return Ok(Arc::clone(h));
        }
        let cmd = redis::cmd("GET").arg(home_key(cid)).to_owned();
        let home: Option<String> = self
            .redis
            .query("http_home", &cmd)
            .await
            .map_err(|_| unavailable("the registry is unreachable"))?;
        let home: Arc<str> = match home {
            Some(h) if *h != *self.node => Arc::from(h.as_str()),
            _ => return Err(exchange::unknown()),
        };
        let mut homes = lock(&self.homes);
        if homes.len() >= MAX_CACHED {
            homes.clear();
        }
        homes.insert(cid.to_owned(), Arc::clone(&home));
        Ok(home)
    }

    async fn ask(&self, cid: &str, op: Op, wait: Duration) -> Result<Answer, Refused> {
        let home = self.home_of(cid).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.len() >= MAX_PENDING {
                return Err(unavailable("too many requests in flight"));
            }
            pending.insert(id, tx);
        }
        let msg = Message::Ask {
            id,
            from: self.node.to_string(),
            cid: cid.to_owned(),
            op,
        };
        let published = self.publish(&home, &msg).await;
        let answer = match published {
            // Nobody listens on the home's channel: that node is gone, and
            // its connections with it; the client resumes on a new one.
            Ok(0) => Err(exchange::unknown()),
            Ok(_) => {
                let limit = wait + self.redis.timeout() * 2 + Duration::from_secs(1);
                match tokio::time::timeout(limit, rx).await {
                    Ok(Ok(a)) => a,
                    _ => Err(unavailable("no answer in time")),
                }
            }
            Err(e) => Err(e),
        };
        lock(&self.pending).remove(&id);
        if let Err(r) = &answer
            && r.status() == StatusCode::NOT_FOUND
        {
            lock(&self.homes).remove(cid);
        }
        answer
    }

    /// Publishes `msg` to `node`; how many subscribers got it.
    async fn publish(&self, node: &str, msg: &Message) -> Result<i64, Refused> {
        let payload = serde_json::to_vec(msg).map_err(|_| unavailable("encoding"))?;
        let cmd = redis::cmd("PUBLISH")
            .arg(channel(node))
            .arg(payload)
            .to_owned();
        self.redis
            .query::<i64>("http_forward", &cmd)
            .await
            .map_err(|_| unavailable("the registry is unreachable"))
    }

    /// Sends a `send` body to the connection's home; the batch number taken.
    pub(super) async fn send(&self, cid: &str, body: Bytes) -> Result<u64, Refused> {
        let body = String::from_utf8_lossy(&body).into_owned();
        match self.ask(cid, Op::Send { body }, super::MAX_WAIT).await? {
            Answer::Sent { batch } => Ok(batch),
            Answer::Items { .. } => Err(unavailable("a confused answer")),
        }
    }

    /// Starts a receive at the home and collects its first items there.
    pub(super) async fn receive(
        &self,
        cid: &str,
        after: u64,
        room: usize,
        deadline: Instant,
    ) -> Result<(u64, Got), Refused> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let op = Op::Receive {
            after,
            room,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        match self.ask(cid, op, wait).await? {
            Answer::Items {
                generation,
                items,
                over,
            } => Ok((generation, got(items, over))),
            Answer::Sent { .. } => Err(unavailable("a confused answer")),
        }
    }

    /// Collects more of a receive started at the home; `None` when it failed.
    pub(super) async fn more(
        &self,
        cid: &str,
        generation: u64,
        room: usize,
        deadline: Instant,
    ) -> Option<Got> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let op = Op::More {
            generation,
            room,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        match self.ask(cid, op, wait).await {
            Ok(Answer::Items { items, over, .. }) => Some(got(items, over)),
            _ => None,
        }
    }

    /// Subscribes to this node's channel for as long as the node runs:
    /// answers other nodes' requests for its connections, and hands replies
    /// to the requests waiting for them. Renews the homes it records.
    pub(super) fn run(edge: Arc<Edge>) {
        let Some(me) = edge.forwarder.clone() else {
            return;
        };
        actix::spawn(Arc::clone(&me).renew_loop(Arc::clone(&edge)));
        actix::spawn(async move {
            let ch = channel(&me.node);
            let mut backoff = Duration::from_millis(100);
            loop {
                let subscribed = async {
                    let client = me.redis.client().await?;
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&ch).await?;
                    Ok::<_, redis::RedisError>(ps)
                };
                let mut ps = match tokio::time::timeout(me.redis.timeout() * 2, subscribed).await {
                    Ok(Ok(ps)) => ps,
                    _ => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                info!(channel = %ch, "HTTP transport: subscribed");
                let mut messages = ps.on_message();
                while let Some(msg) = messages.next().await {
                    match serde_json::from_slice::<Message>(msg.get_payload_bytes()) {
                        Ok(Message::Reply { id, result }) => {
                            if let Some(tx) = lock(&me.pending).remove(&id) {
                                let _ = tx.send(result);
                            }
                        }
                        Ok(Message::Ask { id, from, cid, op }) => {
                            let edge = Arc::clone(&edge);
                            let me = Arc::clone(&me);
                            actix::spawn(async move {
                                let result = answer(&edge, &cid, op).await;
                                let _ = me.publish(&from, &Message::Reply { id, result }).await;
                            });
                        }
                        Err(e) => debug!(error = %e, "HTTP transport: unreadable forward"),
                    }
                }
                warn!(channel = %ch, "HTTP transport: subscription lost; resubscribing");
            }
        });
    }

    async fn renew_loop(self: Arc<Self>, edge: Arc<Edge>) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            for cid in edge.table.live() {
                self.record(&cid).await;
            }
        }
    }
}

fn got(items: Vec<String>, over: bool) -> Got {
    Got {
        items: items.into_iter().map(Bytes::from).collect(),
        over,
    }
}

/// Runs another node's request on a connection of this node.
async fn answer(edge: &Edge, cid: &str, op: Op) -> Result<Answer, Refused> {
    let entry = edge.table.get(cid).ok_or_else(exchange::unknown)?;
    let wait = |ms: u64| Instant::now() + Duration::from_millis(ms).min(edge.wait());
    let items = |g: Got| {
        g.items
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect::<Vec<_>>()
    };
    match op {
        Op::Send { body } => exchange::apply_send(edge, &entry, body.as_bytes())
            .await
            .map(|batch| Answer::Sent { batch }),
        Op::Receive {
            after,
            room,
            wait_ms,
        } => {
            let guard = exchange::begin_receive(&entry, after)?;
            let g = guard.collect(room, wait(wait_ms)).await;
            let over = g.over;
            Ok(Answer::Items {
                generation: guard.generation(),
                items: items(g),
                over,
            })
        }
        Op::More {
            generation,
            room,
            wait_ms,
        } => {
            let guard = exchange::continue_receive(&entry, generation);
            let g = guard.collect(room, wait(wait_ms)).await;
            let over = g.over;
            Ok(Answer::Items {
                generation,
                items: items(g),
                over,
            })
        }
    }
}
