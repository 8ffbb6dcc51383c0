//! `esr-exporter run`: wires the consumer and the scheduler, and stops
//! them cleanly when the shutdown future completes.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::broker::consumer::Consumer;
use crate::config::Settings;
use crate::export::Exporter;
use crate::scheduler::Scheduler;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Connects to MongoDB, retrying with backoff until it answers or shutdown
/// comes: a database that is briefly away at start does not stop the daemon.
async fn build_store(settings: &Settings, shutdown: &mut Shutdown) -> Option<Store> {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(settings.amqp.reconnect_min_delay_ms))
        .with_max_delay(Duration::from_millis(settings.amqp.reconnect_max_delay_ms))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match Store::build(settings).await {
            Ok(store) => return Some(store),
            Err(err) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                tracing::error!(error = %err, delay_ms = delay.as_millis() as u64, "MongoDB unavailable at start; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.recv() => return None,
                }
            }
        }
    }
}

/// Runs the daemon until `signal` completes, then lets in-flight work reach
/// a safe point (bounded by `daemon.shutdown_grace_seconds`) and returns.
///
/// # Errors
/// When the schedule settings cannot be used (already validated at load).
pub async fn run(settings: Settings, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (trigger, mut shutdown) = Shutdown::new();
    tokio::pin!(signal);
    tracing::info!(
        queue = %settings.amqp.queue,
        mongodb = %settings.mongodb.uri,
        amqp = %settings.amqp.uri,
        schedule = %settings.schedule.cron,
        timezone = %settings.schedule.timezone,
        "esr-exporter starting"
    );
    let store = tokio::select! {
        store = build_store(&settings, &mut shutdown) => store,
        _ = &mut signal => None,
    };
    let Some(store) = store else {
        tracing::info!("stopped before start-up finished");
        return Ok(());
    };
    let exporter = Exporter::new(store.clone(), settings.export.clone());
    let mut tasks = Vec::new();
    let consumer = Consumer::new(settings.amqp.clone(), exporter);
    tasks.push(tokio::spawn(consumer.run(shutdown.clone())));
    if settings.schedule.enabled {
        let scheduler = Scheduler::new(settings.schedule.clone(), settings.amqp.clone(), store)
            .map_err(|err| anyhow::anyhow!("invalid configuration: key `schedule.cron`: {err}"))?;
        tasks.push(tokio::spawn(scheduler.run(shutdown.clone())));
    }
    tracing::info!("esr-exporter running");

    signal.await;
    tracing::info!("shutdown requested; letting in-flight work reach a safe point");
    trigger.trigger();
    let grace = Duration::from_secs(settings.daemon.shutdown_grace_seconds);
    let drained = tokio::time::timeout(grace, futures_util::future::join_all(tasks)).await;
    match drained {
        Ok(_) => tracing::info!("esr-exporter stopped cleanly"),
        Err(_) => tracing::warn!(
            grace_seconds = settings.daemon.shutdown_grace_seconds,
            "grace period over; unfinished work resumes on the next start"
        ),
    }
    Ok(())
}
