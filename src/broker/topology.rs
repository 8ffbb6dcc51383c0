//! The topology (see the [module docs](super)), declared idempotently on
//! every (re)connect.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::BrokerError;
use crate::config::{AmqpSettings, QueueType};

fn long_string(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares the topology (see the module docs). Idempotent.
///
/// # Errors
/// [`BrokerError::Amqp`], e.g. when an existing queue was declared with
/// other arguments (PRECONDITION_FAILED names the argument).
pub(crate) async fn declare_topology(
    channel: &Channel,
    settings: &AmqpSettings,
) -> Result<(), BrokerError> {
    declare_dead_letter_exchange(channel, settings).await?;
    declare_command_queue(channel, settings).await?;
    declare_dead_letter_queue(channel, settings).await?;
    declare_retry_queue(channel, settings).await
}

async fn declare_dead_letter_exchange(
    channel: &Channel,
    settings: &AmqpSettings,
) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            &settings.dead_letter_exchange(),
            ExchangeKind::Direct,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("exchange.declare (dead-letter exchange)"))
}

/// The arguments a queue of the configured type starts from.
fn typed(settings: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    if settings.queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), long_string("quorum"));
    }
    args
}

async fn declare_command_queue(
    channel: &Channel,
    settings: &AmqpSettings,
) -> Result<(), BrokerError> {
    let mut args = typed(settings);
    if settings.queue_type == QueueType::Quorum {
        let dlx = settings.dead_letter_exchange();
        args.insert("x-dead-letter-exchange".into(), long_string(dlx));
        // Explicit, so a message that reached the queue by another route
        // still lands in `<queue>.dlq`, which is bound with this key.
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(settings.queue.clone()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(settings.delivery_limit)),
        );
    }
    channel
        .queue_declare(&settings.queue, durable(), args)
        .await
        .map_err(BrokerError::amqp("queue.declare (command queue)"))?;
    Ok(())
}

async fn declare_dead_letter_queue(
    channel: &Channel,
    settings: &AmqpSettings,
) -> Result<(), BrokerError> {
    let dlq = settings.dead_letter_queue();
    channel
        .queue_declare(&dlq, durable(), typed(settings))
        .await
        .map_err(BrokerError::amqp("queue.declare (dead-letter queue)"))?;
    channel
        .queue_bind(
            &dlq,
            &settings.dead_letter_exchange(),
            &settings.queue,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.bind (dead-letter queue)"))
}

/// The delay is set per message (`expiration`), not as the queue's
/// x-message-ttl, so changing `retry_delay_ms` needs no re-declaration.
async fn declare_retry_queue(
    channel: &Channel,
    settings: &AmqpSettings,
) -> Result<(), BrokerError> {
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), long_string(""));
    args.insert(
        "x-dead-letter-routing-key".into(),
        long_string(settings.queue.clone()),
    );
    channel
        .queue_declare(&settings.retry_queue(), durable(), args)
        .await
        .map_err(BrokerError::amqp("queue.declare (retry queue)"))?;
    Ok(())
}
