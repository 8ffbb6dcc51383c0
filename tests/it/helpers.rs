//! Test support: an isolated app per test (its own database, output folder
//! and MongoDB appName, so failpoints hit only its own commands), seeding,
//! and readers for files and records.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use crate::support::env::{daemon_env, env_line, pairs};
use crate::support::export_file::{self, Detail, Header};
use bson::{doc, oid::ObjectId, DateTime, Document};
use esr_exporter::config::Settings;
use esr_exporter::destination::Destination;
use esr_exporter::domain::{Deanery, GenerationCommand, Slot};
use esr_exporter::export::Exporter;
use esr_exporter::store::Store;
use futures_util::TryStreamExt;
use mongodb::{Client, Collection, Database};
use tokio::sync::{oneshot, Mutex, MutexGuard};

pub use crate::support::mongo::base_uri;
use crate::support::mongo::primary_of;

/// `host:port` of the primary of the server under test, as its `hello`
/// names it (else the first seed of its URI): a proxy in front of it
/// connects there directly.
pub async fn primary_host_port() -> String {
    let client = Client::with_uri_str(base_uri()).await.expect("client");
    primary_of(&client).await.expect("hello")
}

fn with_app_name(uri: &str, app_name: &str) -> String {
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}appName={app_name}")
}

static TRACING: Once = Once::new();

/// `failCommand` is one server-wide failpoint: tests that arm it take turns.
static FAILPOINT: Mutex<()> = Mutex::const_new(());

pub struct TestApp {
    pub settings: Settings,
    pub store: Store,
    pub exporter: Exporter,
    pub db: Database,
    pub client: Client,
    pub app_name: String,
    pub env: HashMap<String, String>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// An app whose settings are the defaults plus these `ESR_*` overrides.
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("esr_exporter=debug")
                .with_test_writer()
                .try_init();
        }
    });
    let id = uuid::Uuid::new_v4().simple().to_string();
    let app_name = format!("esr-test-{}", &id[..12]);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut env: HashMap<String, String> =
        daemon_env(&app_name, &format!("esr.test.{}", &id[..12]))
            .into_iter()
            .collect();
    env.extend(env_line(
        "ESR_RETRY__MAX_DELAY_MS=100 ESR_DAEMON__SHUTDOWN_GRACE_SECONDS=20",
    ));
    let exports = dir.path().join("exports").display().to_string();
    let where_to = [
        ("ESR_MONGODB__URI", with_app_name(&base_uri(), &app_name)),
        ("ESR_MONGODB__DATABASE", format!("esr_test_{}", &id[..16])),
        ("ESR_EXPORT__OUTPUT_DIR", exports),
    ];
    env.extend(where_to.map(|(key, value)| (key.to_owned(), value)));
    for (key, value) in overrides {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    let settings = Settings::load_with_env(None, Some(env.clone())).expect("test settings");
    let store = Store::build(&settings).await.expect("store");
    let client = Client::with_uri_str(base_uri()).await.expect("client");
    let db = client.database(&settings.mongodb.database);
    let exporter = Exporter::new(
        store.clone(),
        settings.export.clone(),
        Destination::from_settings(&settings).expect("the folder"),
    );
    TestApp {
        settings,
        store,
        exporter,
        db,
        client,
        app_name,
        env,
        _dir: dir,
    }
}

pub fn deanery(code: &str) -> Deanery {
    Deanery::parse(code).unwrap()
}

/// A complete, valid record; `n` varies the values.
pub fn valid_record(deanery: &str, n: usize) -> Document {
    let day = 86_400_000_i64;
    doc! {
        "_id": ObjectId::new(),
        "deanery": deanery,
        "status": "TO_EXPORT",
        "positionNumber": format!("{deanery}/POS/{n:06}"),
        "gmcNumber": format!("{}", 7_100_000 + n),
        "title": "Dr",
        "firstName": format!("First{n}"),
        "lastName": if n.is_multiple_of(5) { "Smith, \"Jr\"".to_owned() } else { format!("Last{n}") },
        "dateOfBirth": DateTime::from_millis(9_500 * day),
        "gender": "X",
        "niNumber": "QQ123456C",
        "emailAddress": format!("t{n}@example.nhs.uk"),
        "placementStartDate": DateTime::from_millis(20_800 * day),
        "placementEndDate": DateTime::from_millis(21_200 * day),
        "gradeAbbreviation": "ST3",
        "specialty": "Paediatrics",
        "wte": 0.5,
        "createdAt": DateTime::now(),
        "updatedAt": DateTime::now(),
    }
}

impl TestApp {
    pub fn records(&self) -> Collection<Document> {
        self.db
            .collection(&self.settings.mongodb.records_collection)
    }

    /// The export run documents.
    pub fn runs(&self) -> Collection<Document> {
        self.db.collection("exportRuns")
    }

    /// Waits until every deanery lease has lapsed: a killed process or a
    /// failed command leaves its lease to run out (`export.lease_seconds`).
    pub async fn until_leases_lapse(&self) {
        let leases = self.db.collection::<Document>("exportLeases");
        let latest = leases
            .find(doc! {})
            .await
            .unwrap()
            .try_collect::<Vec<Document>>()
            .await
            .unwrap()
            .iter()
            .filter_map(|lease| lease.get_datetime("expiresAt").ok())
            .map(|at| at.timestamp_millis())
            .max();
        let left = latest.map_or(0, |at| at - DateTime::now().timestamp_millis());
        // A margin for the clocks of the server and the next process.
        tokio::time::sleep(Duration::from_millis(left.max(0) as u64 + 100)).await;
    }

    /// The status report, and its row of the deanery `code`.
    pub async fn status_of(
        &self,
        code: &str,
    ) -> (
        esr_exporter::status::StatusReport,
        esr_exporter::status::DeaneryStatus,
    ) {
        let report = esr_exporter::status::report(&self.store, bson::DateTime::now())
            .await
            .unwrap();
        let row = report.deaneries.iter().find(|d| d.deanery == code).cloned();
        (
            report.clone(),
            row.unwrap_or_else(|| panic!("no row for {code}")),
        )
    }

    /// The first run document `filter` selects.
    pub async fn run_doc(&self, filter: Document) -> Option<Document> {
        self.runs().find_one(filter).await.unwrap()
    }

    pub fn export_dir(&self) -> PathBuf {
        self.settings.export.output_dir.clone()
    }

    /// Inserts `n` valid `TO_EXPORT` records; returns their ids in order.
    pub async fn seed(&self, deanery: &str, n: usize) -> Vec<ObjectId> {
        let docs: Vec<Document> = (0..n).map(|i| valid_record(deanery, i)).collect();
        self.insert(docs).await
    }

    pub async fn insert(&self, docs: Vec<Document>) -> Vec<ObjectId> {
        let ids = docs
            .iter()
            .map(|d| d.get_object_id("_id").unwrap())
            .collect();
        for batch in docs.chunks(5_000) {
            self.records().insert_many(batch.to_vec()).await.unwrap();
        }
        ids
    }

    /// `n` valid records of `deanery` created an hour ago: stuck past any
    /// slot of the last hour.
    pub async fn seed_stuck(&self, deanery: &str, n: usize) -> Vec<ObjectId> {
        let created =
            bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 3_600_000);
        let records: Vec<Document> = (0..n)
            .map(|i| {
                let mut record = valid_record(deanery, i);
                record.insert("createdAt", created);
                record
            })
            .collect();
        self.insert(records).await
    }

    pub async fn count(&self, filter: Document) -> u64 {
        self.records().count_documents(filter).await.unwrap()
    }

    pub async fn find(&self, filter: Document) -> Vec<Document> {
        self.records()
            .find(filter)
            .sort(doc! {"_id": 1})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    /// Names of the files in the output folder, sorted.
    pub fn files(&self) -> Vec<String> {
        list(&self.export_dir())
    }

    /// The export files (`.DAT`) in the export folder, sorted.
    pub fn data_files(&self) -> Vec<String> {
        let mut files = self.files();
        files.retain(|f| f.ends_with(".DAT"));
        files
    }

    /// Arms `failCommand` for this app's connections only, `times` times.
    /// Holds the server-wide failpoint until the guard is dropped; call
    /// [`TestApp::disarm`] before dropping it.
    pub async fn arm_failpoint(&self, data: Document, times: i32) -> MutexGuard<'static, ()> {
        let guard = FAILPOINT.lock().await;
        self.arm_failpoint_held(data, times).await;
        guard
    }

    /// Arms `times` WriteConflicts (112, labelled transient) on `command`.
    pub async fn arm_write_conflicts(&self, command: &str, times: i32) -> MutexGuard<'static, ()> {
        let conflict = doc! {
            "failCommands": [command],
            "errorCode": 112,
            "errorLabels": ["TransientTransactionError"],
        };
        self.arm_failpoint(conflict, times).await
    }

    /// Takes the server-wide failpoint without arming it yet.
    pub async fn hold_failpoint(&self) -> MutexGuard<'static, ()> {
        FAILPOINT.lock().await
    }

    /// Arms `failCommand` while holding the guard from [`TestApp::hold_failpoint`].
    pub async fn arm_failpoint_held(&self, data: Document, times: i32) {
        let mut data = data;
        data.insert("appName", &self.app_name);
        self.client
            .database("admin")
            .run_command(doc! {
                "configureFailPoint": "failCommand",
                "mode": {"times": times},
                "data": data,
            })
            .await
            .expect("configureFailPoint (start the server with --enable-test-commands)");
    }

    pub async fn disarm(&self) {
        self.client
            .database("admin")
            .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
            .await
            .unwrap();
    }

    /// Asserts the contract's guarantee for a deanery whose records were
    /// all valid: every id in `ids` is `EXPORTED` exactly once, in exactly
    /// one well-formed file whose manifest matches; returns that file.
    pub async fn assert_exported_once(&self, deanery: &str, ids: &[ObjectId]) -> ExportedFile {
        let mut files = self.data_files();
        files.retain(|f| f.starts_with(&format!("DE_{deanery}_APP_")));
        assert_eq!(files.len(), 1, "exactly one file for {deanery}: {files:?}");
        let file = ExportedFile::read(&self.export_dir(), &files[0]);
        let mut expected: Vec<String> = ids.iter().map(|id| id.to_hex()).collect();
        expected.sort();
        assert_eq!(
            file.ids(),
            expected,
            "file holds every record once, in _id order"
        );
        let exported = self
            .find(doc! {"deanery": deanery, "status": "EXPORTED"})
            .await;
        assert_eq!(exported.len(), ids.len(), "every record is EXPORTED");
        for record in &exported {
            assert_eq!(record.get_str("exportFileName").unwrap(), files[0]);
        }
        assert_eq!(
            self.count(doc! {"deanery": deanery, "status": {"$ne": "EXPORTED"}})
                .await,
            0
        );
        assert!(
            list(&self.export_dir())
                .iter()
                .all(|f| !f.ends_with(".tmp")),
            "no temporary files left"
        );
        file
    }
}

/// Every `EXPORTED` record of the deanery carries the same `exportedAt`
/// and `exportFileName` as the others of its run.
pub async fn assert_marked_alike(app: &TestApp, deanery: &str) {
    let mut by_run: HashMap<String, (DateTime, String)> = HashMap::new();
    for record in app
        .find(doc! {"deanery": deanery, "status": "EXPORTED"})
        .await
    {
        let run = record.get_str("exportRunId").unwrap().to_owned();
        let mark = (
            *record.get_datetime("exportedAt").unwrap(),
            record.get_str("exportFileName").unwrap().to_owned(),
        );
        let first = by_run.entry(run.clone()).or_insert_with(|| mark.clone());
        assert_eq!(*first, mark, "records of run {run} marked differently");
    }
}

/// Polls `check` every 50 ms until it holds; panics after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A daemon running in this process; [`RunningDaemon::stop`] is its SIGTERM.
pub struct RunningDaemon {
    pub http: std::net::SocketAddr,
    stop_tx: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningDaemon {
    /// Waits up to `within` until `/readyz` answers 200 (`what` names the
    /// wait).
    pub async fn until_ready(&self, what: &str, within: Duration) {
        eventually(what, within, || async {
            http_get(self.http, "/readyz").await.0 == 200
        })
        .await;
    }

    pub async fn stop(self) {
        let _ = self.stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the daemon stops within its grace period")
            .expect("the daemon task did not panic")
            .expect("the daemon stopped cleanly");
    }
}

impl TestApp {
    /// Stops `daemon`, then deletes this app's queues and exchanges.
    pub async fn stop_and_clean_up(&self, daemon: RunningDaemon) {
        daemon.stop().await;
        self.delete_broker_topology().await;
    }

    /// `esr-exporter run` in this process, with these settings.
    pub async fn spawn_daemon(&self) -> RunningDaemon {
        self.spawn_daemon_with(self.settings.clone()).await
    }

    pub async fn spawn_daemon_with(&self, settings: Settings) -> RunningDaemon {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let daemon = esr_exporter::daemon::Daemon::build(settings)
            .await
            .expect("daemon builds");
        let http = daemon.http_addr().unwrap();
        let handle = tokio::spawn(daemon.run(async move {
            let _ = stop_rx.await;
        }));
        RunningDaemon {
            http,
            stop_tx,
            handle,
        }
    }

    pub async fn amqp_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let (connection, channel) =
            esr_exporter::broker::open_declared(&self.settings.amqp, "test")
                .await
                .expect("RabbitMQ");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        (connection, channel)
    }

    /// Publishes any body onto the command queue, confirmed.
    pub async fn publish_raw(&self, body: &[u8]) {
        let (connection, channel) = self.amqp_channel().await;
        esr_exporter::broker::publish_confirmed(
            &channel,
            "",
            &self.settings.amqp.queue,
            body,
            esr_exporter::broker::message_properties("raw", Default::default()),
            self.settings.amqp.publish_timeout(),
        )
        .await
        .unwrap();
        let _ = connection.close(200, "done").await;
    }

    /// Publishes a command for `deanery`, confirmed; returns it.
    pub async fn publish_command(&self, deanery: &str, slot: Slot) -> GenerationCommand {
        let publisher = esr_exporter::broker::Publisher::connect(&self.settings.amqp, "test")
            .await
            .unwrap();
        let command = GenerationCommand::new(&Deanery::parse(deanery).unwrap(), slot, "test");
        publisher.publish(&command).await.unwrap();
        publisher.close().await;
        command
    }

    /// Ready messages in a queue.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        crate::support::broker::queue_len(&self.settings.amqp, queue)
            .await
            .unwrap()
    }

    /// Takes every message off the dead-letter queue: (body, reason).
    pub async fn take_dead_letters(&self) -> Vec<(String, String)> {
        let (connection, channel) = self.amqp_channel().await;
        let mut taken = Vec::new();
        while let Some(message) = channel
            .basic_get(
                &self.settings.amqp.dead_letter_queue(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let reason = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(esr_exporter::broker::REASON_HEADER).cloned())
                .map(|v| match v {
                    lapin::types::AMQPValue::LongString(s) => s.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            taken.push((
                String::from_utf8_lossy(&message.delivery.data).into_owned(),
                reason,
            ));
        }
        let _ = connection.close(200, "done").await;
        taken
    }

    /// Forcibly closes this app's broker connections, as an operator's
    /// `rabbitmqctl close_connection` (or a broker restart) would.
    pub async fn close_broker_connections(&self) -> usize {
        crate::support::broker::close_connections(&self.app_name)
            .await
            .unwrap()
    }

    /// Deletes this app's queues and exchange.
    pub async fn delete_broker_topology(&self) {
        crate::support::broker::delete_topology(&self.settings.amqp).await;
    }
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A parsed export file, checked for well-formedness on reading.
#[derive(Debug)]
pub struct ExportedFile {
    pub name: String,
    pub header: Header,
    pub details: Vec<Detail>,
    pub manifest: serde_json::Value,
}

impl ExportedFile {
    /// Reads and checks the file `name` in `dir` and its manifest.
    pub fn read(dir: &Path, name: &str) -> Self {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let parsed = export_file::parse(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                .unwrap();
        let wrong = export_file::manifest_mismatches(name, &bytes, parsed.details.len(), &manifest);
        assert!(wrong.is_empty(), "{wrong:?}");
        Self {
            name: name.to_owned(),
            header: parsed.header,
            details: parsed.details,
            manifest,
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.details.iter().map(|d| d.record_id.clone()).collect()
    }
}

/// `GET path` over plain HTTP/1.1: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("HTTP port");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits for the daemon's consumer to be detached while a failpoint
/// (`guard`) holds its export, then lifts it: readiness followed the
/// consumer, not the export's end, if no file was written by then.
pub async fn assert_detached_while_the_export_runs(
    app: &TestApp,
    daemon: &RunningDaemon,
    guard: MutexGuard<'static, ()>,
) {
    let wait = Duration::from_secs(90);
    eventually("detached while the export runs", wait, || {
        consumer_detached(daemon.http)
    })
    .await;
    let exported_yet = !app.files().is_empty();
    app.disarm().await;
    drop(guard);
    assert!(
        !exported_yet,
        "readiness followed the consumer, not the export's end"
    );
}

/// True when the daemon serving `addr` says it has no consumer attached:
/// `/readyz` answers 503 and `esr_consumer_attached` is 0.
pub async fn consumer_detached(addr: std::net::SocketAddr) -> bool {
    let (status, _) = http_get(addr, "/readyz").await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    status == 503 && metric(&metrics, "esr_consumer_attached") == Some(0.0)
}

/// The value of one Prometheus sample, e.g. `esr_records_exported_total{deanery="X"}`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(sample) && line[sample.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A deanery code no other test uses (metrics are per process).
pub fn unique_deanery() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    format!("Z{}", &id[..6])
}

/// `esr-exporter <args>` as a child process with the app's settings and
/// `extra` environment on top; output captured, killed when dropped.
pub fn binary(app: &TestApp, args: &[&str], extra: &[(&str, &str)]) -> tokio::process::Command {
    binary_with(&app.env, args, extra)
}

/// `esr-exporter <args>` as [`binary`] makes it, with `env` alone under
/// `extra`.
pub fn binary_with(
    env: &HashMap<String, String>,
    args: &[&str],
    extra: &[(&str, &str)],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_esr-exporter"));
    command
        .args(args)
        .env_clear()
        .envs(env)
        .envs(extra.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// `esr-exporter check-config` with `extra` on top of the app's
/// settings, to the end; its output.
pub async fn check_config(app: &TestApp, extra: &[(&str, &str)]) -> std::process::Output {
    run_binary(app, &["check-config"], extra).await
}

/// Runs `esr-exporter <args>` to the end; its output.
/// Asserts an export refused to write over `name`: it failed, said so at
/// ERROR naming it, and marked nothing.
pub async fn assert_refused_over(app: &TestApp, output: &std::process::Output, name: &str) {
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("ERROR") && log.contains(name), "{log}");
    let marked = app.count(doc! {"status": "EXPORTED"}).await;
    assert_eq!(marked, 0, "nothing marked");
}

/// Asserts `run` recorded its publication at `destination` under `key`
/// with its own hash, and nothing is left in the app's staging folder;
/// returns the publication.
pub fn assert_published<'r>(
    app: &TestApp,
    run: &'r Document,
    destination: &str,
    key: &str,
) -> &'r Document {
    let publication = run.get_document("publication").unwrap();
    let location = publication.get_document("location").unwrap();
    assert_eq!(location.get_str("destination").unwrap(), destination);
    let key_or_path = location
        .get_str("key")
        .or_else(|_| location.get_str("path"));
    assert_eq!(key_or_path.unwrap(), key, "{location}");
    assert_eq!(
        publication.get_str("sha256").unwrap(),
        run.get_str("sha256").unwrap()
    );
    let left = list(&app.export_dir());
    assert!(
        left.is_empty(),
        "nothing is left in the staging folder: {left:?}"
    );
    publication
}

/// An app tuned by `tuning` (`KEY=value` words) with `n` records of
/// `deanery` waiting.
pub async fn seeded(deanery: &str, n: usize, tuning: &str) -> (TestApp, Vec<ObjectId>) {
    let tuning = env_line(tuning);
    let app = spawn_app_with(&pairs(&tuning)).await;
    let ids = app.seed(deanery, n).await;
    (app, ids)
}

pub async fn run_binary(
    app: &TestApp,
    args: &[&str],
    extra: &[(&str, &str)],
) -> std::process::Output {
    binary(app, args, extra).output().await.unwrap()
}

/// What a finished command wrote, standard output then standard error.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A child process whose standard error is read as it comes (a full pipe
/// would stall it), so a test can wait for a line it says.
pub struct Watched {
    pub child: tokio::process::Child,
    said: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: tokio::task::JoinHandle<()>,
}

impl Watched {
    /// Spawns `command` (from [`binary`]) and starts reading its stderr.
    pub fn spawn(mut command: tokio::process::Command) -> Self {
        use tokio::io::AsyncReadExt;
        let mut child = command.spawn().unwrap();
        let mut pipe = child.stderr.take().expect("stderr piped");
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = said.clone();
        let stderr = tokio::spawn(async move {
            let mut chunk = vec![0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
                let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
                kept.lock().unwrap().push_str(&text);
            }
        });
        Self {
            child,
            said,
            stderr,
        }
    }

    /// What it wrote to stderr so far.
    pub fn said(&self) -> String {
        self.said.lock().unwrap().clone()
    }

    /// Waits up to `within` until it has written `text` to stderr.
    pub async fn until_said(&self, text: &str, within: Duration) {
        let what = format!("the daemon saying {text:?}");
        eventually(&what, within, || async { self.said().contains(text) }).await;
    }

    /// SIGTERM, then the exit status and all it wrote to stderr.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(90), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        let said = self.said.clone();
        self.stderr.await.unwrap();
        let all = said.lock().unwrap().clone();
        (status, all)
    }
}
