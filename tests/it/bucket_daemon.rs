//! The daemon with a bucket destination: it probes the bucket before
//! taking commands, `/readyz` reports the bucket (and goes 503 when the
//! store stops answering), and `/metrics` counts uploads, bytes and their
//! duration.

use std::time::Duration;

use crate::delivery::pairs;
use crate::delivery::{
    assert_delivered_once, bucket_env, export_by_command, ready_daemon, readyz, s3_endpoint,
    TestBucket,
};
use crate::helpers::{binary, eventually, http_get, metric, spawn_app};
use crate::support::s3proxy::{Action, Rule, S3Proxy};
use esr_exporter::domain::Slot;

#[tokio::test]
async fn the_daemon_reports_the_bucket_in_readyz_and_counts_its_uploads() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let ids = app.seed("MER", 12).await;
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    let env = bucket_env(&bucket.destination(), &proxy.endpoint());
    let (mut daemon, addr) = ready_daemon(&app, &env).await;

    let (bytes, metrics) = export_by_command(&app, addr, "s3").await;
    assert_delivered_once(&app, &bucket, &ids).await;
    let stored: usize = bucket.objects().await.values().map(Vec::len).sum();
    assert_eq!(bytes as usize, stored);
    let count = r#"esr_destination_upload_duration_seconds_count{destination="s3"}"#;
    assert_eq!(metric(&metrics, count), Some(2.0), "{metrics}");

    // The store stops answering: not ready, naming the destination.
    proxy.add(Rule::new("HEAD", "", Action::HoldBefore));
    eventually("not ready", Duration::from_secs(15), || async {
        readyz(addr).await.is_some_and(|(status, body)| {
            status == 503 && body.contains(&bucket.destination()) && body.contains("no answer")
        })
    })
    .await;
    daemon.kill().await.unwrap();
}

/// Stopped while it probes the bucket (the reply to the probe's first
/// create is held, so the probe is under way), the daemon lets the probe
/// finish and remove its object before it exits: no probe object is left
/// in the bucket.
#[tokio::test]
async fn a_daemon_stopped_during_its_probe_removes_the_probe_object_first() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    let held = proxy.add(Rule::new("PUT", "", Action::HoldAfter).times(1));
    let env = bucket_env(&bucket.destination(), &proxy.endpoint());
    let daemon = binary(&app, &["run"], &pairs(&env)).spawn().unwrap();
    eventually(
        "the probe's create held",
        Duration::from_secs(30),
        || async { held.matched() == 1 },
    )
    .await;
    assert!(
        bucket.objects().await.keys().any(|k| k.contains("probe")),
        "the probe object exists while its reply is held"
    );

    let pid = daemon.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(status.unwrap().success());
    let output = tokio::time::timeout(Duration::from_secs(60), daemon.wait_with_output())
        .await
        .expect("the daemon stops")
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let left: Vec<String> = bucket.objects().await.into_keys().collect();
    assert!(
        left.iter().all(|k| !k.contains("probe")),
        "{left:?}\n{stderr}"
    );
}

/// The staging folder fails once (a file stands where the folder should
/// be), then works again: the run that then completes records the folder's
/// health for a bucket destination too, so `esr_output_folder_writable`
/// and `/readyz` recover without a restart.
#[tokio::test]
async fn a_staging_folder_that_failed_once_recovers_with_the_next_run_to_a_bucket() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let ids = app.seed("MER", 12).await;
    let env = bucket_env(&bucket.destination(), &s3_endpoint());
    let (mut daemon, addr) = ready_daemon(&app, &env).await;
    let staging = app.export_dir();
    let aside = staging.with_extension("aside");
    std::fs::rename(&staging, &aside).unwrap();
    std::fs::write(&staging, b"not a folder").unwrap();

    app.publish_command("MER", Slot::Manual).await;
    eventually("the folder reported", Duration::from_secs(30), || async {
        let (_, metrics) = http_get(addr, "/metrics").await;
        metric(&metrics, "esr_output_folder_writable") == Some(0.0)
    })
    .await;
    std::fs::remove_file(&staging).unwrap();
    std::fs::rename(&aside, &staging).unwrap();

    eventually("exported on a retry", Duration::from_secs(60), || async {
        app.count(bson::doc! {"status": "EXPORTED"}).await == 12
    })
    .await;
    assert_delivered_once(&app, &bucket, &ids).await;
    eventually("ready again", Duration::from_secs(30), || async {
        readyz(addr).await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(metric(&metrics, "esr_output_folder_writable"), Some(1.0));
    daemon.kill().await.unwrap();
}

/// A store that does not answer one create (the manifest's: a `.DAT`'s
/// create without an answer would leave the file in doubt) within its
/// bound: the attempt fails, the command's retry delivers the file, and the
/// failure is counted by its kind,
/// `esr_destination_failures_total{kind="timeout"}`.
#[tokio::test]
async fn a_destination_failure_is_counted_by_its_kind() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let ids = app.seed("MER", 12).await;
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    let mut env = bucket_env(&bucket.destination(), &proxy.endpoint());
    env.push(("ESR_S3__REQUEST_TIMEOUT_MS".to_owned(), "1500".to_owned()));
    let (mut daemon, addr) = ready_daemon(&app, &env).await;
    let held = proxy.add(Rule::new("PUT", ".DAT.json", Action::HoldBefore).times(1));

    app.publish_command("MER", Slot::Manual).await;
    eventually("exported on a retry", Duration::from_secs(60), || async {
        app.count(bson::doc! {"status": "EXPORTED"}).await == 12
    })
    .await;
    assert!(held.matched() >= 1, "the first create was held");
    assert_delivered_once(&app, &bucket, &ids).await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    let timeouts = r#"esr_destination_failures_total{destination="s3",kind="timeout"}"#;
    assert_eq!(metric(&metrics, timeouts), Some(1.0), "{metrics}");
    let others = r#"esr_destination_failures_total{destination="s3",kind="permanent"}"#;
    assert!(metric(&metrics, others).unwrap_or(0.0) == 0.0, "{metrics}");
    daemon.kill().await.unwrap();
}

/// Killed (SIGKILL) while its probe's first create is held, the daemon
/// leaves its probe object; the next start on this host removes it once
/// its own probe passed, as the process that made it no longer runs. A
/// probe object of another host, young enough to be under way, is kept.
#[tokio::test]
async fn the_probe_object_of_a_killed_daemon_is_removed_by_the_next_start() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    let held = proxy.add(Rule::new("PUT", "", Action::HoldAfter).times(1));
    let env = bucket_env(&bucket.destination(), &proxy.endpoint());
    let mut daemon = binary(&app, &["run"], &pairs(&env)).spawn().unwrap();
    eventually(
        "the probe's create held",
        Duration::from_secs(30),
        || async { held.matched() == 1 },
    )
    .await;
    daemon.kill().await.unwrap();
    daemon.wait().await.unwrap();
    let probes = |objects: Vec<String>| -> Vec<String> {
        objects
            .into_iter()
            .filter(|k| k.contains("esr-exporter-probe-"))
            .collect()
    };
    let left = probes(bucket.objects().await.into_keys().collect());
    assert_eq!(left.len(), 1, "the killed probe's object: {left:?}");
    let elsewhere = "app/.esr-exporter-tmp/.esr-exporter-probe-other-host-7-0123abcd";
    bucket
        .put(elsewhere, b"another replica's probe, under way")
        .await;

    let (mut again, _) = ready_daemon(&app, &env).await;
    let now = probes(bucket.objects().await.into_keys().collect());
    assert_eq!(now, [elsewhere.to_owned()], "only the other host's is kept");
    again.kill().await.unwrap();
}
