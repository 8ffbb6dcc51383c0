//! The daemon supervises its tasks: one that ends or panics before
//! shutdown is logged at ERROR naming it, and the process exits non-zero
//! (so systemd or Kubernetes restarts it) instead of running on without it.
//!
//! The failures are injected with the debug-build test hook
//! `TEST_ESR_EXPORTER_FAIL_TASK` (`<task>` panics, `<task>:end` returns).

use std::process::Output;
use std::time::Duration;

use crate::helpers::{binary, spawn_app, TestApp};

/// `esr-exporter run` of a new app with the hook set; it must stop on
/// its own. The app, and the daemon's output.
async fn run_with_failing_task(hook: &str, extra_env: &[(&str, &str)]) -> (TestApp, Output) {
    let app = spawn_app().await;
    let child = binary(&app, &["run"], extra_env)
        .env("TEST_ESR_EXPORTER_FAIL_TASK", hook)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the daemon stops on its own when a task fails")
        .unwrap();
    (app, output)
}

/// The JSON log lines of a run.
fn log_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn assert_reported(output: &Output, task: &str, panicked: bool) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines = log_lines(output);
    let reported = lines
        .iter()
        .find(|l| l["message"] == "task ended before shutdown; the daemon stops")
        .unwrap_or_else(|| panic!("no supervision line in {stderr}"));
    assert_eq!(reported["level"], "ERROR", "{reported}");
    assert_eq!(reported["task"], task, "{reported}");
    assert_eq!(reported["panic"].is_string(), panicked, "{reported}");
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "command failed")
        .collect();
    assert_eq!(failed.len(), 1, "said once: {stderr}");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("the {task} task"))),
        "the last line says which task: {stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("error: ")),
        "not again as plain text: {stderr}"
    );
}

#[cfg(debug_assertions)]
#[tokio::test]
async fn a_consumer_that_panics_stops_the_daemon_with_exit_1_naming_it() {
    let (app, output) = run_with_failing_task("consumer", &[]).await;
    assert_reported(&output, "consumer", true);
    let lines = log_lines(&output);
    assert!(
        lines.iter().any(|l| l["message"] == "esr-exporter running"),
        "it had started: the failure came later"
    );
    app.delete_broker_topology().await;
}

#[cfg(debug_assertions)]
#[tokio::test]
async fn an_http_listener_that_ends_early_stops_the_daemon_with_exit_1_naming_it() {
    let (_app, output) = run_with_failing_task("http:end", &[]).await;
    assert_reported(&output, "http", false);
}

#[cfg(debug_assertions)]
#[tokio::test]
async fn a_watchdog_that_ends_early_stops_the_daemon_with_exit_1_naming_it() {
    let enabled = [("ESR_WATCHDOG__ENABLED", "true")];
    let (app, output) = run_with_failing_task("watchdog:end", &enabled).await;
    assert_reported(&output, "watchdog", false);
    app.delete_broker_topology().await;
}
