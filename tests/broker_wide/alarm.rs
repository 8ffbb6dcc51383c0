//! A memory alarm: RabbitMQ blocks every publishing connection without a
//! word unless the client listens for `connection.blocked`.

use std::time::{Duration, Instant};

use bson::doc;
use esr_exporter::config::Settings;
use esr_exporter::domain::Slot;

use crate::helpers::{eventually, http_get, metric, run_binary, spawn_app, unique_deanery};
use crate::support::broker::MemoryAlarm;
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

/// RabbitMQ blocks a connection when it publishes under the alarm: here
/// the consumer's, scheduling a retry of a command whose lease another
/// replica holds. `/readyz` and `esr_amqp_blocked` say so until the alarm
/// ends; then the retry is confirmed and the daemon is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_consumer_connection_is_in_readyz_and_a_metric_until_unblocked() {
    let _node = NODE.lock().await;
    let app = spawn_app().await;
    let code = unique_deanery();
    let held_until =
        bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 120_000);
    app.db
        .collection::<bson::Document>("exportLeases")
        .insert_one(doc! {"_id": &code, "owner": "another-replica", "expiresAt": held_until})
        .await
        .unwrap();
    let env = [("ESR_AMQP__PUBLISH_TIMEOUT_MS", "30000")];
    let settings = reload(&app, &env).expect("settings");
    let daemon = app.spawn_daemon_with(settings).await;
    daemon.until_ready("ready", WAIT).await;
    // The command's first look at MongoDB waits 3 s: time to raise the
    // alarm before its retry is published.
    let slow = doc! {"failCommands": ["find"], "blockConnection": true, "blockTimeMS": 3_000};
    let guard = app.arm_failpoint(slow, 1).await;
    app.publish_command(&code, Slot::Manual).await;

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
    app.disarm().await;
    drop(guard);
    daemon.until_ready("ready once unblocked", WAIT).await;
    let (_, metrics) = http_get(daemon.http, "/metrics").await;
    let blocked = metric(&metrics, r#"esr_amqp_blocked{role="consumer"}"#);
    assert_eq!(blocked, Some(0.0), "{metrics}");
    app.stop_and_clean_up(daemon).await;
}

/// The app's settings with `env` on top.
fn reload(app: &crate::helpers::TestApp, env: &[(&str, &str)]) -> Option<Settings> {
    let mut all = app.env.clone();
    for (key, value) in env {
        all.insert((*key).to_owned(), (*value).to_owned());
    }
    Settings::load_with_env(None, Some(all)).ok()
}
