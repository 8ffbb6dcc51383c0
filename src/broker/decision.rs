//! How the consumer settles a delivery, decided without I/O: every way a
//! delivery can end ([`Handled`], typed, errors included) meets its
//! disposition in one function, [`decide`], with the delivery's attempt
//! number, the attempts allowed and whether shutdown is under way. The
//! consumer then carries the decision out (acks, republishes, nacks).

use crate::domain::{CommandError, RunSummary};
use crate::export::Ended;
use crate::store::StoreError;

/// What handling one delivery came to, before it is settled.
#[derive(Debug)]
pub(crate) enum Handled {
    /// The body is not a valid generation command.
    Unparsable(CommandError),
    /// A scheduled slot ahead of this replica's clock (beyond the skew
    /// allowance) that no replica recorded as fired.
    NotYetDue {
        /// The slot's id.
        slot: String,
        /// How far ahead, in seconds.
        ahead_s: i64,
    },
    /// A completed run already carries the command's slot or id.
    AlreadyDone,
    /// MongoDB could not say whether the command is due or done.
    Unchecked(StoreError),
    /// The deanery's export ran, or was skipped, and how it ended.
    Ran(Box<RunSummary>, Ended),
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// The work is done (or was already): acknowledge.
    Ack,
    /// Republish, confirmed, to the retry queue as this attempt; then ack.
    Retry {
        /// The next attempt's number.
        attempt: i64,
        /// Why it is tried again, for the log.
        reason: String,
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

/// The disposition of a delivery handled as `handled`:
///
/// - completed, or already done: ack;
/// - unparsable, or failed for good: dead-letter with the error;
/// - an export that may succeed later, during shutdown: requeue;
/// - skipped (another replica holds the lease and is exporting): retry
///   without using up an attempt, as its run may be long;
/// - not yet due, unchecked, interrupted or failed transiently: retry, or
///   dead-letter once `max_attempts` are used up.
pub(crate) fn decide(
    handled: &Handled,
    attempt: i64,
    max_attempts: u32,
    shutting_down: bool,
) -> Disposition {
    let retry = |attempt, reason| retry_or_give_up(attempt, max_attempts, reason);
    match handled {
        Handled::AlreadyDone | Handled::Ran(_, Ended::Ran(Ok(()))) => Disposition::Ack,
        Handled::Unparsable(err) => dead_letter(err),
        Handled::NotYetDue { slot, ahead_s } => retry(
            attempt,
            format!("slot {slot} is {ahead_s} s ahead of this replica's clock and no replica recorded it as fired"),
        ),
        Handled::Unchecked(err) if err.is_transient() => retry(attempt, crate::error_chain::chain(err)),
        Handled::Unchecked(err) => dead_letter(err),
        Handled::Ran(..) if shutting_down && handled_retryable(handled) => Disposition::Requeue,
        Handled::Ran(_, Ended::Held(reason)) => retry(attempt - 1, reason.clone()),
        Handled::Ran(_, Ended::Ran(Err(err))) if err.is_transient() => {
            retry(attempt, crate::error_chain::chain(err))
        }
        Handled::Ran(_, Ended::Ran(Err(err))) => dead_letter(err),
    }
}

/// True when the export may succeed later: skipped, interrupted, or
/// failed transiently.
fn handled_retryable(handled: &Handled) -> bool {
    match handled {
        Handled::Ran(_, Ended::Held(_)) => true,
        Handled::Ran(_, Ended::Ran(Err(err))) => err.is_transient(),
        _ => false,
    }
}

fn dead_letter(err: &(dyn std::error::Error + 'static)) -> Disposition {
    Disposition::DeadLetter {
        reason: crate::error_chain::chain(err),
    }
}

/// A transient failure on `attempt`: retry as the next attempt, or
/// dead-letter once `max_attempts` are used up.
fn retry_or_give_up(attempt: i64, max_attempts: u32, reason: String) -> Disposition {
    if attempt >= i64::from(max_attempts) {
        Disposition::DeadLetter {
            reason: format!("gave up after {attempt} attempts; last error: {reason}"),
        }
    } else {
        Disposition::Retry {
            attempt: attempt + 1,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GenerationCommand, RunEnd};
    use crate::export::ExportError;

    fn ran(ended: Ended) -> Handled {
        let summary = RunSummary {
            deanery: "MER".to_owned(),
            run_id: None,
            end: RunEnd::Completed,
            exported: 0,
            rejected: 0,
            file: None,
            published_to: None,
            transactions: 0,
            retries: 0,
            write_conflicts: 0,
            duration_ms: 0,
            resumed: false,
        };
        Handled::Ran(Box::new(summary), ended)
    }

    fn transient() -> Handled {
        ran(Ended::Ran(Err(ExportError::File {
            dir: "/exports".into(),
            source: std::io::Error::other("boom"),
        })))
    }

    fn permanent() -> Handled {
        ran(Ended::Ran(Err(ExportError::Inconsistent {
            run_id: "r".to_owned(),
            reason: "boom".to_owned(),
        })))
    }

    fn skipped() -> Handled {
        ran(Ended::Held("held".to_owned()))
    }

    fn attempt_of(disposition: &Disposition) -> Option<i64> {
        match disposition {
            Disposition::Retry { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    fn is_dead_lettered(disposition: &Disposition) -> bool {
        matches!(disposition, Disposition::DeadLetter { .. })
    }

    #[test]
    fn a_completed_run_or_one_already_done_is_acked_even_during_shutdown() {
        for shutting_down in [false, true] {
            let done = ran(Ended::Ran(Ok(())));
            assert_eq!(decide(&done, 10, 10, shutting_down), Disposition::Ack);
            let already = Handled::AlreadyDone;
            assert_eq!(decide(&already, 10, 10, shutting_down), Disposition::Ack);
        }
    }

    #[test]
    fn a_retryable_run_interrupted_by_shutdown_is_requeued() {
        let interrupted = ran(Ended::Ran(Err(ExportError::Interrupted(
            crate::export::Interruption::Shutdown,
        ))));
        for run in [interrupted, transient(), skipped()] {
            assert_eq!(decide(&run, 3, 10, true), Disposition::Requeue, "{run:?}");
        }
        assert!(is_dead_lettered(&decide(&permanent(), 3, 10, true)));
    }

    #[test]
    fn a_transient_failure_is_retried_as_the_next_attempt_until_the_last() {
        let run = transient();
        assert_eq!(attempt_of(&decide(&run, 3, 10, false)), Some(4));
        match decide(&run, 10, 10, false) {
            Disposition::DeadLetter { reason } => {
                assert!(reason.starts_with("gave up after 10 attempts; last error: failed to write export file in /exports"), "{reason}");
                assert!(reason.contains("boom"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_skipped_run_waits_without_using_up_an_attempt() {
        let run = skipped();
        assert_eq!(attempt_of(&decide(&run, 3, 10, false)), Some(3));
        assert_eq!(attempt_of(&decide(&run, 10, 10, false)), Some(10));
        assert!(is_dead_lettered(&decide(&run, 11, 10, false)));
    }

    #[test]
    fn a_permanent_failure_or_a_bad_body_is_dead_lettered_with_its_error() {
        let bad = GenerationCommand::parse(b"not json").unwrap_err();
        let said = bad.to_string();
        match decide(&Handled::Unparsable(bad), 1, 10, false) {
            Disposition::DeadLetter { reason } => assert!(reason.contains(&said), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&permanent(), 1, 10, false),
            Disposition::DeadLetter {
                reason: "export run r is inconsistent: boom".to_owned()
            }
        );
    }

    #[test]
    fn a_slot_not_yet_due_is_retried_then_given_up_and_says_why() {
        let ahead = Handled::NotYetDue {
            slot: "2026-12-07T13:00:00Z".to_owned(),
            ahead_s: 600,
        };
        match decide(&ahead, 1, 2, true) {
            Disposition::Retry { attempt: 2, reason } => {
                assert!(reason.contains("600 s ahead"), "{reason}");
            }
            other => panic!("not requeued, even during shutdown: {other:?}"),
        }
        assert!(is_dead_lettered(&decide(&ahead, 2, 2, false)));
    }
}
