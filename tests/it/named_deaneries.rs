//! Deaneries named on the command line or in `schedule.deaneries`: each
//! taken once, and an invalid one refused by key rather than skipped.

use crate::helpers::{run_binary as run, spawn_app};

#[tokio::test]
async fn export_runs_a_deanery_named_twice_once_in_the_order_first_named() {
    let app = spawn_app().await;
    app.seed("MER", 2).await;
    app.seed("EOE", 1).await;

    let args = [
        "export",
        "--deanery",
        "MER",
        "--deanery",
        "EOE",
        "--deanery",
        "MER",
    ];
    let output = run(&app, &args, &[]).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let summaries: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let runs: Vec<(&str, u64)> = summaries
        .iter()
        .map(|s| {
            (
                s["deanery"].as_str().unwrap(),
                s["exported"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(runs, [("MER", 2), ("EOE", 1)]);
    assert_eq!(app.files().len(), 4, "one file and manifest per deanery");
}

#[tokio::test]
async fn trigger_publishes_one_command_for_a_deanery_named_twice() {
    let app = spawn_app().await;

    let args = [
        "trigger",
        "--deanery",
        "OXF",
        "--deanery",
        "WES",
        "--deanery",
        "OXF",
    ];
    let output = run(&app, &args, &[]).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let ids = String::from_utf8_lossy(&output.stdout).lines().count();
    assert_eq!(ids, 2, "one command id per deanery");
    assert_eq!(app.queue_len(&app.settings.amqp.queue).await, 2);
    app.delete_broker_topology().await;
}

#[tokio::test]
async fn an_invalid_schedule_deanery_is_refused_at_load_with_exit_2_naming_the_key() {
    let app = spawn_app().await;
    let bad = [("ESR_SCHEDULE__DEANERIES", "MER,m-e-r,EOE")];

    for command in ["check-config", "run"] {
        let output = run(&app, &[command], &bad).await;

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("schedule.deaneries"), "{stderr}");
        assert!(stderr.contains("m-e-r"), "{stderr}");
    }

    let good = run(
        &app,
        &["check-config"],
        &[("ESR_SCHEDULE__DEANERIES", "MER,EOE")],
    )
    .await;
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert_eq!(good.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("deaneries = [\n    \"MER\",\n    \"EOE\",\n]"),
        "{stdout}"
    );
}
