//! HTTP on `http.listen` (axum): `GET /healthz` (alive), `GET /readyz`
//! (MongoDB answers a ping and the consumer is attached to its queue, else
//! 503 with the reasons), `GET /metrics` (Prometheus text format).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;

use super::Readiness;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// How long `/readyz` waits for MongoDB's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers need.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// For the readiness ping.
    pub store: Store,
    /// The consumer's attachment.
    pub readiness: Readiness,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until shutdown.
pub async fn serve(listener: TcpListener, state: HttpState, mut shutdown: Shutdown) {
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.recv().await })
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "HTTP server failed");
    }
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "alive"}))
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let mongodb = match tokio::time::timeout(PING_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("unreachable: {err}")),
        Err(_) => Err(format!("no answer within {} s", PING_TIMEOUT.as_secs())),
    };
    let rabbitmq = if state.readiness.consumer_attached() {
        Ok(())
    } else {
        Err("consumer not attached to its queue (RabbitMQ unreachable or reconnecting)".to_owned())
    };
    let ready = mongodb.is_ok() && rabbitmq.is_ok();
    let show = |check: &Result<(), String>| match check {
        Ok(()) => "ok".to_owned(),
        Err(reason) => reason.clone(),
    };
    let body = Json(json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {"mongodb": show(&mongodb), "rabbitmq": show(&rabbitmq)},
    }));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
