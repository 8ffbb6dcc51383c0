//! Background work that will try again (here the stuck-record check and
//! the waiting-records count) under a MongoDB that stops answering: a
//! 20-second black hole is said at WARN only, and an outage longer than
//! the check's bound (its period, at least a minute) at ERROR once, then
//! its recovery at INFO.

use std::time::Duration;

use crate::helpers::{
    binary, eventually, free_port, http_get, metric, primary_host_port, spawn_app, unique_deanery,
    TestApp, Watched,
};
use crate::support::proxy::WireProxy;

/// `mongodb.operation_timeout_ms` here: each failed check takes this long.
const BOUND_MS: &str = "2000";
const WAIT: Duration = Duration::from_secs(60);

/// True once `/readyz` says MongoDB is `answering` (or not).
async fn mongodb_answers(addr: std::net::SocketAddr, answering: bool) -> bool {
    let (_, body) = http_get(addr, "/readyz").await;
    let checks: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    (checks["checks"]["mongodb"] == "ok") == answering
}

/// Black-holes MongoDB for `outage`, once the daemon sees it, then heals
/// and waits until it answers again.
async fn black_hole_for(proxy: &WireProxy, addr: std::net::SocketAddr, outage: Duration) {
    proxy.black_hole();
    eventually("MongoDB seen away", WAIT, || mongodb_answers(addr, false)).await;
    // The outage itself: what is tested is how long it lasts.
    tokio::time::sleep(outage).await;
    proxy.heal();
    eventually("MongoDB back", WAIT, || mongodb_answers(addr, true)).await;
}

/// Waits until a whole watchdog pass ran after a heal: each pass checks
/// for stuck records, then counts the waiting ones, so a record added now
/// and then counted proves a count after the heal, and a second one a
/// check after it too (which ends the failure streak). `total` is the
/// deanery's count after both.
async fn until_checked_after_the_heal(
    app: &TestApp,
    addr: std::net::SocketAddr,
    code: &str,
    total: usize,
) {
    for expected in [total - 1, total] {
        app.seed(code, 1).await;
        let sample = format!(r#"esr_records_waiting{{deanery="{code}"}}"#);
        eventually("a watchdog pass", WAIT, || async {
            let (_, metrics) = http_get(addr, "/metrics").await;
            metric(&metrics, &sample) == Some(expected as f64)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blip_of_mongodb_is_a_warning_and_an_outage_one_error() {
    let app = spawn_app().await;
    let proxy = WireProxy::start(&primary_host_port().await).await;
    let uri = format!("{}&appName={}", proxy.uri(), app.app_name);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("ESR_MONGODB__URI", uri.as_str()),
        ("ESR_MONGODB__OPERATION_TIMEOUT_MS", BOUND_MS),
        ("ESR_MONGODB__SERVER_SELECTION_TIMEOUT_MS", BOUND_MS),
        ("ESR_WATCHDOG__ENABLED", "true"),
        ("ESR_WATCHDOG__PERIOD_SECONDS", "1"),
        ("ESR_HTTP__LISTEN", listen.as_str()),
    ];
    let daemon = Watched::spawn(binary(&app, &["run"], &env));
    let addr = listen.parse().unwrap();
    eventually("ready", WAIT, || async {
        let ready = tokio::net::TcpStream::connect(addr).await.is_ok();
        ready && http_get(addr, "/readyz").await.0 == 200
    })
    .await;

    let code = unique_deanery();
    black_hole_for(&proxy, addr, Duration::from_secs(20)).await;
    until_checked_after_the_heal(&app, addr, &code, 2).await;
    black_hole_for(&proxy, addr, Duration::from_secs(75)).await;
    until_checked_after_the_heal(&app, addr, &code, 4).await;
    let (status, stderr) = daemon.terminate().await;

    assert!(status.success(), "{status:?}\n{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let said = |message: &str| lines.iter().filter(|l| l["message"] == message).count();
    let failed = said("stuck-record check failed; trying again next period");
    assert!(failed >= 2, "the checks in the holes are WARNs: {stderr}");
    let errors: Vec<&serde_json::Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(
        errors.len(),
        1,
        "one ERROR, for the long outage: {errors:#?}"
    );
    let error = errors[0];
    assert_eq!(
        error["message"],
        "stuck-record check has kept failing past its bound; trying again next period"
    );
    assert!(
        error["failing_for_seconds"].as_u64().unwrap() >= 60,
        "{error}"
    );
    assert_eq!(said("stuck-record check works again"), 1, "{stderr}");
}
