//! `hold`: many idle pairs held at once, for the 100,000-connection run
//! (tests/bench/hundred-k.sh runs several of these against a local cluster).
//! Each pair is read all along, so the relay's heartbeat pings are answered
//! as a real idle client answers them; at the end of the hold every pair is
//! pinged with one frame each way. Then, with `--wait-close`, it waits for
//! the relay to close the connections (a drain) and reports how long that took.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::pairs::{self, Pair, Ws};
use super::scenarios::{next_binary, open_all};
use super::{Args, Report};

/// How long the ping at the end of the hold may take for one pair.
const PING_WAIT: Duration = Duration::from_secs(30);

/// What happened to one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// It answered the ping both ways.
    Answered,
    /// A connection closed or failed during the hold.
    Lost,
    /// The ping did not come back in time.
    Silent,
}

/// Counters the pairs share.
#[derive(Default)]
struct Tally {
    pinged: AtomicU64,
    closed: AtomicU64,
}

pub(super) async fn hold(args: &Args) -> anyhow::Result<Report> {
    let (pairs, took) = open_all(args).await?;
    let n = pairs.len();
    eprintln!(
        "relay-load: hold: {n} pairs open in {:.1}s",
        took.as_secs_f64()
    );
    let tally = Arc::new(Tally::default());
    let ping_at = tokio::time::Instant::now() + args.duration;
    // Closes are timed from when every pair was pinged.
    let (pinged_tx, pinged_rx) = watch::channel(None::<Instant>);
    let wait_close = args.wait_close;
    let mut tasks = Vec::with_capacity(n);
    for p in pairs {
        let tally = Arc::clone(&tally);
        let pinged = pinged_rx.clone();
        tasks.push(tokio::spawn(one_pair(
            p, ping_at, tally, wait_close, pinged,
        )));
    }
    // Wait for every ping, then say so (the script drains the nodes on it).
    while tally.pinged.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pinged_at = Instant::now();
    let _ = pinged_tx.send(Some(pinged_at));
    eprintln!("relay-load: hold: all {n} pairs pinged");
    let mut answered = 0u64;
    let mut lost = 0u64;
    let mut silent = 0u64;
    let mut last_close = Duration::ZERO;
    for t in tasks {
        let (outcome, closed_after) = t.await?;
        match outcome {
            Outcome::Answered => answered += 1,
            Outcome::Lost => lost += 1,
            Outcome::Silent => silent += 1,
        }
        last_close = last_close.max(closed_after.unwrap_or_default());
    }
    let mut r = Report::new("hold", &args.label);
    r.add("pairs", n as u64, "");
    r.add("connections", 2 * n as u64, "");
    r.add("setup_seconds", took.as_secs_f64(), "s");
    r.add("held_seconds", args.duration.as_secs_f64(), "s");
    r.add("answered", answered, "pairs");
    r.add("lost_during_hold", lost, "pairs");
    r.add("silent", silent, "pairs");
    if wait_close {
        r.add(
            "closed_by_relay",
            tally.closed.load(Ordering::Relaxed),
            "connections",
        );
        r.add("last_close_seconds", last_close.as_secs_f64(), "s");
    }
    Ok(r)
}

/// Holds one pair, reading both sides, until `ping_at`; pings it; then
/// (with `wait_close`) reads until the relay closes both connections.
async fn one_pair(
    p: Pair,
    ping_at: tokio::time::Instant,
    tally: Arc<Tally>,
    wait_close: bool,
    mut pinged: watch::Receiver<Option<Instant>>,
) -> (Outcome, Option<Duration>) {
    let Pair {
        mut mac,
        mut browser,
    } = p;
    let held = async {
        loop {
            tokio::select! {
                m = mac.next() => if !alive(m) { return false },
                b = browser.next() => if !alive(b) { return false },
            }
        }
    };
    let outcome = tokio::select! {
        _ = held => Outcome::Lost,
        _ = tokio::time::sleep_until(ping_at) => {
            match tokio::time::timeout(PING_WAIT, ping(&mut mac, &mut browser)).await {
                Ok(Ok(())) => Outcome::Answered,
                Ok(Err(_)) => Outcome::Lost,
                Err(_) => Outcome::Silent,
            }
        }
    };
    tally.pinged.fetch_add(1, Ordering::Relaxed);
    if !wait_close || outcome == Outcome::Lost {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = mac.close(None).await;
            let _ = browser.close(None).await;
        })
        .await;
        return (outcome, None);
    }
    let Ok(Some(from)) = pinged.wait_for(Option::is_some).await.map(|t| *t) else {
        return (outcome, None);
    };
    let mut last = None;
    for ws in [&mut mac, &mut browser] {
        if until_closed(ws).await {
            tally.closed.fetch_add(1, Ordering::Relaxed);
            last = Some(from.elapsed());
        }
    }
    (outcome, last)
}

/// Whether a read during the hold leaves the connection open.
fn alive(m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> bool {
    matches!(m, Some(Ok(ref msg)) if !msg.is_close())
}

/// One frame each way.
async fn ping(mac: &mut Ws, browser: &mut Ws) -> anyhow::Result<()> {
    mac.send(pairs::frame(1, 0, 16)).await?;
    next_binary(browser).await?;
    browser.send(pairs::frame(1, 0, 16)).await?;
    next_binary(mac).await?;
    Ok(())
}

/// Reads until the relay closes the connection; true if it did.
async fn until_closed(ws: &mut Ws) -> bool {
    loop {
        match ws.next().await {
            Some(Ok(m)) if m.is_close() => return true,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return true,
        }
    }
}
