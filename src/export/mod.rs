//! One export run per deanery.
//!
//! A run takes the deanery's lease, then, as named steps on one
//! [`context::RunContext`] (deanery, session, lease keeper):
//! 1. **resume or start** ([`run`]): the deanery's unfinished run, or a new
//!    one claiming up to the newest waiting record;
//! 2. **rewrite** ([`rewrite`]): what an earlier attempt claimed is written
//!    again, since its temporary file died with it;
//! 3. **claim** ([`claim`]): `TO_EXPORT` records in chunks, one short
//!    transaction each (valid ones `EXPORTING`, invalid ones `REJECTED`),
//!    each chunk appended to the temporary file: memory holds one chunk;
//! 4. **verify** the file holds exactly the records claimed;
//! 5. **stage** ([`stage`]) and **publish** ([`publish`]): fsync under a
//!    staging name, hash recorded; then, the same for every destination,
//!    manifest, final name, the file's location recorded;
//! 6. **mark** ([`mark`]) the claimed records `EXPORTED`: one idempotent
//!    statement per `export.mark_batch_size` records, no transaction;
//! 7. **complete** the run document.
//!
//! Every step is recorded in the run document before the next starts, so an
//! attempt that dies anywhere is finished by the next attempt for the same
//! deanery: same records, same file name, never a second file.

mod claim;
mod context;
mod doubt;
mod error;
pub mod file;
mod io;
mod listing;
mod mark;
mod publish;
mod rewrite;
mod run;
mod stage;
mod try_run;
mod writer;

use tracing::Instrument;

use crate::config::ExportSettings;
use crate::destination::Destination;
use crate::domain::{Deanery, RunSummary};
use crate::store::Store;

#[cfg(test)]
pub(crate) use context::Interruption;
pub use context::RunOptions;
pub(crate) use error::ExportError;
pub use listing::deaneries_to_export;
pub(crate) use publish::publish_file;
pub(crate) use try_run::Ended;

/// Runs exports against a [`Store`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    store: Store,
    settings: ExportSettings,
    destination: Destination,
}

impl Exporter {
    /// An exporter staging in `settings.output_dir` and publishing to
    /// `destination` (the one `export.destination` names, probed at start).
    pub fn new(store: Store, settings: ExportSettings, destination: Destination) -> Self {
        Self {
            store,
            settings,
            destination,
        }
    }

    /// Where files go.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Runs (or resumes) the deanery's export and summarises the try.
    /// Never panics on a failure: a failed attempt is a summary with
    /// `status: failed`, logged at ERROR, and its run is left to resume.
    pub async fn run(&self, deanery: &Deanery) -> RunSummary {
        self.run_with(deanery, &RunOptions::default()).await
    }

    /// Like [`Exporter::run`], stopping at a safe point (between chunks)
    /// on shutdown or after a deadline.
    pub async fn run_with(&self, deanery: &Deanery, options: &RunOptions) -> RunSummary {
        self.run_for(deanery, options).await.0
    }

    /// Like [`Exporter::run_with`], for a command: also how the try
    /// ended, typed, for the consumer to decide by.
    pub(crate) async fn run_for(
        &self,
        deanery: &Deanery,
        options: &RunOptions,
    ) -> (RunSummary, Ended) {
        let span = tracing::info_span!(
            "export_run",
            deanery = %deanery,
            run_id = tracing::field::Empty
        );
        self.try_run(deanery, options).instrument(span).await
    }
}
