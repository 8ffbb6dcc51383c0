//! The binary killed with SIGKILL in the middle of a run, then started
//! again: the same single file, every record exported exactly once.

use std::process::Stdio;
use std::time::Duration;

use bson::{doc, Document};
use tokio::process::{Child, Command};

use crate::helpers::{seeded, TestApp};

fn exporter_command(app: &TestApp, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_esr-exporter"));
    command
        .args(args)
        .env_clear()
        .envs(&app.env)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts `export --deanery <code>` and SIGKILLs it as soon as `ready`
/// holds for the deanery's records.
pub(crate) async fn kill_when(app: &TestApp, code: &str, ready: Document) {
    let mut child: Child = exporter_command(app, &["export", "--deanery", code])
        .spawn()
        .expect("spawn esr-exporter");
    loop {
        if app.count(ready.clone()).await > 0 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().await.unwrap();
            panic!(
                "the export ended ({status}) before the kill point: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.kill().await.expect("SIGKILL"); // Child::kill sends SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the process was killed, not finished");
}

async fn export_again(app: &TestApp, code: &str) -> serde_json::Value {
    app.until_leases_lapse().await;
    let output = exporter_command(app, &["export", "--deanery", code])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().next().expect("a summary line")).unwrap()
}

#[tokio::test]
async fn a_run_killed_while_claiming_is_finished_by_the_next_run_with_one_file() {
    let tuning = "ESR_EXPORT__CHUNK_SIZE=20 ESR_EXPORT__LEASE_SECONDS=2";
    let (app, ids) = seeded("MER", 6_000, tuning).await;

    kill_when(&app, "MER", doc! {"status": "EXPORTING", "deanery": "MER"}).await;
    assert!(
        app.count(doc! {"status": "TO_EXPORT"}).await > 0,
        "killed before claiming finished"
    );
    let summary = export_again(&app, "MER").await;

    assert_eq!(summary["status"], "completed", "{summary}");
    assert_eq!(summary["resumed"], true, "{summary}");
    assert_eq!(summary["exported"], 6_000);
    let file = app.assert_exported_once("MER", &ids).await;
    assert!(file.name.ends_with("_00001.DAT"), "{}", file.name);
}

#[tokio::test]
async fn a_run_killed_while_marking_records_is_finished_without_a_second_file() {
    // Marked 100 records a statement, so the kill lands between statements.
    let tuning =
        "ESR_EXPORT__CHUNK_SIZE=10 ESR_EXPORT__MARK_BATCH_SIZE=100 ESR_EXPORT__LEASE_SECONDS=2";
    let (app, ids) = seeded("EOE", 6_000, tuning).await;

    kill_when(&app, "EOE", doc! {"status": "EXPORTED", "deanery": "EOE"}).await;
    assert!(
        app.count(doc! {"status": "EXPORTING"}).await > 0,
        "killed before marking finished"
    );
    let before = app.files();
    let summary = export_again(&app, "EOE").await;

    assert_eq!(summary["status"], "completed", "{summary}");
    assert_eq!(summary["resumed"], true);
    assert_eq!(app.files(), before, "the file was not written again");
    app.assert_exported_once("EOE", &ids).await;
    crate::helpers::assert_marked_alike(&app, "EOE").await;
}
