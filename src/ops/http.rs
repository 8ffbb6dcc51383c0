//! HTTP on `http.listen` (axum): `GET /healthz` (alive), `GET /readyz`
//! (start-up is done, MongoDB's `hello` says it is a writable primary, the
//! consumer is attached to its queue, the output folder can be written and
//! a remote destination answers, else 503 with the reasons; the checks run
//! at once, each bounded), `GET /metrics` (Prometheus text format).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Readiness;
use crate::destination::Destination;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// How long `/readyz` waits for MongoDB's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers need.
#[derive(Debug, Clone)]
pub(crate) struct HttpState {
    /// For the readiness ping.
    pub store: Store,
    /// The consumer's attachment.
    pub readiness: Readiness,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The export folder, probed for writing.
    pub output_dir: std::path::PathBuf,
    /// Where files are published.
    pub destination: Destination,
}

/// The routes, and `more` (the status page) beside them.
pub(crate) fn router(state: HttpState, more: Option<Router>) -> Router {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    match more {
        Some(more) => routes.merge(more),
        None => routes,
    }
}

/// Connections served at once; more are closed as soon as they are
/// accepted, so a flood cannot use up the process's file descriptors.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection, idle or not, is kept longer than this (a scrape or probe
/// takes milliseconds; Prometheus reconnects).
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `routes` until shutdown, within [`MAX_CONNECTIONS`],
/// [`HEADER_TIMEOUT`] and [`CONNECTION_LIFETIME`].
pub(crate) async fn serve(listener: TcpListener, routes: Router, mut shutdown: Shutdown) {
    let service = hyper_util::service::TowerToHyperService::new(routes);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.recv() => break,
            Some(_) = connections.join_next() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!(error = %crate::error_chain::Chain(&err), "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream); // over the limit: closed at once
            continue;
        };
        connections.spawn(serve_connection(stream, service.clone(), permit));
    }
    connections.shutdown().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    service: hyper_util::service::TowerToHyperService<Router>,
    _permit: OwnedSemaphorePermit,
) {
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    // Errors here are a client's (reset, timeout): nothing to report.
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "alive"}))
}

/// Every check at once, so the answer comes within [`PING_TIMEOUT`]
/// (plus a little), whatever fails: a readiness probe's timeout of 3 s
/// or more is enough.
async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let checks = readiness_checks(&state).await;
    let ready = checks.iter().all(|(_, check)| check.is_ok());
    let shown: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, check)| {
            (
                name.to_owned(),
                check.err().unwrap_or_else(|| "ok".to_owned()).into(),
            )
        })
        .collect();
    let body = Json(json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": shown,
    }));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// The readiness checks, by name, run at once: each `Ok`, or why not.
pub(crate) async fn readiness_checks(state: &HttpState) -> [(&'static str, Result<(), String>); 5] {
    let (mongodb, folder, destination) = tokio::join!(
        check_mongodb(&state.store),
        check_folder(state.output_dir.clone()),
        check_destination(&state.destination),
    );
    let startup = match state.readiness.waiting_for() {
        Some(what) => Err(format!("waiting for {what}")),
        None => Ok(()),
    };
    let rabbitmq = check_rabbitmq(&state.readiness);
    [
        ("startup", startup),
        ("mongodb", mongodb),
        ("rabbitmq", rabbitmq),
        ("outputFolder", folder),
        ("destination", destination),
    ]
}

/// MongoDB's `hello` says it is a writable primary, within the bound.
async fn check_mongodb(store: &Store) -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(crate::store::StoreError::NotWritablePrimary)) => {
            Err(crate::store::StoreError::NotWritablePrimary.to_string())
        }
        Ok(Err(err)) => Err(crate::error_chain::chain(&err)),
        Err(_) => Err(format!("no answer within {} s", PING_TIMEOUT.as_secs())),
    }
}

/// The consumer is attached and its connection not blocked.
fn check_rabbitmq(readiness: &Readiness) -> Result<(), String> {
    if let Some(reason) = readiness.broker_blocked() {
        Err(format!(
            "RabbitMQ blocks publishing on this connection (connection.blocked: {reason})"
        ))
    } else if readiness.consumer_attached() {
        Ok(())
    } else if !readiness.started() {
        Err("not consuming yet: start-up is under way (see `startup`)".to_owned())
    } else {
        Err("consumer not attached to its queue (RabbitMQ unreachable or reconnecting)".to_owned())
    }
}

/// The staging folder can be written, off the async workers, within the bound.
async fn check_folder(dir: std::path::PathBuf) -> Result<(), String> {
    let checked = tokio::task::spawn_blocking(move || super::output_folder::check(&dir));
    match tokio::time::timeout(PING_TIMEOUT, checked).await {
        Ok(Ok(checked)) => checked,
        Ok(Err(join)) => Err(format!("probe failed: {join}")),
        Err(_) => Err(format!(
            "no answer from the folder within {} s",
            PING_TIMEOUT.as_secs()
        )),
    }
}

/// The destination answers one look within the bound.
async fn check_destination(destination: &Destination) -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, destination.check()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(crate::error_chain::chain(&err)),
        Err(_) => Err(format!(
            "{}: no answer within {} s",
            destination.url(),
            PING_TIMEOUT.as_secs()
        )),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    super::metrics::collect_process();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
