//! Staging and publishing: the file is made durable under a staging name
//! and its hash recorded (`FINALIZING`); then its manifest, then the
//! `.DAT` under its final name, and the publication recorded (`WRITTEN`).
//! Records are marked only after that. A file this folder cannot find is
//! staged again from the claimed records: nothing is assumed delivered.

use super::context::RunContext;
use super::file::{self, ExportFile, Published, Staged};
use super::io::blocking;
use super::{ExportError, Exporter};
use crate::domain::{Deanery, DestinationUrl};
use crate::store::{Publication, RunDoc, Transition};

impl Exporter {
    /// A run whose claimed records all turned out invalid writes no file.
    pub(super) async fn record_nothing_to_write(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
    ) -> Result<(), ExportError> {
        let nothing = Transition::NothingToWrite;
        self.store
            .transition(run, ctx.deanery, nothing, &mut ctx.attempts)
            .await?;
        Ok(())
    }

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
        ctx.renew_lease(&self.store).await?;
        let recorded = Transition::Staged {
            record_count: staged.record_count,
            sha256: staged.sha256.clone(),
        };
        self.store
            .transition(run, ctx.deanery, recorded, &mut ctx.attempts)
            .await?;
        Ok(staged)
    }

    /// Makes the staged file final and records where. When this folder
    /// holds neither the final file nor the staged one (staged on another
    /// host, or taken by a reader before its publication was recorded),
    /// the file is staged again and published again under the same name.
    pub(super) async fn publish(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
    ) -> Result<(), ExportError> {
        if let Some(remote) = self.destination.remote() {
            return self.deliver(ctx, run, remote).await;
        }
        if !matches!(self.settings.destination, DestinationUrl::Folder(_)) {
            return Err(ExportError::inconsistent(
                &run.id,
                "export.destination names a bucket or server but this exporter was built for the folder",
            ));
        }
        let mut staged = recorded(run)?;
        if self.publish_staged(run, ctx.deanery, &staged).await? == Published::NotStaged {
            tracing::warn!(
                file = run.file_name.as_deref().unwrap_or(""),
                folder = %self.settings.output_dir.display(),
                "the run's staged file is not in this folder and its publication was never recorded; \
                 staging it again from the claimed records"
            );
            let Some(again) = self.restage(ctx, run).await? else {
                return self.record_nothing_to_write(ctx, run).await;
            };
            staged = again;
            if self.publish_staged(run, ctx.deanery, &staged).await? != Published::Final {
                return Err(ExportError::inconsistent(
                    &run.id,
                    "the file staged again vanished before it could be published",
                ));
            }
        }
        self.record_publication(ctx, run, &staged).await
    }

    async fn publish_staged(
        &self,
        run: &RunDoc,
        deanery: &Deanery,
        staged: &Staged,
    ) -> Result<Published, ExportError> {
        let header = self.header(run, deanery)?;
        let (dir, staged) = (self.settings.output_dir.clone(), staged.clone());
        blocking(&self.settings.output_dir, move || {
            file::publish(&dir, &header, &staged)
        })
        .await
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

    /// Records where the file now exists under its final name (`WRITTEN`).
    async fn record_publication(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        staged: &Staged,
    ) -> Result<(), ExportError> {
        let path = self
            .settings
            .output_dir
            .join(run.file_name.as_deref().unwrap_or_default());
        let path = std::path::absolute(&path).unwrap_or(path);
        let publication = Publication {
            host: crate::domain::host_name(),
            path: path.display().to_string(),
            sha256: staged.sha256.clone(),
            published_at: crate::store::now(),
            destination: None,
            key: None,
            etag: None,
            version: None,
        };
        tracing::info!(
            host = %publication.host,
            path = %publication.path,
            sha256 = %publication.sha256,
            "export file published"
        );
        let published = Transition::Published(publication);
        self.store
            .transition(run, ctx.deanery, published, &mut ctx.attempts)
            .await?;
        Ok(())
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
