//! A file's bytes made ready at a destination but not yet under their
//! name: the upload, which may take long and may be tried again freely,
//! apart from the one step that creates the name. Between the two a run
//! records its intent to create the name (`export::doubt`), so the window
//! in which a file may be delivered unrecorded is that one step alone.

use std::path::PathBuf;

use bytes::Bytes;

use super::error::{DestinationError, FailureKind};

/// Bytes ready to be created under a name by [`super::Destination::finish`].
#[derive(Debug)]
pub struct Upload(pub(super) Ready);

/// What is ready, by the kind of destination.
#[derive(Debug)]
pub(super) enum Ready {
    /// A folder links the staged file itself.
    Local(PathBuf),
    /// A bucket creates a small file in one conditional PUT of its bytes.
    Bytes(Bytes),
    /// A bucket's parts or a server's file under a temporary name.
    Temporary {
        /// The temporary's key or path.
        key: String,
        /// Its size in bytes.
        size: u64,
    },
}

/// An upload made for another kind of destination (a bug, refused).
pub(super) fn mismatched(destination: &str, key: &str) -> DestinationError {
    DestinationError::new(
        FailureKind::Permanent,
        destination,
        "create",
        key,
        "an upload made for another destination cannot be finished here",
    )
}
