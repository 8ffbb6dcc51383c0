//! The command flow against real RabbitMQ and a MongoDB-wire server:
//! consumer, dead-lettering, retries, reconnects, the scheduler.

use std::time::Duration;

use bson::doc;
use bson::oid::ObjectId;
use chrono::{Timelike, Utc};
use esr_exporter::domain::Slot;

use crate::helpers::{
    binary, eventually, seeded, spawn_app_with, unique_deanery, TestApp, Watched,
};

const WAIT: Duration = Duration::from_secs(60);

async fn all_exported(app: &TestApp, deanery: &str) -> bool {
    app.count(doc! {"deanery": deanery, "status": {"$ne": "EXPORTED"}})
        .await
        == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_becomes_a_file_of_exported_records_and_the_queue_drains() {
    // Arrange
    let app = spawn_app_with(&[]).await;
    let mer = app.seed("MER", 120).await;
    app.seed("EOE", 5).await;
    let daemon = app.spawn_daemon().await;

    // Act
    let command = app.publish_command("MER", Slot::Manual).await;

    // Assert
    eventually("MER exported", WAIT, || all_exported(&app, "MER")).await;
    app.assert_exported_once("MER", &mer).await;
    assert_eq!(
        app.count(doc! {"deanery": "EOE", "status": "TO_EXPORT"})
            .await,
        5
    );
    let run = app.run_doc(doc! {"deanery": "MER"}).await.unwrap();
    assert_eq!(
        run.get_array("commands").unwrap()[0].as_str(),
        Some(command.command_id.to_string().as_str())
    );
    eventually("queue drained", WAIT, || async {
        app.queue_len(&app.settings.amqp.queue).await == 0
    })
    .await;
    app.stop_and_clean_up(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_invalid_commands_are_dead_lettered_with_their_reasons_once() {
    let app = spawn_app_with(&[]).await;
    let daemon = app.spawn_daemon().await;

    app.publish_raw(b"this is not JSON").await;
    app.publish_raw(br#"{"commandId":"6f1c1d2e-8a53-4c59-9d7e-0b1f2a3c4d5e","deanery":"../../etc","slot":"manual","requestedBy":"t"}"#).await;
    app.publish_raw(br#"{"commandId":"6f1c1d2e-8a53-4c59-9d7e-0b1f2a3c4d5f","deanery":7,"slot":"manual","requestedBy":"t"}"#).await;

    let dlq = app.settings.amqp.dead_letter_queue();
    eventually("three dead letters", WAIT, || async {
        app.queue_len(&dlq).await == 3
    })
    .await;
    // Nothing loops: once a later command is done, the queues are as
    // they were.
    let later = until_a_later_command_is_done(&app).await;
    assert_eq!(app.queue_len(&dlq).await, 3);
    assert_eq!(app.queue_len(&app.settings.amqp.queue).await, 0);
    assert_eq!(app.queue_len(&app.settings.amqp.retry_queue()).await, 0);
    let letters = app.take_dead_letters().await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert_eq!(letters[0].0, "this is not JSON");
    assert!(letters[0].1.starts_with("malformed command"), "{letters:?}");
    assert!(letters[1].1.contains("invalid deanery code"), "{letters:?}");
    assert!(letters[2].1.contains("malformed command"), "{letters:?}");
    let files = app.data_files();
    assert!(
        files.iter().all(|f| f.contains(&later)),
        "only the later command's: {files:?}"
    );
    app.stop_and_clean_up(daemon).await;
}

/// Publishes a command for one record of a new deanery and waits until
/// it is exported: the consumer takes one delivery at a time
/// (`amqp.prefetch` 1), so every command published before it has been
/// settled by then. What a test asserts did not happen, it asserts after.
/// The deanery it used.
async fn until_a_later_command_is_done(app: &TestApp) -> String {
    let later = unique_deanery();
    app.seed(&later, 1).await;
    app.publish_command(&later, Slot::Manual).await;
    eventually("a later command done", WAIT, || all_exported(app, &later)).await;
    later
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_command_for_a_completed_slot_is_a_no_op() {
    let (app, ids) = seeded("LDN", 40, "").await;
    let daemon = app.spawn_daemon().await;
    let slot = Slot::Scheduled(Utc::now().with_nanosecond(0).unwrap());

    app.publish_command("LDN", slot).await;
    eventually("LDN exported", WAIT, || all_exported(&app, "LDN")).await;
    app.seed("LDN", 3).await; // new work that the old slot must not pick up
    app.publish_command("LDN", slot).await;
    until_a_later_command_is_done(&app).await;

    let runs = app
        .runs()
        .count_documents(doc! {"deanery": "LDN"})
        .await
        .unwrap();
    assert_eq!(runs, 1, "the duplicate started no run");
    assert_eq!(
        app.count(doc! {"deanery": "LDN", "status": "TO_EXPORT"})
            .await,
        3
    );
    let files: Vec<String> = app
        .data_files()
        .into_iter()
        .filter(|f| f.contains("_LDN_"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let exported = app
        .find(doc! {"deanery": "LDN", "status": "EXPORTED"})
        .await;
    assert_eq!(exported.len(), ids.len());
    app.stop_and_clean_up(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_connection_closed_during_a_run_is_recovered_and_the_work_completes() {
    let (app, ids) = seeded("OXF", 8_000, "ESR_EXPORT__CHUNK_SIZE=25").await;
    let daemon = app.spawn_daemon().await;

    app.publish_command("OXF", Slot::Manual).await;
    eventually("the run is under way", WAIT, || async {
        app.count(doc! {"status": "EXPORTING"}).await > 0
    })
    .await;
    let closed = app.close_broker_connections().await;
    assert!(closed >= 1, "the consumer's connection was closed");

    eventually("OXF exported", WAIT, || all_exported(&app, "OXF")).await;
    app.assert_exported_once("OXF", &ids).await;
    // The command (unacked when the connection died) was redelivered and
    // acknowledged as done after the reconnect.
    eventually("queue drained after reconnect", WAIT, || async {
        app.queue_len(&app.settings.amqp.queue).await == 0
    })
    .await;
    // A command published after the outage is consumed too.
    let more = app.seed("OXF", 10).await;
    app.publish_command("OXF", Slot::Manual).await;
    eventually("the new records exported", WAIT, || async {
        app.count(doc! {"_id": {"$in": more.clone()}, "status": "EXPORTED"})
            .await
            == 10
    })
    .await;
    app.stop_and_clean_up(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_later_through_the_retry_queue() {
    let tuning = "ESR_RETRY__MAX_ATTEMPTS=2 ESR_AMQP__RETRY_DELAY_MS=1000";
    let (app, ids) = seeded("WES", 30, tuning).await;
    // Four WriteConflicts on reads: the first two processing attempts
    // exhaust their two tries each; the third attempt succeeds.
    let guard = app.arm_write_conflicts("find", 4).await;
    let daemon = app.spawn_daemon().await;

    app.publish_command("WES", Slot::Manual).await;
    let retry_queue = app.settings.amqp.retry_queue();
    eventually("the command waits in the retry queue", WAIT, || async {
        app.queue_len(&retry_queue).await == 1
    })
    .await;
    eventually("WES exported", WAIT, || all_exported(&app, "WES")).await;
    app.disarm().await;
    drop(guard);

    app.assert_exported_once("WES", &ids).await;
    assert_eq!(
        app.queue_len(&app.settings.amqp.dead_letter_queue()).await,
        0
    );
    app.stop_and_clean_up(daemon).await;
}

/// A cron expression whose daily slot was `minutes_ago` minutes ago.
pub fn cron_minutes_ago(minutes_ago: i64) -> String {
    let slot = Utc::now() - chrono::Duration::minutes(minutes_ago);
    format!("0 {} {} * * *", slot.minute(), slot.hour())
}

/// `n` records of a new deanery stuck past a daily slot nobody fired ten
/// minutes ago: that slot's cron expression, the app, the deanery and
/// the records' ids.
pub async fn stuck_past_a_missed_slot(n: usize) -> (String, TestApp, String, Vec<ObjectId>) {
    let cron = cron_minutes_ago(10);
    let app = spawn_app_with(&[]).await;
    let code = crate::helpers::unique_deanery();
    let ids = app.seed_stuck(&code, n).await;
    (cron, app, code, ids)
}

/// An app whose schedule's daily slot passed 10 minutes ago, unfired,
/// within the catch-up window: a daemon fires it on start.
pub async fn app_with_a_missed_slot() -> TestApp {
    let cron = cron_minutes_ago(10);
    spawn_app_with(&[
        ("ESR_SCHEDULE__ENABLED", "true"),
        ("ESR_SCHEDULE__CRON", &cron),
        ("ESR_SCHEDULE__CATCH_UP_WINDOW_MINUTES", "60"),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_slot_is_caught_up_once_on_start() {
    let app = app_with_a_missed_slot().await;
    let ids = app.seed("SEV", 30).await;

    let daemon = app.spawn_daemon().await;
    eventually("SEV exported", WAIT, || all_exported(&app, "SEV")).await;
    daemon.stop().await;
    app.assert_exported_once("SEV", &ids).await;

    // Started again: the slot is already fired, so nothing new is
    // published. Asserted once the scheduler has looked at that slot and
    // moved on to wait for the next one.
    app.seed("SEV", 4).await;
    let daemon = Watched::spawn(binary(&app, &["run"], &[]));
    daemon.until_said("waiting for the next slot", WAIT).await;
    let (status, said) = daemon.terminate().await;
    assert!(status.success(), "{said}");
    assert!(
        said.contains("checking the latest slot for catch-up"),
        "{said}"
    );
    assert!(said.contains("slot already fired"), "{said}");
    assert!(!said.contains("schedule slot fired"), "fired again: {said}");
    assert_eq!(
        app.count(doc! {"deanery": "SEV", "status": "TO_EXPORT"})
            .await,
        4
    );
    let slots: Vec<bson::Document> = {
        use futures_util::TryStreamExt;
        app.db
            .collection::<bson::Document>("scheduleSlots")
            // Slot documents only, not the replicas' settings records.
            .find(doc! {"_id": {"$regex": "^20"}})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].get_str("state").unwrap(), "PUBLISHED");
    assert_eq!(slots[0].get_array("commands").unwrap().len(), 1);
    app.delete_broker_topology().await;
}

async fn cli(app: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_esr-exporter"))
        .args(args)
        .env_clear()
        .envs(&app.env)
        .output()
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_inspected_and_replayed_once_the_cause_is_fixed() {
    // Arrange: one try per command, and MongoDB "down" for the first one.
    let tuning = "ESR_AMQP__MAX_ATTEMPTS=1 ESR_RETRY__MAX_ATTEMPTS=1";
    let (app, ids) = seeded("PEN", 20, tuning).await;
    let guard = app.arm_write_conflicts("find", 1).await;
    let daemon = app.spawn_daemon().await;
    let command = app.publish_command("PEN", Slot::Manual).await;
    app.publish_raw(b"{broken").await;
    let dlq = app.settings.amqp.dead_letter_queue();
    eventually("two dead letters", WAIT, || async {
        app.queue_len(&dlq).await == 2
    })
    .await;
    app.disarm().await;
    drop(guard);

    // Inspect: both listed with their reasons, and left in place.
    let (code, listed) = cli(&app, &["dead-letters"]).await;
    assert_eq!(code, Some(0));
    let letters: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 2, "{listed}");
    let ours = letters
        .iter()
        .find(|l| l["messageId"] == command.command_id.to_string().as_str())
        .expect("the command is listed by its id");
    assert!(
        ours["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 1 attempts"),
        "{ours}"
    );
    assert_eq!(app.queue_len(&dlq).await, 2, "listing consumed nothing");
    assert_eq!(
        app.count(doc! {"deanery": "PEN", "status": "TO_EXPORT"})
            .await,
        20
    );

    // Replay: the command now succeeds; the broken message comes back.
    let (code, moved) = cli(&app, &["dead-letters", "--replay"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(moved.trim(), "2");
    eventually("PEN exported", WAIT, || all_exported(&app, "PEN")).await;
    app.assert_exported_once("PEN", &ids).await;
    eventually("the broken message is back", WAIT, || async {
        app.queue_len(&dlq).await == 1
    })
    .await;
    app.stop_and_clean_up(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_take_a_limit_and_a_dry_run_replays_nothing() {
    let app = spawn_app_with(&[]).await;
    let daemon = app.spawn_daemon().await;
    for body in [&b"{one"[..], b"{two", b"{three"] {
        app.publish_raw(body).await;
    }
    let dlq = app.settings.amqp.dead_letter_queue();
    eventually("three dead letters", WAIT, || async {
        app.queue_len(&dlq).await == 3
    })
    .await;
    daemon.stop().await;

    let (code, listed) = cli(&app, &["dead-letters", "--limit", "2"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let (code, would) = cli(&app, &["dead-letters", "--replay", "--dry-run"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(would.lines().count(), 3, "{would}");
    assert_eq!(app.queue_len(&dlq).await, 3, "a dry run moves nothing");

    let (code, moved) = cli(&app, &["dead-letters", "--replay", "--limit", "1"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(moved.trim(), "1");
    assert_eq!(app.queue_len(&dlq).await, 2);
    assert_eq!(app.queue_len(&app.settings.amqp.queue).await, 1);
    let (code, _) = cli(&app, &["dead-letters", "--dry-run"]).await;
    assert_eq!(code, Some(2), "--dry-run needs --replay");
    app.delete_broker_topology().await;
}
