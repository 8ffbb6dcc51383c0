//! Watching a connection's real state, each watch a task that ends when its
//! [`Watcher`] is dropped:
//!
//! - `connection.blocked`: RabbitMQ stops reading from the connections that
//!   publish while a memory or disk alarm lasts, without a word to the
//!   publisher unless it listens. The watch logs the block and the unblock
//!   at WARN with the broker's reason, sets `esr_amqp_blocked{role}` and,
//!   for the consumer, readiness; dropping the watch (the connection is
//!   gone) clears both, so a closed connection never reads as blocked;
//! - the consumer: the broker may close its channel while an export runs
//!   (an acknowledgement timeout) or cancel it alone with `basic.cancel`
//!   (its queue deleted), leaving the channel open. Readiness and
//!   `esr_consumer_attached` follow either within a second, not when the
//!   export ends.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{Channel, Connection, Event};
use tokio::task::JoinHandle;

use crate::ops::{metrics, Readiness};

/// How often the consumer's channel is looked at.
const CHANNEL_CHECK: Duration = Duration::from_secs(1);

/// One watch, running until dropped.
#[derive(Debug)]
pub(crate) struct Watcher {
    task: JoinHandle<()>,
    /// For a `connection.blocked` watch: what to clear when it ends.
    blocked: Option<(&'static str, Option<Readiness>)>,
}

impl Watcher {
    /// Watches the consumer on `channel`: once the channel is no longer
    /// open or the broker has cancelled the consumer, it is recorded
    /// detached (the reconnect attaches it again).
    pub(crate) fn consumer(
        channel: &Channel,
        consumer: &lapin::Consumer,
        readiness: Readiness,
    ) -> Self {
        let (channel, consumer) = (channel.clone(), consumer.clone());
        let task = tokio::spawn(async move {
            while channel.status().connected() && consumer.state().is_active() {
                tokio::time::sleep(CHANNEL_CHECK).await;
            }
            tracing::warn!(
                channel = ?channel.status().state(),
                consumer = ?consumer.state(),
                "the consumer's channel is closed or the broker cancelled it; detached until it reconnects"
            );
            readiness.set_consumer_attached(false);
        });
        Self {
            task,
            blocked: None,
        }
    }

    /// Watches `connection`, opened for `role`, for `connection.blocked`;
    /// `readiness` is the daemon's when the connection is the consumer's.
    pub(crate) fn blocked(
        connection: &Connection,
        role: &'static str,
        readiness: Option<Readiness>,
    ) -> Self {
        let mut events = connection.events_listener();
        let watched = readiness.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::ConnectionBlocked(reason) => blocked(role, &watched, Some(reason)),
                    Event::ConnectionUnblocked => blocked(role, &watched, None),
                    _ => {}
                }
            }
        });
        Self {
            task,
            blocked: Some((role, readiness)),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
        if let Some((role, readiness)) = self.blocked.take() {
            metrics::set_amqp_blocked(role, false);
            if let Some(readiness) = readiness {
                readiness.set_broker_blocked(None);
            }
        }
    }
}

fn blocked(role: &'static str, readiness: &Option<Readiness>, reason: Option<String>) {
    match &reason {
        Some(reason) => tracing::warn!(
            role,
            reason = %reason,
            "RabbitMQ blocked this connection (connection.blocked): publishes wait until it unblocks, at most amqp.publish_timeout_ms each"
        ),
        None => tracing::warn!(
            role,
            "RabbitMQ unblocked this connection (connection.unblocked)"
        ),
    }
    metrics::set_amqp_blocked(role, reason.is_some());
    if let Some(readiness) = readiness {
        readiness.set_broker_blocked(reason);
    }
}

/// Runs a close (of a channel or connection) for at most `bound`: a
/// blocked broker does not read the close either.
pub(crate) async fn closed_within<F: std::future::Future>(bound: Duration, close: F) {
    drop(tokio::time::timeout(bound, close).await);
}
