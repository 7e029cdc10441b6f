//! When to reconnect: the backoff schedule and the decision a close code
//! implies. Pure (no clock, no randomness of its own), so it is tested
//! without sleeping.

use std::time::Duration;

use crate::CloseCode;

/// Exponential backoff with jitter: `first`, doubling up to `cap`, each delay
/// scaled by a random factor in `1 ± jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub first: Duration,
    /// Growth factor between retries.
    pub factor: f64,
    /// Longest delay (before jitter).
    pub cap: Duration,
    /// Relative spread of each delay (0.25 = 75–125 %).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 1 s, doubling, 30 s cap, 75–125 %.
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(30),
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based), given `random` in [0, 1).
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exp = self.factor.powi(attempt.saturating_sub(1).min(64) as i32);
        let base = (self.first.as_secs_f64() * exp).min(self.cap.as_secs_f64());
        let scale = 1.0 - self.jitter + 2.0 * self.jitter * random.clamp(0.0, 1.0);
        Duration::from_secs_f64(base * scale)
    }
}

/// What a client does after its connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterClose {
    /// Reconnect after the backoff delay and resume.
    Reconnect,
    /// Reconnect at once (with a little jitter) and resume: the node drains.
    ReconnectNow,
    /// Do not reconnect: the session is over or the relay refused the client.
    Stop,
}

/// The protocol's table: what a close code (or a drop without one) means.
pub fn after_close(code: Option<u16>) -> AfterClose {
    match code {
        None => AfterClose::Reconnect,
        Some(c) if c == CloseCode::Draining.code() => AfterClose::ReconnectNow,
        Some(c) if CloseCode::should_reconnect(c) => AfterClose::Reconnect,
        // 1005 (no status) is what a close without a code reads as.
        Some(1005) => AfterClose::Reconnect,
        Some(_) => AfterClose::Stop,
    }
}

/// Longest extra wait before reconnecting to a draining node's replacement,
/// so its clients do not all arrive in the same instant.
pub const DRAIN_JITTER: Duration = Duration::from_millis(500);

/// The reconnect state machine: counts attempts, applies the backoff and
/// the optional retry cap, resets on success.
#[derive(Debug, Clone)]
pub struct Reconnector {
    backoff: Backoff,
    max_retries: Option<u32>,
    attempt: u32,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Wait this long, then try (the attempt number is [`Reconnector::attempt`]).
    Retry(Duration),
    /// The retry cap is reached.
    GiveUp,
}

impl Reconnector {
    /// A state machine with no attempt made yet.
    pub fn new(backoff: Backoff, max_retries: Option<u32>) -> Self {
        Reconnector {
            backoff,
            max_retries,
            attempt: 0,
        }
    }

    /// The connection is up (and the session taken back): start over.
    pub fn connected(&mut self) {
        self.attempt = 0;
    }

    /// Retries made since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A connection failed or dropped; `random` in [0, 1).
    pub fn failed(&mut self, how: AfterClose, random: f64) -> Next {
        if self.max_retries.is_some_and(|max| self.attempt >= max) {
            return Next::GiveUp;
        }
        self.attempt += 1;
        match how {
            AfterClose::ReconnectNow if self.attempt == 1 => {
                Next::Retry(DRAIN_JITTER.mul_f64(random.clamp(0.0, 1.0)))
            }
            _ => Next::Retry(self.backoff.delay(self.attempt, random)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        (d.as_secs_f64() * 1000.0).round() / 1000.0
    }

    #[test]
    fn schedule_doubles_from_one_second_to_a_thirty_second_cap() {
        let b = Backoff::default();
        let mid: Vec<f64> = (1..=8).map(|a| secs(b.delay(a, 0.5))).collect();
        assert_eq!(mid, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        // The jitter spans 75–125 % of each delay.
        assert_eq!(secs(b.delay(1, 0.0)), 0.75);
        assert_eq!(secs(b.delay(1, 1.0)), 1.25);
        assert_eq!(secs(b.delay(6, 0.0)), 22.5);
        assert_eq!(secs(b.delay(6, 1.0)), 37.5);
        // Huge attempt numbers do not overflow.
        assert_eq!(secs(b.delay(u32::MAX, 0.5)), 30.0);
    }

    #[test]
    fn close_codes_decide_reconnect_or_stop() {
        for code in [1000, 1002, 1008, 1009, 4000, 4001] {
            assert_eq!(after_close(Some(code)), AfterClose::Stop, "{code}");
        }
        for code in [1001, 1006, 1011, 1013, 1005] {
            assert_eq!(after_close(Some(code)), AfterClose::Reconnect, "{code}");
        }
        assert_eq!(after_close(None), AfterClose::Reconnect);
        assert_eq!(after_close(Some(1012)), AfterClose::ReconnectNow);
    }

    #[test]
    fn attempts_count_up_reset_on_success_and_stop_at_the_cap() {
        let mut r = Reconnector::new(Backoff::default(), Some(3));
        let delays: Vec<Next> = (0..4)
            .map(|_| r.failed(AfterClose::Reconnect, 0.5))
            .collect();
        assert_eq!(
            delays,
            [
                Next::Retry(Duration::from_secs(1)),
                Next::Retry(Duration::from_secs(2)),
                Next::Retry(Duration::from_secs(4)),
                Next::GiveUp
            ]
        );
        r.connected();
        assert_eq!(r.attempt(), 0);
        assert_eq!(
            r.failed(AfterClose::Reconnect, 0.5),
            Next::Retry(Duration::from_secs(1))
        );
    }

    #[test]
    fn unlimited_by_default_and_a_drain_retries_at_once() {
        let mut r = Reconnector::new(Backoff::default(), None);
        match r.failed(AfterClose::ReconnectNow, 0.5) {
            Next::Retry(d) => assert!(d <= DRAIN_JITTER),
            Next::GiveUp => panic!("gave up"),
        }
        for _ in 0..1000 {
            assert!(matches!(
                r.failed(AfterClose::Reconnect, 0.9),
                Next::Retry(_)
            ));
        }
    }
}
