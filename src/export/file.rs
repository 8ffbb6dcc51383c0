//! Writing one export file: CSV (RFC 4180 quoting, CRLF) to a temporary
//! name in the output folder, hashing the bytes as they go, then fsync and
//! a rename to its staging name `.<file>.final.tmp`, and fsync of the
//! folder. The destination publishes it from there (a hard link, for a
//! folder), with the `.json` manifest [`manifest_bytes`] gives.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::domain::{AppRow, Deanery};

/// Header values of a file.
#[derive(Debug, Clone)]
pub struct FileHeader {
    /// Deanery code.
    pub deanery: Deanery,
    /// Run date, `YYYYMMDD`.
    pub date: String,
    /// Run time, `HHMMSS`.
    pub time: String,
    /// Sequence number.
    pub seq: i64,
    /// Run id.
    pub run_id: String,
    /// Final file name.
    pub file_name: String,
    /// Permission bits of the final files.
    pub mode: u32,
}

/// The `<file>.json` manifest (contract).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    /// Run id.
    pub run_id: String,
    /// Deanery code.
    pub deanery: String,
    /// The `.DAT` file name.
    pub file_name: String,
    /// Detail lines.
    pub(crate) record_count: u64,
    /// SHA-256 of the `.DAT` bytes, lowercase hex.
    pub sha256: String,
    /// When the file was completed, RFC 3339 UTC.
    pub(crate) created_at: String,
}

/// Passes bytes through to the inner writer and hashes exactly the bytes
/// that were accepted.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file being written. Dropping it without [`ExportFile::finish`] removes
/// the temporary file, so a failed run leaves nothing behind.
pub(crate) struct ExportFile {
    dir: PathBuf,
    header: FileHeader,
    csv: csv::Writer<HashingWriter<NamedTempFile>>,
    count: u64,
}

impl std::fmt::Debug for ExportFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportFile")
            .field("dir", &self.dir)
            .field("file_name", &self.header.file_name)
            .field("count", &self.count)
            .finish()
    }
}

/// The temporary-name prefix of a final file name; stale temporaries of a
/// crashed run are found by it.
fn temp_prefix(file_name: &str) -> String {
    format!(".{file_name}.")
}

const TEMP_SUFFIX: &str = ".tmp";

fn csv_writer<W: Write>(inner: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .flexible(true)
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(inner)
}

impl ExportFile {
    /// Creates the temporary file and writes the header line.
    ///
    /// # Errors
    /// When the folder cannot be created or written.
    pub(crate) fn create(dir: &Path, header: FileHeader) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let temp = tempfile::Builder::new()
            .prefix(&temp_prefix(&header.file_name))
            .suffix(TEMP_SUFFIX)
            .permissions(std::fs::Permissions::from_mode(header.mode))
            .tempfile_in(dir)?;
        // The umask trims the mode a file is created with; the folder's
        // readers need exactly `export.file_mode`.
        exact_mode(temp.as_file(), header.mode)?;
        let mut csv = csv_writer(HashingWriter {
            inner: temp,
            hasher: Sha256::new(),
        });
        let seq = format!("{:05}", header.seq);
        csv.write_record([
            "HDR",
            "APP",
            header.deanery.as_str(),
            &header.date,
            &header.time,
            &seq,
            &header.run_id,
        ])?;
        Ok(Self {
            dir: dir.to_owned(),
            header,
            csv,
            count: 0,
        })
    }

    /// Appends detail lines.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub(crate) fn write_rows(&mut self, rows: &[AppRow]) -> io::Result<()> {
        for row in rows {
            self.csv.write_record(row.fields())?;
            self.count += 1;
        }
        Ok(())
    }

    /// Detail lines written so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Writes the trailer and makes the file durable under its staging
    /// name `.<file>.final.tmp` (not yet visible to readers). The run then
    /// records the hash and count, and the destination publishes it.
    ///
    /// # Errors
    /// When any step fails; the temporary file is then removed.
    pub(crate) fn stage(mut self) -> io::Result<Staged> {
        self.csv
            .write_record(["TRL".to_owned(), self.count.to_string()])?;
        self.csv.flush()?;
        let hashing = self
            .csv
            .into_inner()
            .map_err(|err| io::Error::other(err.to_string()))?;
        let sha256 = hex::encode(hashing.hasher.finalize());
        let temp = hashing.inner;
        temp.as_file().sync_all()?;
        temp.persist(staging_path(&self.dir, &self.header.file_name))
            .map_err(|err| err.error)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(Staged {
            sha256,
            record_count: self.count,
        })
    }
}

/// A staged file's identity, recorded in the run before it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// SHA-256 of the bytes.
    pub sha256: String,
    /// Detail lines.
    pub(crate) record_count: u64,
}

fn staging_path(dir: &Path, file_name: &str) -> PathBuf {
    dir.join(format!(".{file_name}.final{TEMP_SUFFIX}"))
}

/// True when `path` is a file whose SHA-256 is `sha256`; false when it
/// is absent.
fn file_has_hash(path: &Path, sha256: &str) -> io::Result<bool> {
    Ok(crate::destination::hash_if_present(path)?.as_deref() == Some(sha256))
}

/// Removes `path`; absent is fine.
///
/// # Errors
/// On I/O errors other than the file being absent.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn manifest_of(header: &FileHeader, staged: &Staged) -> Manifest {
    Manifest {
        run_id: header.run_id.clone(),
        deanery: header.deanery.to_string(),
        file_name: header.file_name.clone(),
        record_count: staged.record_count,
        sha256: staged.sha256.clone(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// The manifest's bytes, as published beside the file.
pub(crate) fn manifest_bytes(header: &FileHeader, staged: &Staged) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(&manifest_of(header, staged))
        .expect("a manifest of strings and numbers serialises");
    bytes.push(b'\n');
    bytes
}

/// The staged file of `file_name` when it holds exactly the recorded
/// bytes; one with other bytes is removed, and `None` returned.
///
/// # Errors
/// On I/O errors other than the file being absent.
pub(crate) fn staged_with_hash(
    dir: &Path,
    file_name: &str,
    sha256: &str,
) -> io::Result<Option<PathBuf>> {
    let staging = staging_path(dir, file_name);
    if file_has_hash(&staging, sha256)? {
        return Ok(Some(staging));
    }
    remove_if_present(&staging)?;
    Ok(None)
}

/// Removes the staged file once it is published elsewhere.
///
/// # Errors
/// On I/O errors other than the file being absent.
pub(crate) fn remove_staged(dir: &Path, file_name: &str) -> io::Result<()> {
    remove_if_present(&staging_path(dir, file_name))
}

/// Removes temporary files a crashed process left for this deanery. Only
/// safe while holding the deanery's lease.
///
/// # Errors
/// When the folder cannot be listed.
pub(crate) fn remove_stale_temporaries(dir: &Path, deanery: &Deanery) -> io::Result<usize> {
    let prefix = format!(".DE_{deanery}_APP_");
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(TEMP_SUFFIX) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Sets the permission bits exactly (`fchmod` is not subject to the umask).
fn exact_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
