//! Node liveness: each node keeps a lease key in Redis alive; every node
//! checks the others' leases each second and reports the ones that lapsed, so
//! a node killed without draining is noticed within the lease time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::PREFIX;
use super::redis::Redis;
use crate::metrics::Metrics;

/// How often leases are checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What to do with a node whose lease lapsed.
pub type OnDead = Arc<dyn Fn(String) + Send + Sync>;

/// What to do when this node finds itself missing from the live set: other
/// nodes took it for dead (Redis was out longer than the lease, or a failover
/// lost its renewals) and marked its sides away.
pub type OnRejoined = Arc<dyn Fn() + Send + Sync>;

/// What the lease loop decides after renewing its own lease, from what it
/// has seen: kept apart from the Redis calls so the rules are tested alone.
#[derive(Debug)]
struct Watch {
    ttl: Duration,
    /// No renewal has succeeded yet.
    first: bool,
}

/// What to do after one renewal.
#[derive(Debug, PartialEq, Eq)]
struct AfterRenewal {
    /// Other nodes took this one for dead meanwhile: claim its sides back.
    rejoined: bool,
    /// Look for lapsed leases of the others.
    judge: bool,
}

impl Watch {
    fn new(ttl: Duration) -> Self {
        Watch { ttl, first: true }
    }

    /// This node renewed its lease; `added` when that put it back in the
    /// live set, `connected_for` how long Redis has been reachable.
    fn renewed(&mut self, added: bool, connected_for: Duration) -> AfterRenewal {
        // The first renewal of a life adds the node as a matter of course.
        let rejoined = added && !self.first;
        self.first = false;
        AfterRenewal {
            rejoined,
            // After an outage every node's lease may have lapsed at once:
            // judge nobody until the others had a whole lease to renew.
            judge: connected_for >= self.ttl + CHECK_EVERY,
        }
    }
}

/// Keeps this node's lease and watches the others'. `on_dead` is called for
/// each lapsed node (every live node may see it; the registry's script makes
/// sure only one cleans up).
///
/// After a Redis outage or failover every node's lease may have lapsed at
/// once; so no node judges others until it has itself been connected for a
/// whole lease (time for them to renew too).
pub fn start(
    node: Arc<str>,
    ttl: Duration,
    redis: Arc<Redis>,
    metrics: Arc<Metrics>,
    on_dead: OnDead,
    on_rejoined: OnRejoined,
) -> Lease {
    let (stop, mut stopping) = watch::channel(false);
    let (done_tx, done) = oneshot::channel();
    let key = format!("{PREFIX}lease:{node}");
    let handle = Lease {
        stop,
        done,
        key: key.clone(),
        redis: Arc::clone(&redis),
    };
    actix::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY.min(ttl / 3));
        let lease = key;
        let nodes = format!("{PREFIX}nodes");
        let mut watch = Watch::new(ttl);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // Only a give-up stops it: a handle merely dropped does not.
                Ok(()) = stopping.changed() => break,
            }
            let mut renew = ::redis::pipe();
            renew
                .cmd("SET")
                .arg(&lease)
                .arg(1)
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .ignore()
                .cmd("SADD")
                .arg(&nodes)
                .arg(&*node);
            let added: (i64,) = match redis.query("lease", &renew).await {
                Ok(a) => a,
                Err(_) => {
                    metrics.lease_failures.inc();
                    continue;
                }
            };
            let next = watch.renewed(added.0 == 1, redis.connected_for());
            if next.rejoined {
                warn!("this node had been taken for dead; reclaiming its sessions");
                on_rejoined();
            }
            if !next.judge {
                continue;
            }
            let members: Vec<String> = match redis
                .query("nodes", ::redis::cmd("SMEMBERS").arg(&nodes))
                .await
            {
                Ok(m) => m,
                Err(_) => continue,
            };
            let mut check = ::redis::pipe();
            for m in &members {
                check.cmd("EXISTS").arg(format!("{PREFIX}lease:{m}"));
            }
            let alive: Vec<bool> = match redis.query("nodes", &check).await {
                Ok(a) => a,
                Err(_) => continue,
            };
            metrics
                .nodes_live
                .set(alive.iter().filter(|a| **a).count() as i64);
            for (m, live) in members.into_iter().zip(alive) {
                if !live && *m != *node {
                    warn!(node = %m, "node lease lapsed");
                    on_dead(m);
                }
            }
        }
        let _ = done_tx.send(());
    });
    handle
}

/// This node's lease, held until the node leaves.
pub struct Lease {
    stop: watch::Sender<bool>,
    done: oneshot::Receiver<()>,
    key: String,
    redis: Arc<Redis>,
}

impl Lease {
    /// Stops renewing the lease and deletes it, for a node that drained and
    /// is about to exit. Until it lapsed by itself (up to a lease later),
    /// the others would still take the node for alive: every resume of a
    /// side it held would wait for a handover it can no longer give. With
    /// it gone they wait for nothing, and the next check reaps whatever the
    /// node left in Redis, as for a node that died.
    pub async fn give_up(self) {
        let _ = self.stop.send(true);
        // A renewal under way finishes first, so it cannot set the key
        // again after the delete; it is bounded by the Redis timeout.
        let _ = tokio::time::timeout(self.redis.timeout() * 2, self.done).await;
        let del = ::redis::cmd("DEL").arg(&self.key).clone();
        match self.redis.query::<i64>("lease", &del).await {
            Ok(_) => info!("lease given up"),
            Err(e) => warn!(error = %e, "could not give up the lease; it lapses by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn a_node_rejoins_only_when_added_back_after_its_first_renewal() {
        let mut w = Watch::new(TTL);
        assert!(!w.renewed(true, Duration::ZERO).rejoined, "first life");
        assert!(!w.renewed(false, TTL).rejoined, "still in the set");
        assert!(w.renewed(true, TTL).rejoined, "others removed it");
    }

    #[test]
    fn nobody_is_judged_until_redis_was_up_a_whole_lease_and_a_check() {
        let mut w = Watch::new(TTL);
        assert!(!w.renewed(true, Duration::ZERO).judge);
        assert!(
            !w.renewed(false, TTL + CHECK_EVERY - Duration::from_millis(1))
                .judge
        );
        assert!(w.renewed(false, TTL + CHECK_EVERY).judge);
        // After an outage (connected_for back to zero), not again for a while.
        assert!(!w.renewed(false, Duration::from_millis(500)).judge);
    }

    /// The loop itself against a real redis-server, in real time with a
    /// one-second lease (a paused clock cannot move Redis's expiries): a
    /// node listed as live with no lease is reported dead once this node
    /// was up a whole lease, and this node, removed from the live set by
    /// others, claims its sides back.
    #[actix::test]
    async fn the_loop_reports_lapsed_nodes_and_reclaims_when_taken_for_dead() {
        use std::sync::Mutex;

        use crate::cluster::store::testing::TestRedis;

        let redis = TestRedis::start().await;
        let nodes = format!("{PREFIX}nodes");
        let _: i64 = redis
            .cmd(::redis::cmd("SADD").arg(&nodes).arg("gone"))
            .await;
        let dead = Arc::new(Mutex::new(Vec::new()));
        let rejoined = Arc::new(Mutex::new(0));
        let (d, r) = (Arc::clone(&dead), Arc::clone(&rejoined));
        start(
            Arc::from("me"),
            Duration::from_secs(1),
            redis.redis(),
            Arc::new(Metrics::new("lease-test").expect("metrics")),
            Arc::new(move |n| d.lock().expect("lock").push(n)),
            Arc::new(move || *r.lock().expect("lock") += 1),
        );
        let wait = |what: &'static str, done: Box<dyn Fn() -> bool>| async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what} never happened"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let d = Arc::clone(&dead);
        wait(
            "gone reported dead",
            Box::new(move || d.lock().expect("lock").contains(&"gone".to_owned())),
        )
        .await;
        assert!(!dead.lock().expect("lock").contains(&"me".to_owned()));
        assert_eq!(*rejoined.lock().expect("lock"), 0);
        // Another node took this one for dead and removed it.
        let _: i64 = redis.cmd(::redis::cmd("SREM").arg(&nodes).arg("me")).await;
        let r = Arc::clone(&rejoined);
        wait("reclaimed", Box::new(move || *r.lock().expect("lock") == 1)).await;
    }
}
