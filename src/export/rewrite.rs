//! Rewriting what a run has claimed: an earlier attempt's temporary file
//! died with it, so its claimed records are written again, in `_id`
//! order, before claiming more (or to stage a file again); records that
//! turned invalid since their claim are rejected.

use bson::oid::ObjectId;

use super::context::RunContext;
use super::file::ExportFile;
use super::{ExportError, Exporter};
use crate::domain::AppRow;
use crate::store::{Fields, RunDoc};

/// A file rewritten from the claimed records, and its mark boundaries: the
/// last `_id` of each batch written, so the mark phase marks the records
/// between consecutive boundaries, one transaction each.
pub(super) type Rewritten = (Option<ExportFile>, Vec<ObjectId>);

impl Exporter {
    /// Removes the temporary files an interrupted attempt left, then
    /// writes the records the run has claimed so far into a new temporary
    /// file (none when nothing is claimed yet).
    pub(super) async fn rewrite_claimed(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
    ) -> Result<Rewritten, ExportError> {
        self.remove_stale_temporaries(ctx.deanery).await?;
        let mut boundaries = Vec::new();
        if run.claimed <= 0 {
            return Ok((None, boundaries));
        }
        let chunk = self.settings.chunk_size as usize;
        let mut writer = Some(self.open_file(run, ctx.deanery).await?);
        let mut cursor = ctx
            .store
            .claimed(&run.id, Fields::Row, self.settings.cursor_batch_size)
            .await?;
        let (mut batch, mut rejections) = (Vec::with_capacity(chunk), Vec::new());
        while let Some(document) = cursor.next().await? {
            match AppRow::from_document(&document, ctx.deanery) {
                Ok(row) => batch.push(row),
                Err(reason) => {
                    rejections.extend(document.get_object_id("_id").ok().map(|id| (id, reason)))
                }
            }
            if batch.len() >= chunk {
                // A long rewrite must not let the lease lapse under it.
                ctx.renew_lease_if_due().await?;
                boundaries.extend(batch.last().map(|row: &AppRow| row.id));
                self.append(&mut writer, std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            boundaries.extend(batch.last().map(|row| row.id));
            self.append(&mut writer, batch).await?;
        }
        self.reject_changed(ctx, run, &rejections).await?;
        Ok((writer, boundaries))
    }

    /// Rejects claimed records that turned invalid after their claim.
    async fn reject_changed(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        rejections: &[(ObjectId, String)],
    ) -> Result<(), ExportError> {
        if rejections.is_empty() {
            return Ok(());
        }
        let batch = self.settings.chunk_size as usize;
        let rejected = ctx
            .store
            .reject_claimed(&mut ctx.session, &run.id, rejections, batch)
            .await?;
        for (id, reason) in &rejected {
            tracing::warn!(record_id = %id, reason = %reason, "record rejected: it changed after it was claimed");
        }
        run.claimed -= rejected.len() as i64;
        run.rejected += rejected.len() as i64;
        Ok(())
    }

    /// The file must hold exactly the records the run has claimed: a claim
    /// whose outcome was lost, or another writer's change, shows here
    /// rather than as a record marked with a file it is not in.
    pub(super) async fn verify_claimed(
        &self,
        ctx: &mut RunContext<'_>,
        run: &RunDoc,
        written: u64,
    ) -> Result<(), ExportError> {
        let claimed = ctx.store.count_claimed(&run.id).await?;
        if claimed != written {
            return Err(ExportError::ClaimMismatch {
                run_id: run.id.clone(),
                claimed,
                written,
            });
        }
        Ok(())
    }
}
