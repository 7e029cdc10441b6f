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
//! Everything this node sends to another goes through the [`Link`] to that
//! node (`link`): one bounded queue per node, with a stated policy for each
//! kind of envelope when it is full and every drop counted by reason. The
//! publisher (`publish`) empties the links into pipelines; the subscriber
//! and the probe (`subscribe`) receive. This module holds the links, and
//! never sends anything itself.

pub mod link;
mod publish;
mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

pub use self::link::Link;
use self::link::Shared;
use super::envelope::Envelope;
use super::redis::Redis;
use crate::metrics::Metrics;

/// The pub/sub channel of `node`.
pub fn channel(node: &str) -> String {
    format!("relay:n:{node}")
}

/// What receives the envelopes published to this node.
pub type Dispatch = Arc<dyn Fn(Envelope) + Send + Sync>;

/// What to do after the subscription came back (messages may have been lost).
pub type OnResubscribe = Arc<dyn Fn() + Send + Sync>;

/// This node's side of the bus.
pub struct Bus {
    // Fixed after construction.
    node: Arc<str>,
    /// The metrics and the publisher's wake-up, shared with every link.
    shared: Arc<Shared>,
    // Guarded by the lock.
    /// The link to each node this node has sent to lately (its own included,
    /// for its probes); forgotten once idle and held by nobody.
    links: Mutex<HashMap<Arc<str>, Arc<Link>>>,
    // Shared atomics, owned by the subscriber and the probe.
    /// The subscription delivers (the last probes came back).
    listening: AtomicBool,
    probe_sent: AtomicU64,
    probe_seen: AtomicU64,
    resubscribe: Notify,
    /// Tests: control messages that arrive are dropped, as if lost on the
    /// way (see [`Bus::lose_controls`]).
    #[cfg(test)]
    losing_controls: AtomicBool,
    /// Tests: the control messages dropped so far, in order (what a test
    /// waits for before making the node hear again).
    #[cfg(test)]
    lost: Mutex<Vec<super::envelope::Control>>,
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
        let bus = Self::unstarted(node, metrics);
        actix::spawn(publish::run(Arc::clone(&bus), Arc::clone(&redis)));
        actix::spawn(Arc::clone(&bus).subscribe_loop(Arc::clone(&redis), dispatch, on_resubscribe));
        actix::spawn(Arc::clone(&bus).probe_loop(redis));
        bus
    }

    /// A bus whose links nothing empties yet.
    fn unstarted(node: Arc<str>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Bus {
            node,
            shared: Arc::new(Shared::new(metrics)),
            links: Mutex::new(HashMap::new()),
            listening: AtomicBool::new(false),
            probe_sent: AtomicU64::new(0),
            probe_seen: AtomicU64::new(0),
            resubscribe: Notify::new(),
            #[cfg(test)]
            losing_controls: AtomicBool::new(false),
            #[cfg(test)]
            lost: Mutex::new(Vec::new()),
        })
    }

    fn lock_links(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Link>>> {
        // A map of Arcs is consistent whenever a panic could strike.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link to `node`: what pipes and the registry hand everything for
    /// that node to.
    pub fn link(&self, node: &Arc<str>) -> Arc<Link> {
        let mut links = self.lock_links();
        let link = links
            .entry(Arc::clone(node))
            .or_insert_with(|| Arc::new(Link::new(Arc::clone(node), Arc::clone(&self.shared))));
        Arc::clone(link)
    }

    /// Every link, for the publisher.
    fn links(&self) -> Vec<Arc<Link>> {
        self.lock_links().values().cloned().collect()
    }

    /// Forgets the links held by nobody else with nothing left in them, so
    /// the nodes of past deploys do not pile up. Under the map's lock, so
    /// nobody can take a forgotten link meanwhile.
    fn forget_idle_links(&self) {
        self.lock_links()
            .retain(|_, l| Arc::strong_count(l) > 1 || !l.is_idle());
    }

    /// The nodes to which envelopes were lost since the last call (a failed
    /// publish, or replayed frames dropped by a full link) and whose links
    /// have room again: whoever holds frames for them must send them again.
    pub fn take_lost(&self) -> Vec<Arc<str>> {
        self.links()
            .into_iter()
            .filter(|l| l.take_lost())
            .map(|l| Arc::clone(l.node()))
            .collect()
    }

    /// Whether the subscription is known to deliver.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// A bus with no Redis behind it, for unit tests: [`Detached::publish`]
    /// does what the publisher would, and returns what each node would get.
    #[cfg(test)]
    pub fn detached(node: &str) -> (Arc<Self>, Detached) {
        let metrics = Arc::new(Metrics::new(node).expect("metrics"));
        let bus = Self::unstarted(Arc::from(node), metrics);
        (Arc::clone(&bus), Detached { bus, start: 0 })
    }

    /// Tests: while `lose` holds, every control message that arrives is
    /// dropped before the registry sees it (frames still go through), as
    /// when pub/sub loses a message.
    #[cfg(test)]
    pub fn lose_controls(&self, lose: bool) {
        self.losing_controls.store(lose, Ordering::Relaxed);
    }

    /// Whether `env`, arrived, is to be dropped (see [`Bus::lose_controls`]).
    fn loses(&self, env: &Envelope) -> bool {
        #[cfg(test)]
        if self.losing_controls.load(Ordering::Relaxed) {
            let Envelope::Control(c) = env else {
                return false;
            };
            self.lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(c.clone());
            return true;
        }
        let _ = env;
        false
    }

    /// Tests: the control messages dropped so far (see [`Bus::lose_controls`]).
    #[cfg(test)]
    pub fn lost_controls(&self) -> Vec<super::envelope::Control> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The metrics this bus counts in.
    #[cfg(test)]
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

/// The publishing end of a detached bus (see [`Bus::detached`]).
#[cfg(test)]
pub struct Detached {
    bus: Arc<Bus>,
    start: usize,
}

#[cfg(test)]
impl Detached {
    /// Publishes one batch as the publisher would (coalesced, packed into
    /// messages), and returns what each node would receive, decoded, in
    /// order per node.
    pub fn publish(&mut self) -> Vec<(Arc<str>, Envelope)> {
        let mut out = Vec::new();
        for mut part in self.bus.take_batch(&mut self.start) {
            publish::coalesce(&mut part.items);
            for m in publish::pack(&part.items) {
                let (envs, bad) = Envelope::decode_all(m.freeze());
                assert_eq!(bad, 0, "the bus published something unreadable");
                out.extend(envs.into_iter().map(|e| (Arc::clone(part.link.node()), e)));
            }
            part.link.published(part.bytes, part.items.len(), true);
        }
        out
    }

    /// Publishes one batch, without the nodes.
    pub fn envelopes(&mut self) -> Vec<Envelope> {
        self.publish().into_iter().map(|(_, e)| e).collect()
    }
}
