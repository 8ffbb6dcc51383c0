//! The incident commands on real data, through the binary: `explain` for
//! a waiting record in each situation, a rejected, an exported and an
//! unknown one; `files`; `redeliver` to a folder and to a bucket, refused
//! after a record changed, and `--replace`.

use std::time::Duration;

use bson::{doc, Document};

use crate::crash::kill_when;
use crate::delivery::{bucket_env, pairs, s3_endpoint, TestBucket, PREFIX};
use crate::helpers::{run_binary, spawn_app, spawn_app_with, valid_record, TestApp};

async fn esr(app: &TestApp, args: &[&str]) -> (Option<i32>, String, String) {
    let output = run_binary(app, args, &[]).await;
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn explain(app: &TestApp, id: &str) -> serde_json::Value {
    let (code, stdout, stderr) = esr(app, &["explain", id, "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

async fn export(app: &TestApp, code: &str) {
    let (status, _, stderr) = esr(app, &["export", "--deanery", code]).await;
    assert_eq!(status, Some(0), "{stderr}");
}

/// A new app with `n` records of `code` exported to its folder, and the
/// file's name.
async fn exported_file(code: &str, n: usize) -> (TestApp, String) {
    let app = spawn_app().await;
    app.seed(code, n).await;
    export(&app, code).await;
    let name = app.data_files().remove(0);
    (app, name)
}

async fn run_of(app: &TestApp, file: &str) -> Document {
    let runs = app.runs();
    runs.find_one(doc! {"fileName": file})
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn explain_says_why_a_waiting_record_waits_in_each_situation() {
    // Stuck: arrived an hour ago, every minute is a slot, one minute's grace.
    let app = spawn_app_with(&[
        ("ESR_SCHEDULE__CRON", "0 * * * * *"),
        ("ESR_WATCHDOG__GRACE_MINUTES", "1"),
        ("ESR_EXPORT__CHUNK_SIZE", "10"),
        ("ESR_EXPORT__LEASE_SECONDS", "30"),
    ])
    .await;
    let stuck = app.seed_stuck("KSS", 1).await[0].to_hex();
    let why = explain(&app, &stuck).await;
    assert_eq!(why["status"], "TO_EXPORT");
    assert_eq!(why["waiting"]["reason"], "stuckPastGrace", "{why}");
    let (_, text, _) = esr(&app, &["explain", &stuck]).await;
    assert!(text.contains("STUCK: the slot"), "{text}");

    // Just arrived, no run since.
    let fresh = app.seed("OXF", 1).await[0].to_hex();
    let why = explain(&app, &fresh).await;
    assert_eq!(why["waiting"]["reason"], "noRunSinceArrival", "{why}");

    // Claimed by a run killed while claiming: its run is open, its lease held.
    app.seed("MER", 3_000).await;
    kill_when(&app, "MER", doc! {"status": "EXPORTING", "deanery": "MER"}).await;
    let claimed = app.find(doc! {"status": "EXPORTING"}).await.remove(0);
    let claimed = claimed.get_object_id("_id").unwrap().to_hex();
    let why = explain(&app, &claimed).await;
    let waiting = &why["waiting"];
    assert_eq!(waiting["reason"], "claimedByOpenRun", "{why}");
    assert_eq!(waiting["phase"], "CLAIMING");
    assert!(
        waiting["leaseOwner"].is_string() && waiting["leaseExpiresAt"].is_string(),
        "{why}"
    );
    assert_eq!(why["run"]["runId"], waiting["runId"]);
}

#[tokio::test]
async fn explain_shows_rejected_exported_and_unknown_records() {
    let app = spawn_app().await;
    let mut invalid = valid_record("EOE", 1);
    invalid.remove("positionNumber");
    let rejected = app.insert(vec![invalid]).await[0].to_hex();
    let exported = app.seed("EOE", 3).await[0].to_hex();
    export(&app, "EOE").await;

    let why = explain(&app, &rejected).await;
    assert_eq!(why["status"], "REJECTED");
    assert!(
        why["rejectionReason"]
            .as_str()
            .unwrap()
            .contains("positionNumber"),
        "{why}"
    );
    assert!(why["waiting"].is_null());

    let why = explain(&app, &exported).await;
    assert_eq!(why["status"], "EXPORTED");
    let file = why["file"].as_str().unwrap();
    assert_eq!(why["run"]["phase"], "COMPLETED");
    let published = why["run"]["publishedTo"].as_str().unwrap();
    assert!(published.ends_with(file), "{why}");
    assert!(why["exportedAt"].is_string());

    let (code, _, stderr) = esr(&app, &["explain", "6b1020fd194dc0c03cc68561"]).await;
    assert_eq!(code, Some(1), "no such record: {stderr}");
}

#[tokio::test]
async fn files_lists_published_files_newest_first_with_filters() {
    let app = spawn_app().await;
    app.seed("MER", 4).await;
    export(&app, "MER").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    app.seed("EOE", 2).await;
    export(&app, "EOE").await;
    let (code, stdout, stderr) = esr(&app, &["files", "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let files: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let deaneries: Vec<&str> = files
        .iter()
        .map(|f| f["deanery"].as_str().unwrap())
        .collect();
    assert_eq!(deaneries, ["EOE", "MER"], "newest first");
    assert_eq!(files[0]["records"], 2);
    let run = run_of(&app, files[0]["file"].as_str().unwrap()).await;
    assert_eq!(
        files[0]["sha256"].as_str().unwrap(),
        run.get_str("sha256").unwrap()
    );
    assert_eq!(
        files[0]["runId"].as_str().unwrap(),
        run.get_str("_id").unwrap()
    );
    let (_, only_mer, _) = esr(&app, &["files", "--deanery", "MER", "--json"]).await;
    let only_mer: Vec<serde_json::Value> = serde_json::from_str(&only_mer).unwrap();
    assert_eq!(only_mer.len(), 1);
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let (_, none, _) = esr(&app, &["files", "--since", &tomorrow]).await;
    assert!(none.contains("(no published files)"), "{none}");
}

#[tokio::test]
async fn redeliver_to_a_folder_rebuilds_the_same_bytes_and_records_it_on_the_run() {
    let (app, name) = exported_file("WES", 25).await;
    let original = std::fs::read(app.export_dir().join(&name)).unwrap();
    let before = app.find(doc! {"deanery": "WES"}).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let to = format!("file://{}", elsewhere.path().display());

    let (code, stdout, stderr) = esr(&app, &["redeliver", &name, "--to", &to]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("redelivered"), "{stdout}");
    assert_eq!(
        std::fs::read(elsewhere.path().join(&name)).unwrap(),
        original
    );
    assert!(
        elsewhere.path().join(format!("{name}.json")).exists(),
        "manifest too"
    );
    assert_eq!(
        app.find(doc! {"deanery": "WES"}).await,
        before,
        "records unchanged"
    );
    let run = run_of(&app, &name).await;
    let redelivery = run.get_array("redeliveries").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(
        redelivery.get_str("sha256").unwrap(),
        run.get_str("sha256").unwrap()
    );
    assert!(redelivery
        .get_str("to")
        .unwrap()
        .starts_with(&elsewhere.path().display().to_string()));
    assert!(redelivery.get_str("by").unwrap().contains('@'));

    // Again without --replace: refused, nothing written over.
    std::fs::write(elsewhere.path().join(&name), b"collected and altered").unwrap();
    let (code, _, stderr) = esr(&app, &["redeliver", &name, "--to", &to]).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(
        std::fs::read(elsewhere.path().join(&name)).unwrap(),
        b"collected and altered"
    );
    // With --replace: the file's own bytes again.
    let (code, _, stderr) = esr(&app, &["redeliver", &name, "--to", &to, "--replace"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        std::fs::read(elsewhere.path().join(&name)).unwrap(),
        original
    );
}

#[tokio::test]
async fn redeliver_is_refused_when_a_record_changed_since_naming_it() {
    let app = spawn_app().await;
    let ids = app.seed("SEV", 10).await;
    export(&app, "SEV").await;
    let name = app.data_files().remove(0);
    app.records()
        .update_one(
            doc! {"_id": ids[3]},
            doc! {"$set": {"lastName": "Changed", "updatedAt": bson::DateTime::now()}},
        )
        .await
        .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let to = format!("file://{}", elsewhere.path().display());
    let (code, _, stderr) = esr(&app, &["redeliver", &name, "--to", &to]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("does not hash to the recorded SHA-256"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&ids[3].to_hex()),
        "names the record: {stderr}"
    );
    assert!(
        std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none(),
        "nothing left"
    );
}

#[tokio::test]
async fn redeliver_to_the_bucket_it_went_to_puts_the_same_object_back() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    app.seed("NWN", 12).await;
    let env = bucket_env(&bucket.destination(), &s3_endpoint());
    let output = run_binary(&app, &["export", "--deanery", "NWN"], &pairs(&env)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key = bucket.dat_keys().await.remove(0);
    let original = bucket.objects().await[&key].clone();
    // The receiving side collected (removed) both.
    bucket.delete(&key).await;
    bucket.delete(&format!("{key}.json")).await;
    let name = key.trim_start_matches(&format!("{PREFIX}/")).to_owned();

    let output = run_binary(&app, &["redeliver", &name], &pairs(&env)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = bucket.objects().await;
    assert_eq!(objects[&key], original, "the same bytes");
    assert!(objects.contains_key(&format!("{key}.json")));
    bucket.assert_only_published().await;
    // There now: a second redelivery is refused.
    let output = run_binary(&app, &["redeliver", &name], &pairs(&env)).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
}

/// The run's publication as documents written before locations were
/// typed hold it: flat, with the full path or URL in `path`.
fn flat_publication(typed: &Document, path: &str, bucket: Option<(&str, &str)>) -> Document {
    let mut flat = doc! {
        "host": typed.get_str("host").unwrap(),
        "path": path,
        "sha256": typed.get_str("sha256").unwrap(),
        "publishedAt": typed.get_datetime("publishedAt").unwrap(),
    };
    if let Some((destination, key)) = bucket {
        flat.insert("destination", destination);
        flat.insert("key", key);
        flat.insert("etag", "\"0123\"");
    }
    flat
}

/// `files --json` once the run `id` holds `publication` as stored.
async fn files_once_stored(app: &TestApp, id: &str, publication: Document) -> serde_json::Value {
    let set = doc! {"$set": {"publication": publication}};
    app.runs().update_one(doc! {"_id": id}, set).await.unwrap();
    let (code, stdout, stderr) = esr(app, &["files", "--deanery", "PEN", "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test]
async fn a_run_document_written_before_locations_were_typed_still_reads() {
    let (app, name) = exported_file("PEN", 6).await;
    let run = run_of(&app, &name).await;
    let typed = run.get_document("publication").unwrap().clone();
    let path = std::path::absolute(app.export_dir().join(&name)).unwrap();
    let path = path.display().to_string();
    assert_eq!(
        typed.get_document("location").unwrap(),
        &doc! {"kind": "folder", "path": &path}
    );
    assert!(!typed.contains_key("path"), "one typed location: {typed}");

    // Written before: flat, for the folder.
    let id = run.get_str("_id").unwrap();
    let files = files_once_stored(&app, id, flat_publication(&typed, &path, None)).await;
    assert_eq!(files[0]["publishedTo"], path.as_str(), "{files}");
    assert_eq!(files[0]["destination"], serde_json::Value::Null, "{files}");
    let (code, stdout, _) = esr(&app, &["status", "--json"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains(&path), "status reads it: {stdout}");
    // `redeliver` finds the folder it went to from the old path.
    std::fs::remove_file(app.export_dir().join(&name)).unwrap();
    let (code, _, stderr) = esr(&app, &["redeliver", &name]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(app.export_dir().join(&name).exists(), "{stderr}");

    // Written before: flat, for a bucket.
    let url = format!("s3://old-bucket/app/{name}");
    let flat = flat_publication(
        &typed,
        &url,
        Some(("s3://old-bucket/app", &format!("app/{name}"))),
    );
    let files = files_once_stored(&app, id, flat).await;
    assert_eq!(files[0]["publishedTo"], url.as_str(), "{files}");
    assert_eq!(files[0]["destination"], "s3://old-bucket/app", "{files}");
}
