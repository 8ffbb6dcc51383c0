//! The schedule: the daily slots ([`SlotClock`]), the [`Scheduler`] that
//! fires them (once across replicas, missed slots caught up on start), and
//! the stuck-record [`Watchdog`] that notices records a slot left behind.
//! Both publish through [`crate::broker::publish_commands`].

mod clock;
mod scheduler;
mod watchdog;

pub use clock::SlotClock;
pub use scheduler::{FireError, Fired, Scheduler};
pub use watchdog::{Report, Watchdog};
