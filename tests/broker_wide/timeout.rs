//! RabbitMQ's acknowledgement timeout (`consumer_timeout`), set low: the
//! broker closes a channel whose delivery is not acked in time.

use std::time::Duration;

use bson::doc;
use esr_exporter::domain::Slot;

use crate::helpers::{
    assert_detached_while_the_export_runs, eventually, http_get, spawn_app, unique_deanery,
};
use crate::{rabbitmqctl, Restore, NODE};

const WAIT: Duration = Duration::from_secs(240);

/// Sets the node's acknowledgement timeout to `ms` for channels opened
/// from now on, until the guard is dropped (RabbitMQ's 30 minutes then).
fn consumer_timeout(ms: u64) -> Restore {
    rabbitmqctl(&[
        "eval",
        &format!("application:set_env(rabbit, consumer_timeout, {ms})."),
    ]);
    Restore(vec![
        "eval",
        "application:set_env(rabbit, consumer_timeout, 1800000).",
    ])
}

/// An export that outlives the acknowledgement timeout: the broker closes
/// the consumer's channel while the export still runs. `/readyz` and
/// `esr_consumer_attached` say so within seconds, not when the export
/// ends; the export finishes, the command comes back and is a no-op, and
/// the records are in one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_acknowledgement_timeout_readiness_follows_the_closed_channel() {
    let _node = NODE.lock().await;
    let timeout = consumer_timeout(2_000);
    let app = spawn_app().await;
    let daemon = app.spawn_daemon().await;
    daemon.until_ready("ready", WAIT).await;
    let code = unique_deanery();
    let ids = app.seed(&code, 10).await;
    // Every find of this app waits 15 s: the export takes well over the
    // acknowledgement timeout and the broker's check of it, which runs
    // once a minute.
    let slow = doc! {"failCommands": ["find"], "blockConnection": true, "blockTimeMS": 15_000};
    let guard = app.arm_failpoint(slow, 40).await;

    app.publish_command(&code, Slot::Manual).await;
    assert_detached_while_the_export_runs(&app, &daemon, guard).await;
    drop(timeout);
    eventually("exported and attached again", WAIT, || async {
        !app.files().is_empty() && http_get(daemon.http, "/readyz").await.0 == 200
    })
    .await;
    app.assert_exported_once(&code, &ids).await;
    app.stop_and_clean_up(daemon).await;
}
