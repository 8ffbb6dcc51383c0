//! The daemon supervises its tasks: one that ends or panics before
//! shutdown is logged at ERROR naming it, and the process exits non-zero
//! (so systemd or Kubernetes restarts it) instead of running on without it.
//!
//! It tells systemd it is up as soon as it serves, whatever start-up
//! waits for.
//!
//! The failures are injected with the debug-build test hook
//! `TEST_ESR_EXPORTER_FAIL_TASK` (`<task>` panics, `<task>:end` returns).

use std::process::Output;
use std::time::Duration;

use crate::helpers::{binary, free_port, http_get, metric, spawn_app, TestApp, Watched};

/// How long a daemon may take to say it is up.
const WAIT: Duration = Duration::from_secs(20);

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

/// The datagrams a daemon sends to `socket` (its NOTIFY_SOCKET) until
/// `wanted` have all arrived, within `within`; everything it sent.
async fn notifications_until(
    socket: &tokio::net::UnixDatagram,
    wanted: &[&str],
    within: Duration,
) -> String {
    let mut said = String::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 4096];
    while !wanted.iter().all(|w| said.contains(w)) {
        let received = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await;
        let n = received
            .unwrap_or_else(|_| panic!("no {wanted:?} within {within:?}; got: {said:?}"))
            .unwrap();
        said.push_str(&String::from_utf8_lossy(&buf[..n]));
        said.push('\n');
    }
    said
}

/// `command` with `WATCHDOG_PID` set to its own process id, as systemd
/// sets it (the daemon pings only when the variable names it): through a
/// shell that `exec`s it, keeping its pid.
fn as_its_own_watchdog_pid(command: tokio::process::Command) -> tokio::process::Command {
    let std = command.as_std();
    let mut shell = tokio::process::Command::new("sh");
    shell
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" "$@""#)
        .arg(std.get_program())
        .args(std.get_args())
        .env_clear()
        .envs(std.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    shell
}

/// MongoDB down at start (a boot where it comes up later, or an index
/// build on a large collection): systemd hears READY=1 as soon as the
/// endpoints serve and watchdog pings from then on, so `TimeoutStartSec`
/// and `WatchdogSec` never kill the wait; `/readyz` and the unit's status
/// line say what start-up waits for, and the wait is a WARN, not an ERROR.
#[tokio::test]
async fn a_start_waiting_for_mongodb_is_up_for_systemd_and_says_what_it_waits_for() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    let port = free_port();
    let nowhere = format!("mongodb://127.0.0.1:{}/?replicaSet=secantus", free_port());
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("ESR_MONGODB__URI", nowhere.as_str()),
        ("ESR_MONGODB__SERVER_SELECTION_TIMEOUT_MS", "300"),
        ("ESR_HTTP__LISTEN", listen.as_str()),
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let daemon = Watched::spawn(as_its_own_watchdog_pid(binary(&app, &["run"], &env)));

    let waiting = "STATUS=starting: waiting for MongoDB";
    let said = notifications_until(&socket, &[waiting, "READY=1", "WATCHDOG=1"], WAIT).await;
    let (waits, ready) = (said.find(waiting), said.find("READY=1"));
    assert!(waits < ready, "the wait is said before READY=1: {said}");
    let addr = listen.parse().unwrap();
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let checks: serde_json::Value = serde_json::from_str(&body).unwrap();
    let startup = checks["checks"]["startup"].as_str().unwrap_or_default();
    assert!(startup.starts_with("waiting for MongoDB"), "{body}");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(metric(&metrics, "esr_starting"), Some(1.0), "{metrics}");
    // Still pinging a while later: the wait is not a hang.
    notifications_until(&socket, &["WATCHDOG=1"], Duration::from_secs(5)).await;

    let (status, stderr) = daemon.terminate().await;
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("reaching MongoDB at start failed; retrying"),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .collect();
    assert!(errors.is_empty(), "a short wait is no ERROR: {errors:#?}");
}
