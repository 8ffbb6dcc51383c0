//! Validated domain types: deanery codes, APP detail rows, generation
//! commands, run summaries.

mod command;
mod deanery;
mod destination;
mod location;
mod record;
mod schedule;
mod summary;
mod text;

pub use command::{GenerationCommand, Slot, SLOT_CLOCK_SKEW};

pub use command::CommandError;
pub use deanery::Deanery;
pub use deanery::DeaneryError;
pub use destination::DestinationUrl;
pub use location::Location;
pub(crate) use record::{type_name as bson_type_name, AppRow, RecordStatus};
pub(crate) use schedule::{parse_cron, parse_timezone};
pub use summary::{RunEnd, RunStatus, RunSummary};
pub(crate) use text::{host_name, printable};
