//! Cost grows with the waiting records, never with the exported history:
//! the status report reads only waiting and claimed records and recent or
//! open runs, and refuses to scan when the indexes it needs are missing.

use bson::{doc, DateTime};
use esr_exporter::store::StoreError;

use crate::helpers::{deanery, spawn_app};

#[tokio::test]
async fn status_reports_counts_oldest_wait_and_last_run_and_ignores_older_history() {
    let app = spawn_app().await;
    app.seed("MER", 3).await;
    app.exporter.run(&deanery("MER")).await;
    app.seed("MER", 2).await;
    let long_ago = DateTime::from_millis(DateTime::now().timestamp_millis() - 90 * 86_400_000);
    app.runs()
        .insert_one(doc! {
            "_id": "old-run", "deanery": "MER", "phase": "COMPLETED", "startedAt": long_ago,
            "finishedAt": long_ago, "recordCount": 1_000_i64, "rejected": 7_i64,
        })
        .await
        .unwrap();

    let (report, mer) = app.status_of("MER").await;
    assert_eq!(report.window_days, 30);
    assert_eq!(mer.counts.get("EXPORTED"), Some(&3), "{mer:?}");
    assert_eq!(mer.counts.get("REJECTED"), Some(&0), "{mer:?}");
    assert_eq!(mer.counts.get("TO_EXPORT"), Some(&2), "{mer:?}");
    assert!(mer.oldest_to_export_age_seconds.is_some());
    let last = mer.last_run.as_ref().unwrap();
    assert_ne!(last.run_id, "old-run");
    assert_eq!(last.phase, "COMPLETED");
    assert_eq!(last.exported, Some(3));
}

#[tokio::test]
async fn status_says_which_indexes_are_missing_instead_of_scanning() {
    let app = spawn_app().await;
    app.seed("EOE", 2).await;
    app.records()
        .drop_index(esr_exporter::store::RECORDS_BY_STATUS_INDEX)
        .await
        .unwrap();

    let err = esr_exporter::status::report(&app.store, bson::DateTime::now())
        .await
        .unwrap_err();

    assert!(matches!(err, StoreError::IndexesMissing(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("esr_exporter_status_deanery_id"),
        "{message}"
    );
    assert!(message.contains("esr-exporter ensure-indexes"), "{message}");
}

#[tokio::test]
async fn an_equal_index_made_with_other_numeric_types_is_recognised() {
    let app = spawn_app().await;
    let records = app.records();
    records
        .drop_index(esr_exporter::store::RECORDS_BY_STATUS_INDEX)
        .await
        .unwrap();
    let writer_made = mongodb::IndexModel::builder()
        .keys(doc! {"status": 1.0, "deanery": 1.0, "_id": 1_i64})
        .options(
            mongodb::options::IndexOptions::builder()
                .name("writer_status_deanery".to_owned())
                .build(),
        )
        .build();
    records.create_index(writer_made).await.unwrap();

    app.store.ensure_indexes().await.unwrap();

    assert!(app.store.missing_indexes().await.unwrap().is_empty());
}

#[tokio::test]
async fn status_on_a_database_never_written_says_which_indexes_to_create() {
    let app = spawn_app().await;
    app.db.drop().await.unwrap();

    let err = esr_exporter::status::report(&app.store, bson::DateTime::now())
        .await
        .unwrap_err();

    assert!(matches!(err, StoreError::IndexesMissing(_)), "{err}");
}
