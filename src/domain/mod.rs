//! Validated domain types: deanery codes, APP detail rows, generation
//! commands, run summaries.

mod command;
mod deanery;
mod record;
mod schedule;
mod summary;
mod text;

pub use command::{CommandError, GenerationCommand, Slot};
pub use deanery::{Deanery, DeaneryError};
pub use record::{type_name as bson_type_name, AppRow, RecordStatus};
pub use schedule::{parse_cron, parse_timezone};
pub use summary::{RunStatus, RunSummary};
pub use text::{host_name, printable};
