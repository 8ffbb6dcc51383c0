//! Publishing a staged file, the same way whatever the destination: the
//! manifest first, then the `.DAT`, each created only if the name is free;
//! a file someone else put under the name is refused; a resume that finds
//! the recorded bytes keeps them, finds nothing publishes the same bytes
//! again, finds other bytes refuses. Where the file is (a typed
//! [`crate::domain::Location`]) is recorded before any record is marked.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;

use super::context::RunContext;
use super::doubt::Weighed;
use super::file::{self, FileHeader, Staged};
use super::io::blocking;
use super::stage::recorded;
use super::{ExportError, Exporter};
use crate::destination::{
    metrics, Destination, DestinationError, FailureKind, Found, Holding, Upload,
};
use crate::store::{Publication, RunDoc, Transition};

impl Exporter {
    /// Takes a `FINALIZING` run's file to the destination and records
    /// where.
    pub(super) async fn publish(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
    ) -> Result<(), ExportError> {
        let (to, temporaries) = (&self.destination, format!("DE_{}_APP_", ctx.deanery));
        let staged = recorded(run)?;
        let name = self.header(run, ctx.deanery)?.file_name;
        // Temporaries an interrupted attempt left (this deanery's lease is
        // held, so none is in use).
        to.remove_temporaries(&temporaries).await?;
        let found = match to.holding(&name, &staged.sha256).await? {
            Holding::Same(found) => {
                metrics::record_kept(to.scheme());
                tracing::info!(key = %to.key(&name), "the file is already at the destination with the recorded hash; keeping it");
                let header = self.header(run, ctx.deanery)?;
                ensure_manifest(to, &header, &staged, false).await?;
                found
            }
            Holding::Other(hash) => return Err(occupied(to, &name, &hash).into()),
            Holding::Absent => match self.weigh_absence(ctx, run, &name).await? {
                Weighed::Delivered(found) => found,
                Weighed::Publish => {
                    let Some((staged, path)) = self.staged_here(ctx, run).await? else {
                        return Ok(ctx.record_nothing_to_write(run).await?);
                    };
                    self.create_file(ctx, run, &staged, path).await?
                }
            },
        };
        // A try that failed mid-upload (a lost connection) may have left
        // its temporary behind: none outlives a completed publication.
        if let Err(err) = to.remove_temporaries(&temporaries).await {
            tracing::warn!(error = %crate::error_chain::Chain(&err), "could not remove a temporary file; the next run of the deanery removes it");
        }
        let dir = self.settings.output_dir.clone();
        blocking(&self.settings.output_dir, move || {
            file::remove_staged(&dir, &name)
        })
        .await?;
        self.record_publication(found, ctx, run).await
    }

    /// Manifest, then `.DAT`, each created only if absent; the intent to
    /// create the `.DAT` is recorded first, and cleared when the create is
    /// refused for certain.
    async fn create_file(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        staged: &Staged,
        path: PathBuf,
    ) -> Result<Found, ExportError> {
        let header = self.header(run, ctx.deanery)?;
        ensure_manifest(&self.destination, &header, staged, true).await?;
        let (to, name, started) = (&self.destination, &header.file_name, Instant::now());
        let upload = to.upload(name, &path).await?;
        // Only the lease holder may create the file (an upload may be long).
        ctx.renew_lease().await?;
        self.record_intent(ctx, run, name, &staged.sha256).await?;
        let created = finish_file(to, name, staged, (upload, started)).await;
        if let Err(err) = &created {
            // The store answered (or nothing was sent): the name was not
            // created, so nothing is in doubt.
            if !err.unanswered {
                ctx.store.transition(run, Transition::Refused).await?;
            }
        }
        Ok(created?)
    }

    /// Records where the file now is (`WRITTEN`); records are marked after.
    async fn record_publication(
        &self,
        found: Found,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
    ) -> Result<(), ExportError> {
        let staged = recorded(run)?;
        let name = run.file_name.clone().unwrap_or_default();
        let publication = Publication {
            host: crate::domain::host_name(),
            sha256: staged.sha256,
            published_at: crate::store::now(),
            location: self.destination.location(&name, found),
        };
        ctx.renew_lease().await?;
        tracing::info!(
            destination = %self.destination.url(),
            key = %self.destination.key(&name),
            location = %publication.location.address(),
            sha256 = %publication.sha256,
            "export file published"
        );
        let published = Transition::Published(publication);
        ctx.store.transition(run, published).await?;
        crate::ops::metrics::set_publication_in_doubt(ctx.deanery.as_str(), false);
        Ok(())
    }
}

/// Publishes a staged file outside a run (`redeliver`): its manifest,
/// then the file, each created only if absent, as a run does.
///
/// # Errors
/// [`FailureKind::Occupied`] when something holds either name.
pub(crate) async fn publish_file(
    to: &Destination,
    header: &FileHeader,
    staged: &Staged,
    path: &Path,
) -> Result<Found, DestinationError> {
    ensure_manifest(to, header, staged, true).await?;
    create_file(to, &header.file_name, staged, path).await
}

/// Creates `name` from the staged file at `path` only if absent. An
/// occupied name is looked at again: the same bytes (a reply lost after
/// the create applied) are the file; other bytes are refused.
///
/// # Errors
/// [`FailureKind::Occupied`] when other bytes hold the name; others as met.
async fn create_file(
    to: &Destination,
    name: &str,
    staged: &Staged,
    path: &Path,
) -> Result<Found, DestinationError> {
    let started = Instant::now();
    let upload = to.upload(name, path).await?;
    finish_file(to, name, staged, (upload, started)).await
}

/// Creates `name` from an upload (started then) only if absent, as
/// [`create_file`].
async fn finish_file(
    to: &Destination,
    name: &str,
    staged: &Staged,
    (upload, started): (Upload, Instant),
) -> Result<Found, DestinationError> {
    match to.finish(name, upload).await {
        Ok(created) => {
            metrics::record_created(to.scheme(), created.size, started.elapsed());
            Ok(created)
        }
        Err(err) if err.kind == FailureKind::Occupied => {
            match to.holding(name, &staged.sha256).await? {
                Holding::Same(found) => Ok(found),
                Holding::Other(hash) => Err(occupied(to, name, &hash)),
                Holding::Absent => Err(raced(err)),
            }
        }
        Err(err) => Err(err),
    }
}

/// Creates the file's manifest unless one for these bytes is there. One
/// left by an earlier attempt of the same run for other bytes (its records
/// changed and were staged again; its `.DAT` never created) is replaced;
/// any other is refused.
///
/// # Errors
/// [`FailureKind::Occupied`] when another manifest holds the name.
async fn ensure_manifest(
    to: &Destination,
    header: &FileHeader,
    staged: &Staged,
    dat_absent: bool,
) -> Result<(), DestinationError> {
    let manifest_name = format!("{}.json", header.file_name);
    let bytes = Bytes::from(file::manifest_bytes(header, staged));
    let started = Instant::now();
    let err = match to.create_bytes(&manifest_name, bytes.clone()).await {
        Ok(created) => {
            metrics::record_created(to.scheme(), created.size, started.elapsed());
            return Ok(());
        }
        Err(err) if err.kind == FailureKind::Occupied => err,
        Err(err) => return Err(err),
    };
    let existing = to.read_small(&manifest_name).await?;
    match manifest_owner(existing.as_deref(), &header.run_id, &staged.sha256) {
        ManifestOwner::Same => Ok(()),
        ManifestOwner::EarlierAttempt if dat_absent => {
            tracing::warn!(key = %to.key(&manifest_name), "replacing this run's manifest for bytes that were never published (its records changed and were staged again)");
            to.delete(&manifest_name).await?;
            to.create_bytes(&manifest_name, bytes).await.map(drop)
        }
        ManifestOwner::EarlierAttempt | ManifestOwner::Foreign => Err(DestinationError {
            detail: format!("{}; another file holds the manifest's name and is not this file's manifest: refusing to publish (move it away, and the next attempt publishes)", err.detail),
            ..err
        }),
    }
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
fn occupied(to: &Destination, name: &str, hash: &str) -> DestinationError {
    DestinationError::new(
        FailureKind::Occupied,
        to.url(),
        "create",
        &to.key(name),
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
