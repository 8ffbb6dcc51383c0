//! One try at a deanery's run, from start to summary: take the deanery's
//! lease, run the steps, give the lease back, then summarise, count and
//! log what happened (a failure also goes on the run document).

use std::time::Instant;

use super::context::{LeaseKeeper, Progress, RunContext, RunOptions};
use super::{ExportError, Exporter};
use crate::domain::{Deanery, RunEnd, RunSummary};
use crate::ops::{metrics, output_folder};
use crate::store::{Counts, LeaseOutcome, Store, StoreError};

/// Whether the attempt could take the deanery's lease.
enum Lease {
    /// Taken, with this attempt's session.
    Taken(Box<mongodb::ClientSession>),
    /// Another process holds it: nothing is done.
    Held(String),
}

/// How a try ended, typed: what the consumer decides a command by.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The steps ran to completion, or stopped on this error.
    Ran(Result<(), ExportError>),
    /// Another process holds the lease; why, for the summary.
    Held(String),
}

impl Exporter {
    /// Tries the deanery's run once and summarises the try. Never panics
    /// on a failure: a failed try is a summary with `status: failed`,
    /// logged at ERROR, and its run is left to resume.
    pub(super) async fn try_run(
        &self,
        deanery: &Deanery,
        options: &RunOptions,
    ) -> (RunSummary, Ended) {
        let started = Instant::now();
        let owner = uuid::Uuid::new_v4().to_string();
        let store = self.store.for_run(deanery);
        let (ended, progress) = match self.take_lease(&store, deanery, &owner).await {
            Ok(Lease::Taken(session)) => {
                let mut ctx = RunContext {
                    deanery,
                    options,
                    session: *session,
                    store: store.clone(),
                    lease: LeaseKeeper::new(owner, self.settings.lease()),
                    progress: Progress::default(),
                };
                let result = self.run_all(&mut ctx).await;
                let silent = result.as_ref().is_err_and(ExportError::is_timeout);
                if silent || !release_lease(&mut ctx).await {
                    // The lease still names this session.
                    store.park_session(ctx.session);
                }
                (Ended::Ran(result), ctx.progress)
            }
            Ok(Lease::Held(held)) => (Ended::Held(held), Progress::default()),
            Err(err) => (Ended::Ran(Err(err.into())), Progress::default()),
        };
        let summary = summarise(deanery, &ended, &progress, store.counts(), started);
        metrics::record_run(&summary);
        match &ended {
            Ended::Ran(Ok(())) => {
                self.record_folder_health(&summary);
                log_completed(&summary);
            }
            Ended::Held(reason) => tracing::warn!(reason = %reason, "export run skipped"),
            Ended::Ran(Err(err)) if err.is_shutdown() => log_interrupted(&summary),
            Ended::Ran(Err(err)) => self.report_failure(deanery, err, &summary, &progress).await,
        }
        (summary, ended)
    }

    /// Starts this attempt's session and takes the deanery's lease with it.
    /// A lease taken over from a dead holder ends that holder's session, so
    /// its open transaction stops holding records (otherwise the server
    /// keeps it for up to `transactionLifetimeLimitSeconds`, 60 s).
    async fn take_lease(
        &self,
        store: &Store,
        deanery: &Deanery,
        owner: &str,
    ) -> Result<Lease, StoreError> {
        let session = store.start_session().await?;
        let ttl = self.settings.lease();
        let outcome = store
            .acquire_lease(deanery, owner, session.id(), ttl)
            .await?;
        match outcome {
            LeaseOutcome::Acquired { lapsed_session } => {
                if lapsed_session.is_some() {
                    tracing::warn!("took over a lapsed lease; ended the previous holder's session");
                }
                Ok(Lease::Taken(Box::new(session)))
            }
            LeaseOutcome::Held { owner, expires_at } => Ok(Lease::Held(format!(
                "deanery {deanery} is being exported by another process (lease {owner} until {})",
                expires_at.map_or_else(|| "unknown".to_owned(), |t| t.to_string())
            ))),
        }
    }

    /// A completed run that wrote a file staged it in the output folder,
    /// whatever the destination: the folder works again, so the gauge and
    /// `/readyz` stop reporting an earlier failure there.
    fn record_folder_health(&self, summary: &RunSummary) {
        if summary.file.is_some() {
            output_folder::record_success(&self.settings.output_dir);
        }
    }

    /// Logs a failed attempt at ERROR (and the folder, when it was the
    /// output folder that failed) and records the error on its run.
    async fn report_failure(
        &self,
        deanery: &Deanery,
        err: &ExportError,
        summary: &RunSummary,
        progress: &Progress,
    ) {
        if let ExportError::Destination(failure) = err {
            crate::destination::metrics::record_failure(self.destination().scheme(), failure);
        }
        if let ExportError::File { dir, source } = err {
            output_folder::record_failure(dir, source);
            tracing::error!(
                path = %dir.display(),
                errno = %output_folder::errno_name(source),
                error = %source,
                "the output folder cannot be written; the command is retried"
            );
        }
        // The summary holds the error's chain, said once (`end_of`).
        let error = summary.error().unwrap_or_default();
        tracing::error!(
            transactions = summary.transactions,
            duration_ms = summary.duration_ms,
            transient = err.is_transient(),
            error,
            "export run failed; the next attempt resumes it"
        );
        let Some(run_id) = &progress.run_id else {
            return;
        };
        if err.is_timeout() {
            // MongoDB is not answering: the lease lapses on its own, and
            // the ERROR above is the record of this attempt.
            return;
        }
        self.record_error_on_run(deanery, run_id, error, summary.transactions)
            .await;
    }

    /// Records a failed try's error and transactions on its run document;
    /// a failure to do so is logged, and the run keeps its previous error.
    async fn record_error_on_run(
        &self,
        deanery: &Deanery,
        run_id: &str,
        error: &str,
        transactions: u32,
    ) {
        let recorded = self
            .store
            .for_run(deanery)
            .record_run_error(run_id, error, i64::from(transactions))
            .await;
        if let Err(not_recorded) = recorded {
            // The ERROR logged before is this attempt's record; the next
            // attempt resumes the run either way.
            tracing::warn!(
                error = %crate::error_chain::Chain(&not_recorded),
                "the failed attempt's error could not be recorded on its run document"
            );
        }
    }
}

/// Gives the lease up so the next attempt need not wait for it to
/// lapse; false when it could not.
async fn release_lease(ctx: &mut RunContext<'_>) -> bool {
    let released = ctx.store.release_lease(ctx.deanery, &ctx.lease.owner).await;
    if let Err(err) = &released {
        tracing::warn!(error = %crate::error_chain::Chain(err), "failed to release lease; it lapses on its own");
    }
    released.is_ok()
}

fn summarise(
    deanery: &Deanery,
    ended: &Ended,
    progress: &Progress,
    counts: Counts,
    started: Instant,
) -> RunSummary {
    let end = end_of(ended);
    let run_id = match end {
        RunEnd::Completed => progress
            .completed_run_id
            .clone()
            .or_else(|| progress.run_id.clone()),
        _ => progress.run_id.clone(),
    };
    RunSummary {
        deanery: deanery.to_string(),
        run_id,
        end,
        exported: progress.exported,
        rejected: progress.rejected,
        file: progress.file.clone(),
        published_to: progress.published_to.clone(),
        transactions: counts.transactions,
        retries: counts.retries,
        write_conflicts: counts.write_conflicts,
        duration_ms: started.elapsed().as_millis() as u64,
        resumed: progress.resumed,
    }
}

fn end_of(ended: &Ended) -> RunEnd {
    let err = match ended {
        Ended::Ran(Ok(())) => return RunEnd::Completed,
        Ended::Held(reason) => {
            return RunEnd::Skipped {
                reason: reason.clone(),
            }
        }
        Ended::Ran(Err(err)) => err,
    };
    let error = crate::error_chain::chain(err);
    if err.is_shutdown() {
        RunEnd::Interrupted { error }
    } else if err.is_transient() {
        RunEnd::Transient { error }
    } else {
        RunEnd::Permanent { error }
    }
}

fn log_interrupted(summary: &RunSummary) {
    tracing::warn!(
        duration_ms = summary.duration_ms,
        "export run interrupted by shutdown at a safe point; the next attempt resumes it"
    );
}

fn log_completed(summary: &RunSummary) {
    tracing::info!(
        exported = summary.exported,
        rejected = summary.rejected,
        file = summary.file.as_deref().unwrap_or(""),
        published_to = summary.published_to.as_deref().unwrap_or(""),
        transactions = summary.transactions,
        retries = summary.retries,
        write_conflicts = summary.write_conflicts,
        duration_ms = summary.duration_ms,
        resumed = summary.resumed,
        "export run completed"
    );
}
