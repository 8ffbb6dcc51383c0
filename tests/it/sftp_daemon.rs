//! The daemon with an SFTP destination: it probes the server before taking
//! commands, `/readyz` reports the server (and goes 503, naming it, once
//! `sshd` is gone), and `/metrics` counts uploads, bytes and failures.

use std::time::Duration;

use bson::doc;
use esr_exporter::domain::Slot;

use crate::delivery::assert_delivered_once;
use crate::delivery::{export_by_command, ready_daemon, readyz};
use crate::helpers::{eventually, http_get, metric, spawn_app};
use crate::support::sshd::TestSshd;

#[tokio::test]
async fn the_daemon_reports_the_server_in_readyz_and_counts_its_uploads() {
    let (app, mut sshd) = (spawn_app().await, TestSshd::start().await);
    let ids = app.seed("MER", 12).await;
    let mut env = sshd.env();
    env.push(("ESR_SFTP__MAX_ELAPSED_MS".to_owned(), "500".to_owned()));
    env.push(("ESR_AMQP__RETRY_DELAY_MS".to_owned(), "500".to_owned()));
    let (mut daemon, addr) = ready_daemon(&app, &env).await;

    let (bytes, _) = export_by_command(&app, addr, "sftp").await;
    assert_delivered_once(&app, &sshd, &ids).await;
    let stored: u64 = sshd
        .files()
        .iter()
        .map(|n| std::fs::metadata(sshd.inbox.join(n)).unwrap().len())
        .sum();
    assert_eq!(bytes as u64, stored);

    // sshd is gone: not ready, naming the destination; a command fails
    // transiently and is counted; once sshd is back, it is delivered.
    sshd.kill();
    eventually("not ready", Duration::from_secs(15), || async {
        readyz(addr)
            .await
            .is_some_and(|(status, body)| status == 503 && body.contains(&sshd.destination()))
    })
    .await;
    let more = app.seed("EOE", 5).await;
    app.publish_command("EOE", Slot::Manual).await;
    eventually("a failure counted", Duration::from_secs(30), || async {
        let (_, metrics) = http_get(addr, "/metrics").await;
        let failed = r#"esr_destination_uploads_total{destination="sftp",outcome="failed"}"#;
        metric(&metrics, failed).is_some_and(|n| n >= 1.0)
    })
    .await;
    sshd.restart().await;
    eventually(
        "delivered once sshd is back",
        Duration::from_secs(60),
        || async { app.count(doc! {"status": "EXPORTED"}).await == 17 },
    )
    .await;
    let mut all = ids.clone();
    all.extend(more);
    assert_delivered_once(&app, &sshd, &all).await;
    eventually("ready again", Duration::from_secs(15), || async {
        readyz(addr).await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    daemon.kill().await.unwrap();
}
