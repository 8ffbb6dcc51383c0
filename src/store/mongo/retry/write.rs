//! Writes whose outcome can be unknown: a write concern error (`wtimeout`
//! passed before a majority had it) or a connection lost after the request
//! went out. Such a write is read back before it is retried or reported.

use std::future::Future;

use mongodb::error::Error as MongoError;

use super::{error_code, outcome_unknown, Counters, RetryError, RetryPolicy, RetryScope};

impl RetryPolicy {
    /// Runs the write `op` under the policy like [`RetryPolicy::run`]; when
    /// a try fails with an unknown outcome, first asks `read_back` whether
    /// the write is there (read with the configured read concern: with
    /// `majority`, only a write a failover cannot roll back counts). Its
    /// `Some(value)` ends the write as if the try had answered `value`;
    /// `None` retries (or reports) the original error.
    ///
    /// # Errors
    /// [`RetryError`] with the last error.
    pub(crate) async fn write<T, F, Fut, R, RFut>(
        &self,
        scope: RetryScope<'_>,
        counters: &Counters,
        op: F,
        read_back: R,
    ) -> Result<T, RetryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, MongoError>>,
        R: Fn() -> RFut,
        RFut: Future<Output = Result<Option<T>, MongoError>>,
    {
        let (op, read_back) = (&op, &read_back);
        self.run(scope, counters, || async move {
            let err = match op().await {
                Err(err) if outcome_unknown(&err) => err,
                answered => return answered,
            };
            scope.say(|| {
                tracing::warn!(
                    op = scope.op,
                    error_code = error_code(&err),
                    error = %err,
                    "the outcome of a MongoDB write is unknown; reading it back"
                );
            });
            match read_back().await? {
                Some(value) => Ok(value),
                None => Err(err),
            }
        })
        .await
    }
}
