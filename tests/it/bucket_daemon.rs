//! The daemon with a bucket destination: it probes the bucket before
//! taking commands, `/readyz` reports the bucket (and goes 503 when the
//! store stops answering), and `/metrics` counts uploads, bytes and their
//! duration.

use std::time::Duration;

use bson::doc;
use esr_exporter::domain::Slot;

use crate::bucket_support::{
    assert_delivered_once, bucket_env, ready_daemon, readyz, s3_endpoint, TestBucket,
};
use crate::helpers::{eventually, http_get, metric, spawn_app};
use crate::s3proxy::{Action, Rule, S3Proxy};

#[tokio::test]
async fn the_daemon_reports_the_bucket_in_readyz_and_counts_its_uploads() {
    let (app, bucket) = (spawn_app().await, TestBucket::create().await);
    let ids = app.seed("MER", 12).await;
    let proxy = S3Proxy::start(&s3_endpoint()).await;
    let env = bucket_env(&bucket.destination(), &proxy.endpoint());
    let (mut daemon, addr) = ready_daemon(&app, &env).await;

    app.publish_command("MER", Slot::Manual).await;
    eventually("exported", Duration::from_secs(30), || async {
        app.count(doc! {"status": "EXPORTED"}).await == 12
    })
    .await;
    assert_delivered_once(&app, &bucket, &ids).await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    let sample = |name: &str| metric(&metrics, name);
    let created = r#"esr_destination_uploads_total{destination="s3",outcome="created"}"#;
    assert_eq!(sample(created), Some(2.0), "manifest and file: {metrics}");
    let bytes = sample(r#"esr_destination_upload_bytes_total{destination="s3"}"#).unwrap();
    let stored: usize = bucket.objects().await.values().map(Vec::len).sum();
    assert_eq!(bytes as usize, stored);
    let count = r#"esr_destination_upload_duration_seconds_count{destination="s3"}"#;
    assert_eq!(sample(count), Some(2.0), "{metrics}");

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
