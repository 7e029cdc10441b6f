//! The receiving half of the bus: the subscription to this node's channel,
//! which hands every envelope to the dispatcher, and the probe that proves
//! the subscription still delivers.
//!
//! Pub/sub can fail silently (after a failover a subscription may receive
//! nothing while publishes succeed), so the node publishes a probe to itself
//! every second; two missed probes mark the bus down and force a resubscribe.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{info, warn};

use super::{Bus, Dispatch, OnResubscribe, channel};
use crate::cluster::envelope::Envelope;
use crate::cluster::redis::Redis;

/// How often a node probes its own subscription.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Probes that may go missing before the subscription counts as broken.
const PROBES_MISSED: u64 = 2;

impl Bus {
    /// Subscribes to this node's channel and hands what arrives to
    /// `dispatch` (probes it takes itself), resubscribing when the
    /// subscription breaks or the probes stop coming back.
    pub(super) async fn subscribe_loop(
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
                        self.shared.metrics.pubsub_in.inc();
                        let payload: Bytes = Bytes::from(msg.get_payload_bytes().to_vec());
                        let (envs, bad) = Envelope::decode_all(payload);
                        if bad > 0 {
                            self.shared.metrics.bus_malformed.inc_by(bad as u64);
                        }
                        for env in envs {
                            if let Envelope::Probe { nonce } = env {
                                self.probe_seen.fetch_max(nonce, Ordering::Relaxed);
                                self.listening.store(true, Ordering::Relaxed);
                            } else if !self.loses(&env) {
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

    /// Every [`PROBE_EVERY`]: publishes a probe to this node's own channel
    /// and asks for a resubscribe when they stop coming back; forgets the
    /// links nobody uses any more.
    pub(super) async fn probe_loop(self: Arc<Self>, redis: Arc<Redis>) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tick.tick().await;
            self.forget_idle_links();
            if !redis.is_up() {
                // Nothing can be published; the subscription is redone when Redis is back.
                self.listening.store(false, Ordering::Relaxed);
                continue;
            }
            let nonce = self.probe_sent.fetch_add(1, Ordering::Relaxed) + 1;
            self.link(&self.node).probe(nonce);
            let seen = self.probe_seen.load(Ordering::Relaxed);
            if nonce > seen + PROBES_MISSED {
                // Resubscribe when the probes stop, and again every few
                // seconds while they stay away.
                let was_listening = self.listening.swap(false, Ordering::Relaxed);
                if was_listening || (nonce - seen) % 5 == 0 {
                    self.shared.metrics.probe_failures.inc();
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
