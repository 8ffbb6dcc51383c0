//! RabbitMQ: connections, the topology (command queue, dead-letter exchange
//! and queue, retry delay queue), and publishing with publisher confirms
//! and persistent messages. The consumer lives in [`consumer`], the pure
//! decision of how it settles a delivery in [`decide`].
//!
//! Topology, declared idempotently on every (re)connect:
//!
//! - `<queue>`: durable; for `queue_type = "quorum"` with
//!   `x-dead-letter-exchange = <queue>.dlx`,
//!   `x-dead-letter-routing-key = <queue>` and `x-delivery-limit`;
//!   for `"classic"` plain, so an existing classic queue is reused as is.
//! - `<queue>.dlx`: durable direct exchange; `<queue>.dlq` is bound to it
//!   with the routing key `<queue>`.
//! - `<queue>.retry`: durable classic queue whose messages (published with
//!   an `expiration` of `retry_delay_ms`) expire back into `<queue>`
//!   through the default exchange.

pub mod consumer;
mod dead_letters;
mod decision;
mod publish;
mod settle;
mod topology;
mod watch;

use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties};

use crate::config::AmqpSettings;

pub(crate) use dead_letters::{dead_letters_waiting, list_dead_letters, replay_dead_letters};
pub(crate) use publish::publish_commands;
pub use publish::{message_properties, publish_confirmed, Publisher};
pub(crate) use topology::declare_topology;
pub(crate) use watch::{closed_within, Watcher};

/// Header carrying why a message was dead-lettered by this daemon.
pub const REASON_HEADER: &str = "x-esr-dead-letter-reason";
/// Header counting processing attempts of a command.
pub(crate) const ATTEMPT_HEADER: &str = "x-esr-attempt";

/// A broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Connecting, or an operation on a connection or channel.
    #[error("RabbitMQ {op} failed")]
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
    /// The broker returned a `mandatory` message: no queue is bound for its
    /// route (a queue deleted, a binding removed).
    #[error("RabbitMQ returned the message published to exchange {exchange:?} with routing key {routing_key:?}: no queue is bound for that route ({reply})")]
    Unroutable {
        /// The exchange published to (`""` is the default exchange).
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The broker's reply text, e.g. `NO_ROUTE`.
        reply: String,
    },
    /// No confirm came within `amqp.publish_timeout_ms`.
    #[error("RabbitMQ did not confirm the message published to {routing_key:?} within {bound_ms} ms (amqp.publish_timeout_ms); is it blocking publishers under a memory or disk alarm?")]
    ConfirmTimedOut {
        /// Where it was published.
        routing_key: String,
        /// The bound, in milliseconds.
        bound_ms: u64,
    },
    /// The consumer's delivery stream ended (connection or channel lost).
    #[error("RabbitMQ stopped delivering to the consumer (connection or channel closed)")]
    ConsumerEnded,
}

impl BrokerError {
    pub(crate) fn amqp(op: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { op, source }
    }

    /// True when the broker refused this user (`ACCESS_REFUSED`, 403):
    /// a permission missing on the vhost, queue or exchange, or bad
    /// credentials. Reconnecting cannot help until someone fixes it.
    pub(crate) fn is_access_refused(&self) -> bool {
        let Self::Amqp { source, .. } = self else {
            return false;
        };
        let text = source.to_string();
        text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED")
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

/// `<user>@<host>` style identity for `requestedBy`.
pub(crate) fn requester(role: &str) -> String {
    format!("{role}@{}", crate::domain::host_name())
}
