//! The bucket and SFTP tests' own check: every record delivered once.

use std::collections::BTreeMap;

use std::net::SocketAddr;
use std::time::Duration;

use bson::{doc, oid::ObjectId};

use crate::helpers::{binary, eventually, free_port, http_get, metric, run_binary, TestApp};
pub use crate::support::bucket::{bucket_env, s3_endpoint, TestBucket, PREFIX};
pub use crate::support::env::pairs;
use crate::support::sshd::TestSshd;
use esr_exporter::domain::Slot;

/// `esr-exporter export --deanery <code>` with `env` on top of the app's
/// settings; its output.
pub async fn export(app: &TestApp, env: &[(String, String)], code: &str) -> std::process::Output {
    run_binary(app, &["export", "--deanery", code], &pairs(env)).await
}

/// [`export`], asserting it succeeded.
pub async fn export_ok(
    app: &TestApp,
    env: &[(String, String)],
    code: &str,
) -> std::process::Output {
    let output = export(app, env, code).await;
    assert!(output.status.success(), "{}", stderr(&output));
    output
}

/// A command's standard error, as text.
pub fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts every id is `EXPORTED` into exactly one file of the bucket,
/// named on the record, and nothing is left waiting or claimed.
pub async fn assert_delivered_once(app: &TestApp, inbox: &impl Inbox, ids: &[ObjectId]) {
    assert_each_once(app, &inbox.delivered().await, ids).await;
    inbox.assert_only_published().await;
}

/// Where the receiving side collects files: a bucket or an SFTP server.
pub(crate) trait Inbox {
    /// The published export files, each with its lines.
    async fn delivered(&self) -> BTreeMap<String, Vec<String>>;
    /// Asserts nothing but published files (no temporaries) is there.
    async fn assert_only_published(&self);
}

impl Inbox for TestBucket {
    async fn delivered(&self) -> BTreeMap<String, Vec<String>> {
        self.files().await
    }

    async fn assert_only_published(&self) {
        TestBucket::assert_only_published(self).await;
    }
}

impl Inbox for TestSshd {
    async fn delivered(&self) -> BTreeMap<String, Vec<String>> {
        TestSshd::delivered(self)
    }

    async fn assert_only_published(&self) {
        TestSshd::assert_only_published(self);
    }
}

/// The next attempt, once the failed one's lease lapsed: it delivers
/// every record once.
pub async fn export_once_the_lease_lapses(
    app: &TestApp,
    env: &[(String, String)],
    inbox: &impl Inbox,
    ids: &[ObjectId],
) {
    app.until_leases_lapse().await;
    export_ok(app, env, "MER").await;
    assert_delivered_once(app, inbox, ids).await;
}

/// Asserts every id is `EXPORTED` into exactly one of `files` (ids per file
/// name), named on the record, and no other record is in them.
pub async fn assert_each_once(
    app: &TestApp,
    files: &BTreeMap<String, Vec<String>>,
    ids: &[ObjectId],
) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (file, in_file) in files {
        for id in in_file {
            if let Some(other) = seen.insert(id.clone(), file.clone()) {
                panic!("record {id} is in {other} and in {file}");
            }
        }
    }
    for id in ids {
        let record = app.find(doc! {"_id": id}).await.remove(0);
        assert_eq!(record.get_str("status").unwrap(), "EXPORTED", "{id}");
        let named = record.get_str("exportFileName").unwrap();
        assert_eq!(
            seen.get(&id.to_hex()).map(String::as_str),
            Some(named),
            "{id}"
        );
    }
    assert_eq!(seen.len(), ids.len(), "no other record in the files");
}

/// Two replicas, each with its own staging folder (`env` and `env_b`),
/// run `export --all` at once for `rounds` rounds of new records of three
/// deaneries, then each once more; no run fails. The ids seeded.
pub async fn export_by_two_replicas(
    app: &TestApp,
    env: &[(String, String)],
    env_b: &[(String, String)],
    rounds: usize,
) -> Vec<ObjectId> {
    let mut ids = Vec::new();
    for round in 0..rounds {
        for code in ["MER", "EOE", "LDN"] {
            ids.extend(app.seed(code, 30 + round).await);
        }
        let (pairs_a, pairs_b) = (pairs(env), pairs(env_b));
        let a = run_binary(app, &["export", "--all"], &pairs_a);
        let b = run_binary(app, &["export", "--all"], &pairs_b);
        let (a, b) = tokio::join!(a, b);
        for output in [&a, &b] {
            let text = String::from_utf8_lossy(&output.stdout);
            let log = String::from_utf8_lossy(&output.stderr);
            assert!(!text.contains("\"failed\""), "{text}\n{log}");
        }
        // A deanery skipped by one replica while the other held its lease
        // is finished by either on the next round.
    }
    for env in [env, env_b] {
        let output = run_binary(app, &["export", "--all"], &pairs(env)).await;
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{log}");
    }
    ids
}

/// `/readyz` of a daemon, once it listens.
pub async fn readyz(addr: SocketAddr) -> Option<(u16, String)> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(http_get(addr, "/readyz").await)
}

/// `esr-exporter run` with `env` on a free port, once `/readyz` is 200
/// and its destination check `ok`.
/// Commands the daemon serving `addr` to export the app's 12 `MER`
/// records and waits until they are marked; asserts it counted two
/// uploads (manifest and file) to `scheme`. The bytes it counted, and the
/// metrics.
pub async fn export_by_command(app: &TestApp, addr: SocketAddr, scheme: &str) -> (f64, String) {
    app.publish_command("MER", Slot::Manual).await;
    eventually("exported", Duration::from_secs(30), || async {
        app.count(doc! {"status": "EXPORTED"}).await == 12
    })
    .await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    let created =
        format!(r#"esr_destination_uploads_total{{destination="{scheme}",outcome="created"}}"#);
    let uploads = metric(&metrics, &created);
    assert_eq!(uploads, Some(2.0), "manifest and file: {metrics}");
    let bytes = format!(r#"esr_destination_upload_bytes_total{{destination="{scheme}"}}"#);
    (metric(&metrics, &bytes).unwrap(), metrics)
}

pub async fn ready_daemon(
    app: &TestApp,
    env: &[(String, String)],
) -> (tokio::process::Child, SocketAddr) {
    let port = free_port();
    let mut env = env.to_vec();
    env.push(("ESR_HTTP__LISTEN".to_owned(), format!("127.0.0.1:{port}")));
    let daemon = binary(app, &["run"], &pairs(&env)).spawn().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("ready", Duration::from_secs(30), || async {
        readyz(addr).await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    let (_, body) = http_get(addr, "/readyz").await;
    let checks: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(checks["checks"]["destination"], "ok", "{body}");
    (daemon, addr)
}
