//! Why an export attempt stopped, and whether trying again may help.

use std::path::PathBuf;

use super::context::Interruption;
use crate::destination::{DestinationError, FailureKind};
use crate::store::StoreError;

/// Why an export attempt stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    /// MongoDB failed (after retries, if transient), or the lease was lost.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The export file could not be written.
    #[error("failed to write export file in {dir}")]
    File {
        /// Output folder.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The destination refused or failed (after retries, if transient).
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// Shutdown was signalled or the processing deadline passed: the
    /// attempt stopped at a safe point and the run resumes later.
    #[error("export run stopped at a safe point ({0}); the next attempt resumes it")]
    Interrupted(Interruption),
    /// MongoDB holds a different number of records claimed by the run than
    /// its file: nothing is published, and the next attempt rewrites the
    /// file from the claimed records.
    #[error(
        "export run {run_id} has {claimed} records claimed in MongoDB but {written} in its file; \
         nothing was published and the next attempt rewrites the file from the claimed records"
    )]
    ClaimMismatch {
        /// Run id.
        run_id: String,
        /// Records `EXPORTING` under the run.
        claimed: u64,
        /// Detail lines in the temporary file.
        written: u64,
    },
    /// Records of the run were still `EXPORTING` after marking: the run is
    /// not completed, and the next attempt marks them.
    #[error("export run {run_id} still has {left} records EXPORTING after marking; the next attempt marks them")]
    MarkIncomplete {
        /// Run id.
        run_id: String,
        /// Records left `EXPORTING`.
        left: u64,
    },
    /// The file's final create was interrupted and nothing is under its
    /// name: it may have been delivered and taken. Held until settled.
    #[error(
        "{file} may have been delivered and taken by the receiver: its create was interrupted \
         (intended by {host} at {at}) and nothing is under the name now; nothing more of deanery \
         {deanery} is published until it is settled: `esr-exporter resolve {file} --delivered` if \
         the receiver has it, `esr-exporter resolve {file} --not-delivered` to publish it"
    )]
    InDoubt {
        /// The file's name.
        file: String,
        /// The deanery.
        deanery: String,
        /// Host that intended the create.
        host: String,
        /// When.
        at: String,
    },
    /// The run document contradicts itself.
    #[error("export run {run_id} is inconsistent: {reason}")]
    Inconsistent {
        /// Run id.
        run_id: String,
        /// What is wrong.
        reason: String,
    },
}

impl ExportError {
    /// True when trying again later may succeed without anyone fixing anything.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Store(err) => err.is_transient(),
            // A foreign object under the name may be moved away: the
            // command is retried (and dead-lettered once its tries are spent).
            Self::Destination(err) => err.is_transient() || err.kind == FailureKind::Occupied,
            // A full disk, a read-only mount, too many open files: the
            // folder may be fixed while the command waits to be retried.
            Self::Interrupted(_)
            | Self::ClaimMismatch { .. }
            | Self::MarkIncomplete { .. }
            | Self::File { .. } => true,
            // Held until a person settles it (`resolve`, which finishes the
            // run): the command is retried meanwhile, and its next try
            // after the settlement finds the work done.
            Self::InDoubt { .. } => true,
            Self::Inconsistent { .. } => false,
        }
    }

    /// True when shutdown stopped the attempt at a safe point.
    pub(crate) fn is_shutdown(&self) -> bool {
        matches!(self, Self::Interrupted(Interruption::Shutdown))
    }

    /// True when MongoDB did not answer within the bound, or the driver
    /// gave up on it.
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, Self::Store(err) if err.is_timeout())
    }

    pub(super) fn inconsistent(run_id: &str, reason: &str) -> Self {
        Self::Inconsistent {
            run_id: run_id.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_folder_errors_are_transient_and_inconsistencies_are_not() {
        for errno in [28, 30, 24, 5] {
            let err = ExportError::File {
                dir: PathBuf::from("/exports"),
                source: std::io::Error::from_raw_os_error(errno),
            };
            assert!(err.is_transient(), "errno {errno}");
        }
        assert!(!ExportError::inconsistent("r", "x").is_transient());
        assert!(ExportError::Interrupted(Interruption::Shutdown).is_transient());
    }
}
