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

use tracing::Instrument;

use super::decision::{decide, Handled};
use super::settle::{Outcome, Settler, Settling};
use super::{closed_within, open_declared, BrokerError, Watcher, ATTEMPT_HEADER};
use crate::config::AmqpSettings;
use crate::domain::{Deanery, GenerationCommand, RunSummary, Slot, SLOT_CLOCK_SKEW};
use crate::export::{Ended, Exporter, RunOptions};
use crate::ops::{metrics, Readiness};
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Consumes generation commands and runs exports.
#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    settings: AmqpSettings,
    exporter: Exporter,
    store: Store,
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

    /// A consumer of `settings.queue` running exports with `exporter`,
    /// and checking in `store` whether a command is due or done.
    pub(crate) fn new(
        settings: AmqpSettings,
        exporter: Exporter,
        store: Store,
        readiness: Readiness,
    ) -> Self {
        Self {
            settings,
            exporter,
            store,
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
                    error = %crate::error_chain::Chain(&err),
                    queue = %self.settings.queue,
                    "RabbitMQ refused this user (ACCESS_REFUSED); stopping: it needs configure, write and read on ^<queue>(\\..*)?$ and write on amq.default (docs/src/configuration.md, Permissions)"
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
                error = %crate::error_chain::Chain(&err),
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

    /// Settles one delivery (see the module docs): handles it into one
    /// typed [`Handled`], decides, settles. Errors mean the channel
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
        let attempt = attempt_of(&delivery);
        let (handled, command_id) = self.handle_delivery(&delivery, attempt, shutdown).await;
        let settling = Settling {
            channel,
            delivery: &delivery,
            attempt,
            command_id: command_id.as_deref(),
        };
        let max_attempts = self.settings.max_attempts;
        let disposition = decide(&handled, attempt, max_attempts, shutdown.is_shutdown());
        let acked = match handled {
            Handled::Ran(summary, _) => Outcome::Exported(summary),
            _ => Outcome::AlreadyDone,
        };
        self.settler().settle(&settling, disposition, acked).await
    }

    /// Parses the command and handles it; with its id once parsed.
    async fn handle_delivery(
        &self,
        delivery: &Delivery,
        attempt: i64,
        shutdown: &Shutdown,
    ) -> (Handled, Option<String>) {
        let (command, deanery) = match GenerationCommand::parse(&delivery.data) {
            Ok(parsed) => parsed,
            Err(err) => return (Handled::Unparsable(err), None),
        };
        log_received(&command, &deanery, attempt, delivery.redelivered);
        let command_id = command.command_id.to_string();
        let handled = self.handle_command(&command, &deanery, shutdown).await;
        (handled, Some(command_id))
    }

    /// A command whose slot is not yet due or whose work is done is not
    /// run; otherwise the deanery's export runs (or resumes).
    async fn handle_command(
        &self,
        command: &GenerationCommand,
        deanery: &Deanery,
        shutdown: &Shutdown,
    ) -> Handled {
        if let Some(handled) = self.not_yet_due(&command.slot).await {
            return handled;
        }
        let (slot, command_id) = (command.slot.id(), command.command_id.to_string());
        let span = tracing::info_span!("already_done", deanery = %deanery);
        let done = self
            .store
            .trigger_done(deanery, Some(&slot), &command_id)
            .instrument(span)
            .await;
        match done {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(command_id = %command_id, deanery = %deanery, slot = %slot, "already completed; acknowledged as a no-op");
                return Handled::AlreadyDone;
            }
            Err(err) => return Handled::Unchecked(err),
        }
        let (summary, ended) = self.export(deanery, slot, &command_id, shutdown).await;
        Handled::Ran(Box::new(summary), ended)
    }

    /// A scheduled slot ahead of this replica's clock (beyond the skew
    /// allowance) is taken when the slot collection records it fired;
    /// otherwise it is not yet due. `None` when the command may go on.
    async fn not_yet_due(&self, slot: &Slot) -> Option<Handled> {
        let Slot::Scheduled(at) = slot else {
            return None;
        };
        let ahead = *at - chrono::Utc::now();
        if ahead <= SLOT_CLOCK_SKEW {
            return None;
        }
        match self.store.slot(&slot.id()).await {
            Ok(Some(_)) => {
                tracing::warn!(slot = %slot.id(), ahead_s = ahead.num_seconds(), "slot ahead of this replica's clock but recorded as fired; taken (is this clock slow? see esr_clock_skew_seconds)");
                None
            }
            Ok(None) => Some(Handled::NotYetDue {
                slot: slot.id(),
                ahead_s: ahead.num_seconds(),
            }),
            Err(err) => Some(Handled::Unchecked(err)),
        }
    }

    /// Runs (or resumes) the deanery's export for this command, stopping at
    /// a safe point on shutdown or at the processing deadline.
    async fn export(
        &self,
        deanery: &Deanery,
        slot: String,
        command_id: &str,
        shutdown: &Shutdown,
    ) -> (RunSummary, Ended) {
        let timeout = Duration::from_secs(self.settings.processing_timeout_seconds);
        let options = RunOptions {
            slot: Some(slot),
            command_id: Some(command_id.to_owned()),
            shutdown: Some(shutdown.clone()),
            deadline: Some(Instant::now() + timeout),
        };
        self.exporter.run_for(deanery, &options).await
    }
}

fn log_received(command: &GenerationCommand, deanery: &Deanery, attempt: i64, redelivered: bool) {
    tracing::info!(
        command_id = %command.command_id,
        deanery = %deanery,
        slot = %command.slot.id(),
        attempt,
        requested_by = %crate::domain::printable(&command.requested_by, 200),
        redelivered,
        "command received"
    );
}
