//! How a delivery is settled once its disposition is known: acked,
//! republished (confirmed, `mandatory`) to the retry queue or the
//! dead-letter exchange and then acked, or nacked with requeue.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;

use super::decision::Disposition;
use super::{message_properties, publish_confirmed, BrokerError, ATTEMPT_HEADER, REASON_HEADER};
use crate::config::AmqpSettings;
use crate::domain::RunSummary;

/// How one delivery was settled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
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
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Exported(_) => "exported",
            Self::AlreadyDone => "no_op",
            Self::RetryScheduled { .. } => "retry",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Requeued => "requeued",
        }
    }
}

/// Settles deliveries of the consumer of `settings.queue`.
pub(super) struct Settler<'a> {
    pub(super) settings: &'a AmqpSettings,
}

impl Settler<'_> {
    /// Carries out `disposition`; `acked` is the outcome of an ack.
    pub(super) async fn settle(
        &self,
        settling: &Settling<'_>,
        disposition: Disposition,
        acked: Outcome,
    ) -> Result<Outcome, BrokerError> {
        match disposition {
            Disposition::Ack => {
                ack(settling.delivery).await?;
                Ok(acked)
            }
            Disposition::Retry { attempt, reason } => {
                self.retry_later(settling, attempt, &reason).await
            }
            Disposition::DeadLetter { reason } => self.dead_letter(settling, reason).await,
            Disposition::Requeue => requeue(settling).await,
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

    /// Publishes the delivery's body again, confirmed, to `exchange` with
    /// `routing_key`. When the broker returns it (nothing bound there any
    /// more), the delivery is requeued, never acked, and the error ends
    /// this connection: the reconnect declares the topology again.
    async fn republish(
        &self,
        settling: &Settling<'_>,
        exchange: &str,
        routing_key: &str,
        properties: lapin::BasicProperties,
    ) -> Result<(), BrokerError> {
        let data = &settling.delivery.data;
        let bound = self.settings.publish_timeout();
        let published = publish_confirmed(
            settling.channel,
            exchange,
            routing_key,
            data,
            properties,
            bound,
        )
        .await;
        if let Err(err @ BrokerError::Unroutable { .. }) = &published {
            tracing::error!(
                command_id = settling.command_id.unwrap_or_default(),
                error = %crate::error_chain::Chain(err),
                "a route of the topology is missing; the command is requeued and the topology declared again"
            );
            settling
                .delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
                .map_err(BrokerError::amqp("basic.nack"))?;
        }
        published
    }

    /// Republishes the message, confirmed, to the retry queue as attempt
    /// `next`, then acks it.
    async fn retry_later(
        &self,
        settling: &Settling<'_>,
        next: i64,
        error: &str,
    ) -> Result<Outcome, BrokerError> {
        let delivery = settling.delivery;
        let headers =
            Self::headers_with(delivery, &[(ATTEMPT_HEADER, AMQPValue::LongLongInt(next))]);
        let command_id = settling.command_id.unwrap_or_default();
        let expiration = ShortString::from(self.settings.retry_delay_ms.to_string());
        let properties = message_properties(&Self::message_id(delivery, command_id), headers)
            .with_expiration(expiration);
        self.republish(settling, "", &self.settings.retry_queue(), properties)
            .await?;
        ack(delivery).await?;
        tracing::warn!(
            command_id = %command_id,
            attempt = next - 1,
            next_attempt = next,
            delay_ms = self.settings.retry_delay_ms,
            error = %error,
            "command failed transiently; retry scheduled"
        );
        Ok(Outcome::RetryScheduled { attempt: next })
    }

    /// Republishes the message, confirmed, to the dead-letter exchange with
    /// `reason` in a header, then acks it.
    async fn dead_letter(
        &self,
        settling: &Settling<'_>,
        reason: String,
    ) -> Result<Outcome, BrokerError> {
        let delivery = settling.delivery;
        let reason_header = AMQPValue::LongString(LongString::from(reason.clone()));
        let headers = Self::headers_with(delivery, &[(REASON_HEADER, reason_header)]);
        let command_id = settling.command_id.unwrap_or("");
        let message_id = Self::message_id(delivery, command_id);
        let exchange = self.settings.dead_letter_exchange();
        let properties = message_properties(&message_id, headers);
        self.republish(settling, &exchange, &self.settings.queue, properties)
            .await?;
        ack(delivery).await?;
        tracing::error!(
            command_id,
            message_id = %message_id,
            attempt = settling.attempt,
            reason = %reason,
            dead_letter_queue = %self.settings.dead_letter_queue(),
            "command dead-lettered"
        );
        Ok(Outcome::DeadLettered { reason })
    }
}

/// The delivery being settled, with what is known of its command.
pub(super) struct Settling<'a> {
    pub(super) channel: &'a Channel,
    pub(super) delivery: &'a Delivery,
    /// The processing attempt this delivery is.
    pub(super) attempt: i64,
    /// Once the body parsed.
    pub(super) command_id: Option<&'a str>,
}

pub(super) async fn ack(delivery: &Delivery) -> Result<(), BrokerError> {
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(BrokerError::amqp("basic.ack"))
}

/// Nacks with requeue, for another replica or the next start to resume.
pub(super) async fn requeue(settling: &Settling<'_>) -> Result<Outcome, BrokerError> {
    let requeue = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    settling
        .delivery
        .nack(requeue)
        .await
        .map_err(BrokerError::amqp("basic.nack"))?;
    tracing::info!(
        command_id = settling.command_id.unwrap_or_default(),
        "shutdown: command requeued for a later resume"
    );
    Ok(Outcome::Requeued)
}
