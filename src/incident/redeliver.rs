//! `esr-exporter redeliver FILE_NAME [--to DESTINATION] [--replace]`: the
//! file rebuilt from the records its run wrote into it, in `_id` order,
//! checked against the recorded SHA-256, and published again, manifest
//! first, each name created only if absent (with `--replace`, what holds
//! the name is removed first, then the name is created conditionally as
//! ever). The redelivery is recorded on the run; records do not change.

use std::path::Path;

use bson::doc;
use bytes::Bytes;

use crate::config::Settings;
use crate::destination::{Destination, DestinationError, FailureKind, Remote};
use crate::domain::{AppRow, Deanery, DestinationUrl};
use crate::export::file::{self, ExportFile, FileHeader, Staged};
use crate::store::{RunDoc, Store, StoreError};

/// Why a redelivery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    /// No run wrote a file of that name.
    #[error("no export run wrote a file named {0}")]
    NotFound(String),
    /// The run has not published its file yet.
    #[error("{file} is not published yet (its run {run_id} is {phase}); it is delivered when the run completes")]
    NotPublished {
        /// File name.
        file: String,
        /// Run id.
        run_id: String,
        /// Run phase.
        phase: String,
    },
    /// The rebuilt bytes are not the recorded ones.
    #[error("refusing to redeliver {file}: the rebuilt file does not hash to the recorded SHA-256 {sha256}: {what}")]
    Differs {
        /// File name.
        file: String,
        /// The recorded hash.
        sha256: String,
        /// What differs.
        what: String,
    },
    /// Something holds the name at the destination.
    #[error("{0} already exists; nothing was written over it (--replace removes it and delivers the file again)")]
    Exists(String),
    /// MongoDB failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The destination failed.
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// A local file could not be written.
    #[error("local file error")]
    File(#[from] std::io::Error),
}

/// Where a redelivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivered {
    /// The file's new location (path or URL).
    pub location: String,
    /// Its SHA-256, the recorded one.
    pub sha256: String,
    /// Detail lines.
    pub records: u64,
}

/// Rebuilds, checks and publishes `file_name` again (see the module docs).
///
/// # Errors
/// [`RedeliverError`] saying why nothing was delivered.
pub async fn redeliver(
    store: &Store,
    settings: &Settings,
    file_name: &str,
    to: Option<&DestinationUrl>,
    replace: bool,
) -> Result<Redelivered, RedeliverError> {
    let run = store
        .run_by_file(file_name)
        .await?
        .ok_or_else(|| RedeliverError::NotFound(file_name.to_owned()))?;
    let Some(publication) = run.publication.clone() else {
        return Err(RedeliverError::NotPublished {
            file: file_name.to_owned(),
            run_id: run.id.clone(),
            phase: run.phase.as_str().to_owned(),
        });
    };
    let target = match to {
        Some(url) => url.clone(),
        None => original_destination(&publication.path, publication.destination.as_deref()),
    };
    let header = header_of(&run, settings)?;
    let delivered = match &target {
        DestinationUrl::Folder(dir) => {
            let dir = dir
                .clone()
                .unwrap_or_else(|| settings.export.output_dir.clone());
            to_folder(store, settings, &run, &header, &dir, replace).await?
        }
        remote => {
            let destination = Destination::of(remote, settings)?;
            let Some(remote) = destination.remote() else {
                return Err(RedeliverError::NotFound(format!(
                    "the destination {remote}"
                )));
            };
            to_remote(store, settings, &run, &header, remote, replace).await?
        }
    };
    record(store, &run, &delivered, replace).await?;
    Ok(delivered)
}

/// Where the run published: its bucket, or the folder of its path.
fn original_destination(path: &str, destination: Option<&str>) -> DestinationUrl {
    if let Some(url) = destination.and_then(|d| DestinationUrl::parse(d).ok()) {
        return url;
    }
    DestinationUrl::Folder(Path::new(path).parent().map(Path::to_path_buf))
}

fn header_of(run: &RunDoc, settings: &Settings) -> Result<FileHeader, RedeliverError> {
    let inconsistent = |what: &str| RedeliverError::NotFound(format!("{what} of run {}", run.id));
    let deanery = Deanery::parse(&run.deanery).map_err(|_| inconsistent("the deanery"))?;
    Ok(FileHeader {
        deanery,
        date: run.file_date(),
        time: run.file_time(),
        seq: run.seq.ok_or_else(|| inconsistent("the sequence"))?,
        run_id: run.id.clone(),
        file_name: run
            .file_name
            .clone()
            .ok_or_else(|| inconsistent("the file name"))?,
        mode: settings.export.file_mode_bits(),
    })
}

/// Writes the run's records, in `_id` order, into a staged file in `dir`
/// and checks its hash against the run's.
async fn rebuild(
    store: &Store,
    settings: &Settings,
    run: &RunDoc,
    header: &FileHeader,
    dir: &Path,
) -> Result<Staged, RedeliverError> {
    std::fs::create_dir_all(dir)?;
    let mut writer = ExportFile::create(dir, header.clone())?;
    let mut cursor = store
        .records_of_run(&run.id, settings.export.cursor_batch_size)
        .await?;
    let mut unwritable = Vec::new();
    while let Some(record) = cursor.next().await? {
        match AppRow::from_document(&record, &header.deanery) {
            Ok(row) => writer.write_rows(std::slice::from_ref(&row))?,
            Err(reason) => unwritable.push(format!(
                "{} ({reason})",
                record
                    .get("_id")
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )),
        }
    }
    let staged = writer.stage()?;
    if Some(staged.sha256.as_str()) == run.sha256.as_deref() {
        return Ok(staged);
    }
    file::remove_staged(dir, &header.file_name)?;
    let what = what_differs(store, run, &staged, &unwritable).await?;
    Err(RedeliverError::Differs {
        file: header.file_name.clone(),
        sha256: run.sha256.clone().unwrap_or_default(),
        what,
    })
}

/// Names what changed since the file was published: records missing,
/// records that can no longer be written, records updated since.
async fn what_differs(
    store: &Store,
    run: &RunDoc,
    staged: &Staged,
    unwritable: &[String],
) -> Result<String, RedeliverError> {
    let mut found = Vec::new();
    let recorded = run.record_count.unwrap_or(0).max(0) as u64;
    if staged.record_count + unwritable.len() as u64 != recorded {
        let now = staged.record_count + unwritable.len() as u64;
        found.push(format!("{recorded} records were in the file, {now} are marked with it now (records missing or moved)"));
    }
    if !unwritable.is_empty() {
        found.push(format!(
            "can no longer be written: {}",
            unwritable.join(", ")
        ));
    }
    if let Some(published) = run.publication.as_ref().map(|p| p.published_at) {
        let changed = store.records_updated_since(&run.id, published).await?;
        if !changed.is_empty() {
            found.push(format!(
                "updated since the file was published: {}",
                changed.join(", ")
            ));
        }
    }
    if found.is_empty() {
        found.push("a record's content changed since (its updatedAt was not moved)".to_owned());
    }
    Ok(found.join("; "))
}

async fn to_folder(
    store: &Store,
    settings: &Settings,
    run: &RunDoc,
    header: &FileHeader,
    dir: &Path,
    replace: bool,
) -> Result<Redelivered, RedeliverError> {
    let target = dir.join(&header.file_name);
    let manifest = dir.join(format!("{}.json", header.file_name));
    if replace {
        for path in [&target, &manifest] {
            file::remove_if_present(path)?;
        }
    } else if std::fs::symlink_metadata(&target).is_ok() {
        return Err(RedeliverError::Exists(target.display().to_string()));
    }
    let staged = rebuild(store, settings, run, header, dir).await?;
    // Never over a file: the final name is made by a hard link, which
    // fails if anything took the name meanwhile.
    file::publish(dir, header, &staged)?;
    let location = std::path::absolute(&target).unwrap_or(target);
    Ok(Redelivered {
        location: location.display().to_string(),
        sha256: staged.sha256,
        records: staged.record_count,
    })
}

async fn to_remote(
    store: &Store,
    settings: &Settings,
    run: &RunDoc,
    header: &FileHeader,
    bucket: Remote<'_>,
    replace: bool,
) -> Result<Redelivered, RedeliverError> {
    bucket.probe().await?;
    let name = &header.file_name;
    let manifest_name = format!("{name}.json");
    if replace {
        bucket.delete(&manifest_name).await?;
        bucket.delete(name).await?;
    } else if bucket.lookup(name).await?.is_some() {
        return Err(RedeliverError::Exists(format!("{}/{name}", bucket.url())));
    }
    let staging = tempfile::tempdir_in(ensure_dir(&settings.export.output_dir)?)?;
    let staged = rebuild(store, settings, run, header, staging.path()).await?;
    let exists = |err: DestinationError| match err.kind {
        FailureKind::Occupied => RedeliverError::Exists(format!("{}/{}", err.destination, err.key)),
        _ => RedeliverError::Destination(err),
    };
    let manifest = Bytes::from(file::manifest_bytes(header, &staged)?);
    bucket
        .create_bytes(&manifest_name, manifest)
        .await
        .map_err(exists)?;
    let path = staging.path().join(format!(".{name}.final.tmp"));
    bucket.create_from_file(name, &path).await.map_err(exists)?;
    Ok(Redelivered {
        location: format!("{}/{name}", bucket.url()),
        sha256: staged.sha256,
        records: staged.record_count,
    })
}

fn ensure_dir(dir: &Path) -> std::io::Result<&Path> {
    std::fs::create_dir_all(dir)?;
    Ok(dir)
}

/// Who runs this: `$USER`, `$LOGNAME`, else the numeric uid.
fn user_name() -> String {
    use std::os::unix::fs::MetadataExt;
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            std::fs::metadata("/proc/self")
                .map(|m| format!("uid {}", m.uid()))
                .unwrap_or_else(|_| "unknown".to_owned())
        })
}

/// Records the redelivery on the run and logs it.
async fn record(
    store: &Store,
    run: &RunDoc,
    delivered: &Redelivered,
    replaced: bool,
) -> Result<(), StoreError> {
    let by = format!("{}@{}", user_name(), crate::domain::host_name());
    let entry = doc! {
        "by": &by,
        "at": crate::store::now(),
        "to": &delivered.location,
        "sha256": &delivered.sha256,
        "records": delivered.records as i64,
        "replaced": replaced,
    };
    store.record_redelivery(&run.id, entry).await?;
    tracing::info!(
        run_id = %run.id, file = run.file_name.as_deref().unwrap_or(""), to = %delivered.location,
        sha256 = %delivered.sha256, by = %by, replaced, "file redelivered"
    );
    Ok(())
}
