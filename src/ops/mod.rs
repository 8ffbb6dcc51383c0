//! Operations: Prometheus metrics, the HTTP endpoints (health, readiness,
//! metrics), the output folder's health, readiness, systemd notifications,
//! and how background work says its failures (`failing`). Imports none of `export`, `broker` or `schedule`: they
//! report here, not the other way round.

pub(crate) mod failing;
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
    /// What start-up waits for, while it does (`MongoDB's indexes`, ...).
    waiting_for: Arc<Mutex<Option<String>>>,
    consumer_attached: Arc<AtomicBool>,
    /// Why RabbitMQ blocks the consumer's connection, while it does.
    broker_blocked: Arc<Mutex<Option<String>>>,
}

impl Readiness {
    /// Records that start-up is done and the consumer runs.
    pub(crate) fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.set_waiting_for(None);
        metrics::set_starting(false);
    }

    /// Records what start-up waits for now (`None` once it waits for
    /// nothing), for `/readyz` and systemd's status line.
    pub(crate) fn set_waiting_for(&self, what: Option<&str>) {
        if let Ok(mut waiting) = self.waiting_for.lock() {
            *waiting = what.map(str::to_owned);
        }
        if let Some(what) = what {
            systemd::status(&format!("starting: waiting for {what}"));
        }
    }

    /// What start-up waits for, while it does.
    pub(crate) fn waiting_for(&self) -> Option<String> {
        self.waiting_for.lock().ok().and_then(|w| w.clone())
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
