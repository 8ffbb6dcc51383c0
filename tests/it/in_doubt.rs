//! Publications in doubt: a process killed during a file's final create
//! (the rename held by the server, or done and its publication not yet
//! recorded, then the file taken by a collector). The next run finds
//! nothing under the name and holds the deanery, naming the file, until
//! `resolve` settles it; `export.in_doubt = "publish"` publishes again with
//! a WARN; a versioned bucket's delete marker settles it alone.

use bson::doc;

use crate::bucket_kills::{killed_after_the_create, setup};
use crate::delivery::{
    assert_delivered_once, bucket_env, export, pairs, s3_endpoint, stderr, PREFIX,
};
use crate::helpers::{run_binary, spawn_app, TestApp};
use crate::sftp_kills::{env_of, killed_after_the_rename, killed_when_held};
use crate::support::sshd::TestSshd;

/// `resolve FILE --delivered|--not-delivered` with `env`.
async fn resolve(
    app: &TestApp,
    env: &[(String, String)],
    file: &str,
    how: &str,
) -> std::process::Output {
    run_binary(app, &["resolve", file, how], &pairs(env)).await
}

/// Asserts the attempt was held in doubt, naming `file`, and the run
/// document says since when.
async fn assert_held(app: &TestApp, output: &std::process::Output, file: &str) {
    let said = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("{file} may have been delivered and taken")),
        "{said}"
    );
    assert!(
        said.contains(&format!("esr-exporter resolve {file}")),
        "{said}"
    );
    let run = app.run_doc(doc! {"fileName": file}).await.expect("the run");
    assert_eq!(run.get_str("phase").unwrap(), "FINALIZING");
    assert!(run
        .get_document("doubt")
        .unwrap()
        .get_datetime("since")
        .is_ok());
    let intent = run.get_document("createIntent").unwrap();
    assert_eq!(intent.get_str("name").unwrap(), file);
    assert_eq!(
        intent.get_str("sha256").unwrap(),
        run.get_str("sha256").unwrap()
    );
}

/// The file name of the deanery's only run.
async fn file_of(app: &TestApp) -> String {
    let run = app.run_doc(doc! {"deanery": "MER"}).await.expect("a run");
    run.get_str("fileName").unwrap().to_owned()
}

#[tokio::test]
async fn killed_during_the_rename_the_deanery_is_held_until_resolved_not_delivered() {
    let (app, sshd) = (
        spawn_app().await,
        TestSshd::start_holding("rename-to", ".DAT").await,
    );
    let ids = app.seed("MER", 500).await;
    killed_when_held(&app, &sshd).await;
    let file = file_of(&app).await;
    assert!(!sshd.files().contains(&file), "{:?}", sshd.files());
    app.until_leases_lapse().await;
    let env = env_of(&sshd);
    assert_held(&app, &export(&app, &env, "MER").await, &file).await;
    // Records that came since wait too: nothing more of the deanery goes.
    let later = app.seed("MER", 20).await;
    assert_held(&app, &export(&app, &env, "MER").await, &file).await;
    assert_eq!(
        sshd.files().iter().filter(|f| f.ends_with(".DAT")).count(),
        0
    );
    let exported = app.count(doc! {"status": "EXPORTED"}).await;
    assert_eq!(exported, 0, "nothing is marked while in doubt");

    let output = resolve(&app, &env, &file, "--not-delivered").await;
    assert!(output.status.success(), "{}", stderr(&output));
    let all: Vec<_> = ids.iter().chain(&later).copied().collect();
    assert_delivered_once(&app, &sshd, &all).await;
    let run = app.run_doc(doc! {"fileName": &file}).await.unwrap();
    assert_eq!(run.get_str("phase").unwrap(), "COMPLETED");
    // The create the settlement allowed closed the doubt; it is kept.
    assert!(run.get_document("doubt").is_err(), "{run}");
    let closed = run.get_array("settledDoubts").unwrap();
    let closed = closed[0].as_document().unwrap();
    assert_eq!(closed.get_str("settled").unwrap(), "notDelivered");
    // Settled once: a second settlement of a completed run is refused.
    let again = resolve(&app, &env, &file, "--delivered").await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("is not in doubt"),
        "{}",
        stderr(&again)
    );
}

async fn a_file_taken_before_its_publication_was_recorded_is_held_then_resolved_delivered(
    sshd: TestSshd,
) {
    let app = spawn_app().await;
    let ids = app.seed("MER", 300).await;
    let file = killed_after_the_rename(&app, &sshd).await;
    let sha = sshd.sha256(&file);
    // The collector takes the file the moment it appears.
    std::fs::remove_file(sshd.inbox.join(&file)).unwrap();
    app.until_leases_lapse().await;
    let env = env_of(&sshd);
    assert_held(&app, &export(&app, &env, "MER").await, &file).await;
    let refused = resolve(&app, &env, "DE_MER_APP_19990101_00001.DAT", "--delivered").await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("no run has a file named"),
        "{}",
        stderr(&refused)
    );

    let output = resolve(&app, &env, &file, "--delivered").await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !sshd.files().contains(&file),
        "nothing sent again: {:?}",
        sshd.files()
    );
    for id in &ids {
        let record = app.find(doc! {"_id": id}).await.remove(0);
        assert_eq!(record.get_str("status").unwrap(), "EXPORTED");
        assert_eq!(record.get_str("exportFileName").unwrap(), file);
    }
    let run = app.run_doc(doc! {"fileName": &file}).await.unwrap();
    assert_eq!(run.get_str("phase").unwrap(), "COMPLETED");
    let publication = run.get_document("publication").unwrap();
    assert_eq!(publication.get_str("sha256").unwrap(), sha);
}

on_both_sftp_servers!(
    a_file_taken_before_its_publication_was_recorded_is_held_then_resolved_delivered
);

#[tokio::test]
async fn with_in_doubt_publish_a_taken_file_is_published_again_with_a_warning() {
    let (app, sshd) = (spawn_app().await, TestSshd::start().await);
    let ids = app.seed("MER", 300).await;
    let file = killed_after_the_rename(&app, &sshd).await;
    let sha = sshd.sha256(&file);
    std::fs::remove_file(sshd.inbox.join(&file)).unwrap();
    app.until_leases_lapse().await;
    let mut env = env_of(&sshd);
    env.push(("ESR_EXPORT__IN_DOUBT".to_owned(), "publish".to_owned()));
    env.push(("RUST_LOG".to_owned(), "warn".to_owned()));
    let output = export(&app, &env, "MER").await;
    let said = stderr(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("publishing again a file whose create was interrupted"),
        "{said}"
    );
    assert!(said.contains(&file), "the WARN names the file: {said}");
    assert_eq!(sshd.sha256(&file), sha, "the same bytes");
    assert_delivered_once(&app, &sshd, &ids).await;
}

#[tokio::test]
async fn a_bad_in_doubt_setting_is_refused_naming_the_key() {
    let app = spawn_app().await;
    let output = crate::helpers::check_config(&app, &[("ESR_EXPORT__IN_DOUBT", "maybe")]).await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let said = stderr(&output);
    assert!(
        said.contains("export.in_doubt") && said.contains("\"hold\" or \"publish\""),
        "{said}"
    );
}

#[tokio::test]
async fn a_delete_marker_in_a_versioned_bucket_settles_the_doubt_as_delivered() {
    let (app, bucket, proxy, ids) = setup(300).await;
    bucket.enable_versioning().await;
    killed_after_the_create(&app, &bucket, &proxy).await;
    let file = file_of(&app).await;
    assert!(
        bucket.files().await.contains_key(&file),
        "created before the kill"
    );
    // The collector takes it: a delete marker over the version.
    bucket.delete(&format!("{PREFIX}/{file}")).await;
    app.until_leases_lapse().await;
    let mut env = bucket_env(&bucket.destination(), &s3_endpoint());
    env.push(("RUST_LOG".to_owned(), "warn".to_owned()));
    let output = export(&app, &env, "MER").await;
    let said = stderr(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("a delete marker is the newest version under the name"),
        "{said}"
    );
    assert!(
        !bucket.files().await.contains_key(&file),
        "not published again"
    );
    let run = app.run_doc(doc! {"fileName": &file}).await.unwrap();
    assert_eq!(run.get_str("phase").unwrap(), "COMPLETED");
    let settled = run
        .get_document("doubt")
        .unwrap()
        .get_str("settled")
        .unwrap();
    assert_eq!(settled, "delivered");
    let marked = doc! {"status": "EXPORTED", "exportFileName": &file};
    assert_eq!(app.count(marked).await, ids.len() as u64);
}

#[tokio::test]
async fn without_versioning_a_taken_object_is_held_in_doubt() {
    let (app, bucket, proxy, _ids) = setup(50).await;
    killed_after_the_create(&app, &bucket, &proxy).await;
    let file = file_of(&app).await;
    bucket.delete(&format!("{PREFIX}/{file}")).await;
    app.until_leases_lapse().await;
    let env = bucket_env(&bucket.destination(), &s3_endpoint());
    assert_held(&app, &export(&app, &env, "MER").await, &file).await;
}
