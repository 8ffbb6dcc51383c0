//! RabbitMQ: connections, the topology (command queue, dead-letter exchange
//! and queue, retry delay queue), and publishing with publisher confirms
//! and persistent messages. The consumer lives in [`consumer`].
//!
//! Topology, declared idempotently on every (re)connect:
//!
//! - `<queue>`: durable; for `queue_type = "quorum"` with
//!   `x-dead-letter-exchange = <queue>.dlx` and `x-delivery-limit`;
//!   for `"classic"` plain, so an existing classic queue is reused as is.
//! - `<queue>.dlx`: durable direct exchange; `<queue>.dlq` is bound to it
//!   with the routing key `<queue>`.
//! - `<queue>.retry`: durable classic queue whose messages (published with
//!   an `expiration` of `retry_delay_ms`) expire back into `<queue>`
//!   through the default exchange.

pub mod consumer;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::{AmqpSettings, QueueType};
use crate::domain::GenerationCommand;

/// Header carrying why a message was dead-lettered by this daemon.
pub const REASON_HEADER: &str = "x-esr-dead-letter-reason";
/// Header counting processing attempts of a command.
pub const ATTEMPT_HEADER: &str = "x-esr-attempt";

/// A broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Connecting, or an operation on a connection or channel.
    #[error("RabbitMQ {op} failed: {source}")]
    Amqp {
        /// What was being done.
        op: &'static str,
        /// The client error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused a published message.
    #[error("RabbitMQ did not confirm the message published to {routing_key:?} (nack)")]
    Nacked {
        /// Where it was published.
        routing_key: String,
    },
    /// The consumer's delivery stream ended (connection or channel lost).
    #[error("RabbitMQ stopped delivering to the consumer (connection or channel closed)")]
    ConsumerEnded,
}

impl BrokerError {
    pub(crate) fn amqp(op: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { op, source }
    }
}

/// Opens a connection driven by the tokio runtime, named
/// `<connection_name>:<role>` in the broker's connection list.
///
/// # Errors
/// [`BrokerError::Amqp`] when the broker cannot be reached.
pub async fn connect(settings: &AmqpSettings, role: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current())
        .with_connection_name(LongString::from(format!(
            "{}:{role}",
            settings.connection_name
        )));
    Connection::connect(settings.uri.expose(), properties)
        .await
        .map_err(BrokerError::amqp("connect"))
}

/// Connects (see [`connect`]), opens a channel and declares the topology
/// on it: how every publisher and consumer starts.
///
/// # Errors
/// [`BrokerError::Amqp`] when the broker cannot be reached or refuses the
/// declarations.
pub async fn open_declared(
    settings: &AmqpSettings,
    role: &str,
) -> Result<(Connection, Channel), BrokerError> {
    let connection = connect(settings, role).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    declare_topology(&channel, settings).await?;
    Ok((connection, channel))
}

fn long_string(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

/// Declares the topology (see the module docs). Idempotent.
///
/// # Errors
/// [`BrokerError::Amqp`], e.g. when an existing queue was declared with
/// other arguments (PRECONDITION_FAILED names the argument).
pub async fn declare_topology(
    channel: &Channel,
    settings: &AmqpSettings,
) -> Result<(), BrokerError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dlx = settings.dead_letter_exchange();
    channel
        .exchange_declare(
            &dlx,
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("exchange.declare (dead-letter exchange)"))?;

    let mut main_args = FieldTable::default();
    if settings.queue_type == QueueType::Quorum {
        main_args.insert("x-queue-type".into(), long_string("quorum"));
        main_args.insert("x-dead-letter-exchange".into(), long_string(dlx.clone()));
        main_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(settings.delivery_limit)),
        );
    }
    channel
        .queue_declare(&settings.queue, durable, main_args)
        .await
        .map_err(BrokerError::amqp("queue.declare (command queue)"))?;

    let mut dlq_args = FieldTable::default();
    if settings.queue_type == QueueType::Quorum {
        dlq_args.insert("x-queue-type".into(), long_string("quorum"));
    }
    let dlq = settings.dead_letter_queue();
    channel
        .queue_declare(&dlq, durable, dlq_args)
        .await
        .map_err(BrokerError::amqp("queue.declare (dead-letter queue)"))?;
    channel
        .queue_bind(
            &dlq,
            &dlx,
            &settings.queue,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.bind (dead-letter queue)"))?;

    // The delay is set per message (`expiration`), not as the queue's
    // x-message-ttl, so changing `retry_delay_ms` needs no re-declaration.
    let mut retry_args = FieldTable::default();
    retry_args.insert("x-dead-letter-exchange".into(), long_string(""));
    retry_args.insert(
        "x-dead-letter-routing-key".into(),
        long_string(settings.queue.clone()),
    );
    channel
        .queue_declare(&settings.retry_queue(), durable, retry_args)
        .await
        .map_err(BrokerError::amqp("queue.declare (retry queue)"))?;
    Ok(())
}

/// Persistent JSON message properties with the given headers.
pub fn message_properties(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(message_id))
        .with_app_id(ShortString::from("esr-exporter"))
        .with_headers(headers)
}

/// Publishes and waits for the broker's confirm.
///
/// # Errors
/// [`BrokerError::Amqp`] when the channel fails, [`BrokerError::Nacked`]
/// when the broker refuses the message.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let confirm = channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .map_err(BrokerError::amqp("basic.publish"))?
        .await
        .map_err(BrokerError::amqp("publisher confirm"))?;
    match confirm {
        Confirmation::Ack(_) => Ok(()),
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
}

impl Publisher {
    /// Connects, declares the topology and enables publisher confirms.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached or refuses.
    pub async fn connect(settings: &AmqpSettings, role: &str) -> Result<Self, BrokerError> {
        let (connection, channel) = open_declared(settings, role).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("confirm.select"))?;
        Ok(Self {
            connection,
            channel,
            queue: settings.queue.clone(),
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
        )
        .await
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done").await;
        let _ = self.connection.close(200, "done").await;
    }
}

/// `<user>@<host>` style identity for `requestedBy`.
pub fn requester(role: &str) -> String {
    format!("{role}@{}", crate::domain::host_name())
}

/// A message in the dead-letter queue, as `dead-letters` shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The message id (the command id for commands).
    pub message_id: Option<String>,
    /// Why this daemon dead-lettered it (`x-esr-dead-letter-reason`), or
    /// the broker's own reason from `x-death`.
    pub reason: Option<String>,
    /// The processing attempt it was on.
    pub attempt: Option<i64>,
    /// The body, as text.
    pub body: String,
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name))
}

fn describe(properties: &BasicProperties, body: &[u8]) -> DeadLetter {
    let reason = match header(properties, REASON_HEADER) {
        Some(AMQPValue::LongString(reason)) => Some(reason.to_string()),
        _ => header(properties, "x-death")
            .map(|death| format!("dead-lettered by RabbitMQ: {death:?}")),
    };
    let attempt = match header(properties, ATTEMPT_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        Some(AMQPValue::LongInt(n)) => Some(i64::from(*n)),
        _ => None,
    };
    DeadLetter {
        message_id: properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        reason,
        attempt,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

async fn dead_letter_channel(
    settings: &AmqpSettings,
    role: &str,
) -> Result<(Connection, Channel, u32), BrokerError> {
    let (connection, channel) = open_declared(settings, role).await?;
    let waiting = channel
        .queue_declare(
            &settings.dead_letter_queue(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.declare (passive)"))?
        .message_count();
    Ok((connection, channel, waiting))
}

/// The next dead letter, fetched unacknowledged.
async fn next_dead_letter(
    channel: &Channel,
    settings: &AmqpSettings,
) -> Result<Option<lapin::message::BasicGetMessage>, BrokerError> {
    channel
        .basic_get(
            &settings.dead_letter_queue(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .map_err(BrokerError::amqp("basic.get"))
}

/// Lists the dead-letter queue without consuming it: the messages are
/// fetched unacknowledged and return to the queue when the channel closes.
///
/// # Errors
/// [`BrokerError`] when RabbitMQ fails.
pub async fn list_dead_letters(settings: &AmqpSettings) -> Result<Vec<DeadLetter>, BrokerError> {
    let (connection, channel, waiting) = dead_letter_channel(settings, "dead-letters").await?;
    let mut letters = Vec::new();
    for _ in 0..waiting {
        let Some(message) = next_dead_letter(&channel, settings).await? else {
            break;
        };
        letters.push(describe(
            &message.delivery.properties,
            &message.delivery.data,
        ));
    }
    let _ = channel.close(200, "listed").await;
    let _ = connection.close(200, "listed").await;
    Ok(letters)
}

/// Moves the messages now in the dead-letter queue back to the command
/// queue with a fresh attempt count (each confirmed before it is removed
/// from the dead-letter queue). Returns how many were moved.
///
/// # Errors
/// [`BrokerError`] when RabbitMQ fails; messages not yet moved stay put.
pub async fn replay_dead_letters(settings: &AmqpSettings) -> Result<u32, BrokerError> {
    let (connection, channel, waiting) = dead_letter_channel(settings, "dead-letters").await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::amqp("confirm.select"))?;
    let mut moved = 0;
    // Only what is there now: a message that fails again comes back to the
    // dead-letter queue and must not be replayed in a loop.
    for _ in 0..waiting {
        let Some(message) = next_dead_letter(&channel, settings).await? else {
            break;
        };
        let delivery = &message.delivery;
        let letter = describe(&delivery.properties, &delivery.data);
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(1));
        let message_id = letter.message_id.clone().unwrap_or_default();
        publish_confirmed(
            &channel,
            "",
            &settings.queue,
            &delivery.data,
            message_properties(&message_id, headers),
        )
        .await?;
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .map_err(BrokerError::amqp("basic.ack"))?;
        tracing::info!(message_id = %message_id, reason = letter.reason.as_deref().unwrap_or(""), "dead letter replayed");
        moved += 1;
    }
    let _ = channel.close(200, "replayed").await;
    let _ = connection.close(200, "replayed").await;
    Ok(moved)
}
