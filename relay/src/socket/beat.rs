//! The heartbeats of every socket of a worker thread behind one timer, in
//! place of an interval timer per socket (about 200 bytes each, and one
//! more timer per ping for its timeout). Every socket's pings are the same
//! interval apart and every timeout the same length, so the due times come
//! in the order they are added: two queues in time order, a weak address
//! (8 bytes) and a time per entry, and one task per thread that sleeps
//! until the first is due and tells its socket with a [`Beat`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use actix::WeakAddr;
use actix::prelude::*;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Socket;

/// What a socket's heartbeat asks of it now.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum Beat {
    /// Time to ping (and to be told [`Beat::Check`] after the timeout).
    Ping,
    /// The timeout after the ping sent at this time passed: was it answered?
    Check(std::time::Instant),
}

/// One thread's due beats.
#[derive(Default)]
struct Queues {
    /// Pings, due an interval after they were asked for.
    pings: VecDeque<(Instant, WeakAddr<Socket>)>,
    /// Checks, due a timeout after their ping.
    checks: VecDeque<(Instant, WeakAddr<Socket>, std::time::Instant)>,
}

struct Wheel {
    queues: RefCell<Queues>,
    /// Wakes the task when a queue that was empty gets an entry (the first
    /// due time can only move earlier then).
    added: Notify,
}

thread_local! {
    static WHEEL: RefCell<Option<Rc<Wheel>>> = const { RefCell::new(None) };
}

/// This thread's wheel; the first use starts its task.
fn wheel() -> Rc<Wheel> {
    WHEEL.with(|w| {
        Rc::clone(w.borrow_mut().get_or_insert_with(|| {
            let wheel = Rc::new(Wheel {
                queues: RefCell::default(),
                added: Notify::new(),
            });
            actix::spawn(run(Rc::clone(&wheel)));
            wheel
        }))
    })
}

/// Asks for a [`Beat::Ping`] to `socket` after `interval`.
pub fn ping_after(interval: Duration, socket: WeakAddr<Socket>) {
    let w = wheel();
    let mut q = w.queues.borrow_mut();
    let was_empty = q.pings.is_empty();
    q.pings.push_back((Instant::now() + interval, socket));
    if was_empty {
        w.added.notify_one();
    }
}

/// Asks for a [`Beat::Check`] of the ping sent at `sent` after `timeout`.
pub fn check_after(timeout: Duration, socket: WeakAddr<Socket>, sent: std::time::Instant) {
    let w = wheel();
    let mut q = w.queues.borrow_mut();
    let was_empty = q.checks.is_empty();
    q.checks.push_back((Instant::now() + timeout, socket, sent));
    if was_empty {
        w.added.notify_one();
    }
}

/// Sleeps until the first due beat, tells its socket, forever (the thread's
/// runtime ends it). A socket that stopped meanwhile is skipped.
async fn run(wheel: Rc<Wheel>) {
    loop {
        let next = {
            let mut q = wheel.queues.borrow_mut();
            let now = Instant::now();
            while let Some((_, s)) = q.pings.front().filter(|(at, _)| *at <= now) {
                if let Some(a) = s.upgrade() {
                    a.do_send(Beat::Ping);
                }
                q.pings.pop_front();
            }
            while let Some((_, s, sent)) = q.checks.front().filter(|(at, ..)| *at <= now) {
                if let Some(a) = s.upgrade() {
                    a.do_send(Beat::Check(*sent));
                }
                q.checks.pop_front();
            }
            // Gives back what a burst of connections grew.
            if q.pings.capacity() > 64 && q.pings.len() < q.pings.capacity() / 4 {
                q.pings.shrink_to_fit();
            }
            if q.checks.capacity() > 64 && q.checks.len() < q.checks.capacity() / 4 {
                q.checks.shrink_to_fit();
            }
            let first = [q.pings.front().map(|e| e.0), q.checks.front().map(|e| e.0)];
            first.into_iter().flatten().min()
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wheel.added.notified() => {}
                }
            }
            None => wheel.added.notified().await,
        }
    }
}

impl Handler<Beat> for Socket {
    type Result = ();

    fn handle(&mut self, beat: Beat, ctx: &mut Self::Context) {
        let cfg = std::sync::Arc::clone(&self.shared.config);
        match beat {
            Beat::Ping => {
                self.send_marker();
                let sent = std::time::Instant::now();
                // A virtual connection answers no pings: a receive open
                // now is its sign of life (one arriving later is `Heard`).
                if self.out.conn.as_ref().is_some_and(|c| c.receiving()) {
                    self.last_pong = sent;
                }
                let me = ctx.address().downgrade();
                check_after(cfg.heartbeat_timeout, me.clone(), sent);
                ping_after(cfg.heartbeat_interval, me);
            }
            // A paused socket reads nothing, its pongs included; its
            // client was sending, so it is alive.
            Beat::Check(sent) => {
                if self.last_pong < sent && !self.gate.is_closed() {
                    self.close(
                        ctx,
                        relay_protocol::CloseCode::GoingAway,
                        crate::metrics::DisconnectReason::HeartbeatTimeout,
                        "no pong",
                    );
                }
            }
        }
    }
}
