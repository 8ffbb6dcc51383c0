//! The JSON log lines operators alert on: inside an export run, every line
//! carries the run's `deanery` and `run_id` once, from the run's span,
//! whether the run said it or a MongoDB retry under it did.

use serde_json::Value;

use crate::helpers::{run_binary as run, spawn_app};

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
