//! Transient and permanent MongoDB failures: real WriteConflicts from a
//! concurrent writer, and errors injected with `configureFailPoint`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bson::{doc, Bson, Document};
use esr_exporter::config::Settings;
use esr_exporter::destination::Destination;
use esr_exporter::domain::{RunStatus, RunSummary};
use esr_exporter::export::Exporter;
use esr_exporter::store::Store;
use futures_util::TryStreamExt;

use crate::helpers::{deanery, primary_host_port, seeded, spawn_app_with, TestApp};
use crate::stalls::exporter_through;
use crate::support::proxy::WireProxy;

#[tokio::test]
async fn a_concurrent_writer_causes_write_conflicts_and_every_record_is_still_exported_once() {
    // Arrange: small chunks, and a writer that keeps updating exactly the
    // records the next claim transaction is about to take.
    let tuning = "ESR_EXPORT__CHUNK_SIZE=100 ESR_RETRY__MAX_ATTEMPTS=50";
    let (app, ids) = seeded("MER", 3_000, tuning).await;
    let records = app.records();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let next: Vec<Document> = match records
                    .find(doc! {"deanery": "MER", "status": "TO_EXPORT"})
                    .sort(doc! {"_id": 1})
                    .limit(20)
                    .projection(doc! {"_id": 1})
                    .await
                {
                    Ok(cursor) => cursor.try_collect().await.unwrap_or_default(),
                    Err(_) => continue,
                };
                if next.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                }
                // Busy on exactly these records until a claim takes them
                // (a claim that meets a conflict retries with half as many
                // records, so it still gets through).
                loop {
                    let mut touched = 0;
                    for record in &next {
                        // Another service touching the record: a write
                        // outside any transaction. It may itself lose a
                        // conflict.
                        let result = records
                            .update_one(
                                doc! {"_id": record.get_object_id("_id").unwrap(), "status": "TO_EXPORT"},
                                doc! {"$set": {"updatedAt": bson::DateTime::now()}, "$inc": {"touched": 1}},
                            )
                            .await;
                        if matches!(result, Ok(r) if r.modified_count == 1) {
                            touched += 1;
                        }
                    }
                    writes.fetch_add(touched, Ordering::Relaxed);
                    if touched == 0 || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // A breath between passes: without it, on a loaded
                    // machine, the writer could win every retry of a
                    // claim of one record (the attempt then fails
                    // transiently, and a command would be retried later).
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        })
    };

    // Act
    let summary = app.exporter.run(&deanery("MER")).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    // Assert
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert!(writes.load(Ordering::Relaxed) > 0, "the writer did write");
    assert!(
        summary.write_conflicts > 0 && summary.retries > 0,
        "a real WriteConflict was met and retried: {summary:?}"
    );
    assert_eq!(summary.exported, 3_000);
    app.assert_exported_once("MER", &ids).await;
}

/// The commands and error labels the failpoint tests arm.
const COMMIT: &[&str] = &["commitTransaction"];
const CONFLICT: &str = "TransientTransactionError";
const UNKNOWN_COMMIT: &str = "UnknownTransactionCommitResult";

/// Arms `failCommand` on `commands` with `error_code` and `labels`,
/// `times` times, runs an export of 300 records, and returns its summary
/// after checking every record was exported once.
async fn export_through_failpoint(
    commands: &[&str],
    error_code: i32,
    labels: &[&str],
    times: i32,
) -> esr_exporter::domain::RunSummary {
    let data = doc! {"failCommands": commands, "errorCode": error_code, "errorLabels": labels};
    export_through(data, times).await
}

/// Arms `failCommand` with `data`, `times` times, runs an export of 300
/// records, and returns its summary after checking every record was
/// exported once.
async fn export_through(data: Document, times: i32) -> RunSummary {
    let (app, ids) = seeded("EOE", 300, "ESR_EXPORT__CHUNK_SIZE=100").await;
    let exporter = quick_to_rediscover(&app).await;
    let guard = app.arm_failpoint(data, times).await;
    let summary = exporter.run(&deanery("EOE")).await;
    app.disarm().await;
    drop(guard);
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    app.assert_exported_once("EOE", &ids).await;
    summary
}

/// The app's exporter with the driver's fastest monitoring (500 ms): after
/// a "not primary" error the driver forgets the server until its monitor
/// checks it again, which by default takes up to 10 s per error.
async fn quick_to_rediscover(app: &TestApp) -> Exporter {
    let mut env = app.env.clone();
    let uri = format!("{}&heartbeatFrequencyMS=500", env["ESR_MONGODB__URI"]);
    env.insert("ESR_MONGODB__URI".to_owned(), uri);
    let settings = Settings::load_with_env(None, Some(env)).unwrap();
    let store = Store::build(&settings).await.unwrap();
    let destination = Destination::from_settings(&settings).unwrap();
    Exporter::new(store, settings.export.clone(), destination)
}

/// What a primary stepping down answers, on each command a run depends on.
const STEP_DOWN_COMMANDS: [&str; 3] = ["update", "find", "commitTransaction"];

#[tokio::test]
async fn step_down_errors_on_update_find_and_commit_are_retried() {
    // 10107 NotWritablePrimary, 11602 InterruptedDueToReplStateChange,
    // 189 PrimarySteppedDown, as the server sends them (no label).
    for command in STEP_DOWN_COMMANDS {
        for code in [10107, 11602, 189] {
            let data = doc! {"failCommands": [command], "errorCode": code};
            let summary = export_through(data, 2).await;
            assert!(summary.retries >= 1, "{command} {code}: {summary:?}");
        }
    }
}

#[tokio::test]
async fn a_step_down_closing_connections_on_update_find_and_commit_is_retried() {
    for command in STEP_DOWN_COMMANDS {
        let data = doc! {"failCommands": [command], "closeConnection": true};
        export_through(data, 2).await;
    }
}

#[tokio::test]
async fn every_label_of_the_table_makes_any_code_transient() {
    // 1 InternalError alone is permanent; the label says "try again". The
    // 8.x labels SystemOverloadedError and RetryableError among them.
    for label in [
        "TransientTransactionError",
        "RetryableWriteError",
        "SystemOverloadedError",
        "RetryableError",
    ] {
        let summary = export_through_failpoint(&["find"], 1, &[label], 2).await;
        assert!(summary.retries >= 2, "{label}: {summary:?}");
    }
}

#[tokio::test]
async fn a_write_concern_error_on_the_lease_take_is_read_back_as_taken() {
    // The take was applied but wtimeout passed before a majority had it
    // (64 WriteConcernFailed): the read-back finds it, so the run goes on.
    let concern = doc! {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": true}};
    let data = doc! {"failCommands": ["findAndModify"], "writeConcernError": concern};
    let summary = export_through(data, 1).await;
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert_eq!(summary.retries, 0, "answered by the read-back: {summary:?}");
}

#[tokio::test]
async fn write_conflicts_injected_on_the_claims_find_are_retried() {
    let summary = export_through_failpoint(&["find"], 112, &[CONFLICT], 3).await;
    assert!(summary.write_conflicts >= 3, "{summary:?}");
    assert!(summary.retries >= 3, "{summary:?}");
}

#[tokio::test]
async fn write_conflicts_injected_on_the_claims_update_are_retried() {
    let summary = export_through_failpoint(&["update"], 112, &[CONFLICT], 3).await;
    assert!(summary.write_conflicts >= 3, "{summary:?}");
}

#[tokio::test]
async fn write_conflicts_injected_on_commit_retry_the_whole_transaction() {
    let summary = export_through_failpoint(COMMIT, 112, &[CONFLICT], 2).await;
    assert!(summary.write_conflicts >= 2, "{summary:?}");
    // Each conflict on commit costs a whole new transaction attempt.
    assert!(summary.transactions >= 2 + 2 + 2, "{summary:?}");
}

#[tokio::test]
async fn an_unknown_commit_result_retries_the_commit_and_succeeds() {
    // 91 ShutdownInProgress is retryable: the driver retries the commit
    // once itself, then our policy retries the commit alone.
    let summary = export_through_failpoint(COMMIT, 91, &[UNKNOWN_COMMIT], 3).await;
    assert!(summary.retries >= 1, "{summary:?}");
    assert_eq!(summary.write_conflicts, 0, "{summary:?}");
}

/// Starts a run of `code` (seeded with many chunks) and, once its first
/// chunk is claimed, fails a later claim with 13 Unauthorized, which is not
/// retried: the run stops mid-claim. Returns its summary.
async fn fail_mid_claim(app: &TestApp, code: &str) -> RunSummary {
    // Hold the failpoint before the run starts, so arming it later is immediate.
    let guard = app.hold_failpoint().await;
    let run = {
        let (exporter, code) = (app.exporter.clone(), code.to_owned());
        tokio::spawn(async move { exporter.run(&deanery(&code)).await })
    };
    while app.count(doc! {"status": "EXPORTING"}).await == 0 {
        assert!(
            !run.is_finished(),
            "the run ended before it could be interrupted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    app.arm_failpoint_held(doc! {"failCommands": ["update"], "errorCode": 13}, 1)
        .await;
    let summary = run.await.unwrap();
    app.disarm().await;
    drop(guard);
    summary
}

#[tokio::test]
async fn a_non_transient_error_fails_fast_with_a_clear_message_and_no_partial_file() {
    // Arrange: a run with many chunks, so it is mid-file when the error comes.
    let (app, ids) = seeded("SEV", 10_000, "ESR_EXPORT__CHUNK_SIZE=25").await;

    // Act: 13 Unauthorized on a claim's update once the first chunk is in.
    let summary = fail_mid_claim(&app, "SEV").await;

    // Assert
    assert_eq!(summary.status(), RunStatus::Failed, "{summary:?}");
    assert_eq!(summary.retries, 0, "not retried: {summary:?}");
    let error = summary.error().unwrap();
    assert!(
        error.contains("non-transient") && error.contains("13"),
        "clear message: {error}"
    );
    assert!(
        app.count(doc! {"status": "EXPORTING"}).await > 0,
        "it failed mid-run"
    );
    assert!(
        app.files().is_empty(),
        "no file, not even a temporary one: {:?}",
        app.files()
    );
    // The failed run is resumed by the next attempt and finishes the job.
    let retry = app.exporter.run(&deanery("SEV")).await;
    assert_eq!(retry.status(), RunStatus::Completed, "{retry:?}");
    assert!(retry.resumed);
    // The failed run itself was finished (a fresh run then found nothing new).
    let failed_run = app
        .run_doc(doc! {"_id": summary.run_id.clone().unwrap()})
        .await
        .unwrap();
    assert_eq!(failed_run.get_str("phase").unwrap(), "COMPLETED");
    assert_eq!(retry.exported, 10_000);
    assert_eq!(
        retry.run_id, summary.run_id,
        "the summary names the run that wrote the file"
    );
    app.assert_exported_once("SEV", &ids).await;
}

#[tokio::test]
async fn claimed_records_that_turn_invalid_are_rejected_on_resume_and_the_run_counts_agree() {
    // Arrange: a run stopped mid-claim by a non-transient error.
    let (app, ids) = seeded("KSS", 6_000, "ESR_EXPORT__CHUNK_SIZE=25").await;
    let failed = fail_mid_claim(&app, "KSS").await;
    assert_eq!(failed.status(), RunStatus::Failed, "{failed:?}");
    // Another writer breaks two records the stopped run had claimed.
    let claimed = app.find(doc! {"status": "EXPORTING"}).await;
    let broken = [
        (claimed[0].get_object_id("_id").unwrap(), "positionNumber"),
        (claimed[1].get_object_id("_id").unwrap(), "lastName"),
    ];
    for (id, field) in broken {
        app.records()
            .update_one(doc! {"_id": id}, doc! {"$unset": {field: ""}})
            .await
            .unwrap();
    }

    // Act
    let resumed = app.exporter.run(&deanery("KSS")).await;

    // Assert: rejected with their reasons, counted once, the rest exported.
    assert_eq!(resumed.status(), RunStatus::Completed, "{resumed:?}");
    assert!(resumed.resumed);
    assert_eq!(
        (resumed.exported, resumed.rejected),
        (5_998, 2),
        "{resumed:?}"
    );
    for (id, field) in broken {
        let record = app.find(doc! {"_id": id}).await.remove(0);
        assert_eq!(record.get_str("status").unwrap(), "REJECTED", "{record}");
        let reason = record.get_str("rejectionReason").unwrap();
        assert!(reason.contains(field), "{reason}");
    }
    let valid: Vec<_> = ids
        .iter()
        .filter(|id| broken.iter().all(|(b, _)| b != *id))
        .map(|id| id.to_hex())
        .collect();
    let file =
        crate::helpers::ExportedFile::read(&app.export_dir(), resumed.file.as_deref().unwrap());
    assert_eq!(file.ids(), valid, "every valid record once, in order");
    assert_eq!(app.count(doc! {"status": "EXPORTED"}).await, 5_998);
    let run_doc = app
        .run_doc(doc! {"_id": failed.run_id.clone().unwrap()})
        .await
        .unwrap();
    assert_eq!(run_doc.get_i64("claimed").unwrap(), 5_998, "{run_doc}");
    assert_eq!(run_doc.get_i64("rejected").unwrap(), 2, "{run_doc}");
    assert_eq!(run_doc.get_i64("recordCount").unwrap(), 5_998, "{run_doc}");
}

#[tokio::test]
async fn an_exhausted_retry_budget_fails_the_run_and_the_next_attempt_completes_it() {
    let tuning = "ESR_EXPORT__CHUNK_SIZE=50 ESR_RETRY__MAX_ATTEMPTS=3";
    let (app, ids) = seeded("NWN", 120, tuning).await;
    let guard = app.arm_write_conflicts("find", 10).await;
    let failed = app.exporter.run(&deanery("NWN")).await;
    app.disarm().await;
    drop(guard);

    assert_eq!(failed.status(), RunStatus::Failed, "{failed:?}");
    assert!(
        failed
            .error()
            .unwrap()
            .contains("still failing after 3 attempts"),
        "{failed:?}"
    );
    let resumed = app.exporter.run(&deanery("NWN")).await;
    assert_eq!(resumed.status(), RunStatus::Completed, "{resumed:?}");
    app.assert_exported_once("NWN", &ids).await;
}

#[tokio::test]
async fn a_claimed_record_missing_from_the_file_stops_the_run_before_publishing() {
    // Arrange: a run under way, and a record claimed by it that it never
    // read, as if a claim's outcome had been lost.
    let app = spawn_app_with(&[("ESR_EXPORT__CHUNK_SIZE", "25")]).await;
    let mut ids = app.seed("LDN", 6_000).await;
    let run = {
        let exporter = app.exporter.clone();
        tokio::spawn(async move { exporter.run(&deanery("LDN")).await })
    };
    let runs = app.runs();
    let run_id = loop {
        if let Some(doc) = runs.find_one(doc! {"deanery": "LDN"}).await.unwrap() {
            break doc.get_str("_id").unwrap().to_owned();
        }
        assert!(!run.is_finished(), "the run ended before it was seen");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    let mut lost = crate::helpers::valid_record("LDN", 6_000);
    let lost_id = bson::oid::ObjectId::from_bytes([0; 12]);
    lost.insert("_id", lost_id);
    lost.insert("status", "EXPORTING");
    lost.insert("exportRunId", &run_id);
    app.insert(vec![lost]).await;

    // Act
    let failed = run.await.unwrap();

    // Assert: nothing published, and the next attempt writes every record.
    assert_eq!(failed.status(), RunStatus::Failed, "{failed:?}");
    let error = failed.error().unwrap();
    assert!(
        error.contains("6001 records claimed in MongoDB but 6000 in its file"),
        "{error}"
    );
    assert!(app.files().is_empty(), "{:?}", app.files());
    assert_eq!(app.count(doc! {"status": "EXPORTED"}).await, 0);
    let resumed = app.exporter.run(&deanery("LDN")).await;
    assert_eq!(resumed.status(), RunStatus::Completed, "{resumed:?}");
    assert_eq!(resumed.exported, 6_001, "{resumed:?}");
    ids.insert(0, lost_id);
    app.assert_exported_once("LDN", &ids).await;
}

/// The codes a sharded or Atlas cluster returns, each in a transient
/// category of the server's `error_codes.yml` (or, for 133, what mongos
/// answers while a shard elects a primary): retried on the claim's reads
/// and writes alike, as real replies, never dead-lettered at once.
#[tokio::test]
async fn a_clusters_transient_codes_are_retried_on_every_command() {
    // 133 FailedToSatisfyReadPreference, 202 NetworkInterfaceExceededTimeLimit,
    // 237 CursorKilled, 91331 RetriableRemoteCommandFailure, 24 LockTimeout,
    // 402 ResourceExhausted, 91 ShutdownInProgress.
    for code in [133, 202, 237, 91331, 24, 402, 91] {
        for command in ["find", "update"] {
            let data = doc! {"failCommands": [command], "errorCode": code};
            let summary = export_through(data, 2).await;
            assert!(summary.retries >= 1, "{command} {code}: {summary:?}");
        }
    }
}

/// 388 TransactionTooLargeForCache and 10334 BSONObjectTooLarge on the
/// claim's write: the transaction runs again on half the chunk, as after
/// a conflict, and the run completes.
/// The `limit` of a `find`, if it has one.
fn limit_of(request: &crate::support::proxy::Request) -> Option<i64> {
    match request.body.get("limit") {
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        Some(Bson::Int64(n)) => Some(*n),
        _ => None,
    }
}

/// An exporter that reaches MongoDB through a proxy recording the claim's
/// reads: `find`s of waiting records with a limit above one (a limit of
/// one is the run's look-up of its bound).
async fn recording_claims(app: &TestApp) -> (WireProxy, Exporter) {
    let proxy = WireProxy::start(&primary_host_port().await).await;
    let records = app.settings.mongodb.records_collection.clone();
    proxy.record(move |r| r.is("find", &records, "TO_EXPORT") && limit_of(r) > Some(1));
    let exporter = exporter_through(app, &proxy, &[]).await;
    (proxy, exporter)
}

/// The claim reads only what the file needs (DESIGN.md's detail fields,
/// and the deanery), so a large field another service adds to a record
/// never crosses the wire or fills a transaction.
#[tokio::test]
async fn the_claim_reads_only_the_fields_a_file_needs() {
    let (app, ids) = seeded("EOE", 30, "ESR_EXPORT__CHUNK_SIZE=10").await;
    let large = "x".repeat(200_000);
    app.records()
        .update_many(doc! {}, doc! {"$set": {"attachment": &large}})
        .await
        .unwrap();
    let (proxy, exporter) = recording_claims(&app).await;
    let summary = exporter.run(&deanery("EOE")).await;
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    app.assert_exported_once("EOE", &ids).await;

    let claims = proxy.recorded();
    assert!(claims.len() >= 3, "one read per chunk: {}", claims.len());
    let contract = [
        "_id",
        "deanery",
        "positionNumber",
        "gmcNumber",
        "title",
        "lastName",
        "firstName",
        "dateOfBirth",
        "gender",
        "niNumber",
        "emailAddress",
        "placementStartDate",
        "placementEndDate",
        "gradeAbbreviation",
        "specialty",
        "wte",
    ];
    for claim in claims {
        let projection = claim.body.get_document("projection").expect("a projection");
        let mut read: Vec<&str> = projection.keys().map(String::as_str).collect();
        read.sort_unstable();
        let mut expected = contract.to_vec();
        expected.sort_unstable();
        assert_eq!(read, expected, "{projection}");
    }
}

#[tokio::test]
async fn a_transaction_too_large_for_the_server_is_claimed_again_in_halves() {
    for code in [388, 10334] {
        let (app, ids) = seeded("EOE", 300, "ESR_EXPORT__CHUNK_SIZE=100").await;
        let (proxy, exporter) = recording_claims(&app).await;
        let data = doc! {"failCommands": ["update"], "errorCode": code};
        let guard = app.arm_failpoint(data, 2).await;
        let summary = exporter.run(&deanery("EOE")).await;
        app.disarm().await;
        drop(guard);

        assert_eq!(
            summary.status(),
            RunStatus::Completed,
            "{code}: {summary:?}"
        );
        app.assert_exported_once("EOE", &ids).await;
        let claims: Vec<i64> = proxy.recorded().iter().filter_map(limit_of).collect();
        // The first claim failed twice before it read (its first update,
        // the lease's renewal, failed): its third try reads a quarter of
        // the chunk, where a plain retry would read all 100 again. The next
        // claim asks for what got through, then an eighth more each time.
        assert_eq!(
            claims.get(..3),
            Some(&[25, 25, 37][..]),
            "{code}: {claims:?}"
        );
        assert_eq!(summary.retries, 2, "{code}: {summary:?}");
    }
}
