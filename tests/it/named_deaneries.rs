//! Deaneries named on the command line or in `schedule.deaneries`: each
//! taken once, and an invalid one refused by key rather than skipped.

use crate::helpers::{check_config, run_binary as run, spawn_app, TestApp};

/// Runs the command line `words` (split at spaces), asserting it
/// succeeded; its standard output.
async fn succeeded(app: &TestApp, words: &str) -> String {
    let args: Vec<&str> = words.split(' ').collect();
    let output = run(app, &args, &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn export_runs_a_deanery_named_twice_once_in_the_order_first_named() {
    let app = spawn_app().await;
    app.seed("MER", 2).await;
    app.seed("EOE", 1).await;

    let stdout = succeeded(&app, "export --deanery MER --deanery EOE --deanery MER").await;

    let summaries: Vec<serde_json::Value> = stdout
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

    let stdout = succeeded(&app, "trigger --deanery OXF --deanery WES --deanery OXF").await;

    let ids = stdout.lines().count();
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

    let good = check_config(&app, &[("ESR_SCHEDULE__DEANERIES", "MER,EOE")]).await;
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert_eq!(good.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("deaneries = [\n    \"MER\",\n    \"EOE\",\n]"),
        "{stdout}"
    );
}
