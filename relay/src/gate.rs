//! A sender's valve: while closed, the socket reads nothing more from its
//! client, so TCP pushes back on it. Whoever paused the sender opens it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// A sender's valve: while closed, the socket reads nothing more from its client.
#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    /// An open gate.
    pub fn new() -> Arc<Self> {
        Arc::new(Gate::default())
    }

    /// Closes the gate: the reader stops at its next frame.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Opens the gate and wakes the reader waiting on it.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Ready when the gate is open; otherwise remembers `cx` to be woken.
    pub fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_closed() {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        // It may have opened between the check and storing the waker.
        if self.is_closed() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_closed_gate_is_pending_until_opened_and_then_wakes_its_reader() {
        let gate = Gate::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(gate.poll_open(&mut cx).is_ready());
        gate.close();
        assert!(gate.poll_open(&mut cx).is_pending());
        gate.open();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(gate.poll_open(&mut cx).is_ready());
        // Opening again wakes nobody: the waker was taken.
        gate.open();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}
