//! The steps of a run, in order: resume or start, claim (rewriting what an
//! earlier attempt claimed first), verify the count, stage, publish, mark,
//! complete. Every step is recorded in the run document before the next
//! starts, so an attempt that dies anywhere is finished by the next one.

use bson::Bson;

use super::context::RunContext;
use super::{ExportError, Exporter};
use crate::store::{RunDoc, RunPhase, Transition};

impl Exporter {
    /// Finishes the deanery's unfinished run, if any, then runs a fresh
    /// one. An unfinished run only claims up to the newest record of its
    /// own start, so a fresh run follows it for what came since; the
    /// trigger is recorded on that last run.
    pub(super) async fn run_all(&self, ctx: &mut RunContext<'_>) -> Result<(), ExportError> {
        loop {
            let (mut run, resumed) = self.resume_or_start(ctx).await?;
            self.advance(ctx, &mut run).await?;
            self.complete(ctx, &mut run, resumed).await?;
            if !resumed {
                return Ok(());
            }
            tracing::info!(
                exported = run.record_count.unwrap_or(0),
                "resumed run completed; starting a run for records that came since"
            );
        }
    }

    /// The deanery's unfinished run, or a new one claiming up to the
    /// newest waiting record (after rejecting records no run can claim).
    async fn resume_or_start(
        &self,
        ctx: &mut RunContext<'_>,
    ) -> Result<(RunDoc, bool), ExportError> {
        let deanery = ctx.deanery;
        if let Some(run) = ctx.store.find_open_run(deanery).await? {
            ctx.track(&run);
            tracing::info!(
                phase = run.phase.as_str(),
                "resuming interrupted export run"
            );
            ctx.progress.resumed = true;
            return Ok((run, true));
        }
        let (unexportable, up_to) = self.backlog(ctx).await?;
        let mut run = RunDoc::new(deanery, up_to);
        // Counted on the run, so its summary and the status report show them.
        run.rejected = unexportable as i64;
        ctx.store.insert_run(&run).await?;
        ctx.track(&run);
        tracing::info!("export run started");
        Ok((run, false))
    }

    /// The newest waiting record a new run claims up to, after rejecting
    /// those no run can claim; how many were rejected.
    async fn backlog(
        &self,
        ctx: &mut RunContext<'_>,
    ) -> Result<(u64, Option<bson::oid::ObjectId>), ExportError> {
        let (lowest, highest) = ctx.store.waiting_id_extremes(ctx.deanery).await?;
        match (lowest, highest) {
            (None, None) => Ok((0, None)),
            (Some(Bson::ObjectId(_)), Some(Bson::ObjectId(newest))) => Ok((0, Some(newest))),
            _ => {
                let rejected = self.reject_unexportable(ctx).await?;
                let store = &ctx.store;
                let newest = store.max_to_export_id(ctx.deanery).await?;
                Ok((rejected, newest))
            }
        }
    }

    /// Rejects the deanery's waiting records no run can claim (an `_id`
    /// that is not an ObjectId), each logged with its reason.
    async fn reject_unexportable(&self, ctx: &mut RunContext<'_>) -> Result<u64, ExportError> {
        let rejected = ctx.store.reject_unexportable_ids(ctx.deanery).await?;
        for (id, reason) in &rejected {
            tracing::warn!(record_id = %id, reason = %reason, "record rejected");
        }
        Ok(rejected.len() as u64)
    }

    /// Takes the run from wherever it is to `WRITTEN` and its records marked.
    async fn advance(&self, ctx: &mut RunContext<'_>, run: &mut RunDoc) -> Result<(), ExportError> {
        let mut boundaries = None;
        if run.phase == RunPhase::Claiming {
            boundaries = Some(self.claim_and_stage(ctx, run).await?);
        }
        if run.phase == RunPhase::Finalizing {
            let publishing = std::time::Instant::now();
            self.publish(ctx, run).await?;
            tracing::debug!(
                publish_ms = publishing.elapsed().as_millis() as u64,
                "publication step done"
            );
        }
        if run.phase == RunPhase::Written {
            self.mark_exported(ctx, run, boundaries).await?;
        }
        Ok(())
    }

    /// Records the run `COMPLETED` (with the trigger, unless it was an
    /// older run resumed) and adds it to the attempt's progress.
    async fn complete(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        resumed: bool,
    ) -> Result<(), ExportError> {
        let exported = run.record_count.unwrap_or(0).max(0) as u64;
        let transactions = i64::from(ctx.store.counts().transactions);
        let completed = match resumed {
            true => Transition::completed(transactions, None, None),
            false => Transition::completed(
                transactions,
                ctx.options.slot.as_deref(),
                ctx.options.command_id.as_deref(),
            ),
        };
        ctx.store.transition(run, completed).await?;
        let progress = &mut ctx.progress;
        progress.exported += exported;
        progress.rejected += run.rejected.max(0) as u64;
        if exported > 0 {
            progress.file = run.file_name.clone();
            progress.published_to = run.publication.as_ref().map(|p| p.location.address());
            progress.completed_run_id = Some(run.id.clone());
        } else if progress.file.is_none() {
            progress.completed_run_id = Some(run.id.clone());
        }
        Ok(())
    }
}
