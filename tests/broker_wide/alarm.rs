//! A memory alarm: RabbitMQ blocks every publishing connection without a
//! word unless the client listens for `connection.blocked`.

use std::time::{Duration, Instant};

use crate::helpers::{eventually, http_get, metric, run_binary, spawn_app};
use crate::support::MemoryAlarm;
use crate::NODE;

const WAIT: Duration = Duration::from_secs(60);

async fn memory_alarm() -> MemoryAlarm {
    MemoryAlarm::raise()
        .await
        .expect("the memory alarm goes off")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_memory_alarm_trigger_names_the_block_and_exits_1_within_its_bound() {
    let _node = NODE.lock().await;
    let app = spawn_app().await;
    let alarm = memory_alarm().await;

    let started = Instant::now();
    let bound = [("ESR_AMQP__PUBLISH_TIMEOUT_MS", "2000")];
    let output = run_binary(&app, &["trigger", "--deanery", "MER"], &bound).await;
    let took = started.elapsed();
    drop(alarm);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("within 2000 ms (amqp.publish_timeout_ms)"),
        "{stderr}"
    );
    assert!(stderr.contains("connection.blocked"), "{stderr}");
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
    app.delete_broker_topology().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_consumer_connection_is_in_readyz_and_a_metric_until_unblocked() {
    let _node = NODE.lock().await;
    let app = spawn_app().await;
    let daemon = app.spawn_daemon().await;
    eventually("ready", WAIT, || async {
        http_get(daemon.http, "/readyz").await.0 == 200
    })
    .await;

    let alarm = memory_alarm().await;
    eventually("not ready while blocked", WAIT, || async {
        let (status, body) = http_get(daemon.http, "/readyz").await;
        status == 503 && body.contains("connection.blocked")
    })
    .await;
    let (_, metrics) = http_get(daemon.http, "/metrics").await;
    let blocked = metric(&metrics, r#"esr_amqp_blocked{role="consumer"}"#);
    assert_eq!(blocked, Some(1.0), "{metrics}");

    drop(alarm);
    eventually("ready once unblocked", WAIT, || async {
        http_get(daemon.http, "/readyz").await.0 == 200
    })
    .await;
    let (_, metrics) = http_get(daemon.http, "/metrics").await;
    let blocked = metric(&metrics, r#"esr_amqp_blocked{role="consumer"}"#);
    assert_eq!(blocked, Some(0.0), "{metrics}");
    daemon.stop().await;
    app.delete_broker_topology().await;
}
