//! The retry policy: which MongoDB errors are transient, and the bounded,
//! logged loops that retry them, for single operations and for whole
//! transactions.
//!
//! The driver's callback API (`and_run`) would retry for a fixed 120 s and
//! tell nobody; this module drives `start_transaction` /
//! `commit_transaction` / `abort_transaction` itself so that every retry is
//! bounded by settings and logged with its error code.

mod classify;
mod describe;
mod transaction;
mod write;

use std::future::{Future, IntoFuture};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use mongodb::error::Error as MongoError;

use crate::config::RetrySettings;

pub use classify::error_code;

pub(crate) use classify::{
    classify, is_duplicate_key, outcome_unknown, Phase, Transience, WRITE_CONFLICT,
};
pub(crate) use transaction::TransactionBody;

/// A store operation failed for good.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// A transient error kept coming back until the policy gave up.
    #[error("{op}: still failing after {attempts} attempts over {elapsed_ms} ms{}", shown_code(*.code))]
    Exhausted {
        /// What was being done.
        op: &'static str,
        /// Attempts made.
        attempts: u32,
        /// Time since the first attempt.
        elapsed_ms: u64,
        /// Code of the last error.
        code: Option<i32>,
        /// The last error.
        #[source]
        source: MongoError,
    },
    /// The server did not answer within `mongodb.operation_timeout_ms`
    /// (partitioned, frozen or overloaded): the attempt fails at once,
    /// transiently, and the next attempt resumes. Not retried in place: an
    /// operation that hung once would likely hang again, holding the lease.
    #[error("{op}: MongoDB did not answer within {bound_ms} ms (mongodb.operation_timeout_ms)")]
    TimedOut {
        /// What was being done.
        op: &'static str,
        /// The bound, in milliseconds.
        bound_ms: u64,
    },
    /// The driver gave up on the server before the bound passed (server
    /// selection timed out, or the server's monitor timed out and
    /// interrupted the operation): the attempt ends at once, as on
    /// [`RetryError::TimedOut`], and writes nothing more to the server.
    #[error("{op}: MongoDB unreachable (the driver gave up on the server): {}", describe::brief(.cause))]
    Unreachable {
        /// What was being done.
        op: &'static str,
        /// The driver's error, said briefly above (the ERROR logged when
        /// it happened carries it whole), so not a source to print again.
        cause: MongoError,
    },
    /// A permanent error: not retried.
    #[error("{op}: failed with a non-transient error{}", shown_code(*.code))]
    Permanent {
        /// What was being done.
        op: &'static str,
        /// Server error code, when there is one.
        code: Option<i32>,
        /// The error.
        #[source]
        source: MongoError,
    },
}

/// ` (error code 112)`, or nothing when the error carries no code (a
/// network error, a timeout).
fn shown_code(code: Option<i32>) -> String {
    code.map(|code| format!(" (error code {code})"))
        .unwrap_or_default()
}

impl RetryError {
    /// True when trying again later may succeed (the policy ran out, the
    /// error itself was transient).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Exhausted { .. } | Self::TimedOut { .. } | Self::Unreachable { .. }
        )
    }

    /// True when the server did not answer within the bound, or the driver
    /// gave up on it: writing anything more to it now would wait again.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::TimedOut { .. } | Self::Unreachable { .. })
    }

    /// The underlying driver error, if the server answered at all.
    pub fn mongo(&self) -> Option<&MongoError> {
        match self {
            Self::Exhausted { source, .. }
            | Self::Permanent { source, .. }
            | Self::Unreachable { cause: source, .. } => Some(source),
            Self::TimedOut { .. } => None,
        }
    }
}

/// Counts of MongoDB work, for a run's summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Transactions tried, first tries and whole-transaction retries.
    pub transactions: u32,
    /// Retries of anything (operations, transactions, commits).
    pub retries: u32,
    /// Errors with code 112 WriteConflict among them.
    pub write_conflicts: u32,
}

/// Where a store handle counts its work; shared by the handle's clones,
/// so a run's calls all add to its own.
#[derive(Debug, Default)]
pub struct Counters(std::sync::Mutex<Counts>);

impl Counters {
    /// What was counted so far.
    pub fn counts(&self) -> Counts {
        self.0
            .lock()
            .map_or_else(|poisoned| *poisoned.into_inner(), |counts| *counts)
    }

    /// Adds to the counts.
    pub(crate) fn add(&self, count: impl FnOnce(&mut Counts)) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        count(&mut counts);
    }
}

/// What a retry is about, for the log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryScope<'a> {
    /// Operation name, e.g. `claim_chunk`.
    pub(crate) op: &'static str,
    /// Deanery being exported, when there is one.
    pub deanery: Option<&'a str>,
}

impl RetryScope<'static> {
    /// A scope that belongs to no deanery (slots, leases, indexes).
    pub(crate) const fn global(op: &'static str) -> Self {
        RetryScope { op, deanery: None }
    }
}

impl RetryScope<'_> {
    /// The span a retry's log lines are said in: it carries the deanery,
    /// which an export run's own span carries too (a JSON line keeps one,
    /// the innermost), so a line says it once inside a run and still says
    /// it outside one (a CLI command, the watchdog). ERROR-level, so it is
    /// there whenever the line itself is.
    fn span(&self) -> tracing::Span {
        tracing::error_span!("mongodb_op", deanery = self.deanery)
    }

    /// Says `log` inside [`RetryScope::span`].
    pub(crate) fn say(&self, log: impl FnOnce()) {
        self.span().in_scope(log);
    }
}

/// Bounded exponential backoff with full jitter (`backon`), shared by every
/// store operation, and the deadline of each single try. Counts attempts
/// so run summaries can report them.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    settings: RetrySettings,
    /// How long one try of an operation may take before the attempt fails
    /// (`mongodb.operation_timeout_ms`): the client-side backstop of the
    /// server-side `maxTimeMS`, `wtimeout` and `maxCommitTimeMS`, and the
    /// only bound on a server that stops answering (the driver has no
    /// socket timeout).
    deadline: Duration,
    /// Whether the caller says a failure itself (a one-shot command such
    /// as `status`): an unreachable or silent server is then logged at
    /// DEBUG here, so the failure is said once.
    said_by_caller: bool,
}

impl RetryPolicy {
    /// A policy from `[retry]` settings, each try bounded by `deadline`.
    pub(crate) fn new(settings: RetrySettings, deadline: Duration) -> Self {
        Self {
            settings,
            deadline,
            said_by_caller: false,
        }
    }

    /// The same policy for a caller that says its failures itself.
    pub(crate) fn said_by_caller(mut self) -> Self {
        self.said_by_caller = true;
        self
    }

    /// How long one try may take.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The same policy with another deadline, for the rare operation that
    /// legitimately runs long (an index build).
    pub(crate) fn with_deadline(&self, deadline: Duration) -> Self {
        Self {
            settings: self.settings.clone(),
            deadline,
            said_by_caller: self.said_by_caller,
        }
    }

    /// Runs one try of `op` within the deadline. A try that does not end
    /// in time fails the attempt: logged at WARN, naming the operation and
    /// the bound.
    ///
    /// # Errors
    /// [`RetryError::TimedOut`].
    pub(crate) async fn bounded<T>(
        &self,
        scope: RetryScope<'_>,
        op: impl IntoFuture<Output = T>,
    ) -> Result<T, RetryError> {
        tokio::time::timeout(self.deadline, op)
            .await
            .map_err(|_| self.timed_out(scope))
    }

    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.min_delay_ms))
            .with_max_delay(Duration::from_millis(self.settings.max_delay_ms))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
            .build()
    }

    /// The next delay, or `None` once attempts or elapsed time run out.
    fn next_delay(
        &self,
        backoff: &mut impl Iterator<Item = Duration>,
        started: Instant,
    ) -> Option<Duration> {
        let delay = backoff.next()?;
        let budget = Duration::from_millis(self.settings.max_elapsed_ms);
        (started.elapsed() + delay <= budget).then_some(delay)
    }

    /// Runs `op` until it succeeds, a permanent error occurs, or the policy
    /// is exhausted. Retries are counted in `counters`.
    ///
    /// # Errors
    /// [`RetryError`] with the last error.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        scope: RetryScope<'_>,
        counters: &Counters,
        mut op: F,
    ) -> Result<T, RetryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, MongoError>>,
    {
        let started = Instant::now();
        let mut backoff = self.backoff();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match self.bounded(scope, op()).await? {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            match classify(&err, Phase::Operation) {
                Transience::Permanent | Transience::TooLarge => {
                    return Err(permanent(scope.op, err))
                }
                Transience::Unreachable => return Err(self.unreachable(scope, err)),
                _ => {}
            }
            self.wait_or_give_up(scope, attempt, started, &mut backoff, err, counters)
                .await?;
        }
    }

    /// Logs the retry and sleeps, or returns the exhausted error.
    async fn wait_or_give_up(
        &self,
        scope: RetryScope<'_>,
        attempt: u32,
        started: Instant,
        backoff: &mut impl Iterator<Item = Duration>,
        err: MongoError,
        counters: &Counters,
    ) -> Result<(), RetryError> {
        let code = error_code(&err);
        if code == Some(WRITE_CONFLICT) {
            counters.add(|c| c.write_conflicts += 1);
        }
        match self.next_delay(backoff, started) {
            Some(delay) => {
                counters.add(|c| c.retries += 1);
                scope.say(|| {
                    tracing::warn!(
                        op = scope.op,
                        attempt,
                        error_code = code,
                        delay_ms = delay.as_millis() as u64,
                        error = %err,
                        "transient MongoDB error, retrying"
                    );
                });
                tokio::time::sleep(delay).await;
                Ok(())
            }
            None => Err(RetryError::Exhausted {
                op: scope.op,
                attempts: attempt,
                elapsed_ms: started.elapsed().as_millis() as u64,
                code,
                source: err,
            }),
        }
    }
}

/// The server-side bound (`maxTimeMS`, `wtimeout`, `maxCommitTimeMS`) under
/// a client `deadline`: a tenth shorter, so a server that is slow but
/// answering reports its own timeout (50, or 64 for a write, which is then
/// read back) before the client gives up on it.
pub(crate) fn server_side(deadline: Duration) -> Duration {
    deadline - deadline / 10
}

impl RetryPolicy {
    /// The [`RetryError::TimedOut`] of `scope`, logged at WARN (DEBUG
    /// when the caller says it): the caller decides whether the failure
    /// is an ERROR (a failed export attempt is; a background check that
    /// will try again is not, until it has kept failing).
    pub(crate) fn timed_out(&self, scope: RetryScope<'_>) -> RetryError {
        let bound_ms = self.deadline.as_millis() as u64;
        let op = scope.op;
        let message = "MongoDB did not answer within mongodb.operation_timeout_ms; the attempt fails and the next one resumes";
        scope.say(|| {
            if self.said_by_caller {
                tracing::debug!(op, bound_ms, "{message}");
            } else {
                tracing::warn!(op, bound_ms, "{message}");
            }
        });
        RetryError::TimedOut { op, bound_ms }
    }

    /// The [`RetryError::Unreachable`] of `scope`, logged at WARN (DEBUG
    /// when the caller says it), as [`RetryPolicy::timed_out`].
    pub(crate) fn unreachable(&self, scope: RetryScope<'_>, err: MongoError) -> RetryError {
        let op = scope.op;
        let message = "MongoDB unreachable (the driver gave up on the server); the attempt fails and the next one resumes";
        scope.say(|| {
            if self.said_by_caller {
                tracing::debug!(op, error = %err, "{message}");
            } else {
                tracing::warn!(op, error = %err, "{message}");
            }
        });
        RetryError::Unreachable { op, cause: err }
    }
}

/// The [`RetryError`] of a look that is not retried (a readiness ping):
/// a server the driver could not select is [`RetryError::Unreachable`],
/// said briefly and not logged (the caller reports it).
pub(crate) fn unanswered(op: &'static str, err: MongoError) -> RetryError {
    match classify(&err, Phase::Operation) {
        Transience::Unreachable => RetryError::Unreachable { op, cause: err },
        _ => permanent(op, err),
    }
}

/// A permanent [`RetryError`] for an operation that is not retried.
pub(crate) fn permanent(op: &'static str, err: MongoError) -> RetryError {
    RetryError::Permanent {
        op,
        code: error_code(&err),
        source: err,
    }
}

#[cfg(test)]
mod tests;
