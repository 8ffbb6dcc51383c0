//! The binary killed with SIGKILL at each step of a publication to a
//! bucket, held there by a proxy that withholds one request or its reply:
//! after the manifest, during a multipart upload, after the `.DAT` (before
//! the publication is recorded), and after a multipart copy created the
//! `.DAT` (its temporary object not yet removed). The next run, on another
//! staging folder (another host), delivers every record exactly once; one
//! reads the kept file back through a link of 100 KB/s.

use std::time::Duration;

use bson::oid::ObjectId;

use crate::delivery::{assert_delivered_once, bucket_env, pairs, s3_endpoint, TestBucket};
use crate::helpers::{assert_refused_over, binary, run_binary, spawn_app, TestApp};
use crate::support::s3proxy::{Action, Rule, S3Proxy};

/// Records big enough for a file of more than one 5 MiB part.
const MULTIPART_RECORDS: usize = 45_000;

fn multipart_env(env: &mut Vec<(String, String)>) {
    for (key, value) in [
        ("ESR_S3__MULTIPART_THRESHOLD_BYTES", "5242880"),
        ("ESR_S3__PART_SIZE_BYTES", "5242880"),
        ("ESR_S3__REQUEST_TIMEOUT_MS", "30000"),
        ("ESR_EXPORT__CHUNK_SIZE", "5000"),
    ] {
        env.push((key.to_owned(), value.to_owned()));
    }
}

/// Runs `export` through the proxy until `rule` has caught a request and
/// `ready` holds, then SIGKILLs it.
async fn kill_at<F, Fut>(app: &TestApp, env: &[(String, String)], rule: &Rule, ready: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut child = binary(app, &["export", "--deanery", "MER"], &pairs(env))
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !(rule.matched() >= 1 && ready().await) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the export ended ({status}) before the kill point");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kill point was never reached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
}

/// The next run, directly against the store and from another folder.
async fn finish_elsewhere(app: &TestApp, bucket: &TestBucket, extra: &[(String, String)]) {
    finish_elsewhere_through(app, bucket, &s3_endpoint(), extra).await;
}

/// The next run, through `endpoint` and from another folder.
async fn finish_elsewhere_through(
    app: &TestApp,
    bucket: &TestBucket,
    endpoint: &str,
    extra: &[(String, String)],
) {
    app.until_leases_lapse().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let mut env = bucket_env(&bucket.destination(), endpoint);
    env.extend(extra.iter().cloned());
    env.push((
        "ESR_EXPORT__OUTPUT_DIR".to_owned(),
        elsewhere.path().display().to_string(),
    ));
    let output = run_binary(app, &["export", "--deanery", "MER"], &pairs(&env)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) async fn setup(records: usize) -> (TestApp, TestBucket, S3Proxy, Vec<ObjectId>) {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let ids = app.seed("MER", records).await;
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    (app, bucket, proxy, ids)
}

/// Killed while the `.DAT`'s conditional PUT (its final create) is held
/// before the store: the manifest is published, the file may or may not
/// be; the next run holds the deanery in doubt, and `resolve
/// --not-delivered` publishes it once.
#[tokio::test]
async fn killed_during_the_files_put_the_run_is_held_until_resolved() {
    let (app, bucket, proxy, ids) = setup(30).await;
    let rule = proxy.add(Rule::new("PUT", ".DAT", Action::HoldBefore));
    let env = bucket_env(&bucket.destination(), &proxy.endpoint());
    kill_at(&app, &env, &rule, || async { true }).await;
    let objects = bucket.objects().await;
    assert!(
        objects.keys().any(|k| k.ends_with(".DAT.json")),
        "manifest first: {:?}",
        objects.keys()
    );
    assert!(bucket.dat_keys().await.is_empty(), "no file yet");
    app.until_leases_lapse().await;
    let direct = bucket_env(&bucket.destination(), &s3_endpoint());
    let held = run_binary(&app, &["export", "--deanery", "MER"], &pairs(&direct)).await;
    let said = String::from_utf8_lossy(&held.stderr).into_owned();
    assert_eq!(held.status.code(), Some(1), "{said}");
    assert!(said.contains("may have been delivered and taken"), "{said}");
    let run = app.run_doc(bson::doc! {"deanery": "MER"}).await.unwrap();
    let file = run.get_str("fileName").unwrap();
    let resolved = run_binary(&app, &["resolve", file, "--not-delivered"], &pairs(&direct)).await;
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    assert_delivered_once(&app, &bucket, &ids).await;
}

/// Runs `export` until the `.DAT` is created and the store's reply is
/// held (its publication not yet recorded), then SIGKILLs it.
pub(crate) async fn killed_after_the_create(app: &TestApp, bucket: &TestBucket, proxy: &S3Proxy) {
    let rule = proxy.add(Rule::new("PUT", ".DAT", Action::HoldAfter));
    let env = bucket_env(&bucket.destination(), &proxy.endpoint());
    kill_at(app, &env, &rule, || async {
        !bucket.dat_keys().await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn killed_after_the_file_before_its_publication_is_recorded_the_file_is_kept() {
    let (app, bucket, proxy, ids) = setup(30).await;
    killed_after_the_create(&app, &bucket, &proxy).await;
    let before = bucket.objects().await;
    finish_elsewhere(&app, &bucket, &[]).await;
    assert_delivered_once(&app, &bucket, &ids).await;
    let dat = bucket.dat_keys().await.remove(0);
    assert_eq!(
        bucket.objects().await[&dat],
        before[&dat],
        "the same object, kept"
    );
}

#[tokio::test]
async fn a_file_kept_on_a_resume_is_read_back_in_ranges_on_a_slow_link() {
    let (app, bucket, proxy, ids) = setup(30_000).await;
    killed_after_the_create(&app, &bucket, &proxy).await;
    let before = bucket.objects().await;
    let dat = bucket.dat_keys().await.remove(0);
    // 100 KB/s, with the default bounds: a request's 30 s, a lease's 60 s.
    let slow = S3Proxy::start(&s3_endpoint()).await;
    let reads = slow.add(Rule::new("GET", ".DAT", Action::Throttle(100_000)));
    let defaults = [
        ("ESR_S3__REQUEST_TIMEOUT_MS", "30000"),
        ("ESR_EXPORT__LEASE_SECONDS", "60"),
    ];
    let defaults: Vec<(String, String)> = defaults
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let started = std::time::Instant::now();
    finish_elsewhere_through(&app, &bucket, &slow.endpoint(), &defaults).await;
    let took = started.elapsed();
    assert_delivered_once(&app, &bucket, &ids).await;
    assert_eq!(
        bucket.objects().await[&dat],
        before[&dat],
        "kept, not sent again"
    );
    let size = before[&dat].len();
    assert!(
        size > 3 * 1024 * 1024,
        "a file of several ranges: {size} bytes"
    );
    assert!(
        reads.matched() >= size.div_ceil(1024 * 1024),
        "read in ranges: {}",
        reads.matched()
    );
    println!(
        "resume read back {size} bytes at 100 KB/s in {:.1} s",
        took.as_secs_f64()
    );
}

#[tokio::test]
async fn killed_during_a_multipart_upload_the_next_run_uploads_again_once() {
    let (app, bucket, proxy, ids) = setup(MULTIPART_RECORDS).await;
    let rule = proxy.add(Rule::new("PUT", ".tmp", Action::HoldBefore).query("partNumber=2"));
    let mut env = bucket_env(&bucket.destination(), &proxy.endpoint());
    multipart_env(&mut env);
    kill_at(&app, &env, &rule, || async { true }).await;
    assert!(bucket.dat_keys().await.is_empty(), "no file yet");
    let mut extra = Vec::new();
    multipart_env(&mut extra);
    finish_elsewhere(&app, &bucket, &extra).await;
    assert_delivered_once(&app, &bucket, &ids).await;
}

#[tokio::test]
async fn killed_after_the_multipart_copy_the_file_is_kept_and_its_temporary_removed() {
    let (app, bucket, proxy, ids) = setup(MULTIPART_RECORDS).await;
    let rule = proxy.add(Rule::new("DELETE", ".tmp", Action::HoldBefore));
    let mut env = bucket_env(&bucket.destination(), &proxy.endpoint());
    multipart_env(&mut env);
    kill_at(&app, &env, &rule, || async { true }).await;
    let objects = bucket.objects().await;
    assert!(
        objects.keys().any(|k| k.ends_with(".tmp")),
        "the temporary object is left"
    );
    assert_eq!(bucket.dat_keys().await.len(), 1, "the file was created");
    let mut extra = Vec::new();
    multipart_env(&mut extra);
    finish_elsewhere(&app, &bucket, &extra).await;
    assert_delivered_once(&app, &bucket, &ids).await;
}

/// Killed after the file was created, before its publication was
/// recorded; then the object under its name is replaced by other bytes:
/// the next run finds what it did not publish and refuses, naming the
/// file at ERROR, and marks nothing. It never writes over the name.
#[tokio::test]
async fn killed_after_the_file_then_other_bytes_under_its_name_the_resume_refuses() {
    let (app, bucket, proxy, _) = setup(30).await;
    killed_after_the_create(&app, &bucket, &proxy).await;
    let dat = bucket.dat_keys().await.remove(0);
    bucket.put(&dat, b"someone else's bytes").await;

    app.until_leases_lapse().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let mut env = bucket_env(&bucket.destination(), &s3_endpoint());
    let folder = elsewhere.path().display().to_string();
    env.push(("ESR_EXPORT__OUTPUT_DIR".to_owned(), folder));
    let output = run_binary(&app, &["export", "--deanery", "MER"], &pairs(&env)).await;
    let name = dat.rsplit('/').next().unwrap();
    assert_refused_over(&app, &output, name).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        bucket.objects().await[&dat],
        b"someone else's bytes",
        "the name is never written over"
    );
}

/// A large file goes up in parts to a temporary object, then is copied
/// onto its name only if the name is free: another writer that takes the
/// name while the parts go up makes the copy refuse, the run fails naming
/// the file at ERROR, marks nothing, and leaves the other writer's object
/// as it is.
#[tokio::test]
async fn a_name_taken_during_a_multipart_upload_is_never_written_over() {
    let (app, bucket, proxy, _) = setup(MULTIPART_RECORDS).await;
    let delay = Action::Delay(Duration::from_secs(2));
    let rule = proxy.add(
        Rule::new("PUT", ".tmp", delay)
            .query("partNumber=2")
            .times(1),
    );
    let mut env = bucket_env(&bucket.destination(), &proxy.endpoint());
    multipart_env(&mut env);
    export_while_another_takes_the_name(&app, &bucket, &rule, &env).await;
}

/// Another writer takes the file's name between the run's look-up and its
/// create (the create is delayed on its way to the store): the
/// store refuses the create, the second look finds other bytes, and the
/// run fails naming the file, marks nothing and leaves the other object.
#[tokio::test]
async fn a_name_taken_between_the_look_up_and_the_create_is_refused() {
    let (app, bucket, proxy, _) = setup(30).await;
    let delay = Action::Delay(Duration::from_secs(2));
    let rule = proxy.add(Rule::new("PUT", ".DAT", delay).times(1));
    let env = bucket_env(&bucket.destination(), &proxy.endpoint());
    export_while_another_takes_the_name(&app, &bucket, &rule, &env).await;
}

/// Runs `export` until `rule` delays a request, puts another writer's
/// object under the file's name meanwhile, and asserts the export refused
/// it.
async fn export_while_another_takes_the_name(
    app: &TestApp,
    bucket: &TestBucket,
    rule: &Rule,
    env: &[(String, String)],
) {
    let child = binary(app, &["export", "--deanery", "MER"], &pairs(env))
        .spawn()
        .unwrap();
    crate::helpers::eventually("a request delayed", Duration::from_secs(120), || async {
        rule.matched() >= 1
    })
    .await;
    let run = app
        .run_doc(bson::doc! {"deanery": "MER"})
        .await
        .expect("the run");
    let name = run.get_str("fileName").expect("a file name").to_owned();
    let key = format!("{}/{name}", crate::delivery::PREFIX);
    bucket.put(&key, b"someone else's file").await;
    let output = child.wait_with_output().await.unwrap();
    assert_refused_for_other_bytes(app, bucket, &output, &key).await;
}

/// The export failed because other bytes hold `key` (said in its summary
/// and at ERROR naming the file), marked nothing, and left the object.
async fn assert_refused_for_other_bytes(
    app: &TestApp,
    bucket: &TestBucket,
    output: &std::process::Output,
    key: &str,
) {
    let name = key.rsplit('/').next().unwrap();
    assert_refused_over(app, output, name).await;
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let error = summary["error"].as_str().unwrap_or_default();
    assert!(error.contains("a file with other bytes"), "{error}");
    assert_eq!(bucket.objects().await[key], b"someone else's file");
}
