//! How background work that will try again (the stuck-record check, the
//! waiting-records count, a slot being fired, start-up's wait for a
//! dependency) says its failures: a WARN each time, and one ERROR once it
//! has kept failing for longer than its bound, so a blip of MongoDB pages
//! nobody and an outage pages once. A success after an ERROR is said at
//! INFO.

use std::time::Duration;

use tokio::time::Instant;

/// No bound is shorter than this: a primary's election, a rolling restart
/// or a 20-second black hole stays a WARN.
pub(crate) const MIN_BOUND: Duration = Duration::from_secs(60);

/// How a failure is to be said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Say {
    /// Within the bound, or after the streak's ERROR was said.
    Warn,
    /// The first failure past the bound: said once per streak.
    Error {
        /// How long it has been failing.
        failing_for: Duration,
    },
}

/// The failures of one piece of work since its last success.
#[derive(Debug, Clone)]
pub(crate) struct FailureStreak {
    bound: Duration,
    since: Option<Instant>,
    escalated: bool,
}

impl FailureStreak {
    /// A streak that escalates past `bound` (at least [`MIN_BOUND`]).
    pub(crate) fn new(bound: Duration) -> Self {
        Self {
            bound: bound.max(MIN_BOUND),
            since: None,
            escalated: false,
        }
    }

    /// The bound past which a failure is an ERROR.
    pub(crate) fn bound(&self) -> Duration {
        self.bound
    }

    /// Records a failure now; how to say it.
    pub(crate) fn failed(&mut self) -> Say {
        self.failed_at(Instant::now())
    }

    fn failed_at(&mut self, now: Instant) -> Say {
        let since = *self.since.get_or_insert(now);
        let failing_for = now.saturating_duration_since(since);
        if failing_for > self.bound && !self.escalated {
            self.escalated = true;
            return Say::Error { failing_for };
        }
        Say::Warn
    }

    /// Records a success: the streak ends. How long it had failed, if it
    /// was said at ERROR (the recovery is then worth an INFO).
    pub(crate) fn succeeded(&mut self) -> Option<Duration> {
        let since = self.since.take()?;
        let escalated = std::mem::take(&mut self.escalated);
        escalated.then(|| since.elapsed())
    }
}

/// Says one failure of `what` as the streak decides: `error` is the
/// failure's chain, `next` what happens next ("trying again next period").
pub(crate) fn say_failure(streak: &mut FailureStreak, what: &str, error: &str, next: &str) {
    match streak.failed() {
        Say::Warn => tracing::warn!(error, "{what} failed; {next}"),
        Say::Error { failing_for } => tracing::error!(
            error,
            failing_for_seconds = failing_for.as_secs(),
            bound_seconds = streak.bound().as_secs(),
            "{what} has kept failing past its bound; {next}"
        ),
    }
}

/// Says the end of a streak that was said at ERROR.
pub(crate) fn say_recovery(streak: &mut FailureStreak, what: &str) {
    if let Some(failed_for) = streak.succeeded() {
        tracing::info!(
            failed_for_seconds = failed_for.as_secs(),
            "{what} works again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_within_the_bound_are_warnings_and_past_it_one_error() {
        let start = Instant::now();
        let mut streak = FailureStreak::new(Duration::from_secs(90));
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(streak.failed_at(at(0)), Say::Warn);
        assert_eq!(
            streak.failed_at(at(90)),
            Say::Warn,
            "at the bound, not past it"
        );
        assert_eq!(
            streak.failed_at(at(91)),
            Say::Error {
                failing_for: Duration::from_secs(91)
            }
        );
        assert_eq!(streak.failed_at(at(300)), Say::Warn, "one ERROR per streak");
        assert!(
            streak.succeeded().is_some(),
            "the recovery of an ERROR is said"
        );
        assert_eq!(streak.failed_at(at(400)), Say::Warn, "a new streak starts");
        assert!(
            streak.succeeded().is_none(),
            "a streak of warnings ends quietly"
        );
    }

    #[test]
    fn no_bound_is_shorter_than_a_minute() {
        let start = Instant::now();
        let mut streak = FailureStreak::new(Duration::from_secs(2));
        assert_eq!(streak.bound(), MIN_BOUND);
        for s in 0..=60 {
            let said = streak.failed_at(start + Duration::from_secs(s));
            assert_eq!(said, Say::Warn, "a 20 s, or 60 s, outage stays a WARN");
        }
        assert!(matches!(
            streak.failed_at(start + Duration::from_secs(61)),
            Say::Error { .. }
        ));
    }
}
