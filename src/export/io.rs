//! Blocking file work of the export's steps, off the async workers.

use std::path::Path;

use super::ExportError;

/// Runs blocking file work off the async worker threads; an I/O error
/// becomes [`ExportError::File`] naming the folder.
pub(super) async fn blocking<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ExportError> {
    let file_error = |source| ExportError::File {
        dir: dir.to_owned(),
        source,
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join| file_error(std::io::Error::other(join.to_string())))?
        .map_err(file_error)
}
