//! Publishing with publisher confirms and persistent messages, and
//! [`publish_commands`]: how the scheduler, the watchdog and `trigger` all
//! publish generation commands.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::{closed_within, open_declared, requester, BrokerError, Watcher, ATTEMPT_HEADER};
use crate::config::AmqpSettings;
use crate::domain::{Deanery, GenerationCommand, Slot};

/// Persistent JSON message properties with the given headers.
pub fn message_properties(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(message_id))
        .with_app_id(ShortString::from("esr-exporter"))
        .with_headers(headers)
}

/// Publishes as `mandatory` and waits, at most `bound`, for the broker's
/// confirm. A message no queue is bound to receive comes back to the
/// publisher before the confirm: that is a failure, never a success.
///
/// # Errors
/// [`BrokerError::Amqp`] when the channel fails, [`BrokerError::Nacked`]
/// when the broker refuses the message, [`BrokerError::Unroutable`] when
/// it returns it, [`BrokerError::ConfirmTimedOut`] when no confirm comes
/// within `bound` (a blocked or silent broker).
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    bound: Duration,
) -> Result<(), BrokerError> {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirmed = async {
        channel
            .basic_publish(exchange, routing_key, mandatory, body, properties)
            .await
            .map_err(BrokerError::amqp("basic.publish"))?
            .await
            .map_err(BrokerError::amqp("publisher confirm"))
    };
    let confirm = tokio::time::timeout(bound, confirmed).await.map_err(|_| {
        BrokerError::ConfirmTimedOut {
            routing_key: routing_key.to_owned(),
            bound_ms: bound.as_millis() as u64,
        }
    })??;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(BrokerError::Unroutable {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            reply: returned.reply_text.to_string(),
        }),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(BrokerError::Nacked {
            routing_key: routing_key.to_owned(),
        }),
    }
}

/// Publishes generation commands with confirms: one connection, one
/// confirm-mode channel, topology declared.
#[derive(Debug)]
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    queue: String,
    bound: Duration,
    _blocked: Watcher,
}

impl Publisher {
    /// Connects, declares the topology and enables publisher confirms.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached or refuses.
    pub async fn connect(settings: &AmqpSettings, role: &'static str) -> Result<Self, BrokerError> {
        let (connection, channel) = open_declared(settings, role).await?;
        let blocked = Watcher::blocked(&connection, role, None);
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("confirm.select"))?;
        Ok(Self {
            connection,
            channel,
            queue: settings.queue.clone(),
            bound: settings.publish_timeout(),
            _blocked: blocked,
        })
    }

    /// Publishes one command as a persistent message and waits for the
    /// broker's confirm.
    ///
    /// # Errors
    /// [`BrokerError`] when it is not confirmed.
    pub async fn publish(&self, command: &GenerationCommand) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(1));
        publish_confirmed(
            &self.channel,
            "",
            &self.queue,
            &command.to_json(),
            message_properties(&command.command_id.to_string(), headers),
            self.bound,
        )
        .await
    }

    /// Closes the connection politely, within the publish bound.
    pub async fn close(self) {
        closed_within(self.bound, self.channel.close(200, "done")).await;
        closed_within(self.bound, self.connection.close(200, "done")).await;
    }
}

/// Publishes one generation command per deanery for `slot`, in order, on
/// one connection, each confirmed by the broker before the next; requested
/// by `<role>@<host>`. `on_published` sees each command as soon as it is
/// confirmed (so a caller can report the ones that went out before a
/// failure). Returns the commands published.
///
/// # Errors
/// [`BrokerError`] when the broker cannot be reached or a command is not
/// confirmed; the commands before it stay published.
pub(crate) async fn publish_commands(
    settings: &AmqpSettings,
    role: &'static str,
    deaneries: &[Deanery],
    slot: Slot,
    mut on_published: impl FnMut(&GenerationCommand),
) -> Result<Vec<GenerationCommand>, BrokerError> {
    let publisher = Publisher::connect(settings, role).await?;
    let by = requester(role);
    let mut published = Vec::with_capacity(deaneries.len());
    for deanery in deaneries {
        let command = GenerationCommand::new(deanery, slot, by.clone());
        if let Err(err) = publisher.publish(&command).await {
            publisher.close().await;
            return Err(err);
        }
        tracing::info!(
            slot = %slot.id(),
            deanery = %deanery,
            command_id = %command.command_id,
            requested_by = %by,
            "generation command published"
        );
        on_published(&command);
        published.push(command);
    }
    publisher.close().await;
    Ok(published)
}
