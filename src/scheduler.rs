//! The scheduler: fires `schedule.cron` in `schedule.timezone` and
//! publishes one generation command per deanery for each slot.
//!
//! Slots are computed with the `cron` crate over `chrono-tz` time zones, so
//! daylight saving is followed (13:00 Europe/London is 13:00Z in winter and
//! 12:00Z in summer). tokio-cron-scheduler, built on the same `cron` crate,
//! was not used: it fixes a zone's offset when a job is created, collapses
//! missed ticks, and reads the wall clock itself, so neither daylight
//! saving, catch-up nor a test clock could be had from it.
//!
//! Exactly one replica fires a slot: it must first claim the slot's
//! document in MongoDB (`_id` = the slot instant). A replica that dies
//! while firing leaves a lease that lapses, and the slot is fired by the
//! next replica that looks (at its start, through catch-up). A slot missed
//! while no replica ran is caught up once on start, within
//! `catch_up_window_minutes`.

use std::time::Duration;

use bson::doc;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::broker::{requester, BrokerError, Publisher};
use crate::config::{AmqpSettings, ScheduleSettings};
use crate::domain::{Deanery, GenerationCommand, Slot};
use crate::shutdown::Shutdown;
use crate::store::{Attempts, SlotClaim, Store, StoreError};

pub use crate::domain::{parse_cron, parse_timezone};

/// Slot arithmetic: pure, clock passed in.
#[derive(Debug, Clone)]
pub struct SlotClock {
    schedule: cron::Schedule,
    timezone: Tz,
}

impl SlotClock {
    /// From validated settings.
    ///
    /// # Errors
    /// When the expression or zone is invalid.
    pub fn new(settings: &ScheduleSettings) -> Result<Self, String> {
        Ok(Self {
            schedule: parse_cron(&settings.cron)?,
            timezone: parse_timezone(&settings.timezone)?,
        })
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&t.with_timezone(&self.timezone))
            .next()
            .map(|slot| slot.with_timezone(&Utc))
    }

    /// The latest slot in `(now - window, now]`.
    pub fn latest_within(
        &self,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Option<DateTime<Utc>> {
        let start = (now - window).with_timezone(&self.timezone);
        self.schedule
            .after(&start)
            .map(|slot| slot.with_timezone(&Utc))
            .take_while(|slot| *slot <= now)
            .last()
    }
}

/// Why firing a slot did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    /// MongoDB failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// RabbitMQ failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What firing a slot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// This replica published these commands `(deanery, command id)`.
    Published(Vec<(String, String)>),
    /// Already published (by this or another replica).
    AlreadyPublished,
    /// Another replica is firing it now.
    HeldByOther(String),
}

/// Fires slots; one per replica.
#[derive(Debug, Clone)]
pub struct Scheduler {
    settings: ScheduleSettings,
    amqp: AmqpSettings,
    store: Store,
    clock: SlotClock,
    owner: String,
}

impl Scheduler {
    /// A scheduler for validated settings.
    ///
    /// # Errors
    /// When the cron expression or time zone is invalid.
    pub fn new(
        settings: ScheduleSettings,
        amqp: AmqpSettings,
        store: Store,
    ) -> Result<Self, String> {
        Ok(Self {
            clock: SlotClock::new(&settings)?,
            settings,
            amqp,
            store,
            owner: format!("{}/{}", requester("scheduler"), uuid::Uuid::new_v4()),
        })
    }

    /// Catches up the latest missed slot, then fires each slot as it comes,
    /// until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        let window = chrono::Duration::minutes(self.settings.catch_up_window_minutes as i64);
        if let Some(slot) = self.clock.latest_within(Utc::now(), window) {
            tracing::info!(slot = %Slot::Scheduled(slot).id(), "checking the latest slot for catch-up");
            if !self.fire_until_done(slot, &mut shutdown).await {
                return;
            }
        }
        let mut next = self.clock.next_after(Utc::now());
        while let Some(slot) = next {
            tracing::info!(next_slot = %Slot::Scheduled(slot).id(), "waiting for the next slot");
            // Sleep in steps, so a wall clock that jumps is noticed.
            loop {
                let now = Utc::now();
                if now >= slot {
                    break;
                }
                let step = (slot - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(Duration::from_secs(30));
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = shutdown.recv() => return,
                }
            }
            if !self.fire_until_done(slot, &mut shutdown).await {
                return;
            }
            next = self
                .clock
                .next_after(slot.max(Utc::now() - chrono::Duration::seconds(1)));
        }
        tracing::warn!(cron = %self.settings.cron, "the schedule has no future slot; scheduler idle");
        shutdown.recv().await;
    }

    /// Fires `slot`, retrying with backoff while MongoDB or RabbitMQ is
    /// away. Returns false if shutdown came first.
    async fn fire_until_done(&self, slot: DateTime<Utc>, shutdown: &mut Shutdown) -> bool {
        let mut backoff = self.amqp.reconnect_backoff();
        loop {
            let wait = match self.fire(slot).await {
                Ok(Fired::Published(_) | Fired::AlreadyPublished) => return true,
                // Another replica is firing it: not done until it says so.
                // If that replica dies, its lease lapses and this one takes over.
                Ok(Fired::HeldByOther(_)) => {
                    Duration::from_secs(self.settings.slot_lease_seconds.clamp(1, 10))
                }
                Err(err) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::error!(
                        slot = %Slot::Scheduled(slot).id(),
                        error = %err,
                        delay_ms = delay.as_millis() as u64,
                        "failed to fire schedule slot; retrying"
                    );
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.recv() => return false,
            }
        }
    }

    /// Fires one slot if no replica has: publishes a command for every
    /// deanery with records to export plus the configured ones.
    ///
    /// # Errors
    /// [`FireError`] when MongoDB or RabbitMQ fails; the slot stays claimed
    /// by this replica until its lease lapses, and firing it again resumes.
    pub async fn fire(&self, slot: DateTime<Utc>) -> Result<Fired, FireError> {
        let slot_id = Slot::Scheduled(slot).id();
        let mut attempts = Attempts::default();
        let lease = Duration::from_secs(self.settings.slot_lease_seconds);
        match self
            .store
            .claim_slot(&slot_id, &self.owner, lease, &mut attempts)
            .await?
        {
            SlotClaim::Claimed => {}
            SlotClaim::Published => {
                tracing::info!(slot = %slot_id, "slot already fired");
                return Ok(Fired::AlreadyPublished);
            }
            SlotClaim::HeldByOther { owner } => {
                tracing::info!(slot = %slot_id, owner = %owner, "slot being fired by another replica");
                return Ok(Fired::HeldByOther(owner));
            }
        }
        let mut deaneries = crate::export::deaneries_to_export(&self.store).await?;
        for code in &self.settings.deaneries {
            if let Ok(deanery) = Deanery::parse(code) {
                if !deaneries.contains(&deanery) {
                    deaneries.push(deanery);
                }
            }
        }
        deaneries.sort();
        let publisher = Publisher::connect(&self.amqp, "scheduler").await?;
        let mut published = Vec::with_capacity(deaneries.len());
        let by = requester("scheduler");
        for deanery in &deaneries {
            let command = GenerationCommand::new(deanery, Slot::Scheduled(slot), by.clone());
            publisher.publish(&command).await?;
            tracing::info!(
                slot = %slot_id,
                deanery = %deanery,
                command_id = %command.command_id,
                "generation command published"
            );
            published.push((deanery.to_string(), command.command_id.to_string()));
        }
        publisher.close().await;
        let documents = published
            .iter()
            .map(|(deanery, id)| doc! {"deanery": deanery, "commandId": id})
            .collect();
        self.store
            .slot_published(&slot_id, &self.owner, documents, &mut attempts)
            .await?;
        crate::ops::metrics::record_slot_fired();
        tracing::info!(slot = %slot_id, commands = published.len(), "schedule slot fired");
        Ok(Fired::Published(published))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn clock(cron: &str, tz: &str) -> SlotClock {
        SlotClock {
            schedule: parse_cron(cron).unwrap(),
            timezone: parse_timezone(tz).unwrap(),
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn the_default_slot_is_13_00_utc_daily() {
        let c = clock("0 0 13 * * *", "UTC");
        assert_eq!(
            c.next_after(utc(2026, 11, 28, 9, 0)),
            Some(utc(2026, 11, 28, 13, 0))
        );
        assert_eq!(
            c.next_after(utc(2026, 11, 28, 13, 0)),
            Some(utc(2026, 11, 29, 13, 0))
        );
    }

    #[test]
    fn a_local_time_zone_follows_daylight_saving() {
        let c = clock("0 0 13 * * *", "Europe/London");
        assert_eq!(
            c.next_after(utc(2026, 1, 10, 0, 0)),
            Some(utc(2026, 1, 10, 13, 0))
        );
        assert_eq!(
            c.next_after(utc(2026, 7, 10, 0, 0)),
            Some(utc(2026, 7, 10, 12, 0))
        );
    }

    #[test]
    fn catch_up_finds_the_latest_missed_slot_within_the_window_only() {
        let c = clock("0 0 13 * * *", "UTC");
        let now = utc(2026, 11, 28, 15, 30);
        assert_eq!(
            c.latest_within(now, chrono::Duration::hours(24)),
            Some(utc(2026, 11, 28, 13, 0))
        );
        assert_eq!(c.latest_within(now, chrono::Duration::hours(1)), None);
        assert_eq!(
            c.latest_within(utc(2026, 11, 28, 13, 0), chrono::Duration::minutes(1)),
            Some(utc(2026, 11, 28, 13, 0)),
            "a slot exactly now counts"
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_explained() {
        assert!(parse_cron("0 13 * * *").unwrap_err().contains("six fields"));
        assert!(parse_cron("0 0 25 * * *").is_err());
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
    }
}
