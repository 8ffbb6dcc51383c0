//! The command consumer: manual acks, prefetch, and a reconnect loop.
//!
//! Each delivery ends in exactly one of these ways ([`Outcome`]):
//! - exported: the deanery's run completed, its records are durably
//!   `EXPORTED`, then the delivery is acked;
//! - already done: a completed run carries the command's slot or id, so the
//!   delivery is acked as a no-op;
//! - retry scheduled: a transient failure (MongoDB away, retries
//!   exhausted, lease held by another replica, processing deadline): the
//!   command is republished, confirmed, to `<queue>.retry`, from which it
//!   returns after `retry_delay_ms`, and the delivery is acked; after
//!   `max_attempts` it is dead-lettered instead. Never a hot loop;
//! - dead-lettered: unparsable, invalid deanery, a permanent failure, or
//!   out of attempts: republished, confirmed, to `<queue>.dlx` with the
//!   reason in the `x-esr-dead-letter-reason` header, logged at ERROR, acked;
//! - requeued: shutdown interrupted the run at a safe point: nacked with
//!   requeue so another replica (or the next start) resumes it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

use super::decision::{decide, retry_or_give_up, Disposition};
use super::settle::{Outcome, Settler, Settling};
use super::{closed_within, open_declared, BrokerError, Watcher, ATTEMPT_HEADER};
use crate::config::AmqpSettings;
use crate::domain::{Deanery, GenerationCommand, RunSummary, Slot, SLOT_CLOCK_SKEW};
use crate::export::{Exporter, RunOptions};
use crate::ops::{metrics, Readiness};
use crate::shutdown::Shutdown;

/// Consumes generation commands and runs exports.
#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    settings: AmqpSettings,
    exporter: Exporter,
    readiness: Readiness,
}

fn attempt_of(delivery: &Delivery) -> i64 {
    let value = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(ATTEMPT_HEADER).cloned());
    match value {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => i64::from(n),
        Some(AMQPValue::ShortInt(n)) => i64::from(n),
        Some(AMQPValue::LongUInt(n)) => i64::from(n),
        _ => 1,
    }
    .max(1)
}

impl Consumer {
    /// Settles this consumer's deliveries.
    fn settler(&self) -> Settler<'_> {
        Settler {
            settings: &self.settings,
        }
    }

    /// A consumer of `settings.queue` running exports with `exporter`.
    pub(crate) fn new(settings: AmqpSettings, exporter: Exporter, readiness: Readiness) -> Self {
        Self {
            settings,
            exporter,
            readiness,
        }
    }

    /// Consumes until shutdown. A lost connection or channel is
    /// re-established with backoff, the topology re-declared and consuming
    /// resumed. Only a refusal of this user's permissions (`ACCESS_REFUSED`)
    /// ends it: the daemon then stops with exit 1, naming it.
    pub(crate) async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = self.settings.reconnect_backoff();
        while !shutdown.is_shutdown() {
            let mut connected = false;
            let result = self.consume(&mut shutdown, &mut connected).await;
            self.readiness.set_consumer_attached(false);
            let err = match result {
                Ok(()) => break,
                Err(err) => err,
            };
            if err.is_access_refused() {
                tracing::error!(
                    error = %crate::report::Chain(&err),
                    queue = %self.settings.queue,
                    "RabbitMQ refused this user (ACCESS_REFUSED); stopping: it needs configure, write and read on ^<queue>(\\..*)?$ and write on amq.default (README: Permissions)"
                );
                return;
            }
            if connected {
                backoff = self.settings.reconnect_backoff();
            }
            let delay = backoff
                .next()
                .unwrap_or(Duration::from_millis(self.settings.reconnect_max_delay_ms));
            tracing::warn!(
                error = %crate::report::Chain(&err),
                delay_ms = delay.as_millis() as u64,
                "RabbitMQ connection unavailable; reconnecting"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.recv() => break,
            }
        }
        tracing::info!("consumer stopped");
    }

    /// One connection's life: connect, declare, consume until shutdown
    /// (Ok) or until the connection or channel is lost (Err).
    async fn consume(
        &self,
        shutdown: &mut Shutdown,
        connected: &mut bool,
    ) -> Result<(), BrokerError> {
        let (connection, channel) = open_declared(&self.settings, "consumer").await?;
        let _blocked = Watcher::blocked(&connection, "consumer", Some(self.readiness.clone()));
        let result = match self.attach(&channel).await {
            Ok(deliveries) => {
                *connected = true;
                self.readiness.set_consumer_attached(true);
                let _consumer = Watcher::consumer(&channel, &deliveries, self.readiness.clone());
                tracing::info!(queue = %self.settings.queue, prefetch = self.settings.prefetch, "consuming generation commands");
                self.settle_each(&channel, deliveries, shutdown).await
            }
            Err(err) => Err(err),
        };
        let bound = self.settings.publish_timeout();
        closed_within(bound, channel.close(200, "consumer stopping")).await;
        closed_within(bound, connection.close(200, "consumer stopping")).await;
        result
    }

    /// Enables confirms (for the republishing to the retry queue and the
    /// DLX), sets the prefetch, and starts consuming.
    async fn attach(&self, channel: &Channel) -> Result<lapin::Consumer, BrokerError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("confirm.select"))?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(BrokerError::amqp("basic.qos"))?;
        let tag = format!("esr-exporter-{}", uuid::Uuid::new_v4().simple());
        channel
            .basic_consume(
                &self.settings.queue,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp("basic.consume"))
    }

    /// Settles deliveries one by one until shutdown (Ok) or until the
    /// connection or channel is lost (Err).
    async fn settle_each(
        &self,
        channel: &Channel,
        mut deliveries: lapin::Consumer,
        shutdown: &mut Shutdown,
    ) -> Result<(), BrokerError> {
        let stop = shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.recv() => return Ok(()),
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let outcome = self.handle(channel, delivery, &stop).await?;
                        metrics::record_command(outcome.label());
                    }
                    Some(Err(err)) => return Err(BrokerError::amqp("consume")(err)),
                    None => return Err(BrokerError::ConsumerEnded),
                },
            }
        }
    }

    /// Settles one delivery (see the module docs). Errors mean the channel
    /// failed; the broker then redelivers the message.
    ///
    /// # Errors
    /// [`BrokerError`] when acking or republishing fails.
    pub(crate) async fn handle(
        &self,
        channel: &Channel,
        delivery: Delivery,
        shutdown: &Shutdown,
    ) -> Result<Outcome, BrokerError> {
        let mut settling = Settling {
            channel,
            delivery: &delivery,
            attempt: attempt_of(&delivery),
            command_id: None,
        };
        let (command, deanery) = match GenerationCommand::parse(&delivery.data) {
            Ok(parsed) => parsed,
            Err(err) => return self.settler().dead_letter(&settling, err.to_string()).await,
        };
        log_received(&command, &deanery, &settling);
        let command_id = command.command_id.to_string();
        settling.command_id = Some(&command_id);
        let slot = command.slot.id();
        if let Some(outcome) = self.settle_if_ahead(&settling, &command.slot).await? {
            return Ok(outcome);
        }
        if let Some(outcome) = self.settle_if_done(&settling, &deanery, &slot).await? {
            return Ok(outcome);
        }
        let summary = self.export(&deanery, slot, &command_id, shutdown).await;
        let disposition = decide(
            &summary.end,
            settling.attempt,
            self.settings.max_attempts,
            shutdown.is_shutdown(),
        );
        let error = summary.error().unwrap_or_default().to_owned();
        let done = Outcome::Exported(Box::new(summary));
        self.settler()
            .settle(&settling, disposition, &error, done)
            .await
    }

    /// Settles a command whose work a completed run already did (acked as a
    /// no-op), or whose check failed (retried or dead-lettered); `None` when
    /// there is work to do.
    async fn settle_if_done(
        &self,
        settling: &Settling<'_>,
        deanery: &Deanery,
        slot: &str,
    ) -> Result<Option<Outcome>, BrokerError> {
        let command_id = settling.command_id.unwrap_or_default();
        let done = self
            .exporter
            .already_done(deanery, Some(slot), command_id)
            .await;
        let (disposition, error) = match done {
            Ok(false) => return Ok(None),
            Ok(true) => {
                tracing::info!(command_id = %command_id, deanery = %deanery, slot = %slot, "already completed; acknowledged as a no-op");
                (Disposition::Ack, String::new())
            }
            Err(err) => {
                let error = crate::report::chain(&err);
                let disposition = if err.is_transient() {
                    retry_or_give_up(settling.attempt, self.settings.max_attempts, &error)
                } else {
                    Disposition::DeadLetter {
                        reason: error.clone(),
                    }
                };
                (disposition, error)
            }
        };
        self.settle_before_export(settling, disposition, &error)
            .await
    }

    /// Settles a command decided before its export started (done already,
    /// or its slot ahead of this clock).
    async fn settle_before_export(
        &self,
        settling: &Settling<'_>,
        disposition: Disposition,
        error: &str,
    ) -> Result<Option<Outcome>, BrokerError> {
        let settler = self.settler();
        let outcome = settler.settle(settling, disposition, error, Outcome::AlreadyDone);
        outcome.await.map(Some)
    }

    /// A scheduled slot ahead of this replica's clock (beyond the skew
    /// allowance) is taken when the slot collection records it fired;
    /// otherwise the command is retried (and dead-lettered once its
    /// attempts are spent). `None` when the command may go on.
    async fn settle_if_ahead(
        &self,
        settling: &Settling<'_>,
        slot: &Slot,
    ) -> Result<Option<Outcome>, BrokerError> {
        let Slot::Scheduled(at) = slot else {
            return Ok(None);
        };
        let ahead = *at - chrono::Utc::now();
        if ahead <= SLOT_CLOCK_SKEW {
            return Ok(None);
        }
        let error = match self.exporter.slot_fired(&slot.id()).await {
            Ok(true) => {
                tracing::warn!(slot = %slot.id(), ahead_s = ahead.num_seconds(), "slot ahead of this replica's clock but recorded as fired; taken (is this clock slow? see esr_clock_skew_seconds)");
                return Ok(None);
            }
            Ok(false) => format!(
                "slot {} is {} s ahead of this replica's clock and no replica recorded it as fired",
                slot.id(),
                ahead.num_seconds()
            ),
            Err(err) => crate::report::chain(&err),
        };
        let disposition = retry_or_give_up(settling.attempt, self.settings.max_attempts, &error);
        self.settle_before_export(settling, disposition, &error)
            .await
    }

    /// Runs (or resumes) the deanery's export for this command, stopping at
    /// a safe point on shutdown or at the processing deadline.
    async fn export(
        &self,
        deanery: &Deanery,
        slot: String,
        command_id: &str,
        shutdown: &Shutdown,
    ) -> RunSummary {
        let timeout = Duration::from_secs(self.settings.processing_timeout_seconds);
        let options = RunOptions {
            slot: Some(slot),
            command_id: Some(command_id.to_owned()),
            shutdown: Some(shutdown.clone()),
            deadline: Some(Instant::now() + timeout),
        };
        self.exporter.run_with(deanery, &options).await
    }
}

fn log_received(command: &GenerationCommand, deanery: &Deanery, settling: &Settling<'_>) {
    tracing::info!(
        command_id = %command.command_id,
        deanery = %deanery,
        slot = %command.slot.id(),
        attempt = settling.attempt,
        requested_by = %crate::domain::printable(&command.requested_by, 200),
        redelivered = settling.delivery.redelivered,
        "command received"
    );
}
