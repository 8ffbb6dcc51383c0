//! What must hold before the daemon takes work: MongoDB's indexes exist,
//! and the destination has proved it refuses a second create of a name.
//! A dependency briefly away at start is waited for with backoff (and
//! `/readyz` says so meanwhile); a permanent refusal stops the daemon.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;

use crate::config::Settings;
use crate::destination::Destination;
use crate::ops::failing::{self, say_failure, say_recovery, FailureStreak};
use crate::ops::Readiness;
use crate::shutdown::Shutdown;
use crate::store::{StatusQuery, Store};

/// What start-up waits for first: `run` says it before the endpoints
/// serve, and [`prepare`] moves on from it.
pub(super) const WAITING_FOR_MONGODB: &str = "MongoDB (its indexes are checked and built first)";

/// Creates the indexes, then probes the destination. False if shutdown
/// came first.
///
/// # Errors
/// A permanent error of either: an index name taken by other keys, no
/// permission, a store that accepts a second create, a missing bucket.
pub(super) async fn prepare(
    settings: &Settings,
    store: &Store,
    destination: &Destination,
    readiness: &Readiness,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let indexed = until_done(settings, shutdown, "MongoDB", || store.ensure_indexes())
        .await
        .context("Failed to prepare MongoDB's indexes")?;
    if !indexed {
        return Ok(false);
    }
    seed_last_runs(store).await;
    readiness.set_waiting_for(Some(
        "the destination's probe (a second create of a name must be refused)",
    ));
    let probed = until_done(settings, shutdown, "the destination", || {
        destination.probe()
    })
    .await?;
    if probed {
        tracing::info!(destination = %destination.url(), "destination refuses a second create of a name (probe passed)");
    }
    Ok(probed)
}

/// Days of run documents read at start for when each deanery last
/// completed and last failed.
const LAST_RUNS_DAYS: i64 = 30;

/// Sets the last-run gauges from the run documents, so the alerts built on
/// them see through a restart. A failure only costs that: WARN.
async fn seed_last_runs(store: &Store) {
    let since = chrono::Utc::now() - chrono::Duration::days(LAST_RUNS_DAYS);
    match store
        .status_rows(StatusQuery::last_run_times(bson::DateTime::from_chrono(
            since,
        )))
        .await
    {
        Ok(rows) => {
            for row in rows {
                crate::ops::metrics::seed_last_runs(&row.deanery, row.completed, row.failed);
            }
        }
        Err(err) => {
            tracing::warn!(error = %crate::error_chain::Chain(&err), "cannot read when each deanery's runs last completed; the last-run gauges start empty")
        }
    }
}

/// A failure at start that waiting may cure.
trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for crate::store::StoreError {
    fn is_transient(&self) -> bool {
        crate::store::StoreError::is_transient(self)
    }
}

impl Transient for crate::destination::DestinationError {
    fn is_transient(&self) -> bool {
        crate::destination::DestinationError::is_transient(self)
    }
}

/// Runs `op` until it succeeds, retrying transient failures with the
/// reconnect backoff until shutdown: a WARN each, and one ERROR once it
/// has kept failing for a minute. False if shutdown came first.
async fn until_done<E, F, Fut>(
    settings: &Settings,
    shutdown: &mut Shutdown,
    what: &str,
    mut op: F,
) -> Result<bool, E>
where
    E: std::error::Error + Transient + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut backoff = settings.amqp.reconnect_backoff();
    let mut failures = FailureStreak::new(failing::MIN_BOUND);
    let what = format!("reaching {what} at start");
    loop {
        match op().await {
            Ok(()) => {
                say_recovery(&mut failures, &what);
                return Ok(true);
            }
            Err(err) if !err.is_transient() => return Err(err),
            Err(err) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                let error = crate::error_chain::chain(&err);
                say_failure(&mut failures, &what, &error, "retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.recv() => return Ok(false),
                }
            }
        }
    }
}
