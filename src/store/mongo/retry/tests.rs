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

const TEST_SCOPE: RetryScope<'static> = RetryScope::global("test");

/// Runs an operation whose every try fails with `err()` under `settings`:
/// the error the policy gives up with, and the attempts it counted.
async fn failing_every_try(
    settings: RetrySettings,
    err: fn() -> MongoError,
) -> (RetryError, Counts) {
    let policy = RetryPolicy::new(settings, Duration::from_secs(30));
    let attempts = Counters::default();
    let failed = policy
        .run(TEST_SCOPE, &attempts, || async { Err::<(), _>(err()) })
        .await
        .unwrap_err();
    (failed, attempts.counts())
}

#[test]
fn a_message_shows_the_error_code_only_when_there_is_one() {
    let none = permanent("claim", io_error()).to_string();
    assert!(!none.contains("error code"), "{none}");
    let exhausted = RetryError::Exhausted {
        op: "claim",
        attempts: 3,
        elapsed_ms: 40,
        code: Some(112),
        source: io_error(),
    };
    assert!(
        exhausted
            .to_string()
            .contains("over 40 ms (error code 112)"),
        "{exhausted}"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_until_success() {
    let policy = RetryPolicy::new(settings(5, 60_000), Duration::from_secs(30));
    let attempts = Counters::default();
    let mut calls = 0;
    let result = policy
        .run(
            RetryScope {
                op: "test",
                deanery: Some("MER"),
            },
            &attempts,
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
    assert_eq!(attempts.counts().retries, 2);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_attempt_bound() {
    let (err, attempts) = failing_every_try(settings(4, 60_000), io_error).await;
    assert!(err.is_transient());
    assert_eq!(attempts.retries, 3);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_elapsed_time_bound() {
    // Delays are at least 10 ms; a 25 ms budget allows few retries
    // however many attempts are allowed.
    let (err, attempts) = failing_every_try(settings(1_000, 25), io_error).await;
    assert!(err.is_transient());
    assert!(attempts.retries < 4, "{attempts:?}");
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_fail_at_once() {
    let (err, attempts) =
        failing_every_try(settings(10, 60_000), || MongoError::custom("bad")).await;
    assert!(!err.is_transient());
    assert_eq!(attempts.retries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_try_that_never_answers_fails_the_attempt_at_the_deadline_without_retrying() {
    let policy = RetryPolicy::new(settings(10, 600_000), Duration::from_millis(2_000));
    let attempts = Counters::default();
    let started = tokio::time::Instant::now();
    let err = policy
        .run(
            RetryScope {
                op: "claim_chunk",
                deanery: Some("MER"),
            },
            &attempts,
            std::future::pending::<Result<(), MongoError>>,
        )
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(2_000));
    assert!(err.is_transient() && err.is_timeout(), "{err:?}");
    assert_eq!(attempts.counts().retries, 0);
    assert_eq!(
        err.to_string(),
        "claim_chunk: MongoDB did not answer within 2000 ms (mongodb.operation_timeout_ms)"
    );
}

#[test]
fn the_server_side_bounds_are_a_tenth_under_the_client_deadline() {
    assert_eq!(
        server_side(Duration::from_millis(30_000)),
        Duration::from_millis(27_000)
    );
    assert_eq!(
        server_side(Duration::from_millis(2_000)),
        Duration::from_millis(1_800)
    );
}
