//! Rooms under load: `fanout` (each host sends numbered frames to all its
//! guests) and `fanin` (every guest sends numbered frames to its host, which
//! reads them tagged by `from`). Both count frames delivered a second summed
//! over receivers, like `throughput`, then check that every frame sent
//! reached every receiver it was meant for, once and in order: any loss,
//! duplicate, wrong tag or cut connection fails the run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::SinkExt;
use futures_util::stream::{self, SplitSink, SplitStream, StreamExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant as Deadline;
use tokio_tungstenite::tungstenite::Message;

use super::pairs::{self, Ws};
use super::rooms::{self, Order, Room};
use super::scenarios::Progress;
use super::{Args, Report};

/// How long receivers may take, after the senders stop, to get what is
/// still in flight before what is missing counts as lost.
const DRAIN: Duration = Duration::from_secs(10);

/// Problems shown in a failed run's error; the rest are counted.
const SHOWN: usize = 5;

/// Opens `args.rooms` rooms, `args.concurrency` at a time: hosts on the
/// first URL, guests spread over all of them.
async fn open_rooms(args: &Args) -> anyhow::Result<Vec<Room>> {
    let progress = Progress::of(args, "opening rooms", total(args));
    let opened = Arc::new(AtomicU64::new(0));
    let rooms: Vec<anyhow::Result<Room>> = stream::iter(0..args.rooms)
        .map(|_| {
            let opened = Arc::clone(&opened);
            async move {
                let r = rooms::open(&args.urls[0], &args.urls, args.guests, &args.source).await;
                opened.fetch_add(1, Ordering::Relaxed);
                r
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .inspect(|_| progress.set(opened.load(Ordering::Relaxed)))
        .collect()
        .await;
    progress.stop();
    rooms
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .context("opening rooms")
}

fn total(args: &Args) -> String {
    format!("{} rooms of {} guests", args.rooms, args.guests)
}

/// Samples `tally` until `deadline`: the count at the deadline and the
/// seconds since `started`.
async fn measure(args: &Args, tally: &AtomicU64, deadline: Deadline) -> (u64, f64) {
    let started = Instant::now();
    let progress = Progress::of(args, "frames received", total(args));
    let mut at_end = 0;
    while Deadline::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200).min(deadline - Deadline::now())).await;
        at_end = tally.load(Ordering::Relaxed);
        progress.set(at_end);
    }
    progress.stop();
    (at_end, started.elapsed().as_secs_f64())
}

/// Fails the run with the first problems if there are any.
fn fail_on(problems: &[String], what: &str) -> anyhow::Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let more = problems.len().saturating_sub(SHOWN);
    anyhow::bail!(
        "{what}: {}{}",
        problems[..problems.len().min(SHOWN)].join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    )
}

/// What the guests of one room have received in order, for its host's window.
struct Progressed {
    /// Per guest, the highest frame number it received in order (owned by
    /// that guest's reader; read by the host's sender).
    in_order: Vec<AtomicU64>,
    /// Woken by a guest that moved on, for a host waiting on its window.
    moved: Notify,
}

impl Progressed {
    fn new(receivers: usize) -> Arc<Progressed> {
        Arc::new(Progressed {
            in_order: (0..receivers).map(|_| AtomicU64::new(0)).collect(),
            moved: Notify::new(),
        })
    }

    /// Receiver `i` has every frame up to `in_order`; a waiting sender hears
    /// of it every `wake_every` frames.
    #[inline]
    fn advance(&self, i: usize, in_order: u64, wake_every: u64) {
        self.in_order[i].store(in_order, Ordering::Release);
        if in_order % wake_every == 0 {
            self.moved.notify_one();
        }
    }

    fn slowest(&self) -> u64 {
        self.in_order
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}

pub(super) async fn fanout(args: &Args) -> anyhow::Result<Report> {
    let rooms = open_rooms(args).await?;
    let window = args
        .window
        .unwrap_or_else(|| rooms::default_window(args.size));
    // Guests wake a waiting host a few times a window, not once a frame.
    let wake_every = (window / 4).max(1);
    let delivered = Arc::new(AtomicU64::new(0));
    let deadline = Deadline::now() + args.duration;
    let (mut hosts, mut guests, mut host_reads) = (Vec::new(), Vec::new(), Vec::new());
    for (r, room) in rooms.into_iter().enumerate() {
        let progressed = Progressed::new(room.guests.len());
        // The host's total once it stopped, so each guest knows when it has all.
        let (sent_tx, sent_rx) = watch::channel(None::<u64>);
        let (host_tx, host_rx) = room.host.split();
        hosts.push(tokio::spawn(broadcast(
            host_tx,
            Arc::clone(&progressed),
            args.size,
            window,
            deadline,
            sent_tx,
        )));
        // The host reads its guest events and answers pings.
        host_reads.push(tokio::spawn(drain(host_rx)));
        for (g, (id, ws)) in room.guests.into_iter().enumerate() {
            let (tx, rx) = ws.split();
            // The write half is not needed: the read half answers pings.
            drop(tx);
            let reader = GuestReader {
                progressed: Arc::clone(&progressed),
                me: g,
                delivered: Arc::clone(&delivered),
                wake_every,
            };
            let sent = sent_rx.clone();
            guests.push(tokio::spawn(async move {
                let (order, ended) = reader.read(rx, sent, deadline + DRAIN).await;
                (r, id, order, ended)
            }));
        }
    }
    let (at_end, secs) = measure(args, &delivered, deadline).await;
    let mut sent = Vec::new();
    let mut problems = Vec::new();
    let mut host_sinks = Vec::new();
    for (r, h) in hosts.into_iter().enumerate() {
        let (tx, result) = h.await.with_context(|| format!("room {r}'s host"))?;
        host_sinks.push(tx);
        match result {
            Ok(n) => sent.push(n),
            Err(e) => {
                problems.push(format!("room {r}'s host: {e:#}"));
                sent.push(0);
            }
        }
    }
    for g in guests {
        let (r, id, order, ended) = g.await.context("a guest's reader")?;
        if !order.complete(sent[r]) {
            problems.push(format!(
                "room {r} guest {id}: {} of {} frames missing, {} duplicated{}",
                order.missing(sent[r]),
                sent[r],
                order.duplicated,
                ended.map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
    }
    leave(host_sinks.into_iter().zip(host_reads).collect()).await;
    fail_on(
        &problems,
        "fan-out did not deliver every frame to every guest in order",
    )?;
    let host_frames: u64 = sent.iter().sum();
    let total_delivered = delivered.load(Ordering::Relaxed);
    let mut r = Report::new("fanout", &args.label);
    r.add("rooms", args.rooms as u64, "");
    r.add("guests_per_room", args.guests as u64, "");
    r.add("frame_bytes", args.size as u64, "B");
    r.add("window", window, "frames");
    r.add("seconds", secs, "s");
    r.add("frames_per_second", at_end as f64 / secs, "frames/s");
    r.add(
        "megabytes_per_second",
        at_end as f64 * args.size as f64 / secs / 1e6,
        "MB/s",
    );
    // Host frames that reached all their guests: what the hosts sent by the
    // deadline would also count the window still in flight.
    r.add(
        "host_frames_per_second",
        at_end as f64 / args.guests as f64 / secs,
        "frames/s",
    );
    r.add("host_frames", host_frames, "");
    r.add("frames_delivered", total_delivered, "");
    r.add(
        "deliveries_per_host_frame",
        total_delivered as f64 / host_frames.max(1) as f64,
        "",
    );
    r.add("frames_lost", 0, "");
    Ok(r)
}

/// Numbered frames (carrying `tag`) as fast as the relay takes them, but
/// never more than `window` ahead of the slowest of the receivers watched
/// by `progressed`, until `deadline`. Returns how many it sent.
///
/// A room host is not paced by its guests (one that falls
/// `RELAY_MAX_BUFFERED` behind is cut), so a fan-out host keeps its own
/// window. A guest is paced by its host; its window only bounds what sits
/// in socket buffers at the end, which the host must still read.
async fn send_windowed(
    tx: &mut SplitSink<Ws, Message>,
    progressed: &Progressed,
    size: usize,
    window: u64,
    tag: u64,
    deadline: Deadline,
) -> anyhow::Result<u64> {
    let mut sent = 0u64;
    while Deadline::now() < deadline {
        let room = (progressed.slowest() + window).saturating_sub(sent);
        if room == 0 {
            // A wake-up given before this wait is kept (one permit), so
            // none is missed between the check and here.
            let _ = tokio::time::timeout_at(deadline, progressed.moved.notified()).await;
            continue;
        }
        for _ in 0..room.min(64) {
            sent += 1;
            tx.feed(pairs::frame(sent, tag, size)).await?;
        }
        tx.flush().await?;
    }
    Ok(sent)
}

/// A fan-out host: [`send_windowed`] to all its guests, then its total on
/// `done`; gives its write half back for [`leave`].
async fn broadcast(
    mut tx: SplitSink<Ws, Message>,
    progressed: Arc<Progressed>,
    size: usize,
    window: u64,
    deadline: Deadline,
    done: watch::Sender<Option<u64>>,
) -> (SplitSink<Ws, Message>, anyhow::Result<u64>) {
    let result = send_windowed(&mut tx, &progressed, size, window, 0, deadline).await;
    let _ = done.send(Some(*result.as_ref().unwrap_or(&0)));
    (tx, result)
}

/// One fan-out guest's reading.
struct GuestReader {
    progressed: Arc<Progressed>,
    me: usize,
    delivered: Arc<AtomicU64>,
    wake_every: u64,
}

impl GuestReader {
    /// Reads until it has every frame its host sent, or `until`; how its
    /// connection ended, if it did.
    async fn read(
        self,
        mut rx: SplitStream<Ws>,
        mut sent: watch::Receiver<Option<u64>>,
        until: Deadline,
    ) -> (Order, Option<String>) {
        let mut order = Order::default();
        loop {
            let known = *sent.borrow();
            if known.is_some_and(|n| order.in_order >= n) {
                return (order, None);
            }
            let m = tokio::select! {
                m = tokio::time::timeout_at(until, rx.next()) => m,
                // Watched only until the total is known: a finished host's
                // channel is closed and would answer at once forever.
                r = sent.changed(), if known.is_none() => match r {
                    Ok(()) => continue,
                    Err(_) => return (order, Some("the host's sender is gone".into())),
                },
            };
            match m {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    let Some((seq, _)) = pairs::parse(&b) else {
                        return (order, Some(format!("a {} B frame", b.len())));
                    };
                    order.see(seq);
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    self.progressed
                        .advance(self.me, order.in_order, self.wake_every);
                }
                Ok(Some(Ok(Message::Close(c)))) => return (order, Some(format!("closed: {c:?}"))),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return (order, Some(e.to_string())),
                Ok(None) => return (order, Some("connection ended".into())),
                Err(_) => return (order, Some("timed out".into())),
            }
        }
    }
}

/// Reads and drops whatever arrives, so pings are answered.
async fn drain(mut rx: SplitStream<Ws>) {
    while let Some(Ok(_)) = rx.next().await {}
}

/// Ends each host's session for good (`leave`), which also closes its
/// guests: rooms left to their grace period would hold the relay's memory
/// through the runs that follow on the same node. Each host's read half
/// (`drain`) keeps reading until the relay closes the connection, so the
/// relay has read `leave` before the socket goes: a socket dropped with
/// unread bytes is reset, and the relay may then see the host vanish
/// instead of leave. Bounded: the relay cleans up either way.
async fn leave(hosts: Vec<(SplitSink<Ws, Message>, JoinHandle<()>)>) {
    let leaving = stream::iter(hosts).for_each_concurrent(64, |(mut tx, read)| async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            tx.send(Message::text(r#"{"type":"leave"}"#)).await?;
            tx.close().await
        })
        .await;
        let abort = read.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .is_err()
        {
            abort.abort();
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), leaving).await;
}

pub(super) async fn fanin(args: &Args) -> anyhow::Result<Report> {
    let rooms = open_rooms(args).await?;
    // Each guest's share of a host's window: the relay paces the guests, so
    // this only keeps what sits in socket buffers at the end small.
    let window = args
        .window
        .unwrap_or_else(|| (rooms::default_window(args.size) / args.guests as u64).max(16));
    let wake_every = (window / 4).max(1);
    let received = Arc::new(AtomicU64::new(0));
    let deadline = Deadline::now() + args.duration;
    let (mut hosts, mut senders, mut others) = (Vec::new(), Vec::new(), Vec::new());
    let mut host_sinks = Vec::new();
    for (r, room) in rooms.into_iter().enumerate() {
        let (total_tx, total_rx) = watch::channel(None::<u64>);
        let (host_tx, host_rx) = room.host.split();
        host_sinks.push(host_tx);
        let mut host = HostReader {
            received: Arc::clone(&received),
            guests: HashMap::new(),
            wake_every,
            mistagged: 0,
        };
        let mut room_senders = Vec::new();
        for (id, ws) in room.guests {
            let progressed = Progressed::new(1);
            host.guests
                .insert(id, (Arc::clone(&progressed), Order::default()));
            let (mut tx, rx) = ws.split();
            others.push(tokio::spawn(drain(rx)));
            let size = args.size;
            room_senders.push((
                id,
                tokio::spawn(async move {
                    send_windowed(&mut tx, &progressed, size, window, id, deadline).await
                }),
            ));
        }
        hosts.push(tokio::spawn(host.read(host_rx, total_rx, deadline + DRAIN)));
        // Tells the host its room's total once every guest has stopped.
        senders.push(tokio::spawn(async move {
            let mut sent = HashMap::new();
            let mut failed = Vec::new();
            for (id, s) in room_senders {
                match s.await {
                    Ok(Ok(n)) => {
                        sent.insert(id, n);
                    }
                    Ok(Err(e)) => failed.push(format!("room {r} guest {id}: {e:#}")),
                    Err(e) => failed.push(format!("room {r} guest {id}: {e}")),
                }
            }
            let _ = total_tx.send(Some(sent.values().sum()));
            (sent, failed)
        }));
    }
    let (at_end, secs) = measure(args, &received, deadline).await;
    let mut problems = Vec::new();
    let mut sent_total = 0;
    let mut host_reads = Vec::new();
    for (r, (s, h)) in senders.into_iter().zip(hosts).enumerate() {
        let (sent, failed) = s.await.context("a room's senders")?;
        problems.extend(failed);
        let (host, ended, rx) = h.await.context("a host's reader")?;
        host_reads.push(tokio::spawn(drain(rx)));
        sent_total += sent.values().sum::<u64>();
        problems.extend(host.problems(r, &sent, ended));
    }
    for t in others {
        t.abort();
    }
    leave(host_sinks.into_iter().zip(host_reads).collect()).await;
    fail_on(
        &problems,
        "fan-in did not bring every guest's frames to its host in order",
    )?;
    let mut r = Report::new("fanin", &args.label);
    r.add("rooms", args.rooms as u64, "");
    r.add("guests_per_room", args.guests as u64, "");
    r.add("frame_bytes", args.size as u64, "B");
    r.add("window", window, "frames");
    r.add("seconds", secs, "s");
    r.add("frames_per_second", at_end as f64 / secs, "frames/s");
    r.add(
        "megabytes_per_second",
        at_end as f64 * args.size as f64 / secs / 1e6,
        "MB/s",
    );
    r.add("frames_sent", sent_total, "");
    r.add("frames_lost", 0, "");
    Ok(r)
}

/// A fan-in host's reading: its guests' frames, each under the `from` before it.
struct HostReader {
    received: Arc<AtomicU64>,
    /// Per guest id: the window its sender watches, and what arrived from it.
    guests: HashMap<u64, (Arc<Progressed>, Order)>,
    wake_every: u64,
    /// Frames whose sender (carried inside) was not the last `from`.
    mistagged: u64,
}

impl HostReader {
    /// Reads until it has its room's total (once known) or `until`; how its
    /// connection ended, if it did, and its read half for [`leave`].
    async fn read(
        mut self,
        mut rx: SplitStream<Ws>,
        mut total: watch::Receiver<Option<u64>>,
        until: Deadline,
    ) -> (Self, Option<String>, SplitStream<Ws>) {
        let (mut from, mut count) = (None, 0u64);
        loop {
            let known = *total.borrow();
            if known.is_some_and(|n| count >= n) {
                return (self, None, rx);
            }
            let m = tokio::select! {
                m = tokio::time::timeout_at(until, rx.next()) => m,
                // Watched only until the total is known (see `GuestReader::read`).
                r = total.changed(), if known.is_none() => match r {
                    Ok(()) => continue,
                    Err(_) => return (self, Some("the guests' senders are gone".into()), rx),
                },
            };
            match m {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    count += 1;
                    self.received.fetch_add(1, Ordering::Relaxed);
                    match (pairs::parse(&b), from) {
                        (Some((seq, id)), Some(f)) if id == f => {
                            if let Some((p, order)) = self.guests.get_mut(&id) {
                                order.see(seq);
                                p.advance(0, order.in_order, self.wake_every);
                            } else {
                                self.mistagged += 1;
                            }
                        }
                        _ => self.mistagged += 1,
                    }
                }
                Ok(Some(Ok(Message::Text(s)))) => {
                    if let Some(id) = rooms::from_tag(&s) {
                        from = Some(id);
                    }
                }
                Ok(Some(Ok(Message::Close(c)))) => {
                    return (self, Some(format!("closed: {c:?}")), rx);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return (self, Some(e.to_string()), rx),
                Ok(None) => return (self, Some("connection ended".into()), rx),
                Err(_) => return (self, Some("timed out".into()), rx),
            }
        }
    }

    /// The room's problems against what each guest `sent`.
    fn problems(
        &self,
        room: usize,
        sent: &HashMap<u64, u64>,
        ended: Option<String>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if self.mistagged > 0 {
            out.push(format!(
                "room {room}: {} frames under another guest's from",
                self.mistagged
            ));
        }
        if let Some(e) = ended {
            out.push(format!("room {room}'s host: {e}"));
        }
        for (id, n) in sent {
            let order = self.guests.get(id).map(|(_, o)| *o).unwrap_or_default();
            if !order.complete(*n) {
                out.push(format!(
                    "room {room} guest {id}: {} of {n} frames missing at the host, {} duplicated",
                    order.missing(*n),
                    order.duplicated
                ));
            }
        }
        out
    }
}
