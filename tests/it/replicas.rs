//! `esr-exporter run` as real processes: several replicas, and SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use bson::doc;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::commands::cron_minutes_ago;
use crate::helpers::{binary, eventually, seeded, spawn_app_with, TestApp, Watched};

const WAIT: Duration = Duration::from_secs(90);

fn spawn_daemon_process(app: &TestApp) -> Child {
    binary(app, &["run"], &[("RUST_LOG", "info")])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn esr-exporter run")
}

async fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

/// Sends SIGTERM and returns the exit code and the JSON log lines.
async fn stop(mut child: Child) -> (Option<i32>, Vec<serde_json::Value>) {
    sigterm(&child).await;
    let mut stderr = child.stderr.take().unwrap();
    let mut text = String::new();
    let (status, _) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(60), child.wait()),
        stderr.read_to_string(&mut text)
    );
    let status = status.expect("exits within a minute of SIGTERM").unwrap();
    let lines = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (status.code(), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fire_a_due_slot_once_and_write_one_file_per_deanery() {
    // Arrange: a slot 5 minutes ago, inside the catch-up window.
    let cron = cron_minutes_ago(5);
    let app = spawn_app_with(&[
        ("ESR_SCHEDULE__ENABLED", "true"),
        ("ESR_SCHEDULE__CRON", &cron),
        ("ESR_SCHEDULE__CATCH_UP_WINDOW_MINUTES", "60"),
    ])
    .await;
    let mer = app.seed("MER", 200).await;
    let eoe = app.seed("EOE", 150).await;
    let kss = app.seed("KSS", 100).await;

    // Act
    let replicas: Vec<Child> = (0..3).map(|_| spawn_daemon_process(&app)).collect();
    eventually("every deanery exported", WAIT, || async {
        app.count(doc! {"status": {"$ne": "EXPORTED"}}).await == 0
    })
    .await;
    eventually("the queue drained", WAIT, || async {
        app.queue_len(&app.settings.amqp.queue).await == 0
    })
    .await;
    let mut published = 0;
    let mut received = 0;
    for replica in replicas {
        let (code, lines) = stop(replica).await;
        assert_eq!(code, Some(0), "clean exit on SIGTERM");
        published += lines
            .iter()
            .filter(|l| l["message"] == "generation command published")
            .count();
        received += lines
            .iter()
            .filter(|l| l["message"] == "command received")
            .count();
    }

    // Assert
    assert_eq!(published, 3, "one command per deanery, from one replica");
    assert_eq!(received, 3, "and each consumed once");
    app.assert_exported_once("MER", &mer).await;
    app.assert_exported_once("EOE", &eoe).await;
    app.assert_exported_once("KSS", &kss).await;
    let slot = app
        .db
        .collection::<bson::Document>("scheduleSlots")
        .find_one(doc! {"_id": {"$regex": "^20"}})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(slot.get_array("commands").unwrap().len(), 3);
    app.delete_broker_topology().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_exits_cleanly_and_a_later_run_completes_it() {
    let (app, ids) = seeded("NWN", 12_000, "ESR_EXPORT__CHUNK_SIZE=20").await;
    let daemon = spawn_daemon_process(&app);

    app.publish_command("NWN", esr_exporter::domain::Slot::Manual)
        .await;
    eventually("the run is under way", WAIT, || async {
        app.count(doc! {"status": "EXPORTING"}).await > 0
    })
    .await;
    let (code, lines) = stop(daemon).await;

    assert_eq!(code, Some(0), "clean exit: {lines:?}");
    assert!(
        app.count(doc! {"status": {"$ne": "EXPORTED"}}).await > 0,
        "stopped mid-run"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "esr-exporter stopped cleanly"),
        "{lines:?}"
    );
    assert!(
        app.files().iter().all(|f| !f.ends_with(".DAT")),
        "no file yet: {:?}",
        app.files()
    );

    // The requeued command is picked up by the next start and finished.
    let daemon = app.spawn_daemon().await;
    eventually("NWN exported", WAIT, || async {
        app.count(doc! {"status": {"$ne": "EXPORTED"}}).await == 0
    })
    .await;
    daemon.stop().await;
    app.assert_exported_once("NWN", &ids).await;
    app.delete_broker_topology().await;
}

/// Two replicas' watchdogs find the same stuck records period after
/// period (the deanery's lease is held elsewhere, so no catch-up command
/// can export them): each period, one catch-up command is published, by
/// whichever replica claimed that period first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchdogs_publish_one_catch_up_command_per_period() {
    let (cron, app, code, _) = crate::commands::stuck_past_a_missed_slot(5).await;
    let never = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 3_600_000);
    app.db
        .collection::<bson::Document>("exportLeases")
        .insert_one(doc! {"_id": &code, "owner": "a process elsewhere", "expiresAt": never})
        .await
        .unwrap();
    let watching = [
        ("ESR_SCHEDULE__CRON", cron.as_str()),
        ("ESR_WATCHDOG__ENABLED", "true"),
        ("ESR_WATCHDOG__PERIOD_SECONDS", "2"),
        ("ESR_WATCHDOG__GRACE_MINUTES", "0"),
    ];
    let replicas = [
        Watched::spawn(binary(&app, &["run"], &watching)),
        Watched::spawn(binary(&app, &["run"], &watching)),
    ];
    let published = "catch-up command published for stuck records";
    eventually(
        "catch-up commands in several periods",
        Duration::from_secs(60),
        || async {
            replicas
                .iter()
                .map(|r| r.said().matches(published).count())
                .sum::<usize>()
                >= 4
        },
    )
    .await;
    let mut periods = Vec::new();
    for replica in replicas {
        let (_, said) = replica.terminate().await;
        let lines = said
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        periods.extend(
            lines
                .filter(|l| l["message"] == published)
                .filter_map(|l| l["period"].as_i64()),
        );
    }
    let mut distinct = periods.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        periods.len(),
        distinct.len(),
        "a period published twice: {periods:?}"
    );
    app.delete_broker_topology().await;
}
