//! Test support: a node's cluster registry on a real Redis, started and
//! waited for, the one way every in-process cluster test starts one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::ClusterRegistry;
use crate::cluster::bus::Bus;
use crate::cluster::lease::Lease;
use crate::cluster::store::testing::TestRedis;
use crate::metrics::Metrics;
use crate::registry::RegistrySettings;

/// Longest wait for a node's subscription to deliver.
const READY_WAIT: Duration = Duration::from_secs(10);

/// Starts the registry of `node` with a lease of `ttl` (kept, to give it
/// up) and waits until its subscription delivers.
pub(crate) async fn start_node_full(
    r: &TestRedis,
    node: &str,
    settings: RegistrySettings,
    ttl: Duration,
) -> (Addr<ClusterRegistry>, Arc<Bus>, Lease) {
    let metrics = Arc::new(Metrics::new(node).unwrap());
    let (addr, bus, lease) =
        ClusterRegistry::start(settings, metrics, Arc::from(node), r.redis(), ttl);
    let until = Instant::now() + READY_WAIT;
    while !bus.is_listening() {
        assert!(
            Instant::now() < until,
            "{node}'s subscription never delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (addr, bus, lease)
}
