//! `esr-exporter redeliver FILE_NAME [--to DESTINATION] [--replace]`: the
//! file rebuilt from the records its run wrote into it, in `_id` order,
//! checked against the recorded SHA-256, and published again through the
//! same path as a run: manifest first, each name created only if absent
//! (with `--replace`, what holds the names is removed first, then they are
//! created conditionally as ever). The redelivery is recorded on the run;
//! records do not change.

use std::path::{Path, PathBuf};

use bson::doc;

use crate::config::Settings;
use crate::destination::{Destination, DestinationError, FailureKind, Found};
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
    let target = to
        .cloned()
        .unwrap_or_else(|| publication.location.destination());
    let header = header_of(&run, settings)?;
    let destination = Destination::of(&target, settings)?;
    let delivered = deliver_again(store, settings, &run, &header, &destination, replace).await?;
    record(store, &run, &delivered, replace).await?;
    Ok(delivered)
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
) -> Result<(Staged, PathBuf), RedeliverError> {
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
        if let Some(path) = file::staged_with_hash(dir, &header.file_name, &staged.sha256)? {
            return Ok((staged, path));
        }
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

/// Publishes the rebuilt file to `to` as a run does: manifest, then the
/// file, each created only if absent (with `--replace`, both names are
/// removed first).
async fn deliver_again(
    store: &Store,
    settings: &Settings,
    run: &RunDoc,
    header: &FileHeader,
    to: &Destination,
    replace: bool,
) -> Result<Redelivered, RedeliverError> {
    to.probe().await?;
    let name = &header.file_name;
    let exists = |err: DestinationError| match err.kind {
        FailureKind::Occupied => RedeliverError::Exists(address(to, name)),
        _ => RedeliverError::Destination(err),
    };
    if replace {
        to.delete(&format!("{name}.json")).await?;
        to.delete(name).await?;
    } else if to.lookup(name).await.map_err(exists)?.is_some() {
        return Err(RedeliverError::Exists(address(to, name)));
    }
    let staging = tempfile::tempdir_in(ensure_dir(&settings.export.output_dir)?)?;
    let (staged, path) = rebuild(store, settings, run, header, staging.path()).await?;
    let found = crate::export::publish_file(to, header, &staged, &path)
        .await
        .map_err(exists)?;
    Ok(Redelivered {
        location: to.location(name, found).address(),
        sha256: staged.sha256,
        records: staged.record_count,
    })
}

fn address(to: &Destination, name: &str) -> String {
    to.location(name, Found::default()).address()
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
