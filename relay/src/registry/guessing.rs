//! The ceiling on failed joins: the guard against guessing codes from many
//! addresses, which the per-address join rate alone cannot stop. Failed joins
//! (an unknown or expired code) are counted per wall-clock minute; once a
//! minute's count reaches the ceiling, every join is refused with
//! `RATE_LIMITED` until the minute ends. In a cluster the count lives in Redis
//! (see the `join` script), so the ceiling holds across all nodes; this type
//! is the single-node count. docs/security.md has the arithmetic.

use std::time::{SystemTime, UNIX_EPOCH};

/// The message a join refused by the ceiling gets.
pub const CEILING_MESSAGE: &str = "Too many wrong codes were tried on this relay in the last minute. Wait a minute, then type the code again.";

/// The current wall-clock minute (Unix time / 60), the window of the count.
///
/// Wall-clock rather than monotonic so every node of a cluster agrees on the
/// window (their clocks differ by far less than a minute).
pub fn current_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// Failed joins in the current minute, against a ceiling (0: none).
#[derive(Debug)]
pub struct FailedJoins {
    limit: u32,
    minute: u64,
    count: u32,
}

impl FailedJoins {
    /// A count with `limit` failed joins a minute; 0 never refuses.
    pub fn new(limit: u32) -> Self {
        FailedJoins {
            limit,
            minute: 0,
            count: 0,
        }
    }

    /// Whether a join in `minute` is refused because the ceiling is reached.
    pub fn refuses(&mut self, minute: u64) -> bool {
        self.roll(minute);
        self.limit > 0 && self.count >= self.limit
    }

    /// Counts one failed join in `minute`.
    pub fn failed(&mut self, minute: u64) {
        self.roll(minute);
        self.count = self.count.saturating_add(1);
    }

    fn roll(&mut self, minute: u64) {
        if minute != self.minute {
            self.minute = minute;
            self.count = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_holds_for_the_rest_of_the_minute_only() {
        let mut f = FailedJoins::new(3);
        for _ in 0..3 {
            assert!(!f.refuses(100));
            f.failed(100);
        }
        assert!(f.refuses(100));
        assert!(!f.refuses(101), "a new minute starts a new count");
    }

    #[test]
    fn zero_never_refuses() {
        let mut f = FailedJoins::new(0);
        for _ in 0..10_000 {
            f.failed(7);
        }
        assert!(!f.refuses(7));
    }
}
