//! Clocks and schedules against the real binary and services: the daemon
//! under libfaketime at both of Europe/London's daylight-saving changes
//! (one slot, no hot loop), a command whose slot is ahead of this replica's
//! clock, and two replicas whose schedule settings differ.

use std::process::Stdio;
use std::time::Duration;

use bson::{doc, Document};
use chrono::{Timelike, Utc};
use esr_exporter::domain::Slot;
use futures_util::TryStreamExt;

use crate::helpers::{
    binary, eventually, free_port, http_get, metric, spawn_app, spawn_app_with, TestApp, Watched,
};

const WATCH: Duration = Duration::from_secs(60);

/// libfaketime's multi-threaded build (Debian package `faketime`, which
/// `scripts/services` installs), preloaded into the binary itself.
fn libfaketime() -> String {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ];
    candidates
        .iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| {
            panic!("libfaketime not found in {candidates:?}: install Debian's faketime")
        })
        .to_string()
}

/// `esr-exporter run` under libfaketime, its clock starting at `start`
/// (UTC), until its scheduler says it waits for the slot `next` (it fired
/// what it had to and moved on), within [`WATCH`]; returns its log lines.
async fn run_under_faketime(app: &TestApp, start: &str, window: &str, next: &str) -> Vec<String> {
    let faked = [
        ("LD_PRELOAD", libfaketime()),
        ("FAKETIME", format!("@{start}")),
        ("TZ", "UTC".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("ESR_SCHEDULE__ENABLED", "true".to_owned()),
        ("ESR_SCHEDULE__CRON", "0 30 1 * * *".to_owned()),
        ("ESR_SCHEDULE__TIMEZONE", "Europe/London".to_owned()),
        ("ESR_SCHEDULE__DEANERIES", "MER".to_owned()),
        ("ESR_SCHEDULE__CATCH_UP_WINDOW_MINUTES", window.to_owned()),
    ];
    let env: Vec<(&str, &str)> = faked.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = Watched::spawn(binary(app, &["run"], &env));
    let waits_for_next = |said: &str| {
        said.lines()
            .any(|l| l.contains("waiting for the next slot") && l.contains(next))
    };
    eventually("waiting for the next slot", WATCH, || async {
        waits_for_next(&daemon.said())
    })
    .await;
    let (_, said) = daemon.terminate().await;
    said.lines().map(str::to_owned).collect()
}

/// The slot documents the scheduler wrote: `_id` → state.
async fn fired_slots(app: &TestApp) -> Vec<(String, String)> {
    let slots = app.db.collection::<Document>("scheduleSlots");
    let found: Vec<Document> = slots
        .find(doc! {"_id": {"$regex": "^20"}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    found
        .iter()
        .map(|d| {
            let state = d.get_str("state").unwrap_or("").to_owned();
            (d.get_str("_id").unwrap().to_owned(), state)
        })
        .collect()
}

/// Runs the daemon under libfaketime from `start` and asserts that it
/// fired exactly `slot`, quietly; returns its log lines.
async fn fires_only(start: &str, window_minutes: &str, slot: &str, next: &str) -> Vec<String> {
    let app = spawn_app().await;
    let lines = run_under_faketime(&app, start, window_minutes, next).await;
    let all = lines.join("\n");
    let expected = vec![(slot.to_owned(), "PUBLISHED".to_owned())];
    assert_eq!(fired_slots(&app).await, expected, "{all}");
    assert!(
        lines.len() < 100,
        "{} log lines: a loop? {all}",
        lines.len()
    );
    lines
}

#[tokio::test]
async fn spring_forward_fires_the_skipped_slot_once_at_the_end_of_the_gap() {
    // 2027-03-28: 01:30 Europe/London does not exist (01:00Z is 02:00 BST).
    let lines = fires_only(
        "2027-03-28 00:59:45",
        "1",
        "2027-03-28T01:00:00Z",
        "2027-03-29T00:30:00Z",
    )
    .await;
    // Its clock is months ahead of MongoDB's: it says so.
    let warned = |l: &String| l.contains("\"WARN\"") && l.contains("clock differs from MongoDB's");
    assert!(lines.iter().any(warned), "{}", lines.join("\n"));
}

#[tokio::test]
async fn fall_back_fires_the_repeated_slot_once_and_never_loops() {
    // 2027-10-31: 01:30 Europe/London happens at 00:30Z and again at
    // 01:30Z; started at 01:29:45Z, the first is caught up, the second is
    // not a slot, and the next is tomorrow's.
    let lines = fires_only(
        "2027-10-31 01:29:45",
        "1440",
        "2027-10-31T00:30:00Z",
        "2027-11-01T01:30:00Z",
    )
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("2027-11-01T01:30:00Z") && l.contains("waiting for the next slot")),
        "the next slot is tomorrow's: {}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn a_command_ahead_of_this_clock_waits_until_its_slot_is_recorded_fired() {
    let app = spawn_app_with(&[("ESR_AMQP__MAX_ATTEMPTS", "1000")]).await;
    app.seed("KSS", 10).await;
    let daemon = app.spawn_daemon().await;
    // The replica that fired it runs 10 minutes ahead of this one.
    let ahead = Utc::now().with_nanosecond(0).unwrap() + chrono::Duration::minutes(10);
    app.publish_command("KSS", Slot::Scheduled(ahead)).await;
    let retried = "esr_commands_total{outcome=\"retry\"}";
    eventually(
        "the command sent to be retried",
        Duration::from_secs(30),
        || async { metric(&http_get(daemon.http, "/metrics").await.1, retried) >= Some(1.0) },
    )
    .await;
    assert_eq!(
        app.count(doc! {"status": "TO_EXPORT"}).await,
        10,
        "not taken yet"
    );
    let dlq = app.settings.amqp.dead_letter_queue();
    assert_eq!(app.queue_len(&dlq).await, 0, "retried, not dead-lettered");
    let slots = app.db.collection::<Document>("scheduleSlots");
    let slot_id = Slot::Scheduled(ahead).id();
    slots
        .insert_one(doc! {"_id": &slot_id, "state": "PUBLISHED", "owner": "scheduler@ahead"})
        .await
        .unwrap();
    eventually(
        "exported once its slot is recorded",
        Duration::from_secs(30),
        || async { app.count(doc! {"status": "EXPORTED"}).await == 10 },
    )
    .await;
    assert_eq!(app.queue_len(&dlq).await, 0);
    app.stop_and_clean_up(daemon).await;
}

#[tokio::test]
async fn replicas_with_different_schedules_say_so_and_command_the_deaneries_either_lists() {
    let app = spawn_app().await;
    let every_2s = [
        ("ESR_SCHEDULE__ENABLED", "true"),
        ("ESR_SCHEDULE__CRON", "*/2 * * * * *"),
    ];
    let mut a_env: Vec<(&str, &str)> = every_2s.to_vec();
    a_env.push(("ESR_SCHEDULE__DEANERIES", "MER"));
    let a = binary(&app, &["run"], &a_env).spawn().unwrap();
    // Replicas are told apart by host name: the other one, on another
    // host, fires in Europe/London and lists EOE. Its record is written as
    // its scheduler writes it.
    let register = app.db.collection::<Document>("scheduleSlots");
    register
        .update_one(
            doc! {"_id": "schedule/replica/other-host"},
            doc! {"$set": {"cron": "*/2 * * * * *", "timezone": "Europe/London", "deaneries": ["EOE"], "seenAt": bson::DateTime::now()}},
        )
        .upsert(true)
        .await
        .unwrap();
    eventually(
        "a slot commanding both deaneries",
        Duration::from_secs(30),
        || async {
            let slots: Vec<Document> = register
                .find(doc! {"_id": {"$regex": "^20"}, "state": "PUBLISHED"})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            slots.iter().any(|slot| {
                let commands = slot.get_array("commands").cloned().unwrap_or_default();
                let named = |code: &str| {
                    commands.iter().any(|c| {
                        c.as_document().and_then(|d| d.get_str("deanery").ok()) == Some(code)
                    })
                };
                named("MER") && named("EOE") && slot.get_document("schedule").is_ok()
            })
        },
    )
    .await;
    let output = tokio::time::timeout(Duration::from_secs(5), async {
        let mut a = a;
        a.kill().await.unwrap();
        a.wait_with_output().await.unwrap()
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("schedule settings differ between replicas"))
        .unwrap_or_else(|| panic!("no ERROR about the settings: {log}"));
    assert!(
        line.contains("\"ERROR\"") && line.contains("other-host"),
        "{line}"
    );
    assert!(
        line.contains("schedule.timezone: here UTC, there Europe/London"),
        "{line}"
    );
    app.delete_broker_topology().await;
}

/// `command`, run as on another host: in a UTS namespace of its own whose
/// host name is `host` (replicas are told apart by host name), through a
/// shell that `exec`s it.
fn on_host(command: tokio::process::Command, host: &str) -> tokio::process::Command {
    let std = command.as_std();
    let mut other = tokio::process::Command::new("unshare");
    other
        .args(["--uts", "sh", "-c", r#"hostname "$0" && exec "$@""#, host])
        .arg(std.get_program())
        .args(std.get_args())
        .env_clear()
        .envs(std.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    other
}

/// A second real daemon, on another host (its own UTS namespace) whose
/// clock runs two minutes ahead (libfaketime) and whose schedule differs:
/// it reads both from the running replica and says them in its metrics,
/// `esr_clock_skew_seconds` and `esr_schedule_settings_differ`; at a clean
/// stop it withdraws its schedule record.
#[tokio::test]
async fn a_second_real_replica_reports_its_clock_skew_and_the_differing_schedule() {
    let app = spawn_app().await;
    let settings = app.db.collection::<Document>("scheduleSlots");
    let (port_a, port_b) = (free_port(), free_port());
    let (listen_a, listen_b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));
    let a_env = [
        ("ESR_SCHEDULE__ENABLED", "true"),
        ("ESR_SCHEDULE__DEANERIES", "MER"),
        ("ESR_HTTP__LISTEN", listen_a.as_str()),
    ];
    let mut a = binary(&app, &["run"], &a_env).spawn().unwrap();
    let own = format!(
        "schedule/replica/{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
    );
    eventually("the first replica's record", WATCH, || async {
        settings.count_documents(doc! {"_id": &own}).await.unwrap() == 1
    })
    .await;

    let b_env = [
        ("ESR_SCHEDULE__ENABLED", "true"),
        ("ESR_SCHEDULE__TIMEZONE", "Europe/London"),
        ("ESR_SCHEDULE__DEANERIES", "EOE"),
        ("ESR_HTTP__LISTEN", listen_b.as_str()),
        ("LD_PRELOAD", &libfaketime()),
        ("FAKETIME", "+120s"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let b = Watched::spawn(on_host(binary(&app, &["run"], &b_env), "esr-replica-b"));
    let addr_b = listen_b.parse().unwrap();
    eventually("the second replica's view", WATCH, || async {
        if tokio::net::TcpStream::connect(addr_b).await.is_err() {
            return false;
        }
        let shown = http_get(addr_b, "/metrics").await.1;
        metric(&shown, "esr_schedule_settings_differ") == Some(1.0)
            && metric(&shown, "esr_clock_skew_seconds").is_some()
    })
    .await;
    let shown = http_get(addr_b, "/metrics").await.1;
    let skew = metric(&shown, "esr_clock_skew_seconds").unwrap();
    assert!((100.0..140.0).contains(&skew), "two minutes ahead: {skew}");
    let withdrawn = doc! {"_id": "schedule/replica/esr-replica-b"};
    assert_eq!(
        settings.count_documents(withdrawn.clone()).await.unwrap(),
        1
    );

    let (status, log) = b.terminate().await;
    assert!(status.success(), "{status:?}\n{log}");
    let differ = log
        .lines()
        .find(|l| l.contains("schedule settings differ between replicas"))
        .unwrap_or_else(|| panic!("no ERROR about the settings: {log}"));
    assert!(
        differ.contains(&own["schedule/replica/".len()..]),
        "names the other: {differ}"
    );
    assert!(
        differ.contains("schedule.timezone: here Europe/London, there UTC"),
        "{differ}"
    );
    assert_eq!(
        settings.count_documents(withdrawn).await.unwrap(),
        0,
        "withdrawn at its clean stop"
    );
    a.kill().await.unwrap();
    app.delete_broker_topology().await;
}
