//! Marking: once the file is published and its publication recorded, the
//! run's records are exactly those `EXPORTING` under it, so they become
//! `EXPORTED` with the file's name and the publication's time by an
//! idempotent `updateMany` outside any transaction: one per
//! `export.mark_batch_size` records (between known `_id` boundaries), each
//! bounded like every operation and run again as it is after a kill or a
//! lost reply. The run completes only when none is left `EXPORTING`.

use std::time::Instant;

use bson::oid::ObjectId;

use super::context::RunContext;
use super::{ExportError, Exporter};
use crate::store::{Fields, IdRange, Marking, RunDoc};

impl Exporter {
    /// Marks the run's claimed records `EXPORTED`, one statement per
    /// batch of boundaries, then checks that none is left `EXPORTING`.
    pub(super) async fn mark_exported(
        &self,
        ctx: &mut RunContext<'_>,
        run: &RunDoc,
        boundaries: Option<Vec<ObjectId>>,
    ) -> Result<(), ExportError> {
        let Some(file_name) = run
            .file_name
            .as_deref()
            .filter(|_| run.record_count > Some(0))
        else {
            return Ok(());
        };
        let boundaries = match boundaries {
            Some(known) => known,
            None => self.boundaries_of(ctx, run).await?,
        };
        let marking = Marking {
            run_id: &run.id,
            file_name,
            exported_at: run
                .publication
                .as_ref()
                .map_or_else(crate::store::now, |p| p.published_at),
        };
        let started = Instant::now();
        let mut after = None;
        for up_to in self.batch_ends(&boundaries) {
            ctx.options.check()?;
            ctx.renew_lease_if_due().await?;
            let range = IdRange::after(after, up_to);
            ctx.store.mark_exported(&marking, range).await?;
            after = up_to;
        }
        self.verify_marked(ctx, run).await?;
        tracing::info!(
            mark_ms = started.elapsed().as_millis() as u64,
            "records marked exported"
        );
        Ok(())
    }

    /// The `_id` each marking statement goes up to: every boundary that
    /// ends `export.mark_batch_size` records, then the rest (`None`).
    fn batch_ends(&self, boundaries: &[ObjectId]) -> Vec<Option<ObjectId>> {
        let per_batch =
            (self.settings.mark_batch_size / self.settings.chunk_size.max(1)).max(1) as usize;
        let mut ends: Vec<Option<ObjectId>> = boundaries
            .iter()
            .skip(per_batch - 1)
            .step_by(per_batch)
            .copied()
            .map(Some)
            .collect();
        ends.push(None);
        ends
    }

    /// The run completes only when none of its records is left `EXPORTING`.
    async fn verify_marked(
        &self,
        ctx: &mut RunContext<'_>,
        run: &RunDoc,
    ) -> Result<(), ExportError> {
        let left = ctx.store.count_claimed(&run.id).await?;
        if left == 0 {
            return Ok(());
        }
        Err(ExportError::MarkIncomplete {
            run_id: run.id.clone(),
            left,
        })
    }

    /// The mark boundaries of a run resumed after its file was written:
    /// every `chunk_size`-th claimed `_id`, from one cursor.
    async fn boundaries_of(
        &self,
        ctx: &mut RunContext<'_>,
        run: &RunDoc,
    ) -> Result<Vec<ObjectId>, ExportError> {
        let chunk = self.settings.chunk_size as usize;
        let batch = self.settings.cursor_batch_size;
        let mut cursor = ctx.store.claimed(&run.id, Fields::Ids, batch).await?;
        let (mut boundaries, mut seen) = (Vec::new(), 0usize);
        while let Some(document) = cursor.next().await? {
            seen += 1;
            if seen.is_multiple_of(chunk) {
                boundaries.extend(document.get_object_id("_id").ok());
            }
        }
        Ok(boundaries)
    }
}
