//! How the consumer settles a delivery, decided without I/O: from the
//! export attempt's summary, the delivery's attempt number, the attempts
//! allowed and whether shutdown is under way. The consumer then carries
//! the decision out (acks, republishes, nacks).

use crate::domain::AttemptEnd;

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// The work is done (or was already): acknowledge.
    Ack,
    /// Republish, confirmed, to the retry queue as this attempt; then ack.
    Retry {
        /// The next attempt's number.
        attempt: i64,
    },
    /// Republish, confirmed, to the dead-letter exchange; then ack.
    DeadLetter {
        /// Why, for the log and the `x-esr-dead-letter-reason` header.
        reason: String,
    },
    /// Shutdown interrupted the run at a safe point: nack with requeue so
    /// another replica (or the next start) resumes it.
    Requeue,
}

/// The disposition of a delivery whose export attempt ended with `end`.
///
/// - completed: ack;
/// - anything else that may succeed later, during shutdown: requeue;
/// - skipped (another replica holds the lease and is exporting): retry
///   without using up an attempt, as its run may be long;
/// - interrupted or failed transiently: retry, or dead-letter once
///   `max_attempts` are used up;
/// - failed for good: dead-letter with the run's error.
pub(crate) fn decide(
    end: &AttemptEnd,
    attempt: i64,
    max_attempts: u32,
    shutting_down: bool,
) -> Disposition {
    match end {
        AttemptEnd::Completed => Disposition::Ack,
        _ if shutting_down && end.is_retryable() => Disposition::Requeue,
        AttemptEnd::Skipped { reason } => retry_or_give_up(attempt - 1, max_attempts, reason),
        AttemptEnd::Interrupted { error } | AttemptEnd::Transient { error } => {
            retry_or_give_up(attempt, max_attempts, error)
        }
        AttemptEnd::Permanent { error } => Disposition::DeadLetter {
            reason: error.clone(),
        },
    }
}

/// A transient failure on `attempt`: retry as the next attempt, or
/// dead-letter once `max_attempts` are used up.
pub(crate) fn retry_or_give_up(attempt: i64, max_attempts: u32, error: &str) -> Disposition {
    if attempt >= i64::from(max_attempts) {
        Disposition::DeadLetter {
            reason: format!("gave up after {attempt} attempts; last error: {error}"),
        }
    } else {
        Disposition::Retry {
            attempt: attempt + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> AttemptEnd {
        AttemptEnd::Transient {
            error: "boom".to_owned(),
        }
    }

    fn skipped() -> AttemptEnd {
        AttemptEnd::Skipped {
            reason: "held".to_owned(),
        }
    }

    #[test]
    fn a_completed_run_is_acked_even_during_shutdown() {
        let done = AttemptEnd::Completed;
        assert_eq!(decide(&done, 1, 10, false), Disposition::Ack);
        assert_eq!(decide(&done, 10, 10, true), Disposition::Ack);
    }

    #[test]
    fn a_retryable_run_interrupted_by_shutdown_is_requeued() {
        let interrupted = AttemptEnd::Interrupted {
            error: "shutdown".to_owned(),
        };
        for run in [interrupted, transient(), skipped()] {
            assert_eq!(decide(&run, 3, 10, true), Disposition::Requeue);
        }
    }

    fn retry(attempt: i64) -> Disposition {
        Disposition::Retry { attempt }
    }

    #[test]
    fn a_transient_failure_is_retried_as_the_next_attempt_until_the_last() {
        let run = transient();
        assert_eq!(decide(&run, 3, 10, false), retry(4));
        let reason = "gave up after 10 attempts; last error: boom".to_owned();
        assert_eq!(
            decide(&run, 10, 10, false),
            Disposition::DeadLetter { reason }
        );
    }

    #[test]
    fn a_skipped_run_waits_without_using_up_an_attempt() {
        let run = skipped();
        assert_eq!(decide(&run, 3, 10, false), retry(3));
        assert_eq!(decide(&run, 10, 10, false), retry(10));
        let gone = decide(&run, 11, 10, false);
        assert!(matches!(gone, Disposition::DeadLetter { .. }), "{gone:?}");
    }

    #[test]
    fn a_permanent_failure_is_dead_lettered_with_its_error() {
        let run = AttemptEnd::Permanent {
            error: "boom".to_owned(),
        };
        for shutting_down in [false, true] {
            assert_eq!(
                decide(&run, 1, 10, shutting_down),
                Disposition::DeadLetter {
                    reason: "boom".to_owned()
                }
            );
        }
    }

    #[test]
    fn retry_or_give_up_counts_attempts_against_the_limit() {
        assert_eq!(retry_or_give_up(1, 2, "e"), retry(2));
        assert!(matches!(
            retry_or_give_up(2, 2, "e"),
            Disposition::DeadLetter { .. }
        ));
    }
}
