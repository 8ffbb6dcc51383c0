//! Records due soon: a waiting record whose placement starts within
//! `watchdog.due_within_days` (or has started) is counted in `status`
//! (`DUE_SOON`, `dueSoon`) and said by `explain`; one without a date there,
//! or starting later, is not.

use bson::{doc, Document};

use crate::helpers::{run_binary, spawn_app, unique_deanery, valid_record, TestApp};

/// A valid waiting record of `code` whose placement starts `start`.
fn starting(code: &str, n: usize, start: bson::Bson) -> Document {
    let mut record = valid_record(code, n);
    record.insert("placementStartDate", start);
    record
}

/// `status --json`'s line for `code`, with `extra` settings.
async fn status_of(app: &TestApp, code: &str, extra: &[(&str, &str)]) -> serde_json::Value {
    let output = run_binary(app, &["status", "--json"], extra).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let lines = report["deaneries"].as_array().unwrap();
    lines.iter().find(|l| l["deanery"] == code).unwrap().clone()
}

#[tokio::test]
async fn records_starting_within_the_window_are_due_soon_in_status_and_explain() {
    let (app, code) = (spawn_app().await, unique_deanery());
    let now = chrono::Utc::now();
    let at = |days: i64| {
        bson::Bson::DateTime(bson::DateTime::from_chrono(
            now + chrono::Duration::days(days),
        ))
    };
    let ids = app
        .insert(vec![
            starting(&code, 1, at(2)),
            starting(&code, 2, at(-1)),
            starting(&code, 3, at(30)),
            starting(&code, 4, bson::Bson::from("2026-12-08")),
        ])
        .await;

    let line = status_of(&app, &code, &[]).await;
    assert_eq!(line["dueSoon"], 2, "{line}");
    assert_eq!(line["counts"]["TO_EXPORT"], 4, "{line}");
    let wider = status_of(&app, &code, &[("ESR_WATCHDOG__DUE_WITHIN_DAYS", "40")]).await;
    assert_eq!(wider["dueSoon"], 3, "the undated record never is: {wider}");
    let table = run_binary(&app, &["status"], &[]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.lines().next().is_some_and(|l| l.contains("EXPORTED")),
        "{table}"
    );
    let header = table.lines().find(|l| l.starts_with("DEANERY")).unwrap();
    let row = table.lines().find(|l| l.starts_with(&code)).unwrap();
    let column = header
        .split_whitespace()
        .position(|c| c == "DUE_SOON")
        .unwrap();
    assert_eq!(row.split_whitespace().nth(column), Some("2"), "{table}");

    let explain = |id: bson::oid::ObjectId| {
        let app = &app;
        async move {
            let output = run_binary(app, &["explain", &id.to_hex()], &[]).await;
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let soon = explain(ids[0]).await;
    assert!(soon.contains("DUE SOON: its placement starts"), "{soon}");
    for id in [ids[2], ids[3]] {
        let said = explain(id).await;
        assert!(!said.contains("DUE SOON"), "{said}");
    }
    let json = run_binary(&app, &["explain", &ids[1].to_hex(), "--json"], &[]).await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["dueSoon"]["withinDays"], 5, "{json}");
    assert_eq!(app.count(doc! {"status": "REJECTED"}).await, 0);
}
