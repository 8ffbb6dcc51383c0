//! The retry policy: which MongoDB errors are transient, and the bounded,
//! logged loops that retry them, for single operations and for whole
//! transactions.
//!
//! The driver's callback API (`and_run`) would retry for a fixed 120 s and
//! tell nobody; this module drives `start_transaction` /
//! `commit_transaction` / `abort_transaction` itself so that every retry is
//! bounded by settings and logged with its error code.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use mongodb::error::{
    Error as MongoError, ErrorKind, WriteFailure, RETRYABLE_WRITE_ERROR,
    TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};
use mongodb::ClientSession;

use crate::config::RetrySettings;

/// MongoDB's WriteConflict error code.
pub const WRITE_CONFLICT: i32 = 112;

/// Codes of a replica set changing primary or a node going away (the
/// retryable-error codes of MongoDB's driver specifications), plus a cursor
/// or query plan lost on such a change or to an index being dropped: worth
/// another try after a delay.
const FAILOVER_CODES: [i32; 15] = [
    6,     // HostUnreachable
    7,     // HostNotFound
    43,    // CursorNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    134,   // ReadConcernMajorityNotAvailableYet
    175,   // QueryPlanKilled
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Every transient MongoDB error is one of these; everything else is
/// permanent. This is the one place failures are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transience {
    /// Retry the whole transaction (or the whole operation): 112
    /// WriteConflict, the TransientTransactionError label, network errors.
    Transient,
    /// The commit may or may not have happened: retry the commit alone.
    UnknownCommitResult,
    /// Fail fast.
    Permanent,
}

/// The server error code of an error, if it has one.
pub fn error_code(err: &MongoError) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => Some(concern.code),
        ErrorKind::InsertMany(many) => many
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first().map(|e| e.code))
            .or_else(|| many.write_concern_error.as_ref().map(|e| e.code)),
        _ => None,
    }
}

/// MongoDB's DuplicateKey error code.
const DUPLICATE_KEY: i32 = 11000;

/// True for a duplicate `_id` or unique key: an upsert or insert that found
/// the document already there.
pub fn is_duplicate_key(err: &MongoError) -> bool {
    error_code(err) == Some(DUPLICATE_KEY)
}

/// Classifies an error. `UnknownTransactionCommitResult` only means
/// "retry the commit" for the commit itself; the caller says which it was.
pub fn classify(err: &MongoError, during_commit: bool) -> Transience {
    if during_commit && err.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) {
        return Transience::UnknownCommitResult;
    }
    let failover = error_code(err).is_some_and(|code| FAILOVER_CODES.contains(&code));
    if err.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || err.contains_label(RETRYABLE_WRITE_ERROR)
        || error_code(err) == Some(WRITE_CONFLICT)
        || failover
    {
        return Transience::Transient;
    }
    match err.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => Transience::Transient,
        _ => Transience::Permanent,
    }
}

/// A store operation failed for good.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// A transient error kept coming back until the policy gave up.
    #[error("{op}: still failing after {attempts} attempts over {elapsed_ms} ms (error code {code:?}): {source}")]
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
    /// A permanent error: not retried.
    #[error("{op}: failed with a non-transient error (error code {code:?}): {source}")]
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

impl RetryError {
    /// True when trying again later may succeed (the policy ran out, the
    /// error itself was transient).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Exhausted { .. })
    }

    /// The underlying driver error.
    pub fn mongo(&self) -> &MongoError {
        match self {
            Self::Exhausted { source, .. } | Self::Permanent { source, .. } => source,
        }
    }
}

/// Counts of one run's work against MongoDB, for its summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    /// Transaction attempts, first tries and whole-transaction retries.
    pub transactions: u32,
    /// Retries of anything (operations, transactions, commits).
    pub retries: u32,
    /// Errors with code 112 WriteConflict among them.
    pub write_conflicts: u32,
}

/// What a retry is about, for the log line.
#[derive(Debug, Clone, Copy)]
pub struct RetryScope<'a> {
    /// Operation name, e.g. `claim_chunk`.
    pub op: &'static str,
    /// Deanery being exported, when there is one.
    pub deanery: Option<&'a str>,
}

/// Bounded exponential backoff with full jitter (`backon`), shared by every
/// store operation. Counts attempts so run summaries can report them.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    settings: RetrySettings,
}

impl RetryPolicy {
    /// A policy from `[retry]` settings.
    pub fn new(settings: RetrySettings) -> Self {
        Self { settings }
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
    /// is exhausted. Retries are counted in `attempts`.
    ///
    /// # Errors
    /// [`RetryError`] with the last error.
    pub async fn run<T, F, Fut>(
        &self,
        scope: RetryScope<'_>,
        attempts: &mut Attempts,
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
            let err = match op().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if classify(&err, false) == Transience::Permanent {
                return Err(permanent(scope.op, err));
            }
            self.wait_or_give_up(scope, attempt, started, &mut backoff, err, attempts)
                .await?;
        }
    }

    /// Starts driving one transaction under the policy. The caller loops:
    ///
    /// ```text
    /// let mut txn = policy.transaction(scope);
    /// let value = loop {
    ///     txn.begin(session, attempts).await?;
    ///     let outcome = body(session).await; // reads and writes in the session
    ///     if let Some(value) = txn.end(session, outcome, attempts).await? {
    ///         break value;
    ///     }
    /// };
    /// ```
    ///
    /// The body may run several times, so it must not change outside
    /// state: it returns what it did and the caller applies it after commit.
    pub fn transaction<'a>(&'a self, scope: RetryScope<'a>) -> Transaction<'a> {
        Transaction {
            policy: self,
            scope,
            started: Instant::now(),
            backoff: self.backoff(),
            attempt: 0,
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
        attempts: &mut Attempts,
    ) -> Result<(), RetryError> {
        let code = error_code(&err);
        if code == Some(WRITE_CONFLICT) {
            attempts.write_conflicts += 1;
        }
        match self.next_delay(backoff, started) {
            Some(delay) => {
                attempts.retries += 1;
                tracing::warn!(
                    op = scope.op,
                    deanery = scope.deanery.unwrap_or(""),
                    attempt,
                    error_code = code,
                    delay_ms = delay.as_millis() as u64,
                    error = %err,
                    "transient MongoDB error, retrying"
                );
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

/// One transaction under a [`RetryPolicy`] (see [`RetryPolicy::transaction`]):
/// read concern `snapshot`, write concern `majority`. A transient error
/// anywhere retries the whole transaction; `UnknownTransactionCommitResult`
/// retries the commit alone; anything else aborts and fails fast.
#[derive(Debug)]
pub struct Transaction<'a> {
    policy: &'a RetryPolicy,
    scope: RetryScope<'a>,
    started: Instant,
    backoff: ExponentialBackoff,
    attempt: u32,
}

impl Transaction<'_> {
    /// Starts the next attempt.
    ///
    /// # Errors
    /// [`RetryError`] when the transaction cannot be started within the policy.
    pub async fn begin(
        &mut self,
        session: &mut ClientSession,
        attempts: &mut Attempts,
    ) -> Result<(), RetryError> {
        loop {
            self.attempt += 1;
            attempts.transactions += 1;
            let err = match session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            if classify(&err, false) == Transience::Permanent {
                return Err(permanent(self.scope.op, err));
            }
            self.retry_after(err, attempts).await?;
        }
    }

    /// Ends the attempt with the body's outcome: commits on success.
    /// Returns the value once committed, or `None` when the whole
    /// transaction must run again (after the backoff delay).
    ///
    /// # Errors
    /// [`RetryError`] for a permanent error or an exhausted policy; the
    /// transaction is aborted.
    pub async fn end<T>(
        &mut self,
        session: &mut ClientSession,
        outcome: Result<T, MongoError>,
        attempts: &mut Attempts,
    ) -> Result<Option<T>, RetryError> {
        let value = match outcome {
            Ok(value) => value,
            Err(err) => {
                // Aborting may itself fail (the server may have aborted
                // already); the session is usable again either way.
                let _ = session.abort_transaction().await;
                if classify(&err, false) == Transience::Permanent {
                    return Err(permanent(self.scope.op, err));
                }
                self.retry_after(err, attempts).await?;
                return Ok(None);
            }
        };
        loop {
            let err = match session.commit_transaction().await {
                Ok(()) => return Ok(Some(value)),
                Err(err) => err,
            };
            match classify(&err, true) {
                Transience::UnknownCommitResult => {
                    // Retry the commit alone: it is idempotent.
                    self.policy
                        .wait_or_give_up(
                            RetryScope {
                                op: "commit_transaction",
                                ..self.scope
                            },
                            self.attempt,
                            self.started,
                            &mut self.backoff,
                            err,
                            attempts,
                        )
                        .await?;
                }
                Transience::Transient => {
                    self.retry_after(err, attempts).await?;
                    return Ok(None);
                }
                Transience::Permanent => {
                    let _ = session.abort_transaction().await;
                    return Err(permanent(self.scope.op, err));
                }
            }
        }
    }

    async fn retry_after(
        &mut self,
        err: MongoError,
        attempts: &mut Attempts,
    ) -> Result<(), RetryError> {
        self.policy
            .wait_or_give_up(
                self.scope,
                self.attempt,
                self.started,
                &mut self.backoff,
                err,
                attempts,
            )
            .await
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
mod tests {
    use super::*;

    fn settings(max_attempts: u32, max_elapsed_ms: u64) -> RetrySettings {
        RetrySettings {
            min_delay_ms: 10,
            max_delay_ms: 40,
            max_attempts,
            max_elapsed_ms,
        }
    }

    fn io_error() -> MongoError {
        MongoError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))
    }

    #[test]
    fn network_errors_are_transient_and_custom_errors_permanent() {
        assert_eq!(classify(&io_error(), false), Transience::Transient);
        assert_eq!(
            classify(&MongoError::custom("lease lost"), false),
            Transience::Permanent
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let policy = RetryPolicy::new(settings(5, 60_000));
        let mut attempts = Attempts::default();
        let mut calls = 0;
        let result = policy
            .run(
                RetryScope {
                    op: "test",
                    deanery: Some("MER"),
                },
                &mut attempts,
                || {
                    calls += 1;
                    let n = calls;
                    async move {
                        if n < 3 {
                            Err(io_error())
                        } else {
                            Ok(n)
                        }
                    }
                },
            )
            .await
            .unwrap();
        assert_eq!(result, 3);
        assert_eq!(attempts.retries, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_attempt_bound() {
        let policy = RetryPolicy::new(settings(4, 60_000));
        let mut attempts = Attempts::default();
        let err = policy
            .run(
                RetryScope {
                    op: "test",
                    deanery: None,
                },
                &mut attempts,
                || async { Err::<(), _>(io_error()) },
            )
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(attempts.retries, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_elapsed_time_bound() {
        // Delays are at least 10 ms; a 25 ms budget allows few retries
        // however many attempts are allowed.
        let policy = RetryPolicy::new(settings(1_000, 25));
        let mut attempts = Attempts::default();
        let err = policy
            .run(
                RetryScope {
                    op: "test",
                    deanery: None,
                },
                &mut attempts,
                || async { Err::<(), _>(io_error()) },
            )
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert!(attempts.retries < 4, "{attempts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_fail_at_once() {
        let policy = RetryPolicy::new(settings(10, 60_000));
        let mut attempts = Attempts::default();
        let err = policy
            .run(
                RetryScope {
                    op: "test",
                    deanery: None,
                },
                &mut attempts,
                || async { Err::<(), _>(MongoError::custom("bad")) },
            )
            .await
            .unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(attempts.retries, 0);
    }
}
