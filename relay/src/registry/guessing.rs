//! The answer to guessing codes from many addresses, which the per-address
//! join rate alone cannot stop. Failed joins (an unknown or expired code) are
//! counted per wall-clock minute; past the limit the relay is *under attack*
//! for a while (renewed by every failed join past it) and issues long codes
//! (28^8 instead of 28^6), which keeps guessing hopeless without refusing
//! anyone's join. In a cluster the count and the flag live in Redis (see the
//! `join` script), so they hold across all nodes; this type is the
//! single-node count. docs/joins-under-attack.md has the arithmetic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use relay_protocol::code::{CODE_LEN, LONG_CODE_LEN};

/// The current wall-clock minute (Unix time / 60), the window of the count.
///
/// Wall-clock rather than monotonic so every node of a cluster agrees on the
/// window (their clocks differ by far less than a minute).
pub fn current_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// Sets the under-attack gauge to `on`, logging when it changes (per node).
pub fn note_attack(gauge: &prometheus::IntGauge, on: bool) {
    let was = gauge.get() == 1;
    if on && !was {
        tracing::warn!("under a guessing attack: new codes have 8 characters");
    } else if was && !on {
        tracing::info!("the guessing attack is over: new codes have 6 characters");
    }
    gauge.set(i64::from(on));
}

/// The length of new codes: long while under attack.
pub fn code_len(under_attack: bool) -> usize {
    if under_attack {
        LONG_CODE_LEN
    } else {
        CODE_LEN
    }
}

/// Failed joins in the current minute, and whether that makes an attack.
#[derive(Debug)]
pub struct FailedJoins {
    limit: u32,
    attack_for: Duration,
    minute: u64,
    count: u32,
    attack_until: Option<Instant>,
}

impl FailedJoins {
    /// A count with `limit` failed joins a minute (0: never an attack) past
    /// which the relay is under attack for `attack_for`.
    pub fn new(limit: u32, attack_for: Duration) -> Self {
        FailedJoins {
            limit,
            attack_for,
            minute: 0,
            count: 0,
            attack_until: None,
        }
    }

    /// Counts one failed join in `minute`, at `now`; past the limit the
    /// attack starts or lasts `attack_for` from now.
    pub fn failed(&mut self, minute: u64, now: Instant) {
        if minute != self.minute {
            self.minute = minute;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.limit > 0 && self.count >= self.limit {
            self.attack_until = Some(now + self.attack_for);
        }
    }

    /// Whether the relay is under attack at `now`.
    pub fn under_attack(&self, now: Instant) -> bool {
        self.attack_until.is_some_and(|t| now < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attack_starts_at_the_limit_and_lasts_past_the_last_failure() {
        let t0 = Instant::now();
        let window = Duration::from_secs(600);
        let mut f = FailedJoins::new(3, window);
        f.failed(100, t0);
        f.failed(100, t0);
        assert!(!f.under_attack(t0));
        f.failed(100, t0);
        assert!(f.under_attack(t0));
        // A later failure past the limit renews the window.
        let t1 = t0 + Duration::from_secs(30);
        f.failed(100, t1);
        assert!(f.under_attack(t0 + window));
        assert!(!f.under_attack(t1 + window), "over once the window passes");
    }

    #[test]
    fn a_new_minute_starts_a_new_count() {
        let t0 = Instant::now();
        let mut f = FailedJoins::new(3, Duration::from_secs(600));
        f.failed(100, t0);
        f.failed(100, t0);
        f.failed(101, t0);
        f.failed(101, t0);
        assert!(!f.under_attack(t0));
    }

    #[test]
    fn zero_is_never_an_attack() {
        let t0 = Instant::now();
        let mut f = FailedJoins::new(0, Duration::from_secs(600));
        for _ in 0..10_000 {
            f.failed(7, t0);
        }
        assert!(!f.under_attack(t0));
        assert_eq!(code_len(false), 6);
        assert_eq!(code_len(true), 8);
    }
}
