//! The deadline of a set-up request (`Register`, `Join`, `Resume`): decided
//! once, by the socket when it asks, and carried in the message, so the socket
//! and the registry agree on when the answer is due. (The in-memory registry's
//! timers for code expiry and grace periods are `timers`, not this.)
//!
//! How every wait of a request relates to its deadline; all are in force at
//! once, and each says what it costs a client:
//!
//! | wait | bound | what a client sees when it runs out |
//! |------|-------|--------------------------------------|
//! | the request | deadline = asked + [`REQUEST_BUDGET`] (5 s) | an answer by then, normally far sooner |
//! | the socket's wait for the answer | deadline + [`REPLY_SLACK`] (1 s) | `UNAVAILABLE` at 6 s, only if the registry is jammed |
//! | a cluster resume queued behind another resume of its session | deadline − `HANDOVER_WAIT` (3 s after asking) | `UNAVAILABLE` then; retrying is safe |
//! | the handover from other nodes (cluster resume) | `HANDOVER_WAIT` (2 s), and no later than the deadline | resumed after 2 s without what a silent node held; cut at the deadline, `UNAVAILABLE` and the side left away, to resume again |
//! | each Redis call | `RELAY_REDIS_TIMEOUT` (1 s), not the deadline | `UNAVAILABLE` |
//!
//! The registry refuses a request whose deadline passed before it got to it
//! (a backlog in its mailbox), changing nothing. Just before it commits
//! (attaches the side, tells the peer) it checks the deadline again: past it,
//! the socket may have given up, so it undoes what it did and answers
//! `UNAVAILABLE`. The in-memory registry commits in the same step as it
//! checks, so it never has anything to undo.
//!
//! Redis calls are bounded by their own timeout rather than cut at the
//! deadline: a call cut short may still run in Redis, and only its reply says
//! what to undo. A call that ends past the deadline is caught by the check
//! before the commit.

use std::time::Duration;

use relay_protocol::ErrorCode;
use tokio::time::Instant;
use tracing::warn;

use super::Refusal;

/// How long the registry has to answer a set-up request. A client should get
/// an answer within a few seconds; the slowest normal answer is a cluster
/// resume that waits `HANDOVER_WAIT` (2 s) for a node that died, possibly
/// after another resume of its session did the same.
pub const REQUEST_BUDGET: Duration = Duration::from_secs(5);

/// How much longer than the deadline the socket waits for the answer. The
/// registry answers by the deadline, refusals included, unless a Redis call
/// ran long (up to `RELAY_REDIS_TIMEOUT`, 1 s by default) or the registry is
/// jammed; the slack lets that late answer still reach the client. A socket
/// that gives up all the same meets a registry that will find the deadline
/// passed and refuse on its own.
pub const REPLY_SLACK: Duration = Duration::from_secs(1);

/// The instant by which the registry must have answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    /// The deadline of a request asked now: [`REQUEST_BUDGET`] from now.
    pub fn for_request() -> Self {
        Deadline(Instant::now() + REQUEST_BUDGET)
    }

    /// A deadline at `at` (tests give requests short ones).
    #[cfg(test)]
    pub fn at(at: Instant) -> Self {
        Deadline(at)
    }

    /// The instant itself.
    #[cfg(test)]
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Whether the deadline has passed at `now`: the answer is no longer
    /// sure to reach a waiting socket.
    pub fn passed_at(self, now: Instant) -> bool {
        now >= self.0
    }

    /// Whether the deadline has passed.
    pub fn has_passed(self) -> bool {
        self.passed_at(Instant::now())
    }

    /// How long the socket waits for the answer from `now`: until the
    /// deadline, plus [`REPLY_SLACK`].
    pub fn reply_wait_at(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now) + REPLY_SLACK
    }

    /// How long the socket waits for the answer from now.
    pub fn reply_wait(self) -> Duration {
        self.reply_wait_at(Instant::now())
    }

    /// When a wait of at most `wait` that starts at `now` must end: after
    /// `wait`, and no later than the deadline.
    pub fn bound_at(self, now: Instant, wait: Duration) -> Instant {
        (now + wait).min(self.0)
    }

    /// When a wait of at most `wait` that starts now must end.
    pub fn bound(self, wait: Duration) -> Instant {
        self.bound_at(Instant::now(), wait)
    }

    /// The last instant a step that may need `reserve` can start and still
    /// end by the deadline. (An instant before the clock's start cannot be
    /// written; the deadline itself stands in for it, which cannot happen
    /// with a monotonic clock that started more than `reserve` ago.)
    pub fn latest_start(self, reserve: Duration) -> Instant {
        self.0.checked_sub(reserve).unwrap_or(self.0)
    }

    /// `Ok` while the deadline has not passed; else the refusal for the
    /// client (`UNAVAILABLE`), logged with the request's name.
    ///
    /// # Errors
    /// The refusal, once the deadline has passed.
    pub fn check(self, request: &'static str) -> Result<(), Refusal> {
        let now = Instant::now();
        if !self.passed_at(now) {
            return Ok(());
        }
        let late_ms = now.saturating_duration_since(self.0).as_millis() as u64;
        warn!(request, late_ms, "request deadline passed; refusing");
        Err(too_late())
    }
}

/// What a client is told when its request could not be answered by its deadline.
pub fn too_late() -> Refusal {
    Refusal::with(
        ErrorCode::Unavailable,
        "The relay could not answer in time. Try again in a few seconds.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_request_deadline_is_the_budget_from_now_and_the_socket_waits_the_slack_longer() {
        let before = Instant::now();
        let d = Deadline::for_request();
        let after = Instant::now();
        assert!(d.instant() >= before + REQUEST_BUDGET && d.instant() <= after + REQUEST_BUDGET);
        let now = d.instant() - REQUEST_BUDGET;
        assert_eq!(d.reply_wait_at(now), REQUEST_BUDGET + REPLY_SLACK);
        assert_eq!(d.reply_wait_at(now + 4_000 * MS), 1_000 * MS + REPLY_SLACK);
        // Asked after the deadline (a very late start): still the slack, never less.
        assert_eq!(d.reply_wait_at(d.instant() + 3_000 * MS), REPLY_SLACK);
    }

    #[test]
    fn a_deadline_has_passed_from_its_instant_on() {
        let t = Instant::now();
        let d = Deadline::at(t + 10 * MS);
        assert!(!d.passed_at(t));
        assert!(!d.passed_at(t + 9 * MS));
        assert!(d.passed_at(t + 10 * MS));
        assert!(d.passed_at(t + 11 * MS));
        assert!(Deadline::at(t).has_passed());
        assert!(!Deadline::for_request().has_passed());
    }

    #[test]
    fn a_bounded_wait_ends_after_its_length_or_at_the_deadline_whichever_is_first() {
        let t = Instant::now();
        let d = Deadline::at(t + 5_000 * MS);
        assert_eq!(d.bound_at(t, 2_000 * MS), t + 2_000 * MS);
        assert_eq!(d.bound_at(t + 3_000 * MS, 2_000 * MS), t + 5_000 * MS);
        assert_eq!(d.bound_at(t + 4_000 * MS, 2_000 * MS), t + 5_000 * MS);
        // Already past: the wait ends at once (an instant that has passed).
        assert_eq!(d.bound_at(t + 6_000 * MS, 2_000 * MS), t + 5_000 * MS);
    }

    #[test]
    fn a_step_that_needs_a_reserve_starts_no_later_than_the_deadline_less_the_reserve() {
        let t = Instant::now();
        let d = Deadline::at(t + REQUEST_BUDGET);
        assert_eq!(d.latest_start(2_000 * MS), t + 3_000 * MS);
        assert_eq!(d.latest_start(Duration::ZERO), d.instant());
        assert_eq!(d.latest_start(REQUEST_BUDGET), t);
    }

    #[test]
    fn a_late_request_is_refused_as_unavailable_with_a_sentence() {
        assert_eq!(Deadline::for_request().check("test"), Ok(()));
        let r = Deadline::at(Instant::now())
            .check("test")
            .expect_err("passed");
        assert_eq!(r.code, ErrorCode::Unavailable);
        assert!(r.message.is_some_and(|m| m.contains("in time")));
        assert_eq!(r.close, None);
    }
}
