//! The daemon with a bucket destination: it probes the bucket before
//! taking commands, `/readyz` reports the bucket (and goes 503 when the
//! store stops answering), and `/metrics` counts uploads, bytes and their
//! duration.

use std::time::Duration;

use crate::bucket_support::{
    assert_delivered_once, bucket_env, export_by_command, ready_daemon, readyz, s3_endpoint,
    TestBucket,
};
use crate::helpers::{eventually, metric, spawn_app};
use crate::s3proxy::{Action, Rule, S3Proxy};

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
