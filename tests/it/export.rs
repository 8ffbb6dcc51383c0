//! The export run against a real MongoDB-wire server: files, records,
//! rejections, backlog, leases.

use bson::{doc, Bson, Document};
use esr_exporter::domain::RunStatus;

use crate::helpers::{
    deanery, run_binary, seeded, spawn_app, spawn_app_with, valid_record, ExportedFile,
};

#[tokio::test]
async fn a_deaneries_records_land_in_one_well_formed_file_and_others_are_untouched() {
    // Arrange: chunks of 7 so the file is assembled over several transactions.
    let app = spawn_app_with(&[("ESR_EXPORT__CHUNK_SIZE", "7")]).await;
    let mer = app.seed("MER", 25).await;
    let eoe = app.seed("EOE", 10).await;

    // Act
    let summary = app.exporter.run(&deanery("MER")).await;

    // Assert
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert_eq!(summary.exported, 25);
    assert_eq!(summary.rejected, 0);
    let file = app.assert_exported_once("MER", &mer).await;
    assert_eq!(summary.file.as_deref(), Some(file.name.as_str()));
    let today = chrono::Utc::now().format("%Y%m%d").to_string();
    assert_eq!(file.name, format!("DE_MER_APP_{today}_00001.DAT"));
    let run_id = summary.run_id.clone().unwrap();
    assert_eq!(file.header.deanery, "MER");
    assert_eq!(file.header.date, today);
    assert_eq!(file.header.time.len(), 6);
    assert_eq!(file.header.seq, "00001");
    assert_eq!(file.header.run_id, run_id);
    assert_eq!(file.manifest["runId"], run_id.as_str());
    // Every detail field comes from its record, in contract order.
    let first = app.find(doc! {"_id": mer[0]}).await.remove(0);
    let line = &file.details[0];
    assert_eq!(line.record_id, mer[0].to_hex());
    assert_eq!(
        line.position_number,
        first.get_str("positionNumber").unwrap()
    );
    assert_eq!(line.last_name, first.get_str("lastName").unwrap());
    assert_eq!(line.first_name, first.get_str("firstName").unwrap());
    assert_eq!(line.placement_start_date, "2026-12-13");
    assert_eq!(line.wte, "0.5");
    assert_eq!(first.get_str("exportRunId").unwrap(), run_id);
    assert!(first.get_datetime("exportedAt").is_ok());
    // The other deanery is untouched.
    assert_eq!(
        app.count(doc! {"deanery": "EOE", "status": "TO_EXPORT"})
            .await,
        eoe.len() as u64
    );
    assert_eq!(
        app.count(doc! {"deanery": "EOE", "exportRunId": {"$exists": true}})
            .await,
        0
    );
}

#[tokio::test]
async fn a_deanery_with_nothing_to_export_writes_no_file_and_sequences_continue() {
    let app = spawn_app().await;
    app.seed("LDN", 3).await;
    let first = app.exporter.run(&deanery("LDN")).await;
    assert_eq!(first.status(), RunStatus::Completed);

    let empty = app.exporter.run(&deanery("LDN")).await;
    assert_eq!(empty.status(), RunStatus::Completed, "{empty:?}");
    assert_eq!(empty.exported, 0);
    assert_eq!(empty.file, None);
    assert_eq!(app.files().len(), 2, "one .DAT and its manifest");

    app.seed("LDN", 2).await;
    let second = app.exporter.run(&deanery("LDN")).await;
    let name = second.file.unwrap();
    assert!(name.ends_with("_00002.DAT"), "{name}");
    assert_eq!(app.files().len(), 4);
}

#[tokio::test]
async fn invalid_records_are_rejected_with_their_reasons_and_do_not_stop_the_rest() {
    let app = spawn_app_with(&[("ESR_EXPORT__CHUNK_SIZE", "4")]).await;
    let mut good = app.seed("OXF", 5).await;
    let mut missing = valid_record("OXF", 100);
    missing.remove("positionNumber");
    let mut mistyped = valid_record("OXF", 101);
    mistyped.insert("placementStartDate", "2026-12-01");
    let mut forged = valid_record("OXF", 102);
    forged.insert("lastName", "Evans\r\nAPP,forged");
    let bad = app.insert(vec![missing, mistyped, forged]).await;
    good.extend(app.seed("OXF", 3).await);

    let summary = app.exporter.run(&deanery("OXF")).await;

    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert_eq!((summary.exported, summary.rejected), (8, 3));
    let file = ExportedFile::read(&app.export_dir(), summary.file.as_deref().unwrap());
    let mut expected: Vec<String> = good.iter().map(|id| id.to_hex()).collect();
    expected.sort();
    assert_eq!(file.ids(), expected);
    let reasons: Vec<String> = app
        .find(doc! {"_id": {"$in": bad}})
        .await
        .iter()
        .map(|r| {
            assert_eq!(r.get_str("status").unwrap(), "REJECTED");
            r.get_str("rejectionReason").unwrap().to_owned()
        })
        .collect();
    assert!(reasons[0].contains("missing required field positionNumber"));
    assert!(reasons[1].contains("placementStartDate: expected date, found string"));
    assert!(reasons[2].contains("lastName: contains a control character"));
}

#[tokio::test]
async fn a_backlog_of_many_chunks_exports_completely() {
    let app = spawn_app().await; // default chunk size: 2000
    let ids = app.seed("KSS", 20_000).await;

    let summary = app.exporter.run(&deanery("KSS")).await;

    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert_eq!(summary.exported, 20_000);
    assert!(
        summary.transactions >= 10,
        "10 claim transactions at least (marking is one statement, no transaction): {summary:?}"
    );
    app.assert_exported_once("KSS", &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exporters_racing_for_one_deanery_write_one_file() {
    let (app, ids) = seeded("WES", 2_000, "ESR_EXPORT__CHUNK_SIZE=50").await;
    let racer = |exporter: esr_exporter::export::Exporter| {
        tokio::spawn(async move { exporter.run(&deanery("WES")).await })
    };

    let (a, b) = (racer(app.exporter.clone()), racer(app.exporter.clone()));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());

    for summary in [&a, &b] {
        assert_ne!(summary.status(), RunStatus::Failed, "{summary:?}");
    }
    assert_eq!(a.exported + b.exported, 2_000, "{a:?} {b:?}");
    app.assert_exported_once("WES", &ids).await;
}

#[tokio::test]
async fn export_all_covers_every_deanery_and_rejects_invalid_deanery_codes() {
    let app = spawn_app().await;
    app.seed("MER", 3).await;
    app.seed("SEV", 2).await;
    let stray = app.insert(vec![valid_record("../etc", 1)]).await;
    let mut no_deanery = valid_record("MER", 2);
    no_deanery.remove("deanery");
    let mut numeric = valid_record("MER", 3);
    numeric.insert("deanery", 12);
    let others = app.insert(vec![no_deanery, numeric]).await;

    let deaneries = esr_exporter::export::deaneries_to_export(&app.store)
        .await
        .unwrap();

    let codes: Vec<&str> = deaneries.iter().map(|d| d.as_str()).collect();
    assert_eq!(codes, ["MER", "SEV"]);
    let stray = app.find(doc! {"_id": stray[0]}).await.remove(0);
    assert_eq!(stray.get_str("status").unwrap(), "REJECTED");
    assert!(stray
        .get_str("rejectionReason")
        .unwrap()
        .contains("invalid deanery code"));
    assert!(
        app.files().is_empty(),
        "no path was built from the bad code"
    );
    assert_eq!(stray.get("exportFileName"), None::<&Bson>);
    for id in others {
        let record = app.find(doc! {"_id": id}).await.remove(0);
        assert_eq!(record.get_str("status").unwrap(), "REJECTED", "{record}");
    }
}

#[tokio::test]
async fn an_equivalent_index_is_reused_and_a_name_taken_by_other_keys_is_a_clear_error() {
    use esr_exporter::store::{LEGACY_RECORDS_INDEX, RECORDS_BY_STATUS_INDEX};
    use mongodb::{options::IndexOptions, IndexModel};
    let named = |keys: Document, name: &str| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().name(name.to_owned()).build())
            .build()
    };
    let app = spawn_app().await;
    let records = app.records();
    // The writer of the records made our status index under its own name,
    // and an earlier version left its deanery-first index.
    records.drop_indexes().await.unwrap();
    records
        .create_index(named(
            doc! {"status": 1, "deanery": 1, "_id": 1},
            "writer_status",
        ))
        .await
        .unwrap();
    records
        .create_index(named(
            doc! {"deanery": 1, "status": 1, "_id": 1},
            LEGACY_RECORDS_INDEX,
        ))
        .await
        .unwrap();

    app.store.ensure_indexes().await.unwrap();
    app.store.ensure_indexes().await.unwrap();

    // Reused, not duplicated; the old index is left for operators to drop
    // once no replica of an earlier version uses it.
    let mut names = records.list_index_names().await.unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "_id_",
            LEGACY_RECORDS_INDEX,
            "esr_exporter_run_status_id",
            "writer_status"
        ]
    );
    let ids = app.seed("MER", 3).await;
    let summary = app.exporter.run(&deanery("MER")).await;
    assert_eq!(summary.exported, 3, "{summary:?}");
    assert_eq!(
        app.count(doc! {"_id": {"$in": ids}, "status": "EXPORTED"})
            .await,
        3
    );

    // Our index name taken by other keys is an error that names the index.
    records.drop_index("writer_status").await.unwrap();
    records
        .create_index(named(
            doc! {"deanery": 1, "_id": 1},
            RECORDS_BY_STATUS_INDEX,
        ))
        .await
        .unwrap();
    let err = app.store.ensure_indexes().await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let err = err.to_string();
    assert!(
        err.starts_with(&format!("index `{RECORDS_BY_STATUS_INDEX}`")) && err.contains("taken"),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_gone_before_its_publication_was_recorded_is_held_then_published_again_with_the_same_bytes(
) {
    // Arrange: a completed run, wound back to the moment after its file
    // was created and a reader took it, before the run recorded that.
    // Nothing says whether the file went: the run is held in doubt.
    let (app, ids) = seeded("EMD", 35, "ESR_EXPORT__CHUNK_SIZE=10").await;
    let first = app.exporter.run(&deanery("EMD")).await;
    let name = first.file.clone().unwrap();
    let runs = app.runs();
    runs.update_one(
        doc! {"_id": first.run_id.clone().unwrap()},
        doc! {"$set": {"phase": "FINALIZING"}, "$unset": {"publication": ""}},
    )
    .await
    .unwrap();
    app.records()
        .update_many(
            doc! {"deanery": "EMD"},
            doc! {"$set": {"status": "EXPORTING"}, "$unset": {"exportFileName": ""}},
        )
        .await
        .unwrap();
    let taken = app.export_dir().join(&name);
    let bytes = std::fs::read(&taken).unwrap();
    std::fs::remove_file(&taken).unwrap();
    std::fs::remove_file(app.export_dir().join(format!("{name}.json"))).unwrap();

    // Act: the resume is held; the receiver never had it.
    let held = app.exporter.run(&deanery("EMD")).await;
    assert_eq!(held.status(), RunStatus::Failed, "{held:?}");
    let error = held.error().unwrap_or_default();
    assert!(
        error.contains(&format!("{name} may have been delivered and taken")),
        "{error}"
    );
    assert!(!taken.exists(), "nothing published while in doubt");
    let resolve = ["resolve", name.as_str(), "--not-delivered"];
    let output = run_binary(&app, &resolve, &[]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Assert: the same name holds the same bytes again, with its manifest,
    // and every record is EXPORTED with it.
    assert_eq!(
        std::fs::read(&taken).unwrap(),
        bytes,
        "same name, same bytes"
    );
    app.assert_exported_once("EMD", &ids).await;
    let run = runs
        .find_one(doc! {"_id": first.run_id.clone().unwrap()})
        .await
        .unwrap()
        .unwrap();
    let publication = run.get_document("publication").unwrap();
    assert_eq!(
        publication
            .get_document("location")
            .unwrap()
            .get_str("path")
            .unwrap(),
        std::path::absolute(&taken).unwrap().display().to_string()
    );
    assert!(!publication.get_str("host").unwrap().is_empty());
}

#[tokio::test]
async fn finishing_an_old_run_is_followed_by_a_run_for_records_that_came_since() {
    // Arrange: an unfinished run from earlier (its claim limit is fixed
    // at its start), then new records.
    let app = spawn_app_with(&[("ESR_EXPORT__CHUNK_SIZE", "10")]).await;
    let old = app.seed("WMD", 30).await;
    let runs = app.runs();
    let first = app.exporter.run(&deanery("WMD")).await;
    runs.update_one(
        doc! {"_id": first.run_id.clone().unwrap()},
        doc! {"$set": {"phase": "WRITTEN"}},
    )
    .await
    .unwrap();
    app.records()
        .update_many(
            doc! {"deanery": "WMD"},
            doc! {"$set": {"status": "EXPORTING"}},
        )
        .await
        .unwrap();
    let new = app.seed("WMD", 12).await;

    // Act
    let summary = app
        .exporter
        .run_with(
            &deanery("WMD"),
            &esr_exporter::export::RunOptions {
                slot: Some("2026-11-28T13:00:00Z".into()),
                ..Default::default()
            },
        )
        .await;

    // Assert: the old run finished, a new run exported the rest, and the
    // slot is recorded on the new run only.
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert!(summary.resumed);
    assert_eq!(summary.exported, 30 + 12);
    assert_eq!(
        app.count(doc! {"deanery": "WMD", "status": "EXPORTED"})
            .await,
        (old.len() + new.len()) as u64
    );
    let files = app.data_files();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(summary.file.as_deref(), Some(files[1].as_str()));
    let with_slot = runs
        .count_documents(doc! {"deanery": "WMD", "slots": "2026-11-28T13:00:00Z"})
        .await
        .unwrap();
    assert_eq!(with_slot, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writer_touching_the_records_while_they_are_marked_loses_nothing() {
    let tuning = "ESR_EXPORT__CHUNK_SIZE=200 ESR_EXPORT__MARK_BATCH_SIZE=400";
    let (app, ids) = seeded("PEN", 4_000, tuning).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (records, stop) = (app.records(), stop.clone());
        let ids = ids.clone();
        tokio::spawn(async move {
            let mut touched = 0u64;
            for id in ids.iter().cycle().step_by(7) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                // Another service updating a field of its own, whatever
                // the record's status.
                let update = doc! {"$inc": {"touchedByOther": 1}};
                if records.update_one(doc! {"_id": id}, update).await.is_ok() {
                    touched += 1;
                }
            }
            touched
        })
    };
    let summary = app.exporter.run(&deanery("PEN")).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let touched = writer.await.unwrap();

    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert!(touched > 100, "the other writer ran alongside: {touched}");
    app.assert_exported_once("PEN", &ids).await;
    crate::helpers::assert_marked_alike(&app, "PEN").await;
}

/// The file-sequence collection exists before the first claim: created
/// inside the first claims' transactions, two runs of a fresh database at
/// once would both create it and one would meet a WriteConflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_runs_of_a_fresh_database_meet_no_write_conflict() {
    let app = spawn_app().await;
    let collections = app.db.list_collection_names().await.unwrap();
    assert!(
        collections.iter().any(|c| c == "exportSequences"),
        "{collections:?}"
    );
    let mer = app.seed("MER", 300).await;
    let eoe = app.seed("EOE", 300).await;

    let (first, second) = (deanery("MER"), deanery("EOE"));
    let (a, b) = tokio::join!(app.exporter.run(&first), app.exporter.run(&second));

    for summary in [&a, &b] {
        assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
        assert_eq!(summary.write_conflicts, 0, "{summary:?}");
    }
    app.assert_exported_once("MER", &mer).await;
    app.assert_exported_once("EOE", &eoe).await;
}
