//! The output folder's health, for `/readyz` and the metrics: the last I/O
//! error an export met in a folder (kept until a run that stages a file
//! there completes, whatever its destination), and an active probe that writes and removes a small file.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::metrics;

/// The last error per folder; a process may export into several (tests do).
static LAST_ERROR: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

fn with_errors<T>(f: impl FnOnce(&mut HashMap<PathBuf, String>) -> T) -> T {
    let mut guard = LAST_ERROR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// The symbolic name of an I/O error's errno (`ENOSPC`, ...), for logs and
/// the `error` label of `esr_output_folder_errors_total`.
pub(crate) fn errno_name(err: &io::Error) -> String {
    let Some(code) = errno(err) else {
        return kind_name(err.kind()).to_owned();
    };
    let name = match code {
        1 => "EPERM",
        2 => "ENOENT",
        5 => "EIO",
        13 => "EACCES",
        17 => "EEXIST",
        20 => "ENOTDIR",
        21 => "EISDIR",
        23 => "ENFILE",
        24 => "EMFILE",
        28 => "ENOSPC",
        30 => "EROFS",
        122 => "EDQUOT",
        _ => return format!("errno_{code}"),
    };
    name.to_owned()
}

/// The OS error code of `err`, or of the error it wraps: `tempfile` adds
/// the path and `csv` its own layer, and neither passes the code on, so the
/// last resort is the "(os error N)" their messages keep.
fn errno(err: &io::Error) -> Option<i32> {
    if let Some(code) = err.raw_os_error() {
        return Some(code);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = err
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(inner) = source {
        if let Some(code) = inner.downcast_ref::<io::Error>().and_then(errno) {
            return Some(code);
        }
        source = inner.source();
    }
    let text = err.to_string();
    let (_, after) = text.rsplit_once("(os error ")?;
    after.split(')').next()?.parse().ok()
}

fn kind_name(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::StorageFull => "ENOSPC",
        io::ErrorKind::ReadOnlyFilesystem => "EROFS",
        io::ErrorKind::QuotaExceeded => "EDQUOT",
        io::ErrorKind::PermissionDenied => "EACCES",
        io::ErrorKind::NotFound => "ENOENT",
        io::ErrorKind::AlreadyExists => "EEXIST",
        io::ErrorKind::NotADirectory => "ENOTDIR",
        io::ErrorKind::IsADirectory => "EISDIR",
        _ => "other",
    }
}

/// An export could not write into `dir`.
pub(crate) fn record_failure(dir: &Path, err: &io::Error) {
    metrics::record_output_folder_error(&errno_name(err));
    metrics::set_output_folder_writable(false);
    with_errors(|errors| errors.insert(dir.to_owned(), format!("{}: {err}", dir.display())));
}

/// A run that staged its file in `dir` completed.
pub(crate) fn record_success(dir: &Path) {
    metrics::set_output_folder_writable(true);
    with_errors(|errors| errors.remove(dir));
}

/// Whether `dir` can be written now, and whether the last export there
/// succeeded. Blocking: call it off the async workers.
///
/// # Errors
/// Why the folder is not usable.
pub fn check(dir: &Path) -> Result<(), String> {
    probe(dir).map_err(|err| {
        format!(
            "{} is not writable: {err} ({})",
            dir.display(),
            errno_name(&err)
        )
    })?;
    match with_errors(|errors| errors.get(dir).cloned()) {
        Some(last) => Err(format!("the last export into the folder failed: {last}")),
        None => Ok(()),
    }
}

fn probe(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(".esr-exporter-probe.")
        .tempfile_in(dir)?;
    file.write_all(&[0u8; 512])?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_reported_until_an_export_publishes_again() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path()), Ok(()));
        let full = io::Error::from_raw_os_error(28);
        record_failure(dir.path(), &full);
        let reason = check(dir.path()).unwrap_err();
        assert!(reason.contains("last export"), "{reason}");
        record_success(dir.path());
        assert_eq!(check(dir.path()), Ok(()));
        assert_eq!(errno_name(&full), "ENOSPC");
        assert_eq!(errno_name(&io::Error::from_raw_os_error(30)), "EROFS");
        let wrapped = io::Error::other(io::Error::from_raw_os_error(24));
        assert_eq!(errno_name(&wrapped), "EMFILE");
        let described = io::Error::other(format!(
            "{} at path \"/x\"",
            io::Error::from_raw_os_error(28)
        ));
        assert_eq!(errno_name(&described), "ENOSPC");
    }

    #[test]
    fn a_folder_that_cannot_be_created_is_not_writable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let reason = check(&file.join("sub")).unwrap_err();
        assert!(reason.contains("ENOTDIR"), "{reason}");
    }
}
