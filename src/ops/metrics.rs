//! Prometheus metrics. Names and labels are stable: alerts are built on them.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `esr_export_runs_total` | counter | `deanery`, `outcome` (`completed`, `failed`, `interrupted`, `skipped`) |
//! | `esr_records_exported_total` | counter | `deanery` |
//! | `esr_records_rejected_total` | counter | `deanery` |
//! | `esr_transaction_attempts_total` | counter | `deanery` |
//! | `esr_write_conflicts_total` | counter | `deanery` |
//! | `esr_retries_total` | counter | `deanery` |
//! | `esr_last_successful_run_timestamp_seconds` | gauge | `deanery` |
//! | `esr_last_failed_run_timestamp_seconds` | gauge | `deanery` |
//! | `esr_commands_total` | counter | `outcome` (`exported`, `no_op`, `retry`, `dead_lettered`, `requeued`) |
//! | `esr_commands_dead_lettered_total` | counter | |
//! | `esr_dead_letter_queue_messages` | gauge | |
//! | `esr_schedule_slots_fired_total` | counter | |
//! | `esr_stuck_records` | gauge | `deanery` |
//! | `esr_stuck_records_oldest_age_seconds` | gauge | `deanery` |
//! | `esr_watchdog_catch_up_commands_total` | counter | `deanery` |
//! | `esr_starting` | gauge | |
//! | `esr_consumer_attached` | gauge | |
//! | `esr_amqp_blocked` | gauge | `role` (`consumer`, `scheduler`, `watchdog`, `trigger`) |
//! | `esr_output_folder_errors_total` | counter | `error` (errno name: `ENOSPC`, `EROFS`, `EMFILE`, ...) |
//! | `esr_output_folder_writable` | gauge | |
//! | `esr_destination_uploads_total` | counter | `destination` (`file`, `s3`, `sftp`), `outcome` (`created`, `kept`, `failed`) |
//! | `esr_destination_upload_bytes_total` | counter | `destination` |
//! | `esr_destination_failures_total` | counter | `destination`, `kind` (`timeout`, `transient`, `permanent`, `occupied`) |
//! | `esr_destination_upload_duration_seconds` | histogram | `destination` |
//! | `esr_clock_skew_seconds` | gauge | |
//! | `esr_schedule_settings_differ` | gauge | |
//! | `esr_build_info` | gauge | `version`, `commit`, `built` (always 1) |
//! | `esr_export_run_duration_seconds` | histogram | `deanery` |
//! | `esr_records_waiting` | gauge | `deanery` |
//! | `esr_publications_in_doubt` | gauge | `deanery` |
//! | `esr_records_due_soon` | gauge | `deanery` |
//! | `process_cpu_seconds_total` | counter | |
//! | `process_open_fds` | gauge | |
//! | `process_max_fds` | gauge | |
//! | `process_virtual_memory_bytes` | gauge | |
//! | `process_virtual_memory_max_bytes` | gauge | |
//! | `process_resident_memory_bytes` | gauge | |
//! | `process_start_time_seconds` | gauge | |
//! | `process_threads` | gauge | |
//!
//! Counters are registered at 0 at start (for the configured deaneries),
//! so `increase()` sees the first event after a restart. The `process_*`
//! metrics are read from `/proc` at each scrape.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::{RunEnd, RunSummary};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The `process_*` metrics, collected at each scrape.
static PROCESS: std::sync::LazyLock<metrics_process::Collector> =
    std::sync::LazyLock::new(metrics_process::Collector::default);

/// Export run durations, seconds: an empty run takes milliseconds, a
/// deanery of 300,000 records minutes.
const RUN_SECONDS_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

/// Upload durations, seconds: a manifest takes milliseconds, a large file
/// over a slow link minutes.
const UPLOAD_SECONDS_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0];

/// Installs the process-wide Prometheus recorder (once) and returns the
/// handle `/metrics` renders.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("esr_destination_upload_duration_seconds".to_owned()),
                    &UPLOAD_SECONDS_BUCKETS,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("esr_export_run_duration_seconds".to_owned()),
                        &RUN_SECONDS_BUCKETS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder)
                .unwrap_or_else(|err| {
                    tracing::error!(error = %crate::error_chain::Chain(&err), "cannot install the metrics recorder; /metrics stays empty");
                    PrometheusBuilder::new().build_recorder().handle()
                });
            describe();
            PROCESS.describe();
            gauge!(
                "esr_build_info",
                "version" => crate::identity::VERSION,
                "commit" => crate::identity::COMMIT,
                "built" => crate::identity::BUILD_DATE
            )
            .set(1.0);
            handle
        })
        .clone()
}

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: name, kind, HELP text.
const HELP: [(&str, Kind, &str); 31] = [
    (
        "esr_export_runs_total",
        Kind::Counter,
        "Export attempts by deanery and outcome: completed, failed, interrupted (by shutdown, at a safe point) or skipped.",
    ),
    (
        "esr_records_exported_total",
        Kind::Counter,
        "Records written to a file and marked EXPORTED.",
    ),
    (
        "esr_records_rejected_total",
        Kind::Counter,
        "Records marked REJECTED with a reason.",
    ),
    (
        "esr_transaction_attempts_total",
        Kind::Counter,
        "MongoDB transaction attempts.",
    ),
    (
        "esr_write_conflicts_total",
        Kind::Counter,
        "MongoDB WriteConflicts (error 112) met and retried.",
    ),
    (
        "esr_retries_total",
        Kind::Counter,
        "Retries of any MongoDB operation.",
    ),
    (
        "esr_last_successful_run_timestamp_seconds",
        Kind::Gauge,
        "Unix time when the deanery's last export run completed.",
    ),
    (
        "esr_commands_total",
        Kind::Counter,
        "Command deliveries by how they were settled.",
    ),
    (
        "esr_commands_dead_lettered_total",
        Kind::Counter,
        "Commands sent to the dead-letter queue.",
    ),
    (
        "esr_schedule_slots_fired_total",
        Kind::Counter,
        "Schedule slots this replica fired.",
    ),
    (
        "esr_stuck_records",
        Kind::Gauge,
        "Records the last slot should have exported and did not.",
    ),
    (
        "esr_stuck_records_oldest_age_seconds",
        Kind::Gauge,
        "Age of the oldest stuck record.",
    ),
    (
        "esr_watchdog_catch_up_commands_total",
        Kind::Counter,
        "Catch-up commands the watchdog published.",
    ),
    (
        "esr_consumer_attached",
        Kind::Gauge,
        "1 while the command consumer is attached to its queue.",
    ),
    (
        "esr_amqp_blocked",
        Kind::Gauge,
        "1 while RabbitMQ blocks this connection's publishers (connection.blocked: a memory or disk alarm).",
    ),
    (
        "esr_output_folder_errors_total",
        Kind::Counter,
        "I/O errors met writing the output folder, by errno name.",
    ),
    (
        "esr_output_folder_writable",
        Kind::Gauge,
        "0 after an export failed to write the output folder, 1 after one published there.",
    ),
    (
        "esr_destination_uploads_total",
        Kind::Counter,
        "Files and manifests published to the destination, by outcome: created, kept (found already published with the recorded hash) or failed.",
    ),
    (
        "esr_destination_upload_bytes_total",
        Kind::Counter,
        "Bytes created at the destination.",
    ),
    (
        "esr_destination_failures_total",
        Kind::Counter,
        "Destination operations that failed, by kind: timeout, transient, permanent or occupied (another object holds the name).",
    ),
    (
        "esr_destination_upload_duration_seconds",
        Kind::Histogram,
        "Time to create one file at the destination.",
    ),
    (
        "esr_clock_skew_seconds",
        Kind::Gauge,
        "This replica's clock minus MongoDB's, measured every 5 minutes.",
    ),
    (
        "esr_schedule_settings_differ",
        Kind::Gauge,
        "1 while this replica's schedule settings (cron, zone, deaneries) differ from another live replica's.",
    ),
    (
        "esr_last_failed_run_timestamp_seconds",
        Kind::Gauge,
        "When an export attempt of the deanery last failed (Unix time), from the run documents at start, then as attempts fail.",
    ),
    (
        "esr_dead_letter_queue_messages",
        Kind::Gauge,
        "Dead letters waiting in the dead-letter queue, counted by the watchdog every period.",
    ),
    (
        "esr_export_run_duration_seconds",
        Kind::Histogram,
        "How long an export attempt took, whatever its outcome.",
    ),
    (
        "esr_starting",
        Kind::Gauge,
        "1 while start-up waits for MongoDB's indexes and the destination's probe; 0 once the daemon takes work.",
    ),
    (
        "esr_records_waiting",
        Kind::Gauge,
        "Records TO_EXPORT now, by deanery, counted by the watchdog every period.",
    ),
    (
        "esr_publications_in_doubt",
        Kind::Gauge,
        "1 while a deanery's run is held because its file's create was interrupted and nothing is under the name (it may have been delivered and taken); 0 once settled.",
    ),
    (
        "esr_records_due_soon",
        Kind::Gauge,
        "Records TO_EXPORT whose placement starts within watchdog.due_within_days (or started already), by deanery, counted by the watchdog every period.",
    ),
    (
        "esr_build_info",
        Kind::Gauge,
        "Always 1; its labels say which build runs: version, git commit, build date.",
    ),
];

/// The HELP text of every metric (the table above, in words).
fn describe() {
    for (name, kind, help) in HELP {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Records one export attempt.
pub(crate) fn record_run(summary: &RunSummary) {
    let deanery = summary.deanery.clone();
    let outcome = match summary.end {
        RunEnd::Completed => "completed",
        RunEnd::Interrupted { .. } => "interrupted",
        RunEnd::Transient { .. } | RunEnd::Permanent { .. } => "failed",
        RunEnd::Skipped { .. } => "skipped",
    };
    counter!("esr_export_runs_total", "deanery" => deanery.clone(), "outcome" => outcome)
        .increment(1);
    counter!("esr_records_exported_total", "deanery" => deanery.clone()).increment(
        if summary.end == RunEnd::Completed {
            summary.exported
        } else {
            0
        },
    );
    counter!("esr_records_rejected_total", "deanery" => deanery.clone())
        .increment(summary.rejected);
    counter!("esr_transaction_attempts_total", "deanery" => deanery.clone())
        .increment(u64::from(summary.transactions));
    counter!("esr_write_conflicts_total", "deanery" => deanery.clone())
        .increment(u64::from(summary.write_conflicts));
    counter!("esr_retries_total", "deanery" => deanery.clone())
        .increment(u64::from(summary.retries));
    histogram!("esr_export_run_duration_seconds", "deanery" => deanery.clone())
        .record(summary.duration_ms as f64 / 1000.0);
    let now = chrono::Utc::now().timestamp() as f64;
    match outcome {
        "completed" => set_last_run("esr_last_successful_run_timestamp_seconds", deanery, now),
        "failed" => set_last_run("esr_last_failed_run_timestamp_seconds", deanery, now),
        _ => {}
    }
}

/// Sets when a deanery's run last completed (or last failed), as read
/// from the run documents at start, so the alerts built on them survive
/// a restart.
pub(crate) fn seed_last_runs(deanery: &str, completed: Option<f64>, failed: Option<f64>) {
    if let Some(at) = completed {
        set_last_run(
            "esr_last_successful_run_timestamp_seconds",
            deanery.to_owned(),
            at,
        );
    }
    if let Some(at) = failed {
        set_last_run(
            "esr_last_failed_run_timestamp_seconds",
            deanery.to_owned(),
            at,
        );
    }
}

/// Moves a last-run gauge forward only: a seed read at start never hides
/// a run this process recorded meanwhile.
fn set_last_run(name: &'static str, deanery: String, at: f64) {
    let key = (name, deanery.clone());
    let mut latest = LAST_RUNS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let newest = latest.get(&key).map_or(at, |seen: &f64| seen.max(at));
    latest.insert(key, newest);
    gauge!(name, "deanery" => deanery).set(newest);
}

/// The value of each last-run gauge, by name and deanery.
static LAST_RUNS: std::sync::Mutex<std::collections::BTreeMap<(&'static str, String), f64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Reads the `process_*` metrics from `/proc`, for the scrape under way.
pub(crate) fn collect_process() {
    PROCESS.collect();
}

/// Registers every counter at 0 for the configured deaneries, so the
/// first event after a start is an increase `increase()` can see.
pub(crate) fn zero_counters(deaneries: &[String]) {
    for deanery in deaneries {
        for outcome in ["completed", "failed", "interrupted", "skipped"] {
            counter!("esr_export_runs_total", "deanery" => deanery.clone(), "outcome" => outcome)
                .increment(0);
        }
        for name in [
            "esr_records_exported_total",
            "esr_records_rejected_total",
            "esr_transaction_attempts_total",
            "esr_write_conflicts_total",
            "esr_retries_total",
        ] {
            counter!(name, "deanery" => deanery.clone()).increment(0);
        }
    }
    for outcome in ["exported", "no_op", "retry", "dead_lettered", "requeued"] {
        counter!("esr_commands_total", "outcome" => outcome).increment(0);
    }
    counter!("esr_commands_dead_lettered_total").increment(0);
    counter!("esr_schedule_slots_fired_total").increment(0);
}

/// Sets how many records of a deanery wait.
pub(crate) fn set_records_waiting(deanery: &str, waiting: i64) {
    gauge!("esr_records_waiting", "deanery" => deanery.to_owned()).set(waiting as f64);
}

/// Sets how many waiting records of a deanery are due soon.
pub(crate) fn set_records_due_soon(deanery: &str, due: i64) {
    gauge!("esr_records_due_soon", "deanery" => deanery.to_owned()).set(due as f64);
}

/// Sets whether a deanery's run is held in doubt.
pub(crate) fn set_publication_in_doubt(deanery: &str, held: bool) {
    let value = if held { 1.0 } else { 0.0 };
    gauge!("esr_publications_in_doubt", "deanery" => deanery.to_owned()).set(value);
}

/// Sets how many dead letters wait.
pub(crate) fn set_dead_letters_waiting(waiting: u32) {
    gauge!("esr_dead_letter_queue_messages").set(f64::from(waiting));
}

/// Records how a command delivery was settled.
pub(crate) fn record_command(outcome: &'static str) {
    counter!("esr_commands_total", "outcome" => outcome).increment(1);
    if outcome == "dead_lettered" {
        counter!("esr_commands_dead_lettered_total").increment(1);
    }
}

/// Records a fired schedule slot.
pub(crate) fn record_slot_fired() {
    counter!("esr_schedule_slots_fired_total").increment(1);
}

/// Sets the stuck-record gauges of a deanery.
pub(crate) fn set_stuck(deanery: &str, count: u64, oldest_age_seconds: i64) {
    gauge!("esr_stuck_records", "deanery" => deanery.to_owned()).set(count as f64);
    gauge!("esr_stuck_records_oldest_age_seconds", "deanery" => deanery.to_owned())
        .set(oldest_age_seconds as f64);
}

/// Records a catch-up command published by the watchdog.
pub(crate) fn record_catch_up(deanery: &str) {
    counter!("esr_watchdog_catch_up_commands_total", "deanery" => deanery.to_owned()).increment(1);
}

/// Sets `esr_starting`.
pub(crate) fn set_starting(starting: bool) {
    gauge!("esr_starting").set(if starting { 1.0 } else { 0.0 });
}

/// Sets `esr_consumer_attached`.
pub(crate) fn set_consumer_attached(attached: bool) {
    gauge!("esr_consumer_attached").set(if attached { 1.0 } else { 0.0 });
}

/// Records whether RabbitMQ blocks the publishers of `role`'s connection.
pub(crate) fn set_amqp_blocked(role: &str, blocked: bool) {
    gauge!("esr_amqp_blocked", "role" => role.to_owned()).set(if blocked { 1.0 } else { 0.0 });
}

/// Counts an I/O error met in the output folder, by errno name.
pub(crate) fn record_output_folder_error(error: &str) {
    counter!("esr_output_folder_errors_total", "error" => error.to_owned()).increment(1);
}

/// Sets whether the last export could write its output folder.
pub(crate) fn set_output_folder_writable(writable: bool) {
    gauge!("esr_output_folder_writable").set(if writable { 1.0 } else { 0.0 });
}

/// Sets this replica's clock skew against MongoDB's.
pub(crate) fn set_clock_skew(seconds: f64) {
    gauge!("esr_clock_skew_seconds").set(seconds);
}

/// Sets whether this replica's schedule settings differ from another's.
pub(crate) fn set_schedule_settings_differ(differ: bool) {
    gauge!("esr_schedule_settings_differ").set(if differ { 1.0 } else { 0.0 });
}
