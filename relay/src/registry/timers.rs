//! Timers of the in-memory registry (code expiry, grace periods), kept in
//! one ordered map behind one actix timer.
//!
//! Why not a `run_later` per deadline: actix polls every pending future of a
//! context on each wake-up, so with N live codes every registry message cost
//! O(N) timer polls; at a few thousand sessions that was most of the
//! registry's CPU, and set-up rate fell as sessions grew.

use std::collections::BTreeMap;
use tokio::time::Instant;

/// Names one scheduled deadline, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key(Instant, u64);

/// Timers in time order, each carrying what to do when it passes.
#[derive(Debug)]
pub struct Timers<T> {
    due: BTreeMap<Key, T>,
    next_id: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            due: BTreeMap::new(),
            next_id: 0,
        }
    }
}

impl<T> Timers<T> {
    /// Schedules `what` for `at`.
    pub fn insert(&mut self, at: Instant, what: T) -> Key {
        self.next_id += 1;
        let key = Key(at, self.next_id);
        self.due.insert(key, what);
        key
    }

    /// Cancels a deadline; a passed or unknown key is ignored.
    pub fn remove(&mut self, key: Key) {
        self.due.remove(&key);
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.due.keys().next().map(|k| k.0)
    }

    /// Takes every deadline at or before `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            out.push(entry.remove());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_deadlines_come_out_in_order_and_cancelled_ones_never() {
        let t0 = Instant::now();
        let mut d = Timers::default();
        let late = d.insert(t0 + Duration::from_secs(3), "late");
        d.insert(t0 + Duration::from_secs(1), "first");
        let gone = d.insert(t0 + Duration::from_secs(2), "cancelled");
        d.insert(t0 + Duration::from_secs(1), "same instant, later");
        d.remove(gone);
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            d.take_due(t0 + Duration::from_secs(2)),
            vec!["first", "same instant, later"]
        );
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(3)));
        d.remove(late);
        d.remove(late);
        assert_eq!(d.next(), None);
        assert!(d.take_due(t0 + Duration::from_secs(9)).is_empty());
    }
}
