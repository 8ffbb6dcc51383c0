//! Operations: Prometheus metrics, the HTTP endpoints (health, readiness,
//! metrics), the output folder's health, readiness, and systemd
//! notifications. Imports none of `export`, `broker` or `schedule`: they
//! report here, not the other way round.

pub mod http;
pub mod metrics;
pub mod output_folder;
pub mod systemd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What readiness knows besides a database ping: whether the consumer is
/// attached to its queue (which also says RabbitMQ is reachable). Cheap to
/// clone; the consumer sets it, `/readyz` reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness {
    /// Set once start-up (MongoDB's indexes, the destination's probe) is
    /// done and the consumer runs: before that, a detached consumer says
    /// nothing about RabbitMQ.
    started: Arc<AtomicBool>,
    consumer_attached: Arc<AtomicBool>,
    /// Why RabbitMQ blocks the consumer's connection, while it does.
    broker_blocked: Arc<Mutex<Option<String>>>,
}

impl Readiness {
    /// Records that start-up is done and the consumer runs.
    pub(crate) fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// True once start-up is done and the consumer runs.
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Records whether the consumer is attached.
    pub(crate) fn set_consumer_attached(&self, attached: bool) {
        self.consumer_attached.store(attached, Ordering::SeqCst);
        metrics::set_consumer_attached(attached);
    }

    /// True while the consumer is attached to its queue.
    pub(crate) fn consumer_attached(&self) -> bool {
        self.consumer_attached.load(Ordering::SeqCst)
    }

    /// Records that RabbitMQ blocks (`Some(reason)`) or unblocked (`None`)
    /// the consumer's connection.
    pub(crate) fn set_broker_blocked(&self, reason: Option<String>) {
        if let Ok(mut blocked) = self.broker_blocked.lock() {
            *blocked = reason;
        }
    }

    /// Why RabbitMQ blocks the consumer's connection, while it does.
    pub(crate) fn broker_blocked(&self) -> Option<String> {
        self.broker_blocked.lock().ok().and_then(|b| b.clone())
    }
}
