//! The JSON log lines operators alert on: inside an export run, every line
//! carries the run's `deanery` and `run_id` once, from the run's span,
//! whether the run said it or a MongoDB retry under it did.

use serde_json::Value;

use crate::helpers::{primary_host_port, run_binary as run, spawn_app};
use crate::support::proxy::{Fault, WireProxy};

#[tokio::test]
async fn json_lines_inside_a_run_carry_its_deanery_and_run_id_once() {
    // Arrange: one write conflict on the claim's update, so a retry line
    // is said inside the run.
    let app = spawn_app().await;
    app.seed("MER", 3).await;
    let guard = app.arm_write_conflicts("update", 1).await;

    // Act
    let output = run(&app, &["export", "--all"], &[]).await;
    app.disarm().await;
    drop(guard);

    // Assert
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let run_id = summary["runId"].as_str().expect("a run id");
    for line in stderr.lines() {
        for key in [r#""deanery":"#, r#""run_id":"#] {
            assert!(line.matches(key).count() <= 1, "{key} said twice: {line}");
        }
    }
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    for message in [
        "export run started",
        "transient MongoDB error, retrying",
        "export run completed",
    ] {
        let line = lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no line {message:?} in {stderr}"));
        assert_eq!(line["deanery"], "MER", "{line}");
        assert_eq!(line["run_id"], run_id, "{line}");
        assert!(
            line["timestamp"].is_string() && line["target"].is_string(),
            "{line}"
        );
    }
}

/// A failed attempt whose error cannot be recorded on its run document
/// (every write of it loses its connection) says so at WARN with the
/// cause, after the attempt's own ERROR; the run keeps no error.
#[tokio::test]
async fn an_error_that_cannot_be_recorded_on_its_run_is_logged() {
    let app = spawn_app().await;
    app.seed("MER", 3).await;
    let proxy = WireProxy::start(&primary_host_port().await).await;
    proxy.arm_times(Fault::Reset, 100, |r| {
        r.is("update", "exportRuns", "lastError")
    });
    let uri = format!("{}&appName={}", proxy.uri(), app.app_name);
    // The staging folder is a file: the attempt fails after its run began.
    let dir = tempfile::tempdir().unwrap();
    let not_a_folder = dir.path().join("exports");
    std::fs::write(&not_a_folder, b"in the way").unwrap();
    let folder = not_a_folder.display().to_string();
    let env = [
        ("ESR_MONGODB__URI", uri.as_str()),
        ("ESR_EXPORT__OUTPUT_DIR", folder.as_str()),
        ("ESR_RETRY__MAX_ATTEMPTS", "3"),
    ];

    let output = run(&app, &["export", "--deanery", "MER"], &env).await;

    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(proxy.fired_times() >= 1, "the error's write was reached");
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let failed = lines
        .iter()
        .position(|l| l["message"] == "export run failed; the next attempt resumes it")
        .unwrap_or_else(|| panic!("the attempt's ERROR: {stderr}"));
    let warned = lines
        .iter()
        .position(|l| {
            l["level"] == "WARN"
                && l["message"]
                    == "the failed attempt's error could not be recorded on its run document"
        })
        .unwrap_or_else(|| panic!("the WARN: {stderr}"));
    assert!(failed < warned, "{stderr}");
    assert!(lines[warned]["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    let run = app
        .run_doc(bson::doc! {"deanery": "MER"})
        .await
        .expect("the run");
    let recorded = run.get("lastError");
    assert!(matches!(recorded, None | Some(bson::Bson::Null)), "{run}");
}
