//! Validated domain types: deanery codes, APP detail rows, run summaries.

mod deanery;
mod record;
mod summary;

pub use deanery::{Deanery, DeaneryError};
pub use record::{AppRow, RecordStatus};
pub use summary::{RunStatus, RunSummary};
