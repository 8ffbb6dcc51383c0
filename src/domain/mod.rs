//! Validated domain types: deanery codes, APP detail rows, generation
//! commands, run summaries.

mod command;
mod deanery;
mod record;
mod summary;

pub use command::{CommandError, GenerationCommand, Slot};
pub use deanery::{Deanery, DeaneryError};
pub use record::{AppRow, RecordStatus};
pub use summary::{RunStatus, RunSummary};
