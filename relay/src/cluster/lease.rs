//! Node liveness: each node keeps a lease key in Redis alive; every node
//! checks the others' leases each second and reports the ones that lapsed, so
//! a node killed without draining is noticed within the lease time.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

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
) {
    actix::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY.min(ttl / 3));
        let lease = format!("{PREFIX}lease:{node}");
        let nodes = format!("{PREFIX}nodes");
        let mut first = true;
        loop {
            tick.tick().await;
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
            if added.0 == 1 && !first {
                warn!("this node had been taken for dead; reclaiming its sessions");
                on_rejoined();
            }
            first = false;
            if redis.connected_for() < ttl + CHECK_EVERY {
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
    });
}
