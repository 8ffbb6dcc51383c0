//! `esr-exporter run`: the HTTP endpoints, the command consumer, the
//! scheduler and the watchdog, stopped cleanly when the shutdown future
//! completes.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::broker::consumer::Consumer;
use crate::config::Settings;
use crate::export::Exporter;
use crate::ops::http::HttpState;
use crate::ops::watchdog::Watchdog;
use crate::ops::{metrics, systemd, Readiness};
use crate::scheduler::Scheduler;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};

/// A daemon with its HTTP port bound, ready to run.
#[derive(Debug)]
pub struct Daemon {
    settings: Settings,
    listener: TcpListener,
    store: Store,
}

impl Daemon {
    /// Binds `http.listen` and prepares the MongoDB client (no I/O yet).
    ///
    /// # Errors
    /// When the port cannot be bound or the MongoDB URI cannot be used.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&settings.http.listen)
            .await
            .with_context(|| {
                format!(
                    "Failed to listen on {} (key `http.listen`)",
                    settings.http.listen
                )
            })?;
        let store = Store::connect(&settings)
            .await
            .context("Failed to prepare the MongoDB client")?;
        Ok(Self {
            settings,
            listener,
            store,
        })
    }

    /// The bound HTTP address (useful with port 0).
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `signal` completes, then lets in-flight work reach a safe
    /// point (bounded by `daemon.shutdown_grace_seconds`) and returns.
    ///
    /// # Errors
    /// When the schedule settings cannot be used (already validated at load).
    pub async fn run(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            settings,
            listener,
            store,
        } = self;
        let (trigger, mut shutdown) = Shutdown::new();
        tokio::pin!(signal);
        tracing::info!(
            queue = %settings.amqp.queue,
            mongodb = %settings.mongodb.uri,
            amqp = %settings.amqp.uri,
            http = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            schedule = %settings.schedule.cron,
            timezone = %settings.schedule.timezone,
            "esr-exporter starting"
        );
        let readiness = Readiness::default();
        metrics::set_consumer_attached(false);
        let http_state = HttpState {
            store: store.clone(),
            readiness: readiness.clone(),
            metrics: metrics::install(),
            output_dir: settings.export.output_dir.clone(),
        };
        let mut tasks = vec![tokio::spawn(crate::ops::http::serve(
            listener,
            http_state,
            shutdown.clone(),
        ))];

        let indexed = tokio::select! {
            indexed = ensure_indexes(&settings, &store, &mut shutdown) => indexed,
            _ = &mut signal => Ok(false),
        };
        let indexed = match indexed {
            Ok(indexed) => indexed,
            Err(err) => {
                trigger.trigger();
                futures_util::future::join_all(tasks).await;
                return Err(err).context("Failed to prepare MongoDB's indexes");
            }
        };
        if indexed {
            let exporter = Exporter::new(store.clone(), settings.export.clone());
            let consumer = Consumer::new(settings.amqp.clone(), exporter, readiness);
            tasks.push(tokio::spawn(consumer.run(shutdown.clone())));
            if settings.schedule.enabled {
                let scheduler = Scheduler::new(
                    settings.schedule.clone(),
                    settings.amqp.clone(),
                    store.clone(),
                )
                .map_err(|err| {
                    anyhow::anyhow!("invalid configuration: key `schedule.cron`: {err}")
                })?;
                tasks.push(tokio::spawn(scheduler.run(shutdown.clone())));
            }
            if settings.watchdog.enabled {
                let watchdog = Watchdog::new(
                    settings.watchdog.clone(),
                    &settings.schedule,
                    settings.amqp.clone(),
                    store,
                )
                .map_err(|err| {
                    anyhow::anyhow!("invalid configuration: key `schedule.cron`: {err}")
                })?;
                tasks.push(tokio::spawn(watchdog.run(shutdown.clone())));
            }
            tasks.push(tokio::spawn(systemd::run_watchdog_pings(shutdown.clone())));
            systemd::ready();
            tracing::info!("esr-exporter running");
            signal.await;
        }

        systemd::stopping();
        tracing::info!("shutdown requested; letting in-flight work reach a safe point");
        trigger.trigger();
        let grace = Duration::from_secs(settings.daemon.shutdown_grace_seconds);
        match tokio::time::timeout(grace, futures_util::future::join_all(tasks)).await {
            Ok(_) => tracing::info!("esr-exporter stopped cleanly"),
            Err(_) => tracing::warn!(
                grace_seconds = settings.daemon.shutdown_grace_seconds,
                "grace period over; unfinished work resumes on the next start"
            ),
        }
        Ok(())
    }
}

/// Creates the indexes, retrying with backoff until MongoDB answers or
/// shutdown comes: a database briefly away at start does not stop the
/// daemon (and `/readyz` says so meanwhile). False if shutdown came first.
///
/// # Errors
/// A permanent error (an index name taken by other keys, no permission,
/// ...): retrying cannot help, so the daemon stops with it.
async fn ensure_indexes(
    settings: &Settings,
    store: &Store,
    shutdown: &mut Shutdown,
) -> Result<bool, StoreError> {
    let mut backoff = settings.amqp.reconnect_backoff();
    loop {
        match store.ensure_indexes().await {
            Ok(()) => return Ok(true),
            Err(err) if !err.is_transient() => return Err(err),
            Err(err) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                tracing::error!(error = %err, delay_ms = delay.as_millis() as u64, "MongoDB unavailable at start; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.recv() => return Ok(false),
                }
            }
        }
    }
}

/// Builds and runs a daemon (see [`Daemon`]).
///
/// # Errors
/// See [`Daemon::build`] and [`Daemon::run`].
pub async fn run(settings: Settings, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
    Daemon::build(settings).await?.run(signal).await
}
