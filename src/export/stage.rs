//! Staging: the file is made durable under a staging name in the output
//! folder and its hash and count recorded (`FINALIZING`) before it is
//! published. A staged file this folder cannot find is staged again from
//! the claimed records.

use std::path::PathBuf;

use super::context::RunContext;
use super::file::{self, ExportFile, Staged};
use super::io::blocking;
use super::{ExportError, Exporter};
use crate::store::{RunDoc, Transition};

impl Exporter {
    /// Trailer, fsync and the staging name; then, as lease holder, the
    /// file's hash and count recorded (`FINALIZING`).
    pub(super) async fn stage(
        &self,
        ctx: &mut RunContext<'_>,
        writer: ExportFile,
        run: &mut RunDoc,
    ) -> Result<Staged, ExportError> {
        let staged = blocking(&self.settings.output_dir, move || writer.stage()).await?;
        // Only the lease holder may make the file final: renew (and stop
        // if another process took over) before recording it.
        ctx.renew_lease().await?;
        let recorded = Transition::Staged {
            record_count: staged.record_count,
            sha256: staged.sha256.clone(),
        };
        ctx.store.transition(run, recorded).await?;
        Ok(staged)
    }

    /// Writes the claimed records into a new staged file. Unchanged
    /// records give the same bytes as before; if another writer changed a
    /// claimed record since, the new hash and count are recorded.
    pub(super) async fn restage(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
    ) -> Result<Option<Staged>, ExportError> {
        let recorded = run.sha256.clone();
        let (writer, _) = self.rewrite_claimed(ctx, run).await?;
        let written = writer.as_ref().map_or(0, ExportFile::count);
        self.verify_claimed(ctx, run, written).await?;
        let Some(writer) = writer.filter(|w| w.count() > 0) else {
            return Ok(None);
        };
        let staged = self.stage(ctx, writer, run).await?;
        if recorded.as_deref() != Some(staged.sha256.as_str()) {
            tracing::warn!(
                sha256 = %staged.sha256,
                records = staged.record_count,
                "the file staged again differs from the first (claimed records changed since); publishing the new bytes"
            );
        }
        Ok(Some(staged))
    }

    /// The staged file with the recorded hash in this folder, staged
    /// again from the claimed records when it is not here (another host
    /// staged it, or it was published and taken before its publication
    /// was recorded); `None` when no valid record is left to write.
    pub(super) async fn staged_here(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
    ) -> Result<Option<(Staged, PathBuf)>, ExportError> {
        let staged = recorded(run)?;
        if let Some(path) = self.staged_file(run, &staged).await? {
            return Ok(Some((staged, path)));
        }
        tracing::warn!(
            file = run.file_name.as_deref().unwrap_or(""),
            folder = %self.settings.output_dir.display(),
            "the run's staged file is not in this folder and nothing is at the destination; \
             staging it again from the claimed records"
        );
        let Some(staged) = self.restage(ctx, run).await? else {
            return Ok(None);
        };
        let path = self.staged_file(run, &staged).await?.ok_or_else(|| {
            ExportError::inconsistent(
                &run.id,
                "the file staged again vanished before it could be published",
            )
        })?;
        Ok(Some((staged, path)))
    }

    /// The run's staged file in this folder when it holds `staged`'s bytes.
    async fn staged_file(
        &self,
        run: &RunDoc,
        staged: &Staged,
    ) -> Result<Option<PathBuf>, ExportError> {
        let (dir, name, sha) = (
            self.settings.output_dir.clone(),
            run.file_name.clone().unwrap_or_default(),
            staged.sha256.clone(),
        );
        blocking(&self.settings.output_dir, move || {
            file::staged_with_hash(&dir, &name, &sha)
        })
        .await
    }
}

/// The hash and count the run recorded when it staged its file.
pub(super) fn recorded(run: &RunDoc) -> Result<Staged, ExportError> {
    match (run.sha256.clone(), run.record_count) {
        (Some(sha256), Some(count)) => Ok(Staged {
            sha256,
            record_count: count.max(0) as u64,
        }),
        _ => Err(ExportError::inconsistent(
            &run.id,
            "finalizing without a recorded hash and count",
        )),
    }
}
