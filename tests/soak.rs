//! Soak: relays under steady load plus churn for a long time, sampling each
//! relay process's resident memory and open file descriptors, to catch what
//! grows without bound: memory kept per ended session, sockets never closed.
//!
//! Two deployments run side by side, because they keep sessions in different
//! code: one node with the in-memory registry, and a two-node cluster on
//! Redis (cross-node pipes, the bus, leases). Each has a few pairs sending
//! steadily both ways, and churn workers that pair, exchange, resume (a
//! deliberate reconnect of either side), leave in every order, and register
//! codes no browser joins, over and over.
//!
//! The bounds, per relay process:
//! - **Memory**: after a warm-up (a sixth of the run, 8 s to 10 min: long
//!   enough for what is remembered for 10 minutes, ended sides and expired
//!   codes, to reach its plateau in a long run), the median RSS of the last
//!   fifth of the samples may exceed the median of the first fifth by at most
//!   `max(16 MiB, 25 %)`. Medians of windows, not single samples, so an
//!   allocator's momentary peak on a noisy machine does not decide.
//! - **File descriptors**: with churn paused and settled, the count at the
//!   end may exceed the count at the end of the warm-up (same conditions)
//!   by at most 4.
//!
//! The steady pairs must also lose, duplicate and reorder nothing. Nothing
//! is timed. `RELAY_SOAK_DURATION` (humantime, default 40s) is the whole
//! run; `make soak` runs it for an hour in release mode, and `--nocapture`
//! prints the series.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relay_protocol::client::{Client, SendError};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;

use crate::support::cluster::{Cluster, Node};
use crate::support::duration_from_env;
use crate::support::traffic::{
    Side, config, frame, lock, pump_both, start_browser_with, start_mac_with, wait_log,
};

/// Pairs per deployment that send all the time.
const STEADY_PAIRS: usize = 3;

/// Frames a second each side of a steady pair sends.
const STEADY_RATE: u64 = 20;

/// Churn workers per deployment, each running one session after another.
const CHURN_WORKERS: usize = 2;

/// Frames each way per exchange of a churn session.
const CHURN_FRAMES: u64 = 20;

/// A churn worker's pause between sessions: steady churn that leaves the
/// two shared cores to the other tests of `make test`.
const CHURN_PAUSE: Duration = Duration::from_millis(100);

/// Memory bound: the last window's median RSS over the first window's.
const RSS_SLACK_BYTES: u64 = 16 << 20;
const RSS_SLACK_PERCENT: u64 = 25;

/// File descriptors the settled count may grow by (a lazily opened file or
/// connection of the runtime, not one per session).
const FD_SLACK: usize = 4;

/// One sample of one process.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    rss: u64,
    fds: usize,
}

/// One churn session after another until `quit`; each holds `gate` for
/// reading, so whoever takes it for writing waits until the sessions in
/// flight are over and holds new ones back. Counts sessions in `rounds`.
async fn churn(
    urls: (String, String),
    worker: usize,
    gate: Arc<RwLock<()>>,
    quit: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
) {
    let pair = 1000 + worker;
    for round in 0.. {
        let _running = gate.read().await;
        if quit.load(Ordering::Relaxed) {
            return;
        }
        let (mac, code) = start_mac_with(config(&urls.0), pair).await;
        if round % 4 == 3 {
            // A code no browser ever joins.
            leave(&mac, "churn mac").await;
        } else {
            let browser = start_browser_with(config(&urls.1), pair, &code).await;
            wait_log(&mac.log, "churn: peer_joined", |l| l.paired).await;
            exchange(&mac, &browser, pair).await;
            match round % 4 {
                0 => {
                    leave(&browser, "churn browser").await;
                    wait_log(&mac.log, "churn: peer_left", |l| !l.notes.is_empty()).await;
                    leave(&mac, "churn mac").await;
                }
                1 => {
                    browser.client.reconnect().await;
                    exchange(&mac, &browser, pair).await;
                    leave(&mac, "churn mac").await;
                    wait_log(&browser.log, "churn: MAC_DISCONNECTED", |l| {
                        l.ended.is_some()
                    })
                    .await;
                }
                _ => {
                    mac.client.reconnect().await;
                    exchange(&mac, &browser, pair).await;
                    leave(&browser, "churn browser").await;
                    leave(&mac, "churn mac").await;
                }
            }
            let _ = browser.listener.await;
        }
        let _ = mac.listener.await;
        rounds.fetch_add(1, Ordering::Relaxed);
        drop(_running);
        tokio::time::sleep(CHURN_PAUSE).await;
    }
}

/// Both sides send [`CHURN_FRAMES`] more and wait until they have every
/// frame of the other, checked for order and duplicates.
async fn exchange(mac: &Side, browser: &Side, pair: usize) {
    for (s, is_mac) in [(mac, true), (browser, false)] {
        let from = lock(&s.log).sent + 1;
        for seq in from..from + CHURN_FRAMES {
            send(&s.client, frame(pair, is_mac, seq)).await;
            lock(&s.log).sent = seq;
        }
    }
    for (s, peer) in [(mac, browser), (browser, mac)] {
        let want = lock(&peer.log).sent;
        wait_log(&s.log, "churn: frames", |l| l.from_peer.distinct >= want).await;
        let l = lock(&s.log);
        assert_eq!(
            (
                l.from_peer.dup,
                l.from_peer.reordered,
                l.from_peer.misrouted
            ),
            (0, 0, 0),
            "churn: (duplicated, reordered, misrouted)"
        );
    }
}

/// Sends one frame, waiting while the client's queue is full.
async fn send(c: &Client, f: bytes::Bytes) {
    loop {
        match c.send_binary(f.clone()).await {
            Ok(()) => return,
            Err(SendError::Full(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("churn: send: {e}"),
        }
    }
}

/// Ends a side for good and waits until its session says so.
async fn leave(s: &Side, who: &str) {
    s.client.leave().await;
    wait_log(&s.log, &format!("{who}: left"), |l| l.ended.is_some()).await;
}

/// A steady pair, sending until `stop`.
struct Steady {
    mac: Side,
    browser: Side,
    pumps: Vec<JoinHandle<()>>,
}

async fn steady(mac_url: &str, browser_url: &str, pair: usize, stop: &Arc<AtomicBool>) -> Steady {
    let (mac, code) = start_mac_with(config(mac_url), pair).await;
    let browser = start_browser_with(config(browser_url), pair, &code).await;
    wait_log(&mac.log, "steady: peer_joined", |l| l.paired).await;
    let pumps = pump_both(&mac, &browser, pair, STEADY_RATE, stop);
    Steady {
        mac,
        browser,
        pumps,
    }
}

/// Samples every process in `procs`.
fn sample(procs: &[(&str, &Node)], t0: Instant) -> Vec<Sample> {
    procs
        .iter()
        .map(|(_, n)| Sample {
            at: t0.elapsed(),
            rss: n.rss_bytes(),
            fds: n.open_fds(),
        })
        .collect()
}

/// With churn held back, waits (bounded) until every process's fd count
/// stays the same for a second (closing connections finish closing), and
/// returns the counts.
async fn settled_fds(procs: &[(&str, &Node)]) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last: Vec<usize> = procs.iter().map(|(_, n)| n.open_fds()).collect();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now: Vec<usize> = procs.iter().map(|(_, n)| n.open_fds()).collect();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_memory_and_fds_stay_bounded() {
    let duration = duration_from_env("RELAY_SOAK_DURATION", Duration::from_secs(40));
    let warmup = (duration / 6).clamp(Duration::from_secs(8), Duration::from_secs(600));
    let every = (duration / 150).clamp(Duration::from_secs(1), Duration::from_secs(20));
    let single = Node::start("soak-single", &[]);
    let cluster = Cluster::start(2, &[]);
    let procs: Vec<(&str, &Node)> = vec![
        ("single", &single),
        ("node-1", cluster.node(1)),
        ("node-2", cluster.node(2)),
    ];
    let (s, n1, n2) = (
        single.url(""),
        cluster.node(1).url(""),
        cluster.node(2).url(""),
    );

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Steady pairs: three on the single node; on the cluster two across the
    // nodes (one each way) and one on a node.
    let mut pairs = Vec::new();
    for i in 0..STEADY_PAIRS {
        pairs.push(steady(&s, &s, i, &stop).await);
    }
    for (i, (m, b)) in [(&n1, &n2), (&n2, &n1), (&n2, &n2)].into_iter().enumerate() {
        pairs.push(steady(m, b, 10 + i, &stop).await);
    }
    // Churn: on the single node, and across the cluster both ways.
    let gate = Arc::new(RwLock::new(()));
    let quit = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..CHURN_WORKERS {
        let cross = if w % 2 == 0 {
            (n1.clone(), n2.clone())
        } else {
            (n2.clone(), n1.clone())
        };
        for (k, urls) in [(s.clone(), s.clone()), cross].into_iter().enumerate() {
            workers.push(tokio::spawn(churn(
                urls,
                w * 2 + k,
                Arc::clone(&gate),
                Arc::clone(&quit),
                Arc::clone(&rounds),
            )));
        }
    }

    let mut series: Vec<Vec<Sample>> = Vec::new();
    let mut tick = tokio::time::interval(every);
    while t0.elapsed() < warmup {
        tick.tick().await;
        series.push(sample(&procs, t0));
    }
    let measured_from = series.len();
    let baseline_fds = {
        let _held = gate.write().await;
        settled_fds(&procs).await
    };
    while t0.elapsed() < duration {
        tick.tick().await;
        series.push(sample(&procs, t0));
        for w in &workers {
            assert!(!w.is_finished(), "a churn worker failed (see its panic)");
        }
    }
    quit.store(true, Ordering::Relaxed);
    let final_fds = {
        let _held = gate.write().await;
        settled_fds(&procs).await
    };
    for w in workers {
        w.await.expect("churn worker");
    }

    // The steady pairs: stop, then everything sent must have come, once and in order.
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for p in &mut pairs {
        for h in p.pumps.drain(..) {
            h.await.expect("sender");
        }
    }
    for (i, p) in pairs.iter().enumerate() {
        for (who, s, peer) in [("mac", &p.mac, &p.browser), ("browser", &p.browser, &p.mac)] {
            let want = lock(&peer.log).sent;
            wait_log(&s.log, "steady: the last frames", |l| {
                l.from_peer.missing(want) == 0
            })
            .await;
            let l = lock(&s.log);
            let r = &l.from_peer;
            if r.dup + r.reordered + r.misrouted > 0 || l.ended.is_some() {
                failures.push(format!(
                    "steady pair {i} {who}: {} dup, {} reordered, {} misrouted, ended {:?}",
                    r.dup, r.reordered, r.misrouted, l.ended
                ));
            }
        }
    }

    failures.extend(report(
        &procs,
        &series,
        measured_from,
        &baseline_fds,
        &final_fds,
        rounds.load(Ordering::Relaxed),
        &pairs,
    ));
    for p in &pairs {
        leave(&p.browser, "steady browser").await;
        leave(&p.mac, "steady mac").await;
    }
    assert!(failures.is_empty(), "soak found:\n{}", failures.join("\n"));
}

/// Prints the series and the verdict; returns what fails the test.
fn report(
    procs: &[(&str, &Node)],
    series: &[Vec<Sample>],
    measured_from: usize,
    baseline_fds: &[usize],
    final_fds: &[usize],
    churn_sessions: u64,
    pairs: &[Steady],
) -> Vec<String> {
    let steady_frames: u64 = pairs
        .iter()
        .map(|p| lock(&p.mac.log).sent + lock(&p.browser.log).sent)
        .sum();
    println!(
        "\nsoak: {} samples, warm-up {} of them; {churn_sessions} churn sessions, \
         {steady_frames} steady frames",
        series.len(),
        measured_from
    );
    let mut head = format!("{:>8}", "t");
    for (name, _) in procs {
        head.push_str(&format!(" | {name:>8} MiB {:>4}", "fds"));
    }
    println!("{head}");
    // At most about 40 rows, always the first and the last.
    let step = series.len().div_ceil(40).max(1);
    for (i, row) in series.iter().enumerate() {
        if i % step != 0 && i + 1 != series.len() {
            continue;
        }
        let mut line = format!("{:>7.0}s", row[0].at.as_secs_f64());
        for s in row {
            line.push_str(&format!(" | {:>12.1} {:>4}", mib(s.rss), s.fds));
        }
        if i < measured_from {
            line.push_str("   (warm-up)");
        }
        println!("{line}");
    }

    let mut failures = Vec::new();
    let measured = &series[measured_from..];
    if measured.len() < 2 {
        failures.push("too few samples after the warm-up".to_owned());
        return failures;
    }
    let window = (measured.len() / 5).max(5).min(measured.len());
    for (k, (name, _)) in procs.iter().enumerate() {
        let first = median(measured[..window].iter().map(|r| r[k].rss).collect());
        let last = median(
            measured[measured.len() - window..]
                .iter()
                .map(|r| r[k].rss)
                .collect(),
        );
        let bound = first + RSS_SLACK_BYTES.max(first * RSS_SLACK_PERCENT / 100);
        let fd_bound = baseline_fds[k] + FD_SLACK;
        println!(
            "{name}: RSS median {:.1} MiB (first {window} samples) -> {:.1} MiB (last {window}), \
             bound {:.1} MiB; fds settled {} -> {}, bound {fd_bound}",
            mib(first),
            mib(last),
            mib(bound),
            baseline_fds[k],
            final_fds[k]
        );
        if last > bound {
            failures.push(format!(
                "{name}: RSS grew from {:.1} to {:.1} MiB, over the bound {:.1} MiB",
                mib(first),
                mib(last),
                mib(bound)
            ));
        }
        if final_fds[k] > fd_bound {
            failures.push(format!(
                "{name}: {} fds open once churn settled, more than {} at the start plus {FD_SLACK}",
                final_fds[k], baseline_fds[k]
            ));
        }
    }
    failures
}
