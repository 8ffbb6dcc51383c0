//! Marking: the run's claimed records become `EXPORTED` with the file's
//! name, one short transaction per chunk, between known `_id` boundaries.

use std::time::Instant;

use bson::oid::ObjectId;

use super::context::RunContext;
use super::{ExportError, Exporter};
use crate::store::RunDoc;

impl Exporter {
    /// Marks the run's claimed records `EXPORTED`, one transaction per
    /// chunk (between consecutive boundaries), then any rest.
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
        let marking = Instant::now();
        let mut after = None;
        for up_to in boundaries.into_iter().map(Some).chain([None]) {
            ctx.options.check()?;
            ctx.renew_lease_if_due(&self.store).await?;
            self.store
                .mark_exported(
                    &mut ctx.session,
                    &run.id,
                    ctx.deanery,
                    file_name,
                    after,
                    up_to,
                    &mut ctx.attempts,
                )
                .await?;
            after = up_to;
        }
        tracing::info!(
            deanery = %ctx.deanery,
            run_id = %run.id,
            mark_ms = marking.elapsed().as_millis() as u64,
            "records marked exported"
        );
        Ok(())
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
        let mut cursor = self
            .store
            .claimed_ids(&run.id, ctx.deanery, batch, &mut ctx.attempts)
            .await?;
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
