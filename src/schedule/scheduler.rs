//! The scheduler: fires `schedule.cron` in `schedule.timezone` and
//! publishes one generation command per deanery for each slot.
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

use super::{Agreement, SlotClock};
use crate::broker::{requester, BrokerError, Publisher};
use crate::config::{AmqpSettings, ScheduleSettings};
use crate::domain::{Deanery, GenerationCommand, Slot};
use crate::ops::failing::{say_failure, FailureStreak};
use crate::shutdown::Shutdown;
use crate::store::{SlotClaim, Store, StoreError};

/// Why firing a slot did not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FireError {
    /// MongoDB failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// RabbitMQ failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What firing a slot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fired {
    /// This replica published these commands `(deanery, command id)`.
    Published(Vec<(String, String)>),
    /// Already published (by this or another replica).
    AlreadyPublished,
    /// Another replica is firing it now.
    HeldByOther(String),
}

/// Fires slots; one per replica.
#[derive(Debug, Clone)]
pub(crate) struct Scheduler {
    settings: ScheduleSettings,
    amqp: AmqpSettings,
    store: Store,
    clock: SlotClock,
    agreement: Agreement,
    owner: String,
}

impl Scheduler {
    /// A scheduler for the (parsed, validated) settings.
    pub(crate) fn new(settings: ScheduleSettings, amqp: AmqpSettings, store: Store) -> Self {
        Self {
            clock: SlotClock::new(&settings),
            agreement: Agreement::new(store.clone(), &settings),
            settings,
            amqp,
            store,
            owner: format!("{}/{}", requester("scheduler"), uuid::Uuid::new_v4()),
        }
    }

    /// Catches up the latest missed slot, then fires each slot as it comes,
    /// until shutdown. Every slot fired is strictly later than the one
    /// before, and a slot not yet due is waited for: no path loops without
    /// waiting, whatever the wall clock does.
    pub(crate) async fn run(self, mut shutdown: Shutdown) {
        let window = chrono::Duration::minutes(self.settings.catch_up_window_minutes as i64);
        let mut fired = None;
        if let Some(slot) = self.clock.latest_within(Utc::now(), window) {
            tracing::info!(slot = %Slot::Scheduled(slot).id(), "checking the latest slot for catch-up");
            if !self.fire_until_done(slot, &mut shutdown).await {
                return;
            }
            fired = Some(slot);
        }
        loop {
            let now = Utc::now();
            let next = match fired {
                Some(last) => self.clock.after_fired(last, now, window),
                None => self.clock.next_after(now),
            };
            let Some(slot) = next else { break };
            if slot > now {
                tracing::info!(next_slot = %Slot::Scheduled(slot).id(), "waiting for the next slot");
                if !sleep_until(slot, &mut shutdown).await {
                    return;
                }
            } else {
                tracing::warn!(slot = %Slot::Scheduled(slot).id(), "a slot came while the last one was being fired; firing it now");
            }
            if !self.fire_until_done(slot, &mut shutdown).await {
                return;
            }
            fired = Some(slot);
        }
        tracing::warn!(cron = %self.settings.cron, "the schedule has no future slot; scheduler idle");
        shutdown.recv().await;
    }

    /// Fires `slot`, retrying with backoff while MongoDB or RabbitMQ is
    /// away: each failure a WARN, and one ERROR once the slot has not been
    /// fired within its lease (`schedule.slot_lease_seconds`, at least a
    /// minute). Returns false if shutdown came first.
    async fn fire_until_done(&self, slot: DateTime<Utc>, shutdown: &mut Shutdown) -> bool {
        let mut backoff = self.amqp.reconnect_backoff();
        let mut failures =
            FailureStreak::new(Duration::from_secs(self.settings.slot_lease_seconds));
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
                    let span =
                        tracing::error_span!("fire_slot", slot = %Slot::Scheduled(slot).id());
                    let error = crate::error_chain::chain(&err);
                    span.in_scope(|| {
                        say_failure(
                            &mut failures,
                            "firing the schedule slot",
                            &error,
                            "retrying",
                        );
                    });
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
    pub(crate) async fn fire(&self, slot: DateTime<Utc>) -> Result<Fired, FireError> {
        let slot_id = Slot::Scheduled(slot).id();
        if let Some(fired) = self.claim(&slot_id).await? {
            return Ok(fired);
        }
        let deaneries = self.deaneries_for_slot().await?;
        let commands = match self.publish(slot, &deaneries).await? {
            Ok(commands) => commands,
            Err(fired) => return Ok(fired),
        };
        let published = self.mark_published(&slot_id, &commands).await?;
        crate::ops::metrics::record_slot_fired();
        tracing::info!(slot = %slot_id, commands = published.len(), "schedule slot fired");
        Ok(Fired::Published(published))
    }

    /// Publishes a command per deanery for the slot on one connection (see
    /// [`Scheduler::publish_each`]).
    async fn publish(
        &self,
        slot: DateTime<Utc>,
        deaneries: &[Deanery],
    ) -> Result<Result<Vec<GenerationCommand>, Fired>, FireError> {
        let publisher = Publisher::connect(&self.amqp, "scheduler").await?;
        let published = self.publish_each(&publisher, slot, deaneries).await;
        publisher.close().await;
        published
    }

    /// Publishes a command per deanery, each confirmed within
    /// `amqp.publish_timeout_ms`. Before each command after the first the
    /// slot's lease is taken again, which renews it: a publish that waited
    /// out its bound never runs past the lease, and once another replica
    /// holds or fired the slot this one stops (`Err` says which).
    async fn publish_each(
        &self,
        publisher: &Publisher,
        slot: DateTime<Utc>,
        deaneries: &[Deanery],
    ) -> Result<Result<Vec<GenerationCommand>, Fired>, FireError> {
        let slot_id = Slot::Scheduled(slot).id();
        let by = requester("scheduler");
        let mut commands = Vec::with_capacity(deaneries.len());
        for deanery in deaneries {
            if !commands.is_empty() {
                if let Some(other) = self.claim(&slot_id).await? {
                    return Ok(Err(other));
                }
            }
            let command = GenerationCommand::new(deanery, Slot::Scheduled(slot), by.clone());
            publisher.publish(&command).await?;
            tracing::info!(slot = %slot_id, deanery = %deanery, command_id = %command.command_id, requested_by = %by, "generation command published");
            commands.push(command);
        }
        Ok(Ok(commands))
    }

    /// Claims the slot; `Some` when another replica fired it or holds it.
    async fn claim(&self, slot_id: &str) -> Result<Option<Fired>, StoreError> {
        let lease = Duration::from_secs(self.settings.slot_lease_seconds);
        match self.store.claim_slot(slot_id, &self.owner, lease).await? {
            SlotClaim::Claimed => Ok(None),
            SlotClaim::Published => {
                tracing::info!(slot = %slot_id, "slot already fired");
                Ok(Some(Fired::AlreadyPublished))
            }
            SlotClaim::HeldByOther { owner } => {
                tracing::info!(slot = %slot_id, owner = %owner, "slot being fired by another replica");
                Ok(Some(Fired::HeldByOther(owner)))
            }
        }
    }

    /// Every deanery with records to export, plus those any live replica
    /// lists (its own settings refreshed and compared first), sorted, each
    /// once.
    async fn deaneries_for_slot(&self) -> Result<Vec<Deanery>, StoreError> {
        let listed = self.agreement.refresh().await?;
        let waiting = crate::export::deaneries_to_export(&self.store).await?;
        Ok(merge_deaneries(waiting, &listed))
    }

    /// Records the commands on the slot's document; returns them as
    /// `(deanery, command id)`.
    async fn mark_published(
        &self,
        slot_id: &str,
        commands: &[GenerationCommand],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let published: Vec<(String, String)> = commands
            .iter()
            .map(|c| (c.deanery.clone(), c.command_id.to_string()))
            .collect();
        let documents = published
            .iter()
            .map(|(deanery, id)| doc! {"deanery": deanery, "commandId": id})
            .collect();
        self.store
            .slot_published(
                slot_id,
                &self.owner,
                documents,
                self.agreement.own().to_document(),
            )
            .await?;
        Ok(published)
    }
}

/// `waiting` and `configured` together, sorted, each deanery once.
fn merge_deaneries(mut waiting: Vec<Deanery>, configured: &[Deanery]) -> Vec<Deanery> {
    waiting.extend(configured.iter().cloned());
    waiting.sort();
    waiting.dedup();
    waiting
}

/// Sleeps until `slot`, in steps so a wall clock that jumps is noticed.
/// False if shutdown came first.
async fn sleep_until(slot: DateTime<Utc>, shutdown: &mut Shutdown) -> bool {
    loop {
        let now = Utc::now();
        if now >= slot {
            return true;
        }
        let step = (slot - now)
            .to_std()
            .unwrap_or_default()
            .min(Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = shutdown.recv() => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_commands_waiting_and_configured_deaneries_each_once_in_order() {
        let merged = merge_deaneries(
            Deanery::all(&["MER", "EOE"]),
            &Deanery::all(&["LDN", "MER", "LDN"]),
        );
        assert_eq!(merged, Deanery::all(&["EOE", "LDN", "MER"]));
    }

    #[test]
    fn the_scheduler_uses_the_typed_deaneries_of_its_settings() {
        let env = [("ESR_SCHEDULE__DEANERIES".to_owned(), "WES,OXF".to_owned())];
        let settings =
            crate::config::Settings::load_with_env(None, Some(env.into_iter().collect())).unwrap();
        assert_eq!(
            merge_deaneries(Vec::new(), &settings.schedule.deaneries),
            Deanery::all(&["OXF", "WES"])
        );
    }
}
