//! Graceful drain on SIGTERM/SIGINT: refuse new sessions (`/readyz` 503),
//! close clients with `SHUTTING_DOWN`/1012 in batches of at most 100 every
//! 100 ms (so a small node closes them all at once, and a large one sends
//! them to the other nodes at a steady rate rather than in the same second),
//! and return once every socket is gone or the drain timeout passes. It never
//! touches session state: each socket closes itself when told.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{info, warn};

use crate::conns::{ConnCommand, ConnId, Connections};
use crate::metrics::Metrics;

/// Whether the node is draining: set once by [`drain`], read by every socket
/// (a new session is refused) and by `/readyz`.
#[derive(Debug, Default)]
pub struct Draining(AtomicBool);

impl Draining {
    /// Whether the drain has begun.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Most connections closed together in one drain batch. One batch every
/// [`BATCH_GAP`] sends 1,000 reconnects a second to the other nodes, about a
/// tenth of what one node can set up (BENCHMARKS.md: 5,500 pairs, so 11,000
/// connections, a second on two cores), so a drain never floods them; and 100
/// clients reconnecting together is no burst at all, so a node holding up to
/// this many closes them all at once instead of making them wait.
const BATCH_SIZE: usize = 100;

/// Time between two drain batches: ten a second reads as a steady stream of
/// reconnects on the other nodes, not steps, and costs the draining node
/// nothing. Also how often the drain looks for connections that slipped in.
const BATCH_GAP: Duration = Duration::from_millis(100);

/// How a drain closes its connections: `batches` batches of at most
/// `batch_size`, the first at once, then one every `gap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DrainPlan {
    /// Connections told in each batch (the last may have fewer).
    batch_size: usize,
    /// Number of batches; 0 when there is nothing to close.
    batches: usize,
    /// Time between two batches.
    gap: Duration,
}

impl DrainPlan {
    /// Time from the first batch to the last.
    fn spread(&self) -> Duration {
        let gaps = u32::try_from(self.batches.saturating_sub(1)).unwrap_or(u32::MAX);
        self.gap.saturating_mul(gaps)
    }
}

/// Plans the closing of `connections` within a drain of `timeout`.
///
/// [`BATCH_SIZE`] every [`BATCH_GAP`], so the spread grows with the count
/// (a node of up to one batch closes everything at once); but never longer
/// than half the timeout, which leaves the other half for the last clients
/// to close and go: a node too large for that gets larger batches instead.
fn plan(connections: usize, timeout: Duration) -> DrainPlan {
    // Batches that fit in half the timeout: the first at 0, then one a gap.
    let fit = usize::try_from((timeout / 2).as_nanos() / BATCH_GAP.as_nanos())
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let batches = connections.div_ceil(BATCH_SIZE).min(fit).max(1);
    let batch_size = connections.div_ceil(batches).max(1);
    DrainPlan {
        batch_size,
        // Recounted: rounding the size up can leave fewer, never more.
        batches: connections.div_ceil(batch_size),
        gap: BATCH_GAP,
    }
}

/// Waits for SIGTERM or SIGINT.
///
/// # Errors
/// When a signal handler cannot be installed.
pub async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "draining"),
        _ = int.recv() => info!(signal = "SIGINT", "draining (Ctrl-C again to stop at once)"),
    }
    Ok(())
}

/// Drains the node within `timeout`: tells every connection in `conns` to
/// go; returns when none is left or the timeout passed. A second signal cuts
/// the drain short.
pub async fn drain(draining: &Draining, conns: &Connections, metrics: &Metrics, timeout: Duration) {
    draining.0.store(true, Ordering::Relaxed);
    metrics.draining.set(1);
    let deadline = Instant::now() + timeout;
    let mut ids = conns.ids();
    ids.shuffle(&mut rand::rng());
    let plan = plan(ids.len(), timeout);
    info!(
        connections = ids.len(),
        batches = plan.batches,
        batch_size = plan.batch_size,
        spread = %humantime::format_duration(plan.spread()),
        timeout = %humantime::format_duration(timeout),
        "drain started"
    );

    let closing = async {
        // Each socket is told once: it acts on the first telling as soon as
        // it runs, and a second one queued behind it (a socket busy waiting
        // on the registry) would send a second SHUTTING_DOWN after the close
        // and count it twice.
        let mut told: HashSet<ConnId> = HashSet::with_capacity(ids.len());
        for (i, batch) in ids.chunks(plan.batch_size).enumerate() {
            if i > 0 {
                sleep(plan.gap).await;
            }
            conns.command(batch, ConnCommand::Drain);
            told.extend(batch);
        }
        // Stragglers (connections that arrived during the drain close
        // themselves; this catches any that did not).
        while !conns.is_empty() {
            let new: Vec<ConnId> = conns
                .ids()
                .into_iter()
                .filter(|id| told.insert(*id))
                .collect();
            conns.command(&new, ConnCommand::Drain);
            sleep(BATCH_GAP).await;
        }
    };
    let gone = async {
        while !conns.settled() {
            sleep(Duration::from_millis(20)).await;
        }
    };
    let again = async {
        // If a handler cannot be installed, fall back to the timeout alone.
        match wait_for_signal().await {
            Ok(()) => {}
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = async { tokio::join!(closing, gone) } => info!("drained"),
        _ = sleep_until(deadline) => warn!(left = conns.len(), "drain timeout; stopping anyway"),
        _ = again => warn!(left = conns.len(), "second signal; stopping now"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// What every plan must hold, whatever the count and timeout.
    fn check(n: usize, timeout: Duration) -> DrainPlan {
        let p = plan(n, timeout);
        let why = format!("{n} connections in {timeout:?}: {p:?}");
        assert!(
            p.spread() <= timeout / 2,
            "spread past half the timeout: {why}"
        );
        assert!(p.gap >= BATCH_GAP, "gap under the minimum: {why}");
        assert!(p.batch_size >= 1, "empty batches: {why}");
        // Everyone is told, and no batch is empty.
        assert!(
            p.batches.saturating_mul(p.batch_size) >= n,
            "someone left out: {why}"
        );
        assert!(
            p.batches == 0 || (p.batches - 1) * p.batch_size < n,
            "an empty batch: {why}"
        );
        // What `drain` actually sends.
        let ids: Vec<usize> = (0..n.min(200_000)).collect();
        if ids.len() == n {
            assert_eq!(ids.chunks(p.batch_size).count(), p.batches, "{why}");
        }
        p
    }

    #[test]
    fn a_node_of_up_to_one_batch_closes_everything_at_once() {
        for n in [1, 2, 7, BATCH_SIZE] {
            let p = check(n, DEFAULT_TIMEOUT);
            assert_eq!(p.batches, 1, "{n}: {p:?}");
            assert_eq!(p.spread(), Duration::ZERO, "{n}: {p:?}");
        }
    }

    #[test]
    fn nothing_to_close_is_no_batch() {
        let p = check(0, DEFAULT_TIMEOUT);
        assert_eq!((p.batches, p.spread()), (0, Duration::ZERO));
    }

    #[test]
    fn more_than_a_batch_goes_at_the_target_rate() {
        let p = check(BATCH_SIZE + 1, DEFAULT_TIMEOUT);
        assert_eq!(p.batches, 2);
        assert_eq!(p.spread(), BATCH_GAP);
        // 10,000 (what a pod is sized for): 100 batches of 100, 9.9 s.
        let p = check(10_000, DEFAULT_TIMEOUT);
        assert_eq!((p.batches, p.batch_size), (100, BATCH_SIZE));
        assert_eq!(p.spread(), Duration::from_millis(9_900));
    }

    #[test]
    fn a_node_too_large_for_half_the_timeout_sends_larger_batches() {
        // At 100 a batch, 100,000 would take 100 s; 15 s is the most.
        let p = check(100_000, DEFAULT_TIMEOUT);
        assert!(p.batch_size > BATCH_SIZE, "{p:?}");
        assert_eq!(p.spread(), DEFAULT_TIMEOUT / 2, "{p:?}");
        assert_eq!(p.batches, 151, "{p:?}");
    }

    #[test]
    fn a_timeout_too_short_for_two_batches_closes_everything_at_once() {
        for timeout in [
            Duration::ZERO,
            Duration::from_millis(1),
            BATCH_GAP,
            BATCH_GAP * 2 - Duration::from_nanos(1),
        ] {
            for n in [1, 2, BATCH_SIZE + 1, 100_000] {
                let p = check(n, timeout);
                assert_eq!((p.batches, p.batch_size), (1, n), "{n} in {timeout:?}");
            }
        }
    }

    #[test]
    fn a_huge_timeout_keeps_the_rate_and_does_not_overflow() {
        for timeout in [Duration::from_secs(86_400), Duration::MAX] {
            let p = check(100_000, timeout);
            assert_eq!(
                (p.batches, p.batch_size),
                (1_000, BATCH_SIZE),
                "{timeout:?}"
            );
            check(usize::MAX, timeout);
        }
        assert_eq!(plan(usize::MAX, Duration::MAX).batch_size, BATCH_SIZE);
    }

    #[test]
    fn every_count_and_timeout_keeps_the_bounds() {
        let counts = [
            0, 1, 2, 3, 99, 100, 101, 199, 200, 201, 999, 1_000, 1_001, 10_000, 10_001, 99_999,
            100_000, 1_000_003,
        ];
        let timeouts = [
            0, 1, 150, 199, 200, 250, 1_000, 6_000, 30_000, 60_000, 3_600_000,
        ];
        for n in counts {
            for ms in timeouts {
                let timeout = Duration::from_millis(ms);
                let p = check(n, timeout);
                // The target rate holds whenever it fits in half the timeout.
                let gaps_at_rate = n.div_ceil(BATCH_SIZE).max(1) as u128 - 1;
                if gaps_at_rate * BATCH_GAP.as_nanos() <= (timeout / 2).as_nanos() {
                    assert!(p.batch_size <= BATCH_SIZE, "{n} in {timeout:?}: {p:?}");
                }
            }
        }
    }
}
