//! One transaction under the retry policy: `start_transaction` /
//! `commit_transaction` / `abort_transaction` driven by hand, so every
//! retry is bounded by settings and logged with its error code.

use std::time::Instant;

use backon::ExponentialBackoff;
use futures_util::future::BoxFuture;
use mongodb::error::Error as MongoError;
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};
use mongodb::ClientSession;

use super::{
    classify, permanent, Counters, Phase, RetryError, RetryPolicy, RetryScope, Transience,
};

/// The work of one transaction: [`RetryPolicy::in_transaction`] runs it
/// once per try, in the run's session.
///
/// A try may be followed by another, so it must not change outside state:
/// it returns what it did and the caller applies it after commit. State of
/// the body's own, such as a range it narrows on each new try, is fine.
/// (A trait rather than a closure: the try's future borrows the session,
/// which an `async` closure cannot promise is `Send`.)
pub(crate) trait TransactionBody: Send {
    /// What a committed try returns.
    type Output: Send;

    /// One try's reads and writes, in `session`.
    fn try_once<'s>(
        &'s mut self,
        session: &'s mut ClientSession,
    ) -> BoxFuture<'s, Result<Self::Output, MongoError>>;
}

impl RetryPolicy {
    /// Starts driving one transaction under the policy by hand (see
    /// [`Transaction`]); [`RetryPolicy::in_transaction`] is the loop every
    /// store operation uses.
    pub(crate) fn transaction<'a>(&'a self, scope: RetryScope<'a>) -> Transaction<'a> {
        Transaction {
            policy: self,
            scope,
            started: Instant::now(),
            backoff: self.backoff(),
            tries: 0,
        }
    }

    /// Runs `body` as one transaction under the policy and returns its
    /// value once committed: read concern `snapshot`, write concern
    /// `majority` with `maxCommitTimeMS` just under the deadline. Each of starting,
    /// the body and the commit must end within the deadline, or the
    /// attempt fails ([`RetryError::TimedOut`]; the session is dropped with
    /// its transaction, which the driver aborts when it can). A transient
    /// error anywhere runs the whole transaction
    /// (`body` included) again after the backoff delay;
    /// `UnknownTransactionCommitResult` retries the commit alone; anything
    /// else aborts and fails fast. Every try and retry is counted in
    /// `counters` and every retry logged.
    ///
    /// # Errors
    /// [`RetryError`] for a permanent error or an exhausted policy.
    pub(crate) async fn in_transaction<B: TransactionBody>(
        &self,
        scope: RetryScope<'_>,
        session: &mut ClientSession,
        counters: &Counters,
        mut body: B,
    ) -> Result<B::Output, RetryError> {
        let mut txn = self.transaction(scope);
        loop {
            txn.begin(session, counters).await?;
            let outcome = self.bounded(scope, body.try_once(session)).await?;
            if let Some(value) = txn.end(session, outcome, counters).await? {
                return Ok(value);
            }
        }
    }
}

/// One transaction under a [`RetryPolicy`], driven by hand:
///
/// ```text
/// let mut txn = policy.transaction(scope);
/// let value = loop {
///     txn.begin(session, counters).await?;
///     let outcome = body(session).await; // reads and writes in the session
///     if let Some(value) = txn.end(session, outcome, counters).await? {
///         break value;
///     }
/// };
/// ```
///
/// Read concern `snapshot`, write concern `majority`. A transient error
/// anywhere retries the whole transaction; `UnknownTransactionCommitResult`
/// retries the commit alone; anything else aborts and fails fast.
#[derive(Debug)]
pub(crate) struct Transaction<'a> {
    policy: &'a RetryPolicy,
    scope: RetryScope<'a>,
    started: Instant,
    backoff: ExponentialBackoff,
    tries: u32,
}

impl Transaction<'_> {
    /// Starts the next try.
    ///
    /// # Errors
    /// [`RetryError`] when the transaction cannot be started within the policy.
    pub(crate) async fn begin(
        &mut self,
        session: &mut ClientSession,
        counters: &Counters,
    ) -> Result<(), RetryError> {
        loop {
            self.tries += 1;
            counters.add(|c| c.transactions += 1);
            let started = session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
                .max_commit_time(super::server_side(self.policy.deadline));
            let err = match self.policy.bounded(self.scope, started).await? {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            match classify(&err, Phase::Operation) {
                Transience::Permanent | Transience::TooLarge => {
                    return Err(permanent(self.scope.op, err))
                }
                Transience::Unreachable => return Err(self.policy.unreachable(self.scope, err)),
                _ => self.retry_after(err, counters).await?,
            }
        }
    }

    /// Ends the try with the body's outcome: commits on success.
    /// Returns the value once committed, or `None` when the whole
    /// transaction must run again (after the backoff delay).
    ///
    /// # Errors
    /// [`RetryError`] for a permanent error or an exhausted policy; the
    /// transaction is aborted.
    pub(crate) async fn end<T>(
        &mut self,
        session: &mut ClientSession,
        outcome: Result<T, MongoError>,
        counters: &Counters,
    ) -> Result<Option<T>, RetryError> {
        let value = match outcome {
            Ok(value) => value,
            Err(err) => {
                let transience = classify(&err, Phase::Operation);
                if transience == Transience::Unreachable {
                    // Nothing more goes to a server the driver gave up on;
                    // dropping the session aborts the transaction.
                    return Err(self.policy.unreachable(self.scope, err));
                }
                // Aborting may itself fail (the server may have aborted
                // already); the session is usable again either way.
                let _ = self
                    .policy
                    .bounded(self.scope, session.abort_transaction())
                    .await?;
                if transience == Transience::Permanent {
                    return Err(permanent(self.scope.op, err));
                }
                // Transient or too large: the body runs again, on fewer
                // records where it can.
                self.retry_after(err, counters).await?;
                return Ok(None);
            }
        };
        self.commit(session, value, counters).await
    }

    /// Commits, retrying the commit alone while its result is unknown.
    /// `None` when the whole transaction must run again.
    async fn commit<T>(
        &mut self,
        session: &mut ClientSession,
        value: T,
        counters: &Counters,
    ) -> Result<Option<T>, RetryError> {
        loop {
            let commit = RetryScope {
                op: "commit_transaction",
                ..self.scope
            };
            let err = match self
                .policy
                .bounded(commit, session.commit_transaction())
                .await?
            {
                Ok(()) => return Ok(Some(value)),
                Err(err) => err,
            };
            match classify(&err, Phase::Commit) {
                Transience::UnknownCommitResult | Transience::UnknownOutcome => {
                    // Retry the commit alone: it is idempotent.
                    self.policy
                        .wait_or_give_up(
                            commit,
                            self.tries,
                            self.started,
                            &mut self.backoff,
                            err,
                            counters,
                        )
                        .await?;
                }
                Transience::Transient | Transience::TooLarge => {
                    self.retry_after(err, counters).await?;
                    return Ok(None);
                }
                Transience::Unreachable => return Err(self.policy.unreachable(commit, err)),
                Transience::Permanent => {
                    let _ = self
                        .policy
                        .bounded(commit, session.abort_transaction())
                        .await?;
                    return Err(permanent(self.scope.op, err));
                }
            }
        }
    }

    async fn retry_after(
        &mut self,
        err: MongoError,
        counters: &Counters,
    ) -> Result<(), RetryError> {
        self.policy
            .wait_or_give_up(
                self.scope,
                self.tries,
                self.started,
                &mut self.backoff,
                err,
                counters,
            )
            .await
    }
}
