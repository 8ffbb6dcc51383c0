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
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Channel;

use super::{
    message_properties, open_declared, publish_confirmed, BrokerError, ATTEMPT_HEADER,
    REASON_HEADER,
};
use crate::config::AmqpSettings;
use crate::domain::{GenerationCommand, RunStatus, RunSummary};
use crate::export::{Exporter, RunOptions};
use crate::ops::{metrics, Readiness};
use crate::shutdown::Shutdown;
use crate::store::Attempts;

/// How one delivery was settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The run completed; acked.
    Exported(Box<RunSummary>),
    /// The slot or command was already completed; acked as a no-op.
    AlreadyDone,
    /// Republished to the retry queue with this attempt number; acked.
    RetryScheduled {
        /// The next attempt's number.
        attempt: i64,
    },
    /// Republished to the dead-letter exchange; acked.
    DeadLettered {
        /// Why.
        reason: String,
    },
    /// Interrupted by shutdown; nacked with requeue.
    Requeued,
}

impl Outcome {
    /// The `outcome` label of `esr_commands_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Exported(_) => "exported",
            Self::AlreadyDone => "no_op",
            Self::RetryScheduled { .. } => "retry",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Requeued => "requeued",
        }
    }
}

/// Consumes generation commands and runs exports.
#[derive(Debug, Clone)]
pub struct Consumer {
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
    /// A consumer of `settings.queue` running exports with `exporter`.
    pub fn new(settings: AmqpSettings, exporter: Exporter, readiness: Readiness) -> Self {
        Self {
            settings,
            exporter,
            readiness,
        }
    }

    /// Consumes until shutdown. A lost connection or channel is
    /// re-established with backoff, the topology re-declared and consuming
    /// resumed; the loop never gives up while the process runs.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = self.settings.reconnect_backoff();
        while !shutdown.is_shutdown() {
            let mut connected = false;
            let result = self.consume(&mut shutdown, &mut connected).await;
            self.readiness.set_consumer_attached(false);
            let err = match result {
                Ok(()) => break,
                Err(err) => err,
            };
            if connected {
                backoff = self.settings.reconnect_backoff();
            }
            let delay = backoff
                .next()
                .unwrap_or(Duration::from_millis(self.settings.reconnect_max_delay_ms));
            tracing::warn!(
                error = %err,
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
        // Confirms for the republishing to the retry queue and the DLX.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("confirm.select"))?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(BrokerError::amqp("basic.qos"))?;
        let tag = format!("esr-exporter-{}", uuid::Uuid::new_v4().simple());
        let mut deliveries = channel
            .basic_consume(
                &self.settings.queue,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp("basic.consume"))?;
        *connected = true;
        self.readiness.set_consumer_attached(true);
        tracing::info!(queue = %self.settings.queue, prefetch = self.settings.prefetch, "consuming generation commands");
        let stop = shutdown.clone();
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.recv() => break Ok(()),
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        match self.handle(&channel, delivery, &stop).await {
                            Ok(outcome) => metrics::record_command(outcome.label()),
                            Err(err) => break Err(err),
                        }
                    }
                    Some(Err(err)) => break Err(BrokerError::amqp("consume")(err)),
                    None => break Err(BrokerError::ConsumerEnded),
                },
            }
        };
        let _ = channel.close(200, "consumer stopping").await;
        let _ = connection.close(200, "consumer stopping").await;
        result
    }

    /// Settles one delivery (see the module docs). Errors mean the channel
    /// failed; the broker then redelivers the message.
    ///
    /// # Errors
    /// [`BrokerError`] when acking or republishing fails.
    pub async fn handle(
        &self,
        channel: &Channel,
        delivery: Delivery,
        shutdown: &Shutdown,
    ) -> Result<Outcome, BrokerError> {
        let attempt = attempt_of(&delivery);
        let (command, deanery) = match GenerationCommand::parse(&delivery.data) {
            Ok(parsed) => parsed,
            Err(err) => {
                return self
                    .dead_letter(channel, &delivery, attempt, None, err.to_string())
                    .await;
            }
        };
        let command_id = command.command_id.to_string();
        let slot = command.slot.id();
        tracing::info!(
            command_id = %command_id,
            deanery = %deanery,
            slot = %slot,
            attempt,
            requested_by = %crate::domain::printable(&command.requested_by, 200),
            redelivered = delivery.redelivered,
            "command received"
        );
        let mut attempts = Attempts::default();
        match self
            .exporter
            .store()
            .trigger_done(&deanery, Some(&slot), &command_id, &mut attempts)
            .await
        {
            Ok(true) => {
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(BrokerError::amqp("basic.ack"))?;
                tracing::info!(command_id = %command_id, deanery = %deanery, slot = %slot, "already completed; acknowledged as a no-op");
                return Ok(Outcome::AlreadyDone);
            }
            Ok(false) => {}
            Err(err) if err.is_transient() => {
                return self
                    .retry_later(channel, &delivery, attempt, &command_id, err.to_string())
                    .await;
            }
            Err(err) => {
                return self
                    .dead_letter(
                        channel,
                        &delivery,
                        attempt,
                        Some(&command_id),
                        err.to_string(),
                    )
                    .await;
            }
        }

        let options = RunOptions {
            slot: Some(slot),
            command_id: Some(command_id.clone()),
            shutdown: Some(shutdown.clone()),
            deadline: Some(
                Instant::now() + Duration::from_secs(self.settings.processing_timeout_seconds),
            ),
        };
        let summary = self.exporter.run_with(&deanery, &options).await;
        let error = summary.error.clone().unwrap_or_default();
        match summary.status {
            RunStatus::Completed => {
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(BrokerError::amqp("basic.ack"))?;
                Ok(Outcome::Exported(Box::new(summary)))
            }
            _ if summary.retryable && shutdown.is_shutdown() => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
                    .map_err(BrokerError::amqp("basic.nack"))?;
                tracing::info!(command_id = %command_id, deanery = %deanery, "shutdown: command requeued for a later resume");
                Ok(Outcome::Requeued)
            }
            // Another replica holds the deanery's lease and is exporting
            // it: wait without using up an attempt (its run may be long).
            RunStatus::Skipped => {
                self.retry_later(channel, &delivery, attempt - 1, &command_id, error)
                    .await
            }
            _ if summary.retryable => {
                self.retry_later(channel, &delivery, attempt, &command_id, error)
                    .await
            }
            _ => {
                self.dead_letter(channel, &delivery, attempt, Some(&command_id), error)
                    .await
            }
        }
    }

    fn headers_with(delivery: &Delivery, extra: &[(&str, AMQPValue)]) -> FieldTable {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        for (key, value) in extra {
            headers.insert((*key).into(), value.clone());
        }
        headers
    }

    fn message_id(delivery: &Delivery, fallback: &str) -> String {
        delivery
            .properties
            .message_id()
            .as_ref()
            .map_or_else(|| fallback.to_owned(), |id| id.as_str().to_owned())
    }

    async fn retry_later(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        attempt: i64,
        command_id: &str,
        error: String,
    ) -> Result<Outcome, BrokerError> {
        if attempt >= i64::from(self.settings.max_attempts) {
            let reason = format!("gave up after {attempt} attempts; last error: {error}");
            return self
                .dead_letter(channel, delivery, attempt, Some(command_id), reason)
                .await;
        }
        let next = attempt + 1;
        let headers =
            Self::headers_with(delivery, &[(ATTEMPT_HEADER, AMQPValue::LongLongInt(next))]);
        publish_confirmed(
            channel,
            "",
            &self.settings.retry_queue(),
            &delivery.data,
            message_properties(&Self::message_id(delivery, command_id), headers).with_expiration(
                lapin::types::ShortString::from(self.settings.retry_delay_ms.to_string()),
            ),
        )
        .await?;
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::amqp("basic.ack"))?;
        tracing::warn!(
            command_id = %command_id,
            attempt,
            next_attempt = next,
            delay_ms = self.settings.retry_delay_ms,
            error = %error,
            "command failed transiently; retry scheduled"
        );
        Ok(Outcome::RetryScheduled { attempt: next })
    }

    async fn dead_letter(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        attempt: i64,
        command_id: Option<&str>,
        reason: String,
    ) -> Result<Outcome, BrokerError> {
        let headers = Self::headers_with(
            delivery,
            &[(
                REASON_HEADER,
                AMQPValue::LongString(LongString::from(reason.clone())),
            )],
        );
        let message_id = Self::message_id(delivery, command_id.unwrap_or(""));
        publish_confirmed(
            channel,
            &self.settings.dead_letter_exchange(),
            &self.settings.queue,
            &delivery.data,
            message_properties(&message_id, headers),
        )
        .await?;
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::amqp("basic.ack"))?;
        tracing::error!(
            command_id = command_id.unwrap_or(""),
            message_id = %message_id,
            attempt,
            reason = %reason,
            dead_letter_queue = %self.settings.dead_letter_queue(),
            "command dead-lettered"
        );
        Ok(Outcome::DeadLettered { reason })
    }
}
