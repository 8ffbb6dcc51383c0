//! Publishing a staged file to a bucket or an SFTP server, with the
//! folder's guarantees: the
//! manifest first, then the `.DAT`, each created only if the name is free;
//! an object someone else put under the name is refused; a resume that
//! finds the recorded bytes keeps them, finds nothing publishes the same
//! bytes again, finds other bytes refuses. The publication (key, SHA-256,
//! ETag, version) is recorded before any record is marked.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;

use super::context::RunContext;
use super::file::{self, FileHeader, Staged};
use super::io::blocking;
use super::publish::recorded;
use super::{ExportError, Exporter};
use crate::destination::{metrics, DestinationError, FailureKind, Found, Holding, Remote};
use crate::store::{Publication, RunDoc, Transition};

impl Exporter {
    /// Takes a `FINALIZING` run's file to the bucket or server and records
    /// where.
    pub(super) async fn deliver(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        bucket: Remote<'_>,
    ) -> Result<(), ExportError> {
        let staged = recorded(run)?;
        let name = self.header(run, ctx.deanery)?.file_name;
        // Temporary objects an interrupted attempt left (this deanery's
        // lease is held, so none is in use).
        bucket
            .remove_temporaries(&format!("DE_{}_APP_", ctx.deanery))
            .await?;
        let found = match bucket.holding(&name, &staged.sha256).await? {
            Holding::Same(found) => {
                metrics::record_kept(bucket.scheme());
                tracing::info!(key = %bucket.key(&name), "the file is already at the destination with the recorded hash; keeping it");
                self.ensure_bucket_manifest(run, ctx, bucket, &staged, false)
                    .await?;
                found
            }
            Holding::Other(hash) => return Err(occupied(bucket, &name, &hash).into()),
            Holding::Absent => {
                let Some((staged, path)) = self.staged_here(ctx, run).await? else {
                    return self.record_nothing_to_write(ctx, run).await;
                };
                self.upload(ctx, run, bucket, &staged, path).await?
            }
        };
        // A try that failed mid-upload (a lost connection) may have left
        // its temporary behind: none outlives a completed delivery.
        if let Err(err) = bucket
            .remove_temporaries(&format!("DE_{}_APP_", ctx.deanery))
            .await
        {
            tracing::warn!(error = %crate::report::Chain(&err), "could not remove a temporary file; the next run of the deanery removes it");
        }
        let dir = self.settings.output_dir.clone();
        blocking(&self.settings.output_dir, move || {
            file::remove_staged(&dir, &name)
        })
        .await?;
        let staged = recorded(run)?;
        self.record_bucket_publication(ctx, run, bucket, &staged, found)
            .await
    }

    /// The staged file with the recorded hash in this folder, staged
    /// again from the claimed records when it is not here (another host
    /// staged it); `None` when no valid record is left to write.
    async fn staged_here(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
    ) -> Result<Option<(Staged, PathBuf)>, ExportError> {
        let staged = recorded(run)?;
        if let Some(path) = self.staged_file(run, &staged).await? {
            return Ok(Some((staged, path)));
        }
        tracing::warn!("the run's staged file is not in this folder and nothing is at the destination; staging it again from the claimed records");
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

    /// Manifest, then `.DAT`, each created only if absent.
    async fn upload(
        &self,
        ctx: &mut RunContext<'_>,
        run: &RunDoc,
        bucket: Remote<'_>,
        staged: &Staged,
        path: PathBuf,
    ) -> Result<Found, ExportError> {
        let name = self.header(run, ctx.deanery)?.file_name;
        self.ensure_bucket_manifest(run, ctx, bucket, staged, true)
            .await?;
        // Only the lease holder may create the file.
        ctx.renew_lease(&self.store).await?;
        let started = Instant::now();
        match bucket.create_from_file(&name, &path).await {
            Ok(created) => {
                metrics::record_created(bucket.scheme(), created.size, started.elapsed());
                Ok(created)
            }
            Err(err) if err.kind == FailureKind::Occupied => {
                // Taken between the look-up and the create (or a reply was
                // lost and this very create applied): look again.
                match bucket.holding(&name, &staged.sha256).await? {
                    Holding::Same(found) => Ok(found),
                    Holding::Other(hash) => Err(occupied(bucket, &name, &hash).into()),
                    Holding::Absent => Err(raced(err).into()),
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Creates the manifest unless one for these bytes is there. One left
    /// by an earlier attempt of this run for other bytes (its records
    /// changed and were staged again; its `.DAT` never created) is
    /// replaced; any other is refused.
    async fn ensure_bucket_manifest(
        &self,
        run: &RunDoc,
        ctx: &RunContext<'_>,
        bucket: Remote<'_>,
        staged: &Staged,
        dat_absent: bool,
    ) -> Result<(), ExportError> {
        let header = self.header(run, ctx.deanery)?;
        let manifest_name = format!("{}.json", header.file_name);
        let bytes = Bytes::from(manifest_bytes(&header, staged, &self.settings.output_dir)?);
        let started = Instant::now();
        let err = match bucket.create_bytes(&manifest_name, bytes.clone()).await {
            Ok(created) => {
                metrics::record_created(bucket.scheme(), created.size, started.elapsed());
                return Ok(());
            }
            Err(err) if err.kind == FailureKind::Occupied => err,
            Err(err) => return Err(err.into()),
        };
        let existing = bucket.read_small(&manifest_name).await?;
        match manifest_owner(existing.as_deref(), &run.id, &staged.sha256) {
            ManifestOwner::Same => Ok(()),
            ManifestOwner::EarlierAttempt if dat_absent => {
                tracing::warn!(key = %bucket.key(&manifest_name), "replacing this run's manifest for bytes that were never published (its records changed and were staged again)");
                bucket.delete(&manifest_name).await?;
                bucket.create_bytes(&manifest_name, bytes).await?;
                Ok(())
            }
            ManifestOwner::EarlierAttempt | ManifestOwner::Foreign => Err(DestinationError {
                detail: format!("{}; another object holds the manifest's name and is not this file's manifest: refusing to publish (move it away, and the next attempt publishes)", err.detail),
                ..err
            }
            .into()),
        }
    }

    /// Records where the file now is (`WRITTEN`); records are marked after.
    async fn record_bucket_publication(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        bucket: Remote<'_>,
        staged: &Staged,
        found: Found,
    ) -> Result<(), ExportError> {
        let name = run.file_name.clone().unwrap_or_default();
        let key = bucket.key(&name);
        let publication = Publication {
            host: crate::domain::host_name(),
            path: format!("{}/{name}", bucket.url()),
            sha256: staged.sha256.clone(),
            published_at: crate::store::now(),
            destination: Some(bucket.url().to_owned()),
            key: Some(key),
            etag: found.etag,
            version: found.version,
        };
        ctx.renew_lease(&self.store).await?;
        tracing::info!(
            destination = %bucket.url(),
            key = publication.key.as_deref().unwrap_or(""), etag = publication.etag.as_deref().unwrap_or(""),
            sha256 = %publication.sha256, "export file published"
        );
        let published = Transition::Published(publication);
        self.store
            .transition(run, ctx.deanery, published, &mut ctx.attempts)
            .await?;
        Ok(())
    }
}

fn manifest_bytes(
    header: &FileHeader,
    staged: &Staged,
    dir: &std::path::Path,
) -> Result<Vec<u8>, ExportError> {
    file::manifest_bytes(header, staged).map_err(|source| ExportError::File {
        dir: dir.to_owned(),
        source,
    })
}

/// Whose manifest holds the name.
#[derive(Debug, PartialEq, Eq)]
enum ManifestOwner {
    /// This file's manifest.
    Same,
    /// This run's, for other bytes.
    EarlierAttempt,
    /// Anything else.
    Foreign,
}

fn manifest_owner(existing: Option<&[u8]>, run_id: &str, sha256: &str) -> ManifestOwner {
    let Some(manifest) = existing.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
    else {
        return ManifestOwner::Foreign;
    };
    match (manifest["runId"].as_str(), manifest["sha256"].as_str()) {
        (Some(id), Some(hash)) if id == run_id && hash == sha256 => ManifestOwner::Same,
        (Some(id), Some(_)) if id == run_id => ManifestOwner::EarlierAttempt,
        _ => ManifestOwner::Foreign,
    }
}

/// Another file holds the file's name: nothing is marked into it.
fn occupied(bucket: Remote<'_>, name: &str, hash: &str) -> DestinationError {
    DestinationError::new(
        FailureKind::Occupied,
        bucket.url(),
        "create",
        &bucket.key(name),
        format!(
            "a file with other bytes (sha256 {hash}) already holds the name: refusing to \
             publish over it, and no record is marked (move it away, and the next attempt publishes)"
        ),
    )
}

/// A create refused as occupied, with nothing under the name on a second
/// look: two writers raced (409); the attempt is tried again.
fn raced(err: DestinationError) -> DestinationError {
    DestinationError {
        kind: FailureKind::Transient,
        detail: format!(
            "{}; nothing holds the name now (a conflicting write raced this one)",
            err.detail
        ),
        ..err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_is_ours_only_with_our_run_and_hash() {
        let ours = br#"{"runId":"r1","sha256":"aa"}"#;
        assert_eq!(manifest_owner(Some(ours), "r1", "aa"), ManifestOwner::Same);
        assert_eq!(
            manifest_owner(Some(ours), "r1", "bb"),
            ManifestOwner::EarlierAttempt
        );
        assert_eq!(
            manifest_owner(Some(ours), "r2", "aa"),
            ManifestOwner::Foreign
        );
        assert_eq!(
            manifest_owner(Some(b"not json"), "r1", "aa"),
            ManifestOwner::Foreign
        );
        assert_eq!(manifest_owner(None, "r1", "aa"), ManifestOwner::Foreign);
    }
}
