//! TLS: RabbitMQ's TLS listener on 127.0.0.1:5671, with a certificate
//! signed by a test CA (`scripts/services` generates both in `/etc/rabbitmq/esr-test-tls`).
//! Both connections trust one file, `SSL_CERT_FILE` or the OS bundle: the
//! CA in it is trusted by RabbitMQ's and MongoDB's connections alike, and
//! without it both refuse the certificate.

use std::path::Path;
use std::time::Duration;

use bson::doc;

use crate::helpers::{
    binary, eventually, output_text as text, run_binary, spawn_app_with, Watched,
};

const AMQPS: &str = "amqps://guest:guest@localhost:5671/%2f";

/// The test CA's certificate, where `scripts/services` generated it and
/// RabbitMQ's TLS listener reads it.
fn test_ca() -> String {
    let ca = Path::new("/etc/rabbitmq/esr-test-tls/ca.pem");
    assert!(ca.exists(), "{} (run scripts/services)", ca.display());
    ca.display().to_string()
}

#[tokio::test]
async fn the_daemon_exports_over_tls_trusting_the_ca_in_ssl_cert_file() {
    let app = spawn_app_with(&[]).await;
    let ca = test_ca();
    let trust = [("SSL_CERT_FILE", ca.as_str()), ("ESR_AMQP__URI", AMQPS)];
    let ids = app.seed("MER", 4).await;
    let daemon = Watched::spawn(binary(&app, &["run"], &trust));

    let triggered = run_binary(&app, &["trigger", "--deanery", "MER"], &trust).await;
    assert!(triggered.status.success(), "{}", text(&triggered));
    eventually("MER exported", Duration::from_secs(30), || async {
        app.count(doc! {"deanery": "MER", "status": "EXPORTED"})
            .await
            == 4
    })
    .await;
    app.assert_exported_once("MER", &ids).await;
    let consumer =
        crate::support::broker::connections(&format!("{}:consumer", app.app_name), &["ssl"])
            .await
            .unwrap();
    assert_eq!(consumer.len(), 1, "{consumer:?}");
    assert!(
        consumer[0].starts_with("true"),
        "a TLS connection: {consumer:?}"
    );

    let (status, log) = daemon.terminate().await;
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
}

#[tokio::test]
async fn without_the_ca_the_brokers_certificate_is_refused_by_name() {
    let app = spawn_app_with(&[]).await;
    let tls = [("ESR_AMQP__URI", AMQPS)];
    let output = run_binary(&app, &["trigger", "--deanery", "MER"], &tls).await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("invalid peer certificate: UnknownIssuer"),
        "{shown}"
    );
    assert_eq!(app.queue_len(&app.settings.amqp.queue).await, 0);
}

/// MongoDB's driver would trust only its compiled-in roots: given the same
/// file, it accepts the test CA's certificate (the handshake completes and
/// only then fails, as the TLS port speaks AMQP, not MongoDB), and without
/// it refuses the certificate like the broker's client does.
#[tokio::test]
async fn mongodb_trusts_the_same_file_as_rabbitmq() {
    let uri = "mongodb://localhost:5671/?tls=true&directConnection=true";
    let app = spawn_app_with(&[]).await;
    let status = |trust: Vec<(&'static str, String)>| {
        let mut command = binary(&app, &["status"], &[]);
        command
            .env("ESR_MONGODB__URI", uri)
            .env("ESR_MONGODB__SERVER_SELECTION_TIMEOUT_MS", "3000")
            .envs(trust);
        async move { command.output().await.unwrap() }
    };

    let refused = status(vec![]).await;
    let refused_text = text(&refused);
    assert_ne!(refused.status.code(), Some(0), "{refused_text}");
    assert!(refused_text.contains("UnknownIssuer"), "{refused_text}");

    let trusted = status(vec![("SSL_CERT_FILE", test_ca())]).await;
    let trusted_text = text(&trusted);
    assert_ne!(trusted.status.code(), Some(0), "{trusted_text}");
    assert!(
        !trusted_text.contains("UnknownIssuer") && !trusted_text.contains("certificate"),
        "the certificate was trusted: {trusted_text}"
    );
    // The handshake completed: what failed is the first MongoDB message,
    // which the AMQP listener answers by closing the connection.
    assert!(
        trusted_text.contains("localhost:5671: I/O error: unexpected end of file"),
        "{trusted_text}"
    );
}
