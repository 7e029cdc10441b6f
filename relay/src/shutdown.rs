//! Graceful drain on SIGTERM/SIGINT: refuse new sessions (`/readyz` 503),
//! close clients with `SHUTTING_DOWN`/1012 in batches spread over half the
//! drain timeout so they do not all reconnect in the same second, and return
//! once every socket is gone or the drain timeout passes.

use std::collections::HashSet;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{info, warn};

use crate::conns::{ConnCommand, ConnId};
use crate::server::AppState;

/// Shortest gap between two drain batches; fewer, larger batches beyond it.
const MIN_BATCH_GAP: Duration = Duration::from_millis(100);

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

/// Drains the node; returns when no WebSocket is left or the drain timeout passed.
/// A second signal cuts the drain short.
pub async fn drain(state: &AppState) {
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    state.metrics.draining.set(1);
    let timeout = state.config.drain_timeout;
    let deadline = Instant::now() + timeout;
    let mut ids = state.conns.ids();
    ids.shuffle(&mut rand::rng());
    let total = ids.len();
    info!(connections = total, timeout = %humantime::format_duration(timeout), "drain started");

    let spread = timeout / 2;
    let batches = total.clamp(
        1,
        (spread.as_millis() / MIN_BATCH_GAP.as_millis()).max(1) as usize,
    );
    let per_batch = total.div_ceil(batches).max(1);
    let gap = spread / batches as u32;

    let closing = async {
        // Each socket is told once: it acts on the first telling as soon as
        // it runs, and a second one queued behind it (a socket busy waiting
        // on the registry) would send a second SHUTTING_DOWN after the close
        // and count it twice.
        let mut told: HashSet<ConnId> = HashSet::with_capacity(ids.len());
        for chunk in ids.chunks(per_batch) {
            state.conns.command(chunk, ConnCommand::Drain);
            told.extend(chunk);
            sleep(gap).await;
        }
        // Stragglers (connections that arrived during the drain close
        // themselves; this catches any that did not).
        while !state.conns.is_empty() {
            let new: Vec<ConnId> = state
                .conns
                .ids()
                .into_iter()
                .filter(|id| told.insert(*id))
                .collect();
            state.conns.command(&new, ConnCommand::Drain);
            sleep(MIN_BATCH_GAP).await;
        }
    };
    let gone = async {
        while !state.conns.is_empty() {
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
        _ = sleep_until(deadline) => warn!(left = state.conns.len(), "drain timeout; stopping anyway"),
        _ = again => warn!(left = state.conns.len(), "second signal; stopping now"),
    }
}
