//! `esr-exporter run`: the HTTP endpoints, the command consumer, the
//! scheduler and the watchdog, supervised (see [`tasks`]), stopped cleanly
//! when the shutdown future completes.

mod startup;
mod status_page;
mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::broker::consumer::Consumer;
use crate::config::Settings;
use crate::destination::Destination;
use crate::export::Exporter;
use crate::ops::http::HttpState;
use crate::ops::{metrics, systemd, Readiness};
use crate::schedule::{Agreement, Scheduler, Watchdog};
use crate::shutdown::Shutdown;
use crate::store::Store;

use tasks::Tasks;

/// A daemon with its HTTP port bound, ready to run.
#[derive(Debug)]
pub struct Daemon {
    settings: Settings,
    listener: TcpListener,
    store: Store,
    destination: Destination,
}

impl Daemon {
    /// Binds `http.listen` and prepares the MongoDB client (no I/O yet).
    ///
    /// # Errors
    /// When the port cannot be bound or the MongoDB URI cannot be used.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listen = &settings.http.listen;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("Failed to listen on {listen} (key `http.listen`)"))?;
        let store = Store::connect(&settings)
            .await
            .context("Failed to prepare the MongoDB client")?;
        let destination = Destination::from_settings(&settings)?;
        Ok(Self {
            settings,
            listener,
            store,
            destination,
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
    /// When MongoDB's indexes cannot be prepared, or when a task (HTTP,
    /// consumer, scheduler, watchdog) ends or panics before shutdown: the
    /// daemon then stops the others and the process exits non-zero.
    pub async fn run(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            settings,
            listener,
            store,
            destination,
        } = self;
        log_starting(&settings, &listener);
        let closing = store.clone();
        let (trigger, mut shutdown) = Shutdown::new();
        let readiness = Readiness::default();
        // Said before READY=1, so systemd's status and /readyz never show
        // a start-up that waits for nothing.
        readiness.set_waiting_for(Some(startup::WAITING_FOR_MONGODB));
        // The recorder first: what is recorded before it is lost.
        let recorder = metrics::install();
        metrics::set_consumer_attached(false);
        metrics::set_starting(true);
        let deaneries: Vec<String> = settings
            .schedule
            .deaneries
            .iter()
            .map(ToString::to_string)
            .collect();
        metrics::zero_counters(&deaneries);
        let mut tasks = Tasks::default();
        let http_state = HttpState {
            store: store.clone(),
            readiness: readiness.clone(),
            metrics: recorder,
            output_dir: settings.export.output_dir.clone(),
            destination: destination.clone(),
        };
        let routes = status_page::routes(http_state, &settings);
        let serve = crate::ops::http::serve(listener, routes, shutdown.clone());
        tasks.spawn("http", serve);
        announce_serving(&mut tasks, &shutdown);
        tokio::pin!(signal);
        let preparing =
            startup::prepare(&settings, &store, &destination, &readiness, &mut shutdown);
        let grace = Duration::from_secs(settings.daemon.shutdown_grace_seconds);
        let started = prepared(preparing, &mut signal, &mut tasks, &trigger, grace).await;
        let result = match started {
            Ok(true) => {
                let exporter = Exporter::new(store.clone(), settings.export.clone(), destination);
                spawn_workers(&mut tasks, &settings, exporter, store, readiness, &shutdown);
                supervise(&mut tasks, &mut signal).await
            }
            Ok(false) => Ok(()),
            Err(err) => Err(err),
        };
        stop(trigger, tasks, &settings).await;
        closing.shutdown().await;
        result
    }
}

fn log_starting(settings: &Settings, listener: &TcpListener) {
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        version = crate::identity::VERSION,
        commit = crate::identity::COMMIT,
        built = crate::identity::BUILD_DATE,
        queue = %settings.amqp.queue,
        mongodb = %settings.mongodb.uri,
        amqp = %settings.amqp.uri,
        http = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        schedule = %settings.schedule.cron,
        timezone = %settings.schedule.timezone,
        "esr-exporter starting"
    );
}

/// The consumer, and as configured the scheduler and the watchdog.
fn spawn_workers(
    tasks: &mut Tasks,
    settings: &Settings,
    exporter: Exporter,
    store: Store,
    readiness: Readiness,
    shutdown: &Shutdown,
) {
    readiness.set_started();
    let consumer = Consumer::new(settings.amqp.clone(), exporter, store.clone(), readiness);
    tasks.spawn("consumer", consumer.run(shutdown.clone()));
    let (schedule, amqp) = (&settings.schedule, &settings.amqp);
    if schedule.enabled {
        let scheduler = Scheduler::new(schedule.clone(), amqp.clone(), store.clone());
        tasks.spawn("scheduler", scheduler.run(shutdown.clone()));
    }
    let agreement = Agreement::new(store.clone(), schedule);
    tasks.spawn("agreement", agreement.run(shutdown.clone()));
    if settings.watchdog.enabled {
        let watchdog = Watchdog::new(settings.watchdog.clone(), schedule, amqp.clone(), store);
        tasks.spawn("watchdog", watchdog.run(shutdown.clone()));
    }
}

/// Tells systemd the daemon is up (READY=1) as soon as its endpoints
/// serve, and pings its watchdog from then on: start-up may wait for
/// MongoDB or an index build for as long as it takes, which `/readyz` and
/// the unit's status line say, and must not be killed for it.
fn announce_serving(tasks: &mut Tasks, shutdown: &Shutdown) {
    systemd::ready();
    if let Some(period) = systemd::watchdog_period() {
        tasks.spawn(
            "systemd-watchdog",
            systemd::run_watchdog_pings(period, shutdown.clone()),
        );
    }
}

/// What must hold before work is taken (`startup::prepare`). A signal
/// meanwhile ends the waiting for a dependency but lets a step under way
/// finish, within `grace`: an index build, or the destination's probe,
/// which removes its object last and would leave it behind if cut short.
/// True when the daemon may take work.
async fn prepared<S>(
    preparing: impl Future<Output = anyhow::Result<bool>>,
    signal: &mut std::pin::Pin<&mut S>,
    tasks: &mut Tasks,
    trigger: &crate::shutdown::ShutdownTrigger,
    grace: Duration,
) -> anyhow::Result<bool>
where
    S: Future<Output = ()>,
{
    tokio::pin!(preparing);
    tokio::select! {
        ready = &mut preparing => ready,
        () = signal.as_mut() => {
            trigger.trigger();
            match tokio::time::timeout(grace, preparing).await {
                Ok(finished) => finished.map(|_| false),
                Err(_) => Ok(false),
            }
        }
        ended = tasks.next_end() => Err(ended.into()),
    }
}

/// Waits for the signal, or for a task to end before it (an error).
async fn supervise<S>(tasks: &mut Tasks, signal: &mut std::pin::Pin<&mut S>) -> anyhow::Result<()>
where
    S: Future<Output = ()>,
{
    systemd::status("running");
    tracing::info!("esr-exporter running");
    tokio::select! {
        () = signal => Ok(()),
        ended = tasks.next_end() => Err(ended.into()),
    }
}

/// Signals shutdown and lets the tasks reach a safe point, within the grace period.
async fn stop(trigger: crate::shutdown::ShutdownTrigger, tasks: Tasks, settings: &Settings) {
    systemd::stopping();
    tracing::info!("shutdown requested; letting in-flight work reach a safe point");
    trigger.trigger();
    let grace_seconds = settings.daemon.shutdown_grace_seconds;
    if tasks.drain(Duration::from_secs(grace_seconds)).await {
        tracing::info!("esr-exporter stopped cleanly");
    } else {
        tracing::warn!(
            grace_seconds,
            "grace period over; unfinished work resumes on the next start"
        );
    }
}

/// Builds and runs a daemon (see [`Daemon`]).
///
/// # Errors
/// See [`Daemon::build`] and [`Daemon::run`].
pub async fn run(settings: Settings, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
    Daemon::build(settings).await?.run(signal).await
}
