//! The bucket destination against a real S3-compatible server: files
//! delivered once (also by two replicas on one bucket), the publication
//! recorded, foreign objects refused, a store that ignores the condition
//! refused at start, and the store's faults: a black hole, 503, 403, a
//! missing bucket, no credentials to be had.

use std::time::{Duration, Instant};

use bson::doc;

use crate::delivery::{
    assert_delivered_once, bucket_env, export, export_by_two_replicas, export_ok,
    export_once_the_lease_lapses, pairs, s3_endpoint, stderr, TestBucket, PREFIX,
};
use crate::helpers::{
    assert_published, assert_refused_over, run_binary, spawn_app, spawn_app_with,
};
use crate::support::s3proxy::{Action, Rule, S3Proxy};

fn summary(output: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().next().unwrap_or("null")).unwrap()
}

#[tokio::test]
async fn a_run_publishes_manifest_and_file_to_the_bucket_and_records_where() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let ids = app.seed("MER", 40).await;
    let env = bucket_env(&bucket.destination(), &s3_endpoint());
    let output = export_ok(&app, &env, "MER").await;
    assert_delivered_once(&app, &bucket, &ids).await;
    let summary = summary(&output);
    let file = summary["file"].as_str().unwrap();
    let url = format!("s3://{}/{PREFIX}/{file}", bucket.name);
    assert_eq!(summary["publishedTo"], url.as_str());
    let run = app.run_doc(doc! {}).await.unwrap();
    let key = format!("{PREFIX}/{file}");
    let publication = assert_published(&app, &run, &bucket.destination(), &key);
    let location = publication.get_document("location").unwrap();
    assert_eq!(location.get_str("kind").unwrap(), "object", "{location}");
    assert!(!location.get_str("etag").unwrap().is_empty());
    let everything = format!(
        "{}{}{run}",
        stderr(&output),
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        !everything.contains("test-secret-never-printed"),
        "credentials leaked"
    );
    assert_said_where_it_went(&app, &output, &bucket.destination(), &key, &url).await;
}

/// The log line of the publication names the destination and the key,
/// and `status` the file's URL: an operator finds where a file went
/// without reading the run document.
async fn assert_said_where_it_went(
    app: &crate::helpers::TestApp,
    output: &std::process::Output,
    destination: &str,
    key: &str,
    url: &str,
) {
    let said = stderr(output);
    let published: serde_json::Value = said
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "export file published")
        .unwrap_or_else(|| panic!("no publication line: {said}"));
    assert_eq!(published["destination"], destination, "{published}");
    assert_eq!(published["key"], key, "{published}");
    let status = run_binary(app, &["status", "--json"], &[]).await;
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let mer = report["deaneries"]
        .as_array()
        .and_then(|rows| rows.iter().find(|d| d["deanery"] == "MER"))
        .unwrap_or_else(|| panic!("MER in {report}"));
    assert_eq!(mer["lastRun"]["publishedTo"], url, "{mer}");
}

#[tokio::test]
async fn check_config_proves_the_bucket_and_never_prints_the_credentials() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let env = bucket_env(&bucket.destination(), &s3_endpoint());
    let output = run_binary(&app, &["check-config"], &pairs(&env)).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("probe passed"),
        "{}",
        stderr(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&bucket.destination()), "{stdout}");
    assert!(!format!("{stdout}{}", stderr(&output)).contains("test-secret-never-printed"));
    bucket.assert_only_published().await;
    assert!(
        bucket.objects().await.is_empty(),
        "the probe deletes its objects"
    );
}

#[tokio::test]
async fn two_replicas_with_their_own_staging_folders_deliver_each_file_once() {
    let bucket = TestBucket::create().await;
    let app = spawn_app().await;
    let other_dir = tempfile::tempdir().unwrap();
    let other_dir = other_dir.path().display().to_string();
    let env = bucket_env(&bucket.destination(), &s3_endpoint());
    let mut env_b = env.clone();
    env_b.push(("ESR_EXPORT__OUTPUT_DIR".to_owned(), other_dir));
    let ids = export_by_two_replicas(&app, &env, &env_b, 4).await;
    assert_delivered_once(&app, &bucket, &ids).await;
}

#[tokio::test]
async fn an_object_someone_else_put_under_the_name_is_refused_and_nothing_is_marked() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let ids = app.seed("MER", 10).await;
    let today = chrono::Utc::now().format("%Y%m%d");
    let key = format!("{PREFIX}/DE_MER_APP_{today}_00001.DAT");
    bucket.put(&key, b"someone else's file\r\n").await;
    let env = bucket_env(&bucket.destination(), &s3_endpoint());
    let output = export(&app, &env, "MER").await;
    assert_refused_over(&app, &output, &key).await;
    assert_eq!(
        bucket.objects().await[&key],
        b"someone else's file\r\n",
        "not written over"
    );
    // Moved away: the next attempt publishes the run's own file.
    bucket.delete(&key).await;
    bucket.delete(&format!("{key}.json")).await;
    export_once_the_lease_lapses(&app, &env, &bucket, &ids).await;
}

#[tokio::test]
async fn a_store_that_ignores_if_none_match_is_refused_at_start_by_every_command_with_exit_2() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    app.seed("MER", 5).await;
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    proxy.add(Rule::new("", "", Action::StripHeader("if-none-match")));
    let env = bucket_env(&bucket.destination(), &proxy.endpoint());
    for args in [
        &["check-config"][..],
        &["export", "--deanery", "MER"][..],
        &["run"][..],
    ] {
        let output = run_binary(&app, args, &pairs(&env)).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("accepted a second create"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(
        app.count(doc! {"status": "TO_EXPORT"}).await,
        5,
        "nothing claimed"
    );
    assert!(bucket.dat_keys().await.is_empty());
}

#[tokio::test]
async fn a_forbidden_or_missing_bucket_is_refused_with_exit_2() {
    let app = spawn_app().await;
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    proxy.add(Rule::new("", "", Action::Respond(403, "AccessDenied")));
    let bucket = TestBucket::create().await;
    let forbidden = bucket_env(&bucket.destination(), &proxy.endpoint());
    let missing = bucket_env("s3://esr-no-such-bucket-here/app", &s3_endpoint());
    let cases = [
        (forbidden, bucket.destination(), "AccessDenied"),
        (
            missing,
            "s3://esr-no-such-bucket-here/app".to_owned(),
            "NoSuchBucket",
        ),
    ];
    for (env, destination, cause) in cases {
        let output = run_binary(&app, &["export", "--deanery", "MER"], &pairs(&env)).await;
        let said = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{said}");
        let line = said
            .lines()
            .find(|l| l.contains("command failed"))
            .unwrap_or_else(|| panic!("no failure line: {said}"));
        // The line names the destination, the store's own reason, and
        // what to check.
        assert!(
            line.contains(&format!("destination {destination}")),
            "{line}"
        );
        assert!(line.contains(cause), "{cause}: {line}");
        assert!(
            line.contains("s3:PutObject"),
            "the permissions to check: {line}"
        );
        let tried = "could not remove the probe";
        assert!(!said.contains(tried), "none was created: {said}");
    }
}

#[tokio::test]
async fn a_black_holed_store_fails_the_attempt_within_the_bound_naming_the_destination() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    app.seed("MER", 5).await;
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    let held = proxy.add(Rule::new("PUT", ".DAT", Action::HoldBefore));
    let mut env = bucket_env(&bucket.destination(), &proxy.endpoint());
    env.push(("ESR_S3__REQUEST_TIMEOUT_MS".to_owned(), "1500".to_owned()));
    let started = Instant::now();
    let output = export(&app, &env, "MER").await;
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(held.matched() >= 1);
    assert!(took < Duration::from_secs(12), "bounded: {took:?}");
    let summary = summary(&output);
    let error = summary["error"].as_str().unwrap();
    assert!(
        error.contains(&bucket.destination()) && error.contains("no answer within 1500 ms"),
        "{error}"
    );
    assert_eq!(app.count(doc! {"status": "EXPORTED"}).await, 0);
}

#[tokio::test]
async fn slow_down_503_429_and_409_conflict_answers_are_retried_and_logged() {
    let app = spawn_app_with(&[("ESR_LOG__LEVEL", "warn")]).await;
    let bucket = TestBucket::create().await;
    let ids = app.seed("MER", 5).await;
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    let answers = [
        (503, "SlowDown"),
        (500, "InternalError"),
        (429, "TooManyRequests"),
        (409, "ConditionalRequestConflict"),
    ];
    let rules: Vec<Rule> = answers
        .iter()
        .map(|&(status, code)| {
            proxy.add(Rule::new("PUT", ".DAT", Action::Respond(status, code)).times(1))
        })
        .collect();
    let env = bucket_env(&bucket.destination(), &proxy.endpoint());
    let output = export_ok(&app, &env, "MER").await;
    assert!(
        rules.iter().all(|rule| rule.matched() >= 1),
        "every answer was given"
    );
    let retries = stderr(&output)
        .matches("destination request failed; retrying")
        .count();
    assert_eq!(retries, answers.len(), "{}", stderr(&output));
    assert_delivered_once(&app, &bucket, &ids).await;
}

#[tokio::test]
async fn without_credentials_the_probe_says_where_it_looked_at_once_and_sends_nothing() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    app.seed("MER", 5).await;
    // No keys, no web identity, no container credentials: the client asks
    // the instance metadata service, here a closed loopback port.
    let destination = bucket.destination();
    let endpoint = s3_endpoint();
    let env = [
        ("ESR_EXPORT__DESTINATION", destination.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1"),
    ];
    for (args, code) in [
        (&["check-config"][..], 2),
        (&["export", "--deanery", "MER"][..], 1),
    ] {
        let started = Instant::now();
        let output = run_binary(&app, args, &env).await;
        let took = started.elapsed();
        let said = stderr(&output);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {said}");
        for part in [
            "could not obtain AWS credentials",
            "AWS_ACCESS_KEY_ID",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "instance metadata service at http://127.0.0.1:1",
            destination.as_str(),
        ] {
            assert!(said.contains(part), "{args:?} names {part}: {said}");
        }
        assert!(
            !said.contains("permissions") && !said.contains("retrying"),
            "{args:?}: neither blamed on permissions nor retried: {said}"
        );
        assert!(took < Duration::from_secs(5), "{args:?} at once: {took:?}");
    }
    assert!(bucket.objects().await.is_empty(), "nothing sent");
    assert_eq!(app.count(doc! {"status": "TO_EXPORT"}).await, 5);
}

/// Each of the probe's two checks stands on its own: a store that ignores
/// `If-None-Match` only on a plain PUT is refused by the put check, one
/// that ignores it only on completing a multipart upload (the conditional
/// copy large files use) by the copy check; each names its probe object.
#[tokio::test]
async fn a_store_that_ignores_if_none_match_on_puts_or_on_copies_alone_is_refused() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    for (method, copy) in [("PUT", false), ("POST", true)] {
        let proxy = S3Proxy::start(&s3_endpoint()).await;
        proxy.add(Rule::new(method, "", Action::StripHeader("if-none-match")));
        let env = bucket_env(&bucket.destination(), &proxy.endpoint());
        let output = run_binary(&app, &["check-config"], &pairs(&env)).await;
        let said = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{method}: {said}");
        let line = said
            .lines()
            .find(|l| l.contains("accepted a second create"))
            .unwrap_or_else(|| panic!("{method}: {said}"));
        assert_eq!(
            line.contains(".copy"),
            copy,
            "{method}: the check that caught it: {line}"
        );
    }
}
