//! The open connections of this node, for what must reach every socket from
//! outside its actor: draining in batches, and the liveness backstop that cuts
//! sockets whose actor cannot run. Never touches session state.
//!
//! Why a backstop: a socket's actor closes a silent client itself, with its
//! heartbeat; the sweep here cuts any that slipped through (an actor held in
//! a wait, a bug) at the TCP level, through the socket's [`Killer`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::task::AtomicWaker;

/// Identifies one WebSocket connection for its whole life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// A fresh id, unique within this process.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Cuts a client's connection from any thread: the socket's actor drops
/// its TCP stream at its next poll, which this wakes. The actor owns its
/// stream and never waits on a full socket, so it always gets that poll.
#[derive(Debug, Default)]
pub struct Killer {
    cut: AtomicBool,
    waker: AtomicWaker,
}

impl Killer {
    /// A killer for one connection, not cut.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cuts the connection: the client sees it drop, without a close frame.
    pub fn kill(&self) {
        self.cut.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the connection was cut; otherwise wakes `cx` when it is.
    pub fn poll_cut(&self, cx: &Context<'_>) -> bool {
        if self.cut.load(Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.cut.load(Ordering::Acquire)
    }

    /// Kills the socket after `linger`, giving a client that still reads the
    /// chance to see the close frame first.
    pub fn kill_after(self: &Arc<Self>, linger: Duration) {
        let me = Arc::clone(self);
        actix::spawn(async move {
            tokio::time::sleep(linger).await;
            me.kill();
        });
    }
}

/// Something the node asks of a socket from outside its session.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum ConnCommand {
    /// The node drains: send `SHUTTING_DOWN` and close with 1012.
    Drain,
    /// A newer connection resumed this side: close with 4001.
    Replaced,
    /// The room's host ended this guest (`DENIED`, `REMOVED`): say so and
    /// close with 1000 at once, whatever is still queued for it.
    Ended(relay_protocol::ErrorCode),
}

/// What the tracker keeps per connection.
struct Entry {
    /// The socket actor, for commands.
    commands: Recipient<ConnCommand>,
    /// Milliseconds since the tracker's epoch when the client last proved alive.
    alive: Arc<AtomicU64>,
    /// Cuts the TCP socket when the actor cannot run.
    killer: Option<Arc<Killer>>,
}

/// How often [`Connections::sweep`] should run; also the resolution of the
/// liveness stamps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Liveness stamp shared between a socket actor and the tracker.
#[derive(Clone)]
pub struct Liveness {
    /// The tracker's coarse clock (see [`Connections::sweep`]).
    clock: Arc<AtomicU64>,
    alive: Arc<AtomicU64>,
}

impl Liveness {
    /// Records that the client proved alive now.
    pub fn touch(&self) {
        // Called for every frame read: a clock read here was 5% of the
        // forwarding CPU, and the sweep only needs seconds.
        let now = self.clock.load(Ordering::Relaxed);
        if self.alive.load(Ordering::Relaxed) != now {
            self.alive.store(now, Ordering::Relaxed);
        }
    }
}

/// Every open WebSocket connection of the node.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Mutex<HashMap<ConnId, Entry>>>,
    epoch: Instant,
    /// Milliseconds since `epoch`, advanced by each sweep: a clock the
    /// per-frame path can read without a system call.
    clock: Arc<AtomicU64>,
    /// Sockets whose actor stopped and whose last bytes (a drain's
    /// SHUTTING_DOWN and close frame) are still being written.
    closing: Arc<AtomicUsize>,
}

/// Held while a stopped socket writes its last bytes: a drain waits for it.
pub struct Closing(Arc<AtomicUsize>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Connections {
    fn default() -> Self {
        Self::new()
    }
}

impl Connections {
    /// An empty tracker.
    pub fn new() -> Self {
        Connections {
            inner: Arc::default(),
            epoch: Instant::now(),
            clock: Arc::default(),
            closing: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (each operation is one insert/remove), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection; returns its liveness stamp.
    pub fn add(
        &self,
        id: ConnId,
        commands: Recipient<ConnCommand>,
        killer: Option<Arc<Killer>>,
    ) -> Liveness {
        let live = Liveness {
            clock: Arc::clone(&self.clock),
            alive: Arc::new(AtomicU64::new(self.clock.load(Ordering::Relaxed))),
        };
        self.lock().insert(
            id,
            Entry {
                commands,
                alive: Arc::clone(&live.alive),
                killer,
            },
        );
        live
    }

    /// Removes a connection (its actor stopped).
    pub fn remove(&self, id: ConnId) {
        self.lock().remove(&id);
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts a stopped socket as still closing until the guard drops.
    pub fn closing(&self) -> Closing {
        self.closing.fetch_add(1, Ordering::Relaxed);
        Closing(Arc::clone(&self.closing))
    }

    /// Whether no connection is open or still writing its last bytes.
    pub fn settled(&self) -> bool {
        self.is_empty() && self.closing.load(Ordering::Relaxed) == 0
    }

    /// Ids of every open connection.
    pub fn ids(&self) -> Vec<ConnId> {
        self.lock().keys().copied().collect()
    }

    /// Sends `cmd` to the given connections that are still open.
    pub fn command(&self, ids: &[ConnId], cmd: ConnCommand) {
        let map = self.lock();
        for id in ids {
            if let Some(e) = map.get(id) {
                e.commands.do_send(cmd);
            }
        }
    }

    /// Cuts every connection silent for longer than `silence`; returns how many.
    ///
    /// The socket actors close silent clients themselves with a close frame;
    /// this only catches those that slipped through (an actor held in a wait).
    pub fn sweep(&self, silence: Duration) -> usize {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.clock.store(now, Ordering::Relaxed);
        // Stamps are as old as the sweep before them: allow one period more.
        let limit = (silence + SWEEP_EVERY).as_millis() as u64;
        let map = self.lock();
        let mut cut = 0;
        for e in map.values() {
            if now.saturating_sub(e.alive.load(Ordering::Relaxed)) > limit {
                if let Some(k) = &e.killer {
                    k.kill();
                    cut += 1;
                }
            }
        }
        cut
    }
}
