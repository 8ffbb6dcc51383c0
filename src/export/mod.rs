//! One export run per deanery.
//!
//! A run takes the deanery's lease, then, as named steps on one
//! [`context::RunContext`] (deanery, session, attempts, lease keeper):
//! 1. **resume or start** ([`run`]): the deanery's unfinished run, or a new
//!    one claiming up to the newest waiting record;
//! 2. **rewrite** ([`rewrite`]): what an earlier attempt claimed is written
//!    again, since its temporary file died with it;
//! 3. **claim** ([`claim`]): `TO_EXPORT` records in chunks, one short
//!    transaction each (valid ones `EXPORTING`, invalid ones `REJECTED`),
//!    each chunk appended to the temporary file: memory holds one chunk;
//! 4. **verify** the file holds exactly the records claimed;
//! 5. **stage** and **publish** ([`publish`]): fsync under a staging name,
//!    hash recorded, manifest, final name, publication recorded;
//! 6. **mark** ([`mark`]) the claimed records `EXPORTED`: one idempotent
//!    statement per `export.mark_batch_size` records, no transaction;
//! 7. **complete** the run document.
//!
//! Every step is recorded in the run document before the next starts, so an
//! attempt that dies anywhere is finished by the next attempt for the same
//! deanery: same records, same file name, never a second file.

mod attempt;
mod claim;
mod context;
mod deliver;
mod error;
pub mod file;
mod io;
mod listing;
mod mark;
mod publish;
mod rewrite;
mod run;
mod writer;

use tracing::Instrument;

use crate::config::ExportSettings;
use crate::destination::Destination;
use crate::domain::{Deanery, RunSummary};
use crate::store::Store;

pub use context::RunOptions;
pub(crate) use error::ExportError;
pub use listing::deaneries_to_export;

/// Runs exports against a [`Store`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    store: Store,
    settings: ExportSettings,
    destination: Destination,
}

impl Exporter {
    /// An exporter writing into `settings.output_dir`; see
    /// [`Exporter::with_destination`] for a bucket.
    pub fn new(store: Store, settings: ExportSettings) -> Self {
        Self {
            store,
            settings,
            destination: Destination::Folder,
        }
    }

    /// Publishes to `destination` (the one `export.destination` names,
    /// probed at start), staging in `export.output_dir`.
    pub fn with_destination(mut self, destination: Destination) -> Self {
        self.destination = destination;
        self
    }

    /// Where files go.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// True when a completed run of the deanery already carries this
    /// scheduled slot or this command id: the command is a no-op.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn already_done(
        &self,
        deanery: &Deanery,
        slot: Option<&str>,
        command_id: &str,
    ) -> Result<bool, crate::store::StoreError> {
        let mut attempts = crate::store::Attempts::default();
        let span = tracing::info_span!("already_done", deanery = %deanery);
        self.store
            .trigger_done(deanery, slot, command_id, &mut attempts)
            .instrument(span)
            .await
    }

    /// True when the slot collection records the slot as fired (claimed by
    /// a replica's scheduler), whatever this replica's clock says.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn slot_fired(&self, slot_id: &str) -> Result<bool, crate::store::StoreError> {
        let mut attempts = crate::store::Attempts::default();
        Ok(self.store.slot(slot_id, &mut attempts).await?.is_some())
    }

    /// Runs (or resumes) the deanery's export and summarises the attempt.
    /// Never panics on a failure: a failed attempt is a summary with
    /// `status: failed`, logged at ERROR, and its run is left to resume.
    pub async fn run(&self, deanery: &Deanery) -> RunSummary {
        self.run_with(deanery, &RunOptions::default()).await
    }

    /// Like [`Exporter::run`], for a command, stopping at a safe point
    /// (between chunks) on shutdown or after a deadline.
    pub async fn run_with(&self, deanery: &Deanery, options: &RunOptions) -> RunSummary {
        let span = tracing::info_span!(
            "export_run",
            deanery = %deanery,
            run_id = tracing::field::Empty
        );
        self.attempt(deanery, options).instrument(span).await
    }
}
