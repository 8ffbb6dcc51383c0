//! The dead-letter queue, for operators: list it without consuming it, or
//! move its messages back to the command queue.

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use super::publish::{message_properties, publish_confirmed};
use super::{open_declared, BrokerError, ATTEMPT_HEADER, REASON_HEADER};
use crate::config::AmqpSettings;

/// A message in the dead-letter queue, as `dead-letters` shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeadLetter {
    /// The message id (the command id for commands).
    pub(crate) message_id: Option<String>,
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

/// How many dead letters wait in the dead-letter queue (for the
/// `esr_dead_letter_queue_messages` gauge the watchdog keeps).
///
/// # Errors
/// [`BrokerError`] when RabbitMQ cannot be reached or the queue declared.
pub(crate) async fn dead_letters_waiting(settings: &AmqpSettings) -> Result<u32, BrokerError> {
    let (connection, channel, waiting) = dead_letter_channel(settings, "watchdog").await?;
    let bound = settings.publish_timeout();
    super::closed_within(bound, channel.close(200, "counted")).await;
    super::closed_within(bound, connection.close(200, "counted")).await;
    Ok(waiting)
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

/// Lists the dead-letter queue (at most `limit` messages, oldest first)
/// without consuming it: the messages are fetched unacknowledged and
/// return to the queue when the channel closes.
///
/// # Errors
/// [`BrokerError`] when RabbitMQ fails.
pub(crate) async fn list_dead_letters(
    settings: &AmqpSettings,
    limit: Option<u32>,
) -> Result<Vec<DeadLetter>, BrokerError> {
    let (connection, channel, waiting) = dead_letter_channel(settings, "dead-letters").await?;
    let mut letters = Vec::new();
    for _ in 0..limit.map_or(waiting, |limit| limit.min(waiting)) {
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

/// Moves the messages now in the dead-letter queue (at most `limit`,
/// oldest first) back to the command queue with a fresh attempt count (each confirmed before it is removed
/// from the dead-letter queue). Returns how many were moved.
///
/// # Errors
/// [`BrokerError`] when RabbitMQ fails; messages not yet moved stay put.
pub(crate) async fn replay_dead_letters(
    settings: &AmqpSettings,
    limit: Option<u32>,
) -> Result<u32, BrokerError> {
    let (connection, channel, waiting) = dead_letter_channel(settings, "dead-letters").await?;
    let waiting = limit.map_or(waiting, |limit| limit.min(waiting));
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
            settings.publish_timeout(),
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
