//! The measurements. Each opens its pairs first, then measures over a fixed
//! window, then closes everything; none runs longer than asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::SinkExt;
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use super::pairs::{self, Pair};
use super::{Args, Report};

/// Which URL the browser of pair `i` uses: the second for a `cross_share` of them.
fn browser_url(args: &Args, i: usize) -> &str {
    if args.urls.len() < 2 {
        return &args.urls[0];
    }
    // Spread evenly: pair i is cross-node when floor((i+1)·share) > floor(i·share).
    let share = args.cross_share.clamp(0.0, 1.0);
    let cross = ((i + 1) as f64 * share).floor() > (i as f64 * share).floor();
    if cross { &args.urls[1] } else { &args.urls[0] }
}

/// Opens `args.pairs` pairs, `args.concurrency` at a time.
pub(super) async fn open_all(args: &Args) -> anyhow::Result<(Vec<Pair>, Duration)> {
    let started = Instant::now();
    let progress = Progress::start(args, "opening pairs");
    let opened = Arc::new(AtomicU64::new(0));
    let results: Vec<anyhow::Result<Pair>> = stream::iter(0..args.pairs)
        .map(|i| {
            let opened = Arc::clone(&opened);
            let mac = args.urls[0].clone();
            let browser = browser_url(args, i).to_owned();
            let sources = args.source.clone();
            async move {
                let p = pairs::open(&mac, &browser, &sources).await;
                opened.fetch_add(1, Ordering::Relaxed);
                p
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .inspect(|_| progress.set(opened.load(Ordering::Relaxed)))
        .collect()
        .await;
    let took = started.elapsed();
    progress.stop();
    let pairs: Vec<Pair> = results
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .context("opening pairs")?;
    Ok((pairs, took))
}

/// A progress line on stderr once a second, for long runs.
pub(super) struct Progress {
    count: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Progress of a run over `args.pairs` pairs.
    fn start(args: &Args, what: &'static str) -> Progress {
        Progress::of(args, what, format!("{} pairs", args.pairs))
    }

    /// Progress of a run over `total` (e.g. "4 rooms of 16 guests").
    pub(super) fn of(args: &Args, what: &'static str, total: String) -> Progress {
        let count = Arc::new(AtomicU64::new(0));
        let task = (!args.quiet).then(|| {
            let count = Arc::clone(&count);
            let started = Instant::now();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    eprintln!(
                        "relay-load: {what}: {} ({total}), {:.0}s",
                        count.load(Ordering::Relaxed),
                        started.elapsed().as_secs_f64()
                    );
                }
            })
        });
        Progress { count, task }
    }

    pub(super) fn set(&self, n: u64) {
        self.count.store(n, Ordering::Relaxed);
    }

    pub(super) fn stop(self) {
        if let Some(t) = self.task {
            t.abort();
        }
    }
}

pub(super) async fn setup(args: &Args) -> anyhow::Result<Report> {
    let (pairs, took) = open_all(args).await?;
    let mut r = Report::new("setup", &args.label);
    r.add("pairs", pairs.len() as u64, "");
    r.add("seconds", took.as_secs_f64(), "s");
    r.add(
        "pairs_per_second",
        pairs.len() as f64 / took.as_secs_f64(),
        "pairs/s",
    );
    close_all(pairs).await;
    Ok(r)
}

/// The next binary message (pings are answered on the way).
pub(super) async fn next_binary(ws: &mut pairs::Ws) -> anyhow::Result<bytes::Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Close(c))) => anyhow::bail!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection ended"),
        }
    }
}

async fn close_all(pairs: Vec<Pair>) {
    // Close politely but do not wait long: the relay cleans up either way.
    let closing = stream::iter(pairs).for_each_concurrent(256, |mut p| async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = p.mac.close(None).await;
            let _ = p.browser.close(None).await;
        })
        .await;
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;
}

/// Counters shared by the receivers.
#[derive(Default)]
struct Tally {
    frames: AtomicU64,
    bytes: AtomicU64,
}

pub(super) async fn throughput(args: &Args) -> anyhow::Result<Report> {
    let (pairs, _) = open_all(args).await?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut tasks = Vec::new();
    for p in pairs {
        let (mac_tx, mac_rx) = p.mac.split();
        let (browser_tx, browser_rx) = p.browser.split();
        tasks.push(tokio::spawn(blast(mac_tx, args.size, deadline)));
        tasks.push(tokio::spawn(count(
            browser_rx,
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
        if args.both_ways {
            tasks.push(tokio::spawn(blast(browser_tx, args.size, deadline)));
        } else {
            tasks.push(tokio::spawn(hold(browser_tx, deadline)));
        }
        tasks.push(tokio::spawn(count(
            mac_rx,
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
    }
    let progress = Progress::start(args, "frames received");
    let started = Instant::now();
    let mut at_end = 0;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200).min(deadline - tokio::time::Instant::now()))
            .await;
        at_end = tally.frames.load(Ordering::Relaxed);
        progress.set(at_end);
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = tally.bytes.load(Ordering::Relaxed);
    progress.stop();
    stop.notify_waiters();
    for t in tasks {
        t.abort();
    }
    let mut r = Report::new("throughput", &args.label);
    r.add("pairs", args.pairs as u64, "");
    r.add("frame_bytes", args.size as u64, "B");
    r.add("seconds", secs, "s");
    r.add("frames_per_second", at_end as f64 / secs, "frames/s");
    r.add("megabytes_per_second", bytes as f64 / secs / 1e6, "MB/s");
    Ok(r)
}

/// Sends frames as fast as the connection takes them until `deadline`.
async fn blast(
    mut tx: futures_util::stream::SplitSink<pairs::Ws, Message>,
    size: usize,
    deadline: tokio::time::Instant,
) {
    let mut seq = 0u64;
    let f = pairs::frame(0, 0, size);
    while tokio::time::Instant::now() < deadline {
        for _ in 0..64 {
            seq += 1;
            if tx.feed(f.clone()).await.is_err() {
                return;
            }
        }
        if tx.flush().await.is_err() {
            return;
        }
    }
    let _ = seq;
}

/// Keeps a write half alive (it answers pings through the read half).
async fn hold(
    tx: futures_util::stream::SplitSink<pairs::Ws, Message>,
    deadline: tokio::time::Instant,
) {
    tokio::time::sleep_until(deadline).await;
    drop(tx);
}

/// Counts data frames until told to stop.
async fn count(
    mut rx: futures_util::stream::SplitStream<pairs::Ws>,
    tally: Arc<Tally>,
    stop: Arc<tokio::sync::Notify>,
) {
    loop {
        tokio::select! {
            m = rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    tally.frames.fetch_add(1, Ordering::Relaxed);
                    tally.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = stop.notified() => return,
        }
    }
}

/// How late tokio's millisecond timer may wake a paced sender before the
/// delay counts as latency: the timer's granularity, not the relay's.
const TIMER_SLACK: Duration = Duration::from_millis(2);

pub(super) async fn latency(args: &Args) -> anyhow::Result<Report> {
    let (pairs, _) = open_all(args).await?;
    let epoch = Instant::now();
    let n = pairs.len().max(1) as f64;
    let interval = Duration::from_secs_f64(n / args.rate.max(1) as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let deadline = start + args.duration;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (i, p) in pairs.into_iter().enumerate() {
        let (mut mac_tx, mut mac_rx) = p.mac.split();
        let (browser_tx, mut browser_rx) = p.browser.split();
        let size = args.size;
        // Stagger the pairs over one interval so the load is smooth.
        let first = start + interval.mul_f64(i as f64 / n);
        senders.push(tokio::spawn(async move {
            let mut due = first;
            let mut seq = 0u64;
            while due < deadline {
                tokio::time::sleep_until(due).await;
                // Everything due by now goes out in one write, as a busy
                // client would: the timer wakes at most once a millisecond,
                // and a write per frame would measure this tool's syscalls.
                let now = tokio::time::Instant::now();
                // The timer's own lateness (it ticks in whole milliseconds) is
                // forgiven up to TIMER_SLACK; lateness beyond that counts.
                while due <= now && due < deadline {
                    seq += 1;
                    // The frame carries when it was due, not when it left: a
                    // stalled sender shows up as latency (no coordinated omission).
                    let sent = (due + TIMER_SLACK).min(now);
                    let due_ns = (sent.into_std() - epoch).as_nanos() as u64;
                    if mac_tx.feed(pairs::frame(seq, due_ns, size)).await.is_err() {
                        return;
                    }
                    due += interval;
                }
                if mac_tx.flush().await.is_err() {
                    return;
                }
            }
        }));
        // Drain the mac's side (pings) so its connection stays healthy.
        senders.push(tokio::spawn(async move {
            while let Some(Ok(_)) = mac_rx.next().await {}
        }));
        senders.push(tokio::spawn(hold(
            browser_tx,
            deadline + Duration::from_secs(2),
        )));
        receivers.push(tokio::spawn(async move {
            let mut h =
                Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("bounds");
            let until = deadline + Duration::from_secs(1);
            loop {
                let m = tokio::time::timeout_at(until, browser_rx.next()).await;
                match m {
                    Ok(Some(Ok(Message::Binary(b)))) => {
                        if let Some((_, due_ns)) = pairs::parse(&b) {
                            let now = pairs::since(epoch);
                            let _ = h.record(now.saturating_sub(due_ns).max(1_000));
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => return h,
                }
            }
        }));
    }
    let progress = Progress::start(args, "sending at the offered rate");
    let mut all = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("bounds");
    for r in receivers {
        if let Ok(h) = r.await {
            let _ = all.add(h);
        }
    }
    progress.stop();
    for s in senders {
        s.abort();
    }
    let us = |v: u64| v as f64 / 1000.0;
    let mut r = Report::new("latency", &args.label);
    r.add("pairs", args.pairs as u64, "");
    r.add("offered_rate", args.rate, "frames/s");
    r.add("frames", all.len(), "");
    r.add(
        "achieved_rate",
        all.len() as f64 / args.duration.as_secs_f64(),
        "frames/s",
    );
    r.add("p50_us", us(all.value_at_quantile(0.5)), "us");
    r.add("p99_us", us(all.value_at_quantile(0.99)), "us");
    r.add("p999_us", us(all.value_at_quantile(0.999)), "us");
    r.add("max_us", us(all.max()), "us");
    Ok(r)
}

/// The relay's resident memory from its `/metrics`.
async fn relay_rss(metrics_url: &str) -> anyhow::Result<f64> {
    let url = metrics_url
        .strip_prefix("http://")
        .context("--metrics-url must be http://")?;
    let (hostport, path) = url
        .split_once('/')
        .map_or((url, "/metrics".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = tokio::net::TcpStream::connect(hostport).await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    body.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .context("no process_resident_memory_bytes in /metrics")
}

pub(super) async fn idle(args: &Args) -> anyhow::Result<Report> {
    let metrics = match &args.metrics_url {
        Some(m) => m.clone(),
        None => format!(
            "{}/metrics",
            args.urls[0]
                .replacen("ws://", "http://", 1)
                .trim_end_matches('/')
        ),
    };
    let before = relay_rss(&metrics).await?;
    let (mut pairs, took) = open_all(args).await?;
    // Let the relay settle (allocator, first pings) before reading again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh = relay_rss(&metrics).await?;
    // Then one frame each way: a connection that carried traffic keeps
    // whatever buffers that grew, which is what a real idle pair costs.
    stream::iter(pairs.iter_mut())
        .for_each_concurrent(args.concurrency, |p| async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                p.mac.send(pairs::frame(1, 0, args.size)).await?;
                next_binary(&mut p.browser).await?;
                p.browser.send(pairs::frame(1, 0, args.size)).await?;
                next_binary(&mut p.mac).await
            })
            .await;
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = relay_rss(&metrics).await?;
    let n = pairs.len().max(1) as f64;
    let per_conn = |rss: f64| (rss - before).max(0.0) / (2.0 * n);
    let mut r = Report::new("idle", &args.label);
    r.add("pairs", pairs.len() as u64, "");
    r.add("connections", 2 * pairs.len() as u64, "");
    r.add("setup_seconds", took.as_secs_f64(), "s");
    r.add("rss_before_mib", before / 1048576.0, "MiB");
    r.add("rss_connected_mib", fresh / 1048576.0, "MiB");
    r.add("rss_after_traffic_mib", used / 1048576.0, "MiB");
    r.add("bytes_per_connection_fresh", per_conn(fresh), "B");
    r.add("bytes_per_connection", per_conn(used), "B");
    close_all(pairs).await;
    Ok(r)
}

pub(super) async fn storm(args: &Args) -> anyhow::Result<Report> {
    use relay_protocol::client::{Client, Config, Data, Event, TransportMode};
    let kill = args
        .kill
        .as_deref()
        .context("storm needs --kill (a command that kills the first URL's node)")?;
    let fallback = args
        .fallback
        .clone()
        .context("storm needs --fallback (a URL for the macs once their node is dead)")?;
    let browser_base = args
        .urls
        .get(1)
        .cloned()
        .unwrap_or_else(|| fallback.clone());
    let cfg = |urls: Vec<String>| {
        let mut c = Config::new(urls[0].clone());
        c.urls = urls;
        c.backoff.first = Duration::from_millis(200);
        c.backoff.cap = Duration::from_secs(2);
        // A lost session is a failure to count, not something to paper over.
        c.reregister_on_lost_session = false;
        // This measures the WebSocket relay: an overloaded moment must not
        // move some clients to the HTTP fallback and mix the transports.
        c.transports.mode = TransportMode::WebSocket;
        c
    };
    // Pairs through the client library, which resumes by itself.
    let mut sessions = Vec::new();
    for _ in 0..args.pairs {
        let (mac, mut mac_ev) = Client::mac(cfg(vec![args.urls[0].clone(), fallback.clone()]));
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(10), mac_ev.next()).await {
                Ok(Some(Event::Registered { code, .. })) => break code,
                Ok(Some(Event::Ended(e))) => anyhow::bail!("mac ended: {e}"),
                Ok(Some(_)) => continue,
                _ => anyhow::bail!("no code in time"),
            }
        };
        let (browser, mut browser_ev) = Client::browser(cfg(vec![browser_base.clone()]), code);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), browser_ev.next()).await {
                Ok(Some(Event::Joined)) => break,
                Ok(Some(Event::Ended(e))) => anyhow::bail!("browser ended: {e}"),
                Ok(Some(_)) => continue,
                _ => anyhow::bail!("not joined in time"),
            }
        }
        sessions.push((mac, mac_ev, browser, browser_ev));
    }
    let resumed = Arc::new(AtomicU64::new(0));
    let killed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let last_resume = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut tasks = Vec::new();
    for (mac, mut mac_ev, browser, mut browser_ev) in sessions {
        let resumed = Arc::clone(&resumed);
        let last = Arc::clone(&last_resume);
        // The mac sends a numbered frame every 20 ms and counts its resumes.
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut seq = 0u64;
            let mut sent_done = false;
            loop {
                tokio::select! {
                    _ = tick.tick(), if !sent_done => {
                        if tokio::time::Instant::now() >= deadline {
                            sent_done = true;
                            continue;
                        }
                        seq += 1;
                        let _ = mac.send_binary(bytes::Bytes::from(seq.to_be_bytes().to_vec())).await;
                    }
                    ev = mac_ev.next() => match ev {
                        Some(Event::Resumed) => {
                            resumed.fetch_add(1, Ordering::Relaxed);
                            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        }
                        Some(Event::Ended(_)) | None => return (seq, 0u64, 0u64, 0u64),
                        _ => {}
                    },
                    _ = tokio::time::sleep_until(deadline + Duration::from_secs(3)), if sent_done => {
                        return (seq, 0, 0, 0);
                    }
                }
            }
        }));
        // The browser checks every frame is the next one. It owns its client:
        // dropping a client ends its session.
        tasks.push(tokio::spawn(async move {
            let _browser = browser;
            let (mut next, mut lost, mut dup) = (1u64, 0u64, 0u64);
            let until = deadline + Duration::from_secs(3);
            while let Ok(Some(ev)) = tokio::time::timeout_at(until, browser_ev.next()).await {
                if let Event::Data(Data::Binary(b)) = ev {
                    let got = u64::from_be_bytes(b[..8].try_into().unwrap_or_default());
                    if got == next {
                        next += 1;
                    } else if got > next {
                        lost += got - next;
                        next = got + 1;
                    } else {
                        dup += 1;
                    }
                }
            }
            (0, next - 1, lost, dup)
        }));
    }
    // Let the stream run, then kill the node.
    tokio::time::sleep(args.duration / 3).await;
    *killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(kill)
        .status()
        .await?;
    if !status.success() {
        anyhow::bail!("--kill {kill:?} failed: {status}");
    }
    let (mut sent, mut got, mut lost, mut dup) = (0, 0, 0, 0);
    for t in tasks {
        if let Ok((s, g, l, d)) = t.await {
            sent += s;
            got += g;
            lost += l;
            dup += d;
        }
    }
    let killed = killed_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_else(Instant::now);
    let all_back = last_resume
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|t| t.duration_since(killed));
    let mut r = Report::new("storm", &args.label);
    r.add("pairs", args.pairs as u64, "");
    r.add("resumed", resumed.load(Ordering::Relaxed), "macs");
    r.add(
        "seconds_until_all_resumed",
        all_back.map_or(-1.0, |d| d.as_secs_f64()),
        "s",
    );
    r.add("frames_sent", sent, "");
    r.add("frames_received", got, "");
    r.add("frames_lost", lost + sent.saturating_sub(got + lost), "");
    r.add("frames_duplicated", dup, "");
    Ok(r)
}
