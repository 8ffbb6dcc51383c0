//! A production replica set's failures, through a proxy that speaks the
//! wire protocol's framing: a primary that stops answering (black hole)
//! during the claim, the publication and the marking; `/readyz` during a
//! black hole; and writes applied whose reply is lost (lease, run update,
//! slot claim). Every record ends exported once, in one file.

use std::time::{Duration, Instant};

use bson::doc;
use esr_exporter::config::Settings;
use esr_exporter::destination::Destination;
use esr_exporter::domain::{RunStatus, RunSummary};
use esr_exporter::export::Exporter;
use esr_exporter::store::Store;

use crate::commands::{app_with_a_missed_slot, stuck_past_a_missed_slot};
use crate::helpers::{
    binary, deanery, eventually, http_get, primary_host_port, spawn_app_with, unique_deanery,
    TestApp, Watched,
};
use crate::support::proxy::{Fault, Request, WireProxy};

/// `mongodb.operation_timeout_ms` of these tests.
const BOUND: Duration = Duration::from_millis(2_000);
/// What a failed attempt may take beyond the bound: waking up, logging.
const SLACK: Duration = Duration::from_millis(1_000);
const WAIT: Duration = Duration::from_secs(60);

/// The app's settings, reaching MongoDB through `proxy` with the bound.
fn settings_through(app: &TestApp, proxy: &WireProxy) -> Settings {
    settings_through_with(app, proxy, &[])
}

/// The app's settings with MongoDB reached through `proxy`, its bound
/// `BOUND` and server selection 2 s, unless `extra` says otherwise.
fn settings_through_with(app: &TestApp, proxy: &WireProxy, extra: &[(&str, &str)]) -> Settings {
    let mut env = app.env.clone();
    let uri = format!("{}&appName={}", proxy.uri(), app.app_name);
    env.insert("ESR_MONGODB__URI".into(), uri);
    let bound = BOUND.as_millis().to_string();
    env.insert("ESR_MONGODB__OPERATION_TIMEOUT_MS".into(), bound);
    env.insert(
        "ESR_MONGODB__SERVER_SELECTION_TIMEOUT_MS".into(),
        "2000".into(),
    );
    for (key, value) in extra {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    Settings::load_with_env(None, Some(env)).expect("settings through the proxy")
}

pub(crate) async fn exporter_through(
    app: &TestApp,
    proxy: &WireProxy,
    extra: &[(&str, &str)],
) -> Exporter {
    let settings = settings_through_with(app, proxy, extra);
    let store = Store::build(&settings)
        .await
        .expect("store through the proxy");
    let destination = Destination::from_settings(&settings).expect("the folder");
    Exporter::new(store, settings.export.clone(), destination)
}

/// An app with `n` waiting records of a new deanery, and an exporter that
/// reaches MongoDB through a proxy.
struct Proxied {
    app: TestApp,
    code: String,
    ids: Vec<bson::oid::ObjectId>,
    proxy: WireProxy,
    exporter: Exporter,
}

/// `overrides` go to the app, `extra` to the exporter's settings.
async fn proxied_with(overrides: &[(&str, &str)], n: usize, extra: &[(&str, &str)]) -> Proxied {
    let app = spawn_app_with(overrides).await;
    let code = unique_deanery();
    let ids = app.seed(&code, n).await;
    let proxy = WireProxy::start(&primary_host_port().await).await;
    let exporter = exporter_through(&app, &proxy, extra).await;
    Proxied {
        app,
        code,
        ids,
        proxy,
        exporter,
    }
}

impl Proxied {
    /// One attempt of the deanery's export.
    async fn run(&self) -> RunSummary {
        self.exporter.run(&deanery(&self.code)).await
    }

    /// Runs attempts until one completes (the previous holder's lease
    /// lapses first); the completing summary.
    async fn run_until_completed(&self) -> RunSummary {
        let started = Instant::now();
        loop {
            let summary = self.run().await;
            if summary.status() == RunStatus::Completed || started.elapsed() > WAIT {
                return summary;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// One attempt into the black hole armed on the proxy: it fails,
    /// transiently. The summary, how long after the hole swallowed its
    /// first request, and that request.
    async fn fails_transiently(&self) -> (RunSummary, Duration, Request) {
        let failed = self.run().await;
        let (fired, request) = self.proxy.fired().expect("the black hole fired");
        let took = fired.elapsed();
        assert_eq!(failed.status(), RunStatus::Failed, "{failed:?}");
        assert!(failed.end.is_retryable(), "transient: {failed:?}");
        (failed, took, request)
    }

    async fn assert_exported_once(&self) {
        self.app.assert_exported_once(&self.code, &self.ids).await;
    }
}

async fn proxied(overrides: &[(&str, &str)], n: usize) -> Proxied {
    proxied_with(overrides, n, &[]).await
}

/// Black-holes MongoDB on the first request `matches` accepts, mid-run:
/// the attempt fails within the bound, naming the bound; after healing,
/// the next attempt completes and every record is exported once, in one
/// file.
async fn black_hole_during(matches: fn(&Request) -> bool) {
    let overrides = [
        ("ESR_EXPORT__CHUNK_SIZE", "100"),
        ("ESR_EXPORT__CURSOR_BATCH_SIZE", "50"),
        ("ESR_EXPORT__LEASE_SECONDS", "2"),
    ];
    let px = proxied(&overrides, 1_000).await;

    px.proxy.arm(Fault::BlackHole, matches);
    let (failed, took, request) = px.fails_transiently().await;
    // The operation's deadline and the driver's monitor (whose hello the
    // black hole swallows too) both give up after 2 s: whichever is first
    // names the failure.
    let error = failed.error().unwrap_or_default();
    assert!(
        error.contains("did not answer within 2000 ms (mongodb.operation_timeout_ms)")
            || error.contains("MongoDB unreachable (the driver gave up on the server)"),
        "{error}"
    );
    assert!(
        took <= BOUND + SLACK,
        "failed {took:?} after the black hole on {} {}",
        request.command,
        request.collection
    );

    px.proxy.heal();
    let summary = px.run_until_completed().await;
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    px.assert_exported_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_during_the_claim_fails_the_attempt_within_the_bound() {
    black_hole_during(|r| r.is("update", "generatedAppRecords", "EXPORTING")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_during_the_publication_fails_the_attempt_within_the_bound() {
    black_hole_during(|r| r.is("update", "exportRuns", "publication")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_during_the_marking_fails_the_attempt_within_the_bound() {
    black_hole_during(|r| r.is("update", "generatedAppRecords", "EXPORTED")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_mid_stream_fails_the_attempt_within_the_bound() {
    // A claim's records are read in batches of 50 (of its 100): a getMore
    // that never answers.
    black_hole_during(|r| r.command == "getMore").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_within_the_bound_of_a_black_hole_and_200_after_healing() {
    let app = spawn_app_with(&[]).await;
    let proxy = WireProxy::start(&primary_host_port().await).await;
    let daemon = app.spawn_daemon_with(settings_through(&app, &proxy)).await;
    daemon.until_ready("ready", WAIT).await;

    proxy.black_hole();
    let started = Instant::now();
    let (status, body) = http_get(daemon.http, "/readyz").await;
    let took = started.elapsed();

    assert_eq!(status, 503, "{body}");
    assert!(took <= BOUND + SLACK, "503 after {took:?}");
    assert!(!body.contains(r#""mongodb":"ok""#), "names MongoDB: {body}");
    proxy.heal();
    daemon.until_ready("ready again", WAIT).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_reset_mid_claim_is_retried_and_exports_once() {
    let px = proxied(&[("ESR_EXPORT__CHUNK_SIZE", "100")], 1_000).await;

    px.proxy.arm(Fault::Reset, |r| {
        r.is("update", "generatedAppRecords", "EXPORTING")
    });
    let summary = px.run().await;

    assert!(px.proxy.fired().is_some(), "the connections were reset");
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert!(summary.retries >= 1, "the claim was retried: {summary:?}");
    px.assert_exported_once().await;
}

/// Loses the reply to the first request `matches` accepts (it is applied),
/// runs the export through it, and checks it completes in one attempt
/// with every record exported once.
async fn lost_reply_on(matches: fn(&Request) -> bool) {
    let px = proxied(&[("ESR_EXPORT__CHUNK_SIZE", "100")], 300).await;

    // Twice: the driver retries a write once by itself.
    px.proxy.arm_times(Fault::LostReply, 2, matches);
    let summary = px.run().await;

    assert_eq!(
        px.proxy.fired_times(),
        2,
        "the reply and the driver's retry's were lost"
    );
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert_eq!(summary.retries, 0, "answered by the read-back: {summary:?}");
    px.assert_exported_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_the_lease_take_is_not_mistaken_for_another_holder() {
    lost_reply_on(|r| r.command == "findAndModify" && r.collection == "exportLeases").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_a_run_update_is_read_back() {
    lost_reply_on(|r| r.is("update", "exportRuns", "FINALIZING")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_the_mark_is_run_again_as_it_is() {
    let px = proxied(
        &[
            ("ESR_EXPORT__CHUNK_SIZE", "100"),
            ("ESR_EXPORT__MARK_BATCH_SIZE", "100"),
        ],
        300,
    )
    .await;
    // The second marking statement is applied and its reply lost, twice
    // (the driver's own retry too).
    px.proxy.arm_times(Fault::LostReply, 2, |r| {
        r.is("update", "generatedAppRecords", "EXPORTED")
            && r.is("update", "generatedAppRecords", "$gt")
    });
    let summary = px.run().await;

    assert_eq!(px.proxy.fired_times(), 2, "the mark's replies were lost");
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert!(summary.retries >= 1, "the statement ran again: {summary:?}");
    px.assert_exported_once().await;
    crate::helpers::assert_marked_alike(&px.app, &px.code).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_the_run_insert_is_read_back() {
    lost_reply_on(|r| r.command == "insert" && r.collection == "exportRuns").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_the_slot_claim_still_fires_the_slot_once() {
    let app = app_with_a_missed_slot().await;
    let code = unique_deanery();
    let ids = app.seed(&code, 30).await;
    let proxy = WireProxy::start(&primary_host_port().await).await;
    proxy.arm_times(Fault::LostReply, 2, |r| {
        r.command == "findAndModify" && r.collection == "scheduleSlots"
    });

    let daemon = app.spawn_daemon_with(settings_through(&app, &proxy)).await;
    let records = app.records();
    eventually("the slot's records exported", WAIT, || {
        let records = records.clone();
        let code = code.clone();
        async move {
            records
                .count_documents(doc! {"deanery": &code, "status": {"$ne": "EXPORTED"}})
                .await
                .unwrap()
                == 0
        }
    })
    .await;
    daemon.stop().await;

    assert!(proxy.fired().is_some(), "the reply was lost");
    let slots = app.db.collection::<bson::Document>("scheduleSlots");
    let published = slots
        .count_documents(doc! {"state": "PUBLISHED"})
        .await
        .unwrap();
    assert_eq!(published, 1, "the slot fired once");
    app.assert_exported_once(&code, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_the_catch_up_claim_is_not_mistaken_for_another_replicas() {
    // Records stuck past a slot nobody fired: the watchdog claims the
    // catch-up (an insert) and publishes it. Its reply is lost twice, so
    // the retried insert finds the `_id` taken: by this very claim.
    let (cron, app, code, ids) = stuck_past_a_missed_slot(25).await;
    let proxy = WireProxy::start(&primary_host_port().await).await;
    proxy.arm_times(Fault::LostReply, 2, |r| {
        r.is("insert", "scheduleSlots", "watchdog/")
    });
    let settings = settings_through_with(
        &app,
        &proxy,
        &[
            ("ESR_SCHEDULE__CRON", &cron),
            ("ESR_WATCHDOG__ENABLED", "true"),
            // One check in the test's time: a catch-up lost now is not
            // made good by the next period's.
            ("ESR_WATCHDOG__PERIOD_SECONDS", "3600"),
            ("ESR_WATCHDOG__GRACE_MINUTES", "0"),
        ],
    );

    let daemon = app.spawn_daemon_with(settings).await;
    eventually(
        "exported by the catch-up",
        Duration::from_secs(20),
        || async {
            app.count(doc! {"deanery": &code, "status": "EXPORTED"})
                .await
                == 25
        },
    )
    .await;
    daemon.stop().await;

    assert!(proxy.fired().is_some(), "the reply was lost");
    app.assert_exported_once(&code, &ids).await;
}

/// A black hole the driver's own monitor notices before the run's bound:
/// with `mongodb.operation_timeout_ms` at 20 s the monitor's socket times
/// out after 10 s, and the operation in flight fails with "server monitor
/// timeout". That ends the attempt at once, like the bound would, with no
/// retry and no further write (lease release, run error) to the silent
/// server: the failed summary comes within the bound plus 10 s, not after
/// a minute of retries. Healed, the next attempt completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_the_drivers_monitor_notices_first_ends_the_attempt_at_once() {
    let bound = Duration::from_secs(20);
    let overrides = [
        ("ESR_EXPORT__CHUNK_SIZE", "100"),
        ("ESR_EXPORT__LEASE_SECONDS", "2"),
    ];
    let extra = [
        ("ESR_MONGODB__OPERATION_TIMEOUT_MS", "20000"),
        ("ESR_MONGODB__SERVER_SELECTION_TIMEOUT_MS", "10000"),
    ];
    let px = proxied_with(&overrides, 1_000, &extra).await;

    px.proxy.arm(Fault::BlackHole, |r| {
        r.is("update", "generatedAppRecords", "EXPORTING")
    });
    let (failed, took, _) = px.fails_transiently().await;
    let error = failed.error().unwrap_or_default();
    assert!(error.contains("MongoDB unreachable"), "{error}");
    assert!(
        took <= bound + Duration::from_secs(10),
        "failed {took:?} after the black hole"
    );
    assert_eq!(failed.retries, 0, "nothing retried in place: {failed:?}");

    px.proxy.heal();
    let summary = px.run_until_completed().await;
    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    px.assert_exported_once().await;
}

/// `mongodb.operation_timeout_ms` as `config/default.toml` sets it.
fn default_operation_bound() -> Duration {
    let defaults =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"));
    let ms = defaults
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("operation_timeout_ms = ")?
                .trim()
                .parse()
                .ok()
        })
        .expect("mongodb.operation_timeout_ms in config/default.toml");
    Duration::from_millis(ms)
}

/// At the default settings (`mongodb.operation_timeout_ms` 30 s, the
/// driver's own monitor), a MongoDB that stops answering mid-claim fails
/// the attempt at ERROR within the bound + 10 s, and `export` exits within
/// twice the bound + 10 s: README's promise, through the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_settings_a_silent_mongodb_ends_an_export_within_its_bounds() {
    let app = spawn_app_with(&[("ESR_EXPORT__CHUNK_SIZE", "100")]).await;
    app.seed("MER", 2_000).await;
    let proxy = WireProxy::start(&primary_host_port().await).await;
    let records = app.settings.mongodb.records_collection.clone();
    proxy.arm(Fault::BlackHole, move |r| {
        r.is("update", &records, "EXPORTING")
    });
    let uri = format!("{}&appName={}", proxy.uri(), app.app_name);
    let mut export = Watched::spawn(binary(
        &app,
        &["export", "--deanery", "MER"],
        &[("ESR_MONGODB__URI", &uri)],
    ));
    let bound = default_operation_bound();

    eventually("the black hole", WAIT, || async { proxy.fired().is_some() }).await;
    let (opened, request) = proxy.fired().unwrap();
    export.until_said("export run failed", bound + WAIT).await;
    let said_after = opened.elapsed();
    let status = tokio::time::timeout(2 * bound + WAIT, export.child.wait())
        .await
        .expect("export exits")
        .unwrap();
    let exited_after = opened.elapsed();

    assert_eq!(status.code(), Some(1), "{}", export.said());
    let on = format!("{} {}", request.command, request.collection);
    assert!(
        said_after <= bound + Duration::from_secs(10),
        "ERROR {said_after:?} after the hole on {on}"
    );
    assert!(
        exited_after <= 2 * bound + Duration::from_secs(10),
        "exit {exited_after:?} after it"
    );
}

/// A process whose lease lapsed while it was stuck (MongoDB silent to it)
/// and was taken over stops claiming at its next claim: the renewal inside
/// the claim's transaction finds another holder, and the attempt fails
/// naming the lost lease. The process that took over exports every record
/// once, in one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_lost_its_lease_while_stuck_stops_claiming() {
    let tuning = [
        ("ESR_EXPORT__CHUNK_SIZE", "50"),
        ("ESR_EXPORT__LEASE_SECONDS", "2"),
    ];
    let app = spawn_app_with(&tuning).await;
    let code = unique_deanery();
    let ids = app.seed(&code, 2_000).await;
    let proxy = WireProxy::start(&primary_host_port().await).await;
    let mut extra = tuning.to_vec();
    extra.push(("ESR_MONGODB__OPERATION_TIMEOUT_MS", "30000"));
    let stuck = exporter_through(&app, &proxy, &extra).await;
    let d = deanery(&code);
    let attempt = tokio::spawn(async move { stuck.run(&d).await });
    let claimed = doc! {"deanery": &code, "status": "EXPORTING"};
    eventually("the first process claiming", WAIT, || async {
        app.count(claimed.clone()).await > 0
    })
    .await;
    proxy.arm(Fault::BlackHole, |r| r.is("update", "exportLeases", ""));
    eventually("it is stuck", WAIT, || async { proxy.fired().is_some() }).await;
    app.until_leases_lapse().await;

    let took_over = app.exporter.run(&deanery(&code)).await;
    assert_eq!(took_over.status(), RunStatus::Completed, "{took_over:?}");
    proxy.heal();
    let lost = attempt.await.unwrap();

    assert_eq!(lost.status(), RunStatus::Failed, "{lost:?}");
    let error = lost.error().unwrap_or_default();
    assert!(error.contains("lost to another process"), "{error}");
    app.assert_exported_once(&code, &ids).await;
}
