//! One bounded, logged policy for every request to a store or server: each try is
//! bounded by a deadline; a timeout ends the operation at once; 5xx, 429
//! and 409 are retried with exponential backoff and jitter, bounded by
//! tries and elapsed time, each retry logged at WARN.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use super::error::{DestinationError, FailureKind};
use crate::config::{S3Settings, SftpSettings};

/// The policy, from `[s3]`.
#[derive(Debug, Clone)]
pub(crate) struct RequestPolicy {
    min_delay: Duration,
    max_delay: Duration,
    max_attempts: u32,
    max_elapsed: Duration,
    /// Deadline of one try (one request).
    pub(crate) timeout: Duration,
}

impl RequestPolicy {
    pub(crate) fn from_settings(s3: &S3Settings) -> Self {
        Self {
            min_delay: Duration::from_millis(s3.min_delay_ms),
            max_delay: Duration::from_millis(s3.max_delay_ms),
            max_attempts: s3.max_attempts.max(1),
            max_elapsed: Duration::from_millis(s3.max_elapsed_ms),
            timeout: s3.request_timeout(),
        }
    }

    pub(crate) fn from_sftp(sftp: &SftpSettings) -> Self {
        Self {
            min_delay: Duration::from_millis(sftp.min_delay_ms),
            max_delay: Duration::from_millis(sftp.max_delay_ms),
            max_attempts: sftp.max_attempts.max(1),
            max_elapsed: Duration::from_millis(sftp.max_elapsed_ms),
            timeout: sftp.request_timeout(),
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build()
    }

    /// Runs `try_once` until it succeeds, fails for good, or the policy
    /// is spent. `bound` is the deadline of one try (a multipart upload
    /// gets one per part). Failures are classified by `failure`.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: (&str, &'static str, &str),
        bound: Duration,
        mut try_once: F,
    ) -> Result<T, DestinationError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DestinationError>>,
    {
        let (destination, op, key) = what;
        let started = Instant::now();
        let mut delays = self.backoff();
        let mut attempt = 1u32;
        loop {
            let result = match tokio::time::timeout(bound, try_once()).await {
                Ok(result) => result,
                Err(_) => Err(DestinationError::timed_out(destination, op, key, bound)),
            };
            let err = match result {
                Err(err) if err.kind == FailureKind::Transient => err,
                other => return other,
            };
            let Some(delay) = delays
                .next()
                .filter(|d| started.elapsed() + *d < self.max_elapsed)
            else {
                return Err(err);
            };
            tracing::warn!(
                destination = %destination, op, key = %key, attempt,
                delay_ms = delay.as_millis() as u64, error = %err.detail,
                "destination request failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn policy(max_attempts: u32) -> RequestPolicy {
        RequestPolicy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_attempts,
            max_elapsed: Duration::from_secs(10),
            timeout: Duration::from_millis(50),
        }
    }

    fn failure(kind: FailureKind) -> DestinationError {
        DestinationError::new(kind, "s3://b", "create", "k", "x")
    }

    /// Runs a request under a policy of four tries, the `n`th try (from
    /// 0) answering `answer(n)`: the result, and the tries made.
    async fn run_tries<T, Fut>(
        bound: Duration,
        answer: impl Fn(u32) -> Fut,
    ) -> (Result<T, DestinationError>, u32)
    where
        Fut: Future<Output = Result<T, DestinationError>>,
    {
        let tries = AtomicU32::new(0);
        let what = ("s3://b", "create", "k");
        let result = policy(4)
            .run(what, bound, || answer(tries.fetch_add(1, Ordering::SeqCst)))
            .await;
        (result, tries.load(Ordering::SeqCst))
    }

    /// A request whose every try fails as `kind`: the failure given up
    /// with, and the tries made.
    async fn failing_every_try(kind: FailureKind) -> (DestinationError, u32) {
        let always = |_| async move { Err::<(), _>(failure(kind)) };
        let (result, tries) = run_tries(Duration::from_secs(1), always).await;
        (result.unwrap_err(), tries)
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_the_tries_are_spent() {
        let (failed, tries) = failing_every_try(FailureKind::Transient).await;
        assert!(failed.is_transient());
        assert_eq!(tries, 4);
    }

    #[tokio::test]
    async fn permanent_failures_and_timeouts_are_not_retried() {
        for kind in [FailureKind::Permanent, FailureKind::Occupied] {
            let (failed, tries) = failing_every_try(kind).await;
            assert_eq!(failed.kind, kind);
            assert_eq!(tries, 1);
        }
        let silent = |_| std::future::pending::<Result<(), DestinationError>>();
        let (result, tries) = run_tries(Duration::from_millis(20), silent).await;
        assert_eq!(result.unwrap_err().kind, FailureKind::Timeout);
        assert_eq!(tries, 1);
    }

    #[tokio::test]
    async fn a_transient_failure_then_success_succeeds() {
        let (result, tries) = run_tries(Duration::from_secs(1), |n| async move {
            match n {
                0 => Err(failure(FailureKind::Transient)),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!((result.unwrap(), tries), (7, 2));
    }
}
