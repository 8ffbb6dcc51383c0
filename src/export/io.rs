//! Bridges for the export's steps: blocking file work off the async
//! workers, and cursor errors as store errors.

use std::path::Path;

use super::ExportError;
use crate::store::{retry, RetryError, StoreError};

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

/// A cursor cannot be resumed mid-stream: a transient failure ends this
/// attempt, and the next attempt streams again from the start.
pub(super) fn stream_error(err: mongodb::error::Error) -> StoreError {
    StoreError::Mongo(match retry::classify(&err, false) {
        retry::Transience::Permanent => retry::permanent("read_cursor", err),
        _ => RetryError::Exhausted {
            op: "read_cursor",
            attempts: 1,
            elapsed_ms: 0,
            code: retry::error_code(&err),
            source: err,
        },
    })
}
