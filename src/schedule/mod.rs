//! The schedule: the daily slots ([`SlotClock`]), the [`Scheduler`] that
//! fires them (once across replicas, missed slots caught up on start), and
//! the stuck-record [`Watchdog`] that notices records a slot left behind.
//! Both publish through [`crate::broker::publish_commands`]. Replicas
//! compare their clocks and schedule settings ([`Agreement`]).

mod agreement;
mod clock;
mod scheduler;
mod watchdog;

pub(crate) use agreement::Agreement;
pub(crate) use clock::SlotClock;
pub(crate) use scheduler::Scheduler;
pub(crate) use watchdog::Watchdog;
