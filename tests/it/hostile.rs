//! Hostile and careless input: folders on two hosts, odd `_id` types,
//! commands from the future, full and read-only disks, connection floods,
//! passwords with odd characters, terminal escapes in stored values.

use std::time::{Duration, Instant};

use bson::{doc, Bson, DateTime, Document};
use chrono::{Timelike, Utc};
use esr_exporter::destination::Destination;
use esr_exporter::domain::{DestinationUrl, RunStatus, Slot};
use esr_exporter::export::Exporter;
use tokio::process::Child;

use crate::helpers::{
    binary, check_config, deanery, eventually, http_get, list, metric, seeded, spawn_app,
    valid_record, ExportedFile,
};

const WAIT: Duration = Duration::from_secs(60);

fn today() -> String {
    Utc::now().format("%Y%m%d").to_string()
}

#[tokio::test]
async fn a_resume_on_another_host_stages_the_file_again_instead_of_assuming_a_reader_took_it() {
    // Arrange: host A's folder has a dangling symlink under the run's
    // final name, so A stages the file but cannot publish it.
    let (app, ids) = seeded("MER", 300, "ESR_EXPORT__CHUNK_SIZE=50").await;
    let folder_a = app.export_dir();
    std::fs::create_dir_all(&folder_a).unwrap();
    let name = format!("DE_MER_APP_{}_00001.DAT", today());
    std::os::unix::fs::symlink(folder_a.join("gone"), folder_a.join(&name)).unwrap();

    let on_a = app.exporter.run(&deanery("MER")).await;

    assert_eq!(on_a.status(), RunStatus::Failed, "{on_a:?}");
    let error = on_a.error().unwrap_or_default();
    assert!(error.contains("not a regular file"), "{error}");
    assert!(
        on_a.end.is_retryable(),
        "an output folder problem is retried"
    );
    assert_eq!(app.count(doc! {"status": "EXPORTED"}).await, 0);
    assert_eq!(app.count(doc! {"status": "EXPORTING"}).await, 300);

    // Act: host B, with a folder of its own, resumes the run.
    let folder_b = folder_a.with_file_name("host-b");
    let mut settings_b = app.settings.export.clone();
    settings_b.output_dir = folder_b.clone();
    let folder = DestinationUrl::Folder(Some(folder_b.clone()));
    let to_b = Destination::of(&folder, &app.settings).unwrap();
    let on_b = Exporter::new(app.store.clone(), settings_b, to_b)
        .run(&deanery("MER"))
        .await;

    // Assert: B published the file itself; every record is in it, once.
    assert_eq!(on_b.status(), RunStatus::Completed, "{on_b:?}");
    assert_eq!(on_b.file.as_deref(), Some(name.as_str()));
    let file = ExportedFile::read(&folder_b, &name);
    let mut expected: Vec<String> = ids.iter().map(|id| id.to_hex()).collect();
    expected.sort();
    assert_eq!(file.ids(), expected);
    assert_eq!(
        app.count(doc! {"status": "EXPORTED", "exportFileName": &name})
            .await,
        300
    );
    let run = app
        .run_doc(doc! {"_id": on_a.run_id.unwrap()})
        .await
        .unwrap();
    let published = run.get_document("publication").unwrap();
    assert!(
        published
            .get_document("location")
            .unwrap()
            .get_str("path")
            .unwrap()
            .contains("host-b"),
        "{published}"
    );
    assert!(list(&folder_b).iter().all(|f| !f.ends_with(".tmp")));
}

fn record_with_id(id: Bson, deanery: &str) -> Document {
    let mut record = valid_record(deanery, 1);
    record.insert("_id", id);
    record.remove("createdAt");
    record
}

#[tokio::test]
async fn waiting_records_whose_id_is_not_an_object_id_are_counted_stuck_then_rejected() {
    let app = spawn_app().await;
    let valid = app.seed("EOE", 20).await;
    let odd_ids = [
        Bson::DateTime(DateTime::now()),
        Bson::Boolean(true),
        Bson::String("65f000000000000000000001".into()),
        Bson::Int32(7),
        Bson::Document(doc! {"k": 1}),
    ];
    for id in &odd_ids {
        app.records()
            .insert_one(record_with_id(id.clone(), "EOE"))
            .await
            .unwrap();
    }

    // The watchdog counts them as stuck (they carry no creation time).
    let an_hour_ago = DateTime::from_millis(DateTime::now().timestamp_millis() - 3_600_000);
    let stuck = app.store.stuck_records(an_hour_ago).await.unwrap();
    let eoe = stuck
        .iter()
        .find(|s| s.deanery == Bson::String("EOE".into()));
    assert_eq!(eoe.map(|s| s.count), Some(5), "{stuck:?}");

    let summary = app.exporter.run(&deanery("EOE")).await;

    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert_eq!(summary.exported, 20);
    assert_eq!(summary.rejected, 5);
    let files = app.data_files();
    let file = ExportedFile::read(&app.export_dir(), &files[0]);
    let mut expected: Vec<String> = valid.iter().map(|id| id.to_hex()).collect();
    expected.sort();
    assert_eq!((files.len(), file.ids()), (1, expected));
    for id in odd_ids {
        let record = app.find(doc! {"_id": id.clone()}).await;
        assert_eq!(record[0].get_str("status").unwrap(), "REJECTED", "{id}");
        let reason = record[0].get_str("rejectionReason").unwrap();
        assert!(
            reason.starts_with("_id: expected objectId, found"),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_record_whose_deanery_is_an_array_is_rejected_not_exported_under_one_of_its_codes() {
    let app = spawn_app().await;
    let mut shared = valid_record("EOE", 1);
    shared.insert("deanery", vec!["MER", "EOE"]);
    app.insert(vec![shared]).await;

    let summary = app.exporter.run(&deanery("EOE")).await;

    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert_eq!((summary.exported, summary.rejected), (0, 1), "{summary:?}");
    assert!(app.files().is_empty(), "{:?}", app.files());
    let record = app.find(doc! {}).await.remove(0);
    assert_eq!(record.get_str("status").unwrap(), "REJECTED");
    let reason = record.get_str("rejectionReason").unwrap();
    assert!(
        reason.contains("deanery: expected the string EOE, found array"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_a_future_slot_is_dead_lettered_and_uses_nothing_up() {
    let app = spawn_app().await;
    app.seed("KSS", 10).await;
    let daemon = app.spawn_daemon().await;
    let forged = Utc::now().with_nanosecond(0).unwrap() + chrono::Duration::days(2);

    app.publish_command("KSS", Slot::Scheduled(forged)).await;

    let dlq = app.settings.amqp.dead_letter_queue();
    eventually("dead-lettered", WAIT, || async {
        app.queue_len(&dlq).await == 1
    })
    .await;
    let letters = app.take_dead_letters().await;
    assert!(letters[0].1.contains("is in the future"), "{letters:?}");
    assert_eq!(app.count(doc! {"status": "TO_EXPORT"}).await, 10);
    let runs = app.runs();
    assert_eq!(runs.count_documents(doc! {}).await.unwrap(), 0);

    // The genuine command for the current slot still exports.
    app.publish_command(
        "KSS",
        Slot::Scheduled(Utc::now().with_nanosecond(0).unwrap()),
    )
    .await;
    eventually("exported", WAIT, || async {
        app.count(doc! {"status": "EXPORTED"}).await == 10
    })
    .await;
    app.stop_and_clean_up(daemon).await;
}

/// A tmpfs of its own, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts it; a machine where `mount` is refused fails the test (the
    /// suite runs as root, as `.ci/run` does), it never passes unrun.
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|err| panic!("cannot run mount (util-linux): {err}"));
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (run the tests as root): {why}"
        );
        Self { dir }
    }

    fn remount(&self, options: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_then_full_output_folder_is_retried_reported_and_loses_nothing() {
    let disk = SmallDisk::mount("64k");
    let folder = disk.dir.path().join("exports");
    std::fs::create_dir_all(&folder).unwrap();
    disk.remount("ro");
    let tuning = format!(
        "ESR_EXPORT__OUTPUT_DIR={} ESR_AMQP__MAX_ATTEMPTS=1000",
        folder.display()
    );
    let (app, ids) = seeded("SEV", 2_000, &tuning).await;
    let daemon = app.spawn_daemon().await;

    app.publish_command("SEV", Slot::Manual).await;

    // Read-only (EROFS), then writable but too small (ENOSPC): each time
    // retried, never dead-lettered, and /readyz names the folder.
    for (errno, then) in [("EROFS", "rw"), ("ENOSPC", "size=64m")] {
        let sample = format!("esr_output_folder_errors_total{{error=\"{errno}\"}}");
        eventually(errno, WAIT, || async {
            let (_, text) = http_get(daemon.http, "/metrics").await;
            metric(&text, &sample).is_some_and(|n| n >= 1.0)
        })
        .await;
        let (code, body) = http_get(daemon.http, "/readyz").await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("outputFolder") && body.contains("exports"),
            "{body}"
        );
        assert_eq!(
            app.queue_len(&app.settings.amqp.dead_letter_queue()).await,
            0
        );
        disk.remount(then);
    }

    eventually("exported", WAIT, || async {
        app.count(doc! {"status": "EXPORTED"}).await == 2_000
    })
    .await;
    app.assert_exported_once("SEV", &ids).await;
    daemon.until_ready("ready again", WAIT).await;
    app.stop_and_clean_up(daemon).await;
}

/// `GET path`: the status, or None when the server closed or did not answer.
async fn try_get(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()?
}

fn open_fds(child: &Child) -> usize {
    let pid = child.id().expect("running");
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Connections the daemon serves at once (`ops::http::MAX_CONNECTIONS`).
fn esr_exporter_max_connections() -> usize {
    64
}

/// How many of `streams` the other side has closed: a read sees the end
/// (or an error) instead of waiting.
fn closed_by_peer(streams: &[tokio::net::TcpStream]) -> usize {
    let closed = |stream: &tokio::net::TcpStream| {
        let mut buf = [0u8; 1];
        match stream.try_read(&mut buf) {
            Ok(read) => read == 0,
            Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    streams.iter().filter(|s| closed(s)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_http_connections_neither_exhausts_descriptors_nor_starves_exports() {
    let app = spawn_app().await;
    let ids = app.seed("WES", 50).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = binary(&app, &["run"], &[("ESR_HTTP__LISTEN", listen.as_str())])
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    eventually("daemon ready", WAIT, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let before = open_fds(&child);

    let mut flood = Vec::new();
    for _ in 0..2_000 {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            flood.push(stream);
        }
    }
    // The daemon serves 64 at once and closes the rest as it accepts them:
    // once it has closed all but those, the flood has reached it.
    let served = esr_exporter_max_connections();
    eventually("the connections over the limit closed", WAIT, || async {
        closed_by_peer(&flood) >= flood.len().saturating_sub(served)
    })
    .await;
    let during = open_fds(&child);
    assert!(
        during < before + 100,
        "descriptors went from {before} to {during}"
    );

    app.publish_command("WES", Slot::Manual).await;
    eventually("exported during the flood", WAIT, || async {
        app.count(doc! {"status": "EXPORTED"}).await == 50
    })
    .await;
    app.assert_exported_once("WES", &ids).await;

    // Idle connections are closed after the header timeout; health answers.
    let started = Instant::now();
    eventually("health answers again", WAIT, || async {
        try_get(addr, "/healthz").await == Some(200)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    drop(flood);
    child.kill().await.unwrap();
    app.delete_broker_topology().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_requested_by_with_a_line_break_neither_floods_nor_forges_log_lines() {
    let app = spawn_app().await;
    app.seed("OXF", 3).await;
    let child = binary(&app, &["run"], &[("ESR_LOG__FORMAT", "pretty")])
        .spawn()
        .unwrap();
    let requested_by = format!("{}\nFORGED export run completed", "x".repeat(1_000_000));
    let body = serde_json::json!({
        "commandId": uuid::Uuid::new_v4(), "deanery": "OXF", "slot": "manual",
        "requestedBy": requested_by,
    });

    app.publish_raw(body.to_string().as_bytes()).await;

    eventually("exported", WAIT, || async {
        app.count(doc! {"status": "EXPORTED"}).await == 3
    })
    .await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("command received"), "{logs}");
    assert!(
        logs.lines().all(|l| !l.starts_with("FORGED")),
        "a forged line"
    );
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 10_000, "a log line of {longest} bytes");
    app.delete_broker_topology().await;
}

#[tokio::test]
async fn a_password_with_odd_characters_is_never_printed() {
    let app = spawn_app().await;
    let mongodb = (
        "ESR_MONGODB__URI",
        "mongodb://u:pa?ss-S3CRET@127.0.0.1:27017/",
    );
    for (key, uri) in [
        mongodb,
        ("ESR_AMQP__URI", "amqp://u:pa?ss-S3CRET@127.0.0.1:5672/%2f"),
    ] {
        for command in ["check-config", "status", "run"] {
            let output = binary(&app, &[command], &[(key, uri)])
                .output()
                .await
                .unwrap();
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert_eq!(output.status.code(), Some(2), "{command} {key}: {printed}");
            assert!(
                printed.contains(&key[4..].to_lowercase().replace("__", ".")),
                "{printed}"
            );
            assert!(
                !printed.contains("pa?") && !printed.contains("S3CRET"),
                "{printed}"
            );
            assert_eq!(printed.lines().count(), 1, "one line: {printed}");
        }
    }
    // Option values that are secrets: redacted when shown...
    let oidc = "mongodb://127.0.0.1:27017/?authMechanism=MONGODB-OIDC\
                &authMechanismProperties=ENVIRONMENT:azure,TOKEN_RESOURCE:TOKPW";
    let output = check_config(&app, &[("ESR_MONGODB__URI", oidc)]).await;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{printed}");
    assert!(printed.contains("authMechanismProperties=***"), "{printed}");
    assert!(!printed.contains("TOKPW"), "{printed}");
    // ... and never echoed when the driver refuses the option.
    let key_password = "mongodb://127.0.0.1:27017/?tls=true&tlsCertificateKeyFilePassword=KEYPW";
    let output = check_config(&app, &[("ESR_MONGODB__URI", key_password)]).await;
    let printed = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{printed}");
    assert!(
        printed.contains("mongodb.uri") && !printed.contains("KEYPW"),
        "{printed}"
    );
}

#[tokio::test]
async fn absurd_settings_are_refused_at_load_naming_the_key() {
    let app = spawn_app().await;
    let cases = [
        (
            "ESR_SCHEDULE__CATCH_UP_WINDOW_MINUTES",
            "99999999999999",
            "schedule.catch_up_window_minutes",
        ),
        (
            "ESR_WATCHDOG__GRACE_MINUTES",
            "99999999999999",
            "watchdog.grace_minutes",
        ),
        ("ESR_SCHEDULE__CRON", "0 0 13 30 2 *", "schedule.cron"),
        (
            "ESR_SCHEDULE__CRON",
            "0 0 25 * * *",
            "hour 25 is out of range 0-23",
        ),
        ("ESR_EXPORT__OUTPUT_DIR", " ", "export.output_dir"),
        (
            "ESR_RETRY__MAX_DELAY_MS",
            "99999999999999",
            "retry.max_delay_ms",
        ),
    ];
    for (key, value, named) in cases {
        for command in ["check-config", "run"] {
            let output = binary(&app, &[command], &[(key, value)])
                .output()
                .await
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{key}={value}: {stderr}");
            assert!(stderr.contains(named), "{key}={value}: {stderr}");
        }
    }
}

#[tokio::test]
async fn status_shows_stored_deanery_values_escaped() {
    let app = spawn_app().await;
    let mut evil = valid_record("MER", 1);
    evil.insert("deanery", "EVIL\u{1b}]0;pwned\u{7}\nFAKE 0 0 0");
    app.insert(vec![evil]).await;

    let output = binary(&app, &["status"], &[]).output().await.unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
        "{stdout:?}"
    );
    assert!(stdout.lines().all(|l| !l.starts_with("FAKE")), "{stdout}");
    assert!(stdout.contains("EVIL\\u{1b}"), "{stdout}");
}
