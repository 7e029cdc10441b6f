//! The node-to-node bus over Redis pub/sub: one channel per node
//! (`relay:n:<node>`), which that node alone subscribes to.
//!
//! Why one channel per node: a session moves between nodes (resume,
//! failover) without any subscribe/unsubscribe, a node's subscription count
//! stays at one whatever the number of sessions, and messages to one node
//! keep their order because one publisher task sends them on one connection.
//! With Redis Cluster the same names would map to sharded channels
//! (`SPUBLISH`), spreading nodes over shards.
//!
//! Publishing is batched: the publisher task takes everything queued, packs
//! the envelopes for each node into few messages, and sends them all in one
//! pipeline, so Redis round trips do not cap throughput. The queue is bounded
//! in bytes: past the high mark, senders' gates close until it drains.
//!
//! Pub/sub can fail silently (after a failover a subscription may receive
//! nothing while publishes succeed), so the node publishes a probe to itself
//! every second; two missed probes mark the bus down and force a resubscribe.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::envelope::Envelope;
use super::redis::Redis;
use crate::gate::Gate;
use crate::metrics::Metrics;

/// Queued bytes past which senders are paused.
const HIGH_WATER: usize = 32 << 20;

/// Queued bytes below which paused senders go on.
const LOW_WATER: usize = 8 << 20;

/// Largest single published message; a batch for one node is split above it.
const MAX_MESSAGE: usize = 256 << 10;

/// Envelopes taken from the queue per pipeline.
const MAX_BATCH: usize = 4096;

/// How often a node probes its own subscription.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Probes that may go missing before the subscription counts as broken.
const PROBES_MISSED: u64 = 2;

/// The pub/sub channel of `node`.
pub fn channel(node: &str) -> String {
    format!("relay:n:{node}")
}

struct Outgoing {
    node: Arc<str>,
    env: Envelope,
    size: usize,
}

/// What receives the envelopes published to this node.
pub type Dispatch = Arc<dyn Fn(Envelope) + Send + Sync>;

/// What to do after the subscription came back (messages may have been lost).
pub type OnResubscribe = Arc<dyn Fn() + Send + Sync>;

/// This node's side of the bus.
pub struct Bus {
    node: Arc<str>,
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: AtomicUsize,
    waiting: Mutex<Vec<Arc<Gate>>>,
    /// Set when a publish failed: envelopes were lost and holders of frames
    /// must send them again.
    lost: AtomicBool,
    /// The subscription delivers (the last probes came back).
    listening: AtomicBool,
    probe_sent: AtomicU64,
    probe_seen: AtomicU64,
    resubscribe: Notify,
    metrics: Arc<Metrics>,
}

impl Bus {
    /// Starts the publisher, the subscriber and the probe of `node`.
    pub fn start(
        node: Arc<str>,
        redis: Arc<Redis>,
        metrics: Arc<Metrics>,
        dispatch: Dispatch,
        on_resubscribe: OnResubscribe,
    ) -> Arc<Self> {
        let (bus, rx) = Self::unstarted(node, metrics);
        actix::spawn(Arc::clone(&bus).publish_loop(Arc::clone(&redis), rx));
        actix::spawn(Arc::clone(&bus).subscribe_loop(Arc::clone(&redis), dispatch, on_resubscribe));
        actix::spawn(Arc::clone(&bus).probe_loop(redis));
        bus
    }

    /// A bus whose queue nothing reads yet.
    fn unstarted(
        node: Arc<str>,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = Arc::new(Bus {
            node,
            tx,
            queued: AtomicUsize::new(0),
            waiting: Mutex::new(Vec::new()),
            lost: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            probe_sent: AtomicU64::new(0),
            probe_seen: AtomicU64::new(0),
            resubscribe: Notify::new(),
            metrics,
        });
        (bus, rx)
    }

    /// A bus with no Redis behind it, for unit tests: what it would publish
    /// comes out of the receiver as (node, envelope).
    #[cfg(test)]
    pub fn detached(node: &str) -> (Arc<Self>, mpsc::UnboundedReceiver<(Arc<str>, Envelope)>) {
        let metrics = Arc::new(Metrics::new(node).expect("metrics"));
        let (bus, mut rx) = Self::unstarted(Arc::from(node), metrics);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            while let Some(o) = rx.blocking_recv() {
                if out_tx.send((o.node, o.env)).is_err() {
                    return;
                }
            }
        });
        (bus, out_rx)
    }

    /// Queues `env` for `node`. Returns false when the queue is over its
    /// high mark: the caller should pause (see [`Bus::hold`]).
    pub fn send(&self, node: &Arc<str>, env: Envelope) -> bool {
        let size = match &env {
            Envelope::Frame { frame, .. } => frame.len() + 48,
            _ => 64,
        };
        let queued = self.queued.fetch_add(size, Ordering::Relaxed) + size;
        self.metrics.bus_queued_bytes.set(queued as i64);
        if self
            .tx
            .send(Outgoing {
                node: Arc::clone(node),
                env,
                size,
            })
            .is_err()
        {
            self.queued.fetch_sub(size, Ordering::Relaxed);
        }
        queued <= HIGH_WATER
    }

    /// Closes `gate` until the queue drains below its low mark.
    pub fn hold(&self, gate: &Arc<Gate>) {
        gate.close();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(gate));
        // The publisher may have drained between the check and now.
        if self.queued.load(Ordering::Relaxed) < LOW_WATER {
            self.release();
        }
    }

    fn release(&self) {
        let gates = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        for g in gates {
            g.open();
        }
    }

    /// Whether a publish failed since the last call (and clears the flag).
    pub fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::Relaxed)
    }

    /// Whether the subscription is known to deliver.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    async fn publish_loop(
        self: Arc<Self>,
        redis: Arc<Redis>,
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut failed_batches: u64 = 0;
        loop {
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            let mut size = 0;
            // Group by node, keeping each node's envelopes in order.
            let mut per_node: Vec<(Arc<str>, Vec<BytesMut>)> = Vec::new();
            for out in batch.drain(..) {
                size += out.size;
                let msgs = match per_node.iter_mut().find(|(n, _)| *n == out.node) {
                    Some((_, m)) => m,
                    None => {
                        per_node.push((Arc::clone(&out.node), vec![BytesMut::new()]));
                        // unwrap-free: just pushed.
                        &mut per_node.last_mut().expect("just pushed").1
                    }
                };
                if msgs.last().is_some_and(|m| m.len() >= MAX_MESSAGE) {
                    msgs.push(BytesMut::new());
                }
                if let Some(m) = msgs.last_mut() {
                    out.env.encode(m);
                }
            }
            let mut pipe = redis::pipe();
            let mut count = 0u64;
            for (node, msgs) in per_node {
                let ch = channel(&node);
                for m in msgs {
                    pipe.cmd("PUBLISH").arg(&ch).arg(m.as_ref()).ignore();
                    count += 1;
                }
            }
            match redis.query::<()>("publish", &pipe).await {
                Ok(()) => {
                    self.metrics.pubsub_out.inc_by(count);
                    if failed_batches > 0 {
                        info!(failed_batches, "publishing again");
                        failed_batches = 0;
                    }
                }
                Err(e) => {
                    // One line per outage, not one per batch: an outage
                    // under load fails many batches a second (each is
                    // counted in relay_redis_errors_total).
                    if failed_batches == 0 {
                        warn!(error = %e, messages = count, "publish failed; holders will resend (further failures until it recovers are logged at debug)");
                    } else {
                        debug!(error = %e, messages = count, "publish failed");
                    }
                    failed_batches += 1;
                    self.lost.store(true, Ordering::Relaxed);
                }
            }
            let left = self.queued.fetch_sub(size, Ordering::Relaxed) - size;
            self.metrics.bus_queued_bytes.set(left as i64);
            if left < LOW_WATER {
                self.release();
            }
        }
    }

    async fn subscribe_loop(
        self: Arc<Self>,
        redis: Arc<Redis>,
        dispatch: Dispatch,
        on_resubscribe: OnResubscribe,
    ) {
        let ch = channel(&self.node);
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            let pubsub = async {
                let client = redis.client().await?;
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(&ch).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            let mut ps = match tokio::time::timeout(redis.timeout() * 2, pubsub).await {
                Ok(Ok(ps)) => ps,
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot subscribe; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(_) => {
                    warn!("subscribing timed out; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            info!(channel = %ch, "subscribed");
            if !first {
                // Whatever was published to us while we were away is lost.
                on_resubscribe();
            }
            first = false;
            let mut stream = ps.on_message();
            loop {
                tokio::select! {
                    msg = stream.next() => {
                        let Some(msg) = msg else { break };
                        self.metrics.pubsub_in.inc();
                        let payload: Bytes = Bytes::from(msg.get_payload_bytes().to_vec());
                        let (envs, bad) = Envelope::decode_all(payload);
                        if bad > 0 {
                            self.metrics.bus_malformed.inc_by(bad as u64);
                        }
                        for env in envs {
                            if let Envelope::Probe { nonce } = env {
                                self.probe_seen.fetch_max(nonce, Ordering::Relaxed);
                                self.listening.store(true, Ordering::Relaxed);
                            } else {
                                dispatch(env);
                            }
                        }
                    }
                    _ = self.resubscribe.notified() => break,
                }
            }
            self.listening.store(false, Ordering::Relaxed);
            warn!(channel = %ch, "subscription lost; resubscribing");
        }
    }

    async fn probe_loop(self: Arc<Self>, redis: Arc<Redis>) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tick.tick().await;
            if !redis.is_up() {
                // Nothing can be published; the subscription is redone when Redis is back.
                self.listening.store(false, Ordering::Relaxed);
                continue;
            }
            let nonce = self.probe_sent.fetch_add(1, Ordering::Relaxed) + 1;
            let me = Arc::clone(&self.node);
            self.send(&me, Envelope::Probe { nonce });
            let seen = self.probe_seen.load(Ordering::Relaxed);
            if nonce > seen + PROBES_MISSED {
                // Resubscribe when the probes stop, and again every few
                // seconds while they stay away.
                let was_listening = self.listening.swap(false, Ordering::Relaxed);
                if was_listening || (nonce - seen) % 5 == 0 {
                    self.metrics.probe_failures.inc();
                    warn!(
                        sent = nonce,
                        seen, "own probes are not coming back; resubscribing"
                    );
                    self.resubscribe.notify_one();
                }
            }
        }
    }
}
