//! Prometheus metrics. Names and labels are stable: alerts are built on them.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `esr_export_runs_total` | counter | `deanery`, `outcome` (`completed`, `failed`, `skipped`) |
//! | `esr_records_exported_total` | counter | `deanery` |
//! | `esr_records_rejected_total` | counter | `deanery` |
//! | `esr_transaction_attempts_total` | counter | `deanery` |
//! | `esr_write_conflicts_total` | counter | `deanery` |
//! | `esr_retries_total` | counter | `deanery` |
//! | `esr_last_successful_run_timestamp_seconds` | gauge | `deanery` |
//! | `esr_commands_total` | counter | `outcome` (`exported`, `no_op`, `retry`, `dead_lettered`, `requeued`) |
//! | `esr_commands_dead_lettered_total` | counter | |
//! | `esr_schedule_slots_fired_total` | counter | |
//! | `esr_stuck_records` | gauge | `deanery` |
//! | `esr_stuck_records_oldest_age_seconds` | gauge | `deanery` |
//! | `esr_watchdog_catch_up_commands_total` | counter | `deanery` |
//! | `esr_consumer_attached` | gauge | |

use std::sync::OnceLock;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::domain::{RunStatus, RunSummary};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns the
/// handle `/metrics` renders.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|err| {
                    tracing::error!(error = %err, "cannot install the metrics recorder; /metrics stays empty");
                    PrometheusBuilder::new().build_recorder().handle()
                })
        })
        .clone()
}

/// Records one export attempt.
pub fn record_run(summary: &RunSummary) {
    let deanery = summary.deanery.clone();
    let outcome = match summary.status {
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Skipped => "skipped",
    };
    counter!("esr_export_runs_total", "deanery" => deanery.clone(), "outcome" => outcome)
        .increment(1);
    counter!("esr_records_exported_total", "deanery" => deanery.clone()).increment(
        if summary.status == RunStatus::Completed {
            summary.exported
        } else {
            0
        },
    );
    counter!("esr_records_rejected_total", "deanery" => deanery.clone())
        .increment(summary.rejected);
    counter!("esr_transaction_attempts_total", "deanery" => deanery.clone())
        .increment(u64::from(summary.attempts));
    counter!("esr_write_conflicts_total", "deanery" => deanery.clone())
        .increment(u64::from(summary.write_conflicts));
    counter!("esr_retries_total", "deanery" => deanery.clone())
        .increment(u64::from(summary.retries));
    if summary.status == RunStatus::Completed {
        gauge!("esr_last_successful_run_timestamp_seconds", "deanery" => deanery)
            .set(chrono::Utc::now().timestamp() as f64);
    }
}

/// Records how a command delivery was settled.
pub fn record_command(outcome: &'static str) {
    counter!("esr_commands_total", "outcome" => outcome).increment(1);
    if outcome == "dead_lettered" {
        counter!("esr_commands_dead_lettered_total").increment(1);
    }
}

/// Records a fired schedule slot.
pub fn record_slot_fired() {
    counter!("esr_schedule_slots_fired_total").increment(1);
}

/// Sets the stuck-record gauges of a deanery.
pub fn set_stuck(deanery: &str, count: u64, oldest_age_seconds: i64) {
    gauge!("esr_stuck_records", "deanery" => deanery.to_owned()).set(count as f64);
    gauge!("esr_stuck_records_oldest_age_seconds", "deanery" => deanery.to_owned())
        .set(oldest_age_seconds as f64);
}

/// Records a catch-up command published by the watchdog.
pub fn record_catch_up(deanery: &str) {
    counter!("esr_watchdog_catch_up_commands_total", "deanery" => deanery.to_owned()).increment(1);
}

/// Sets the consumer-attached gauge.
pub fn set_consumer_attached(attached: bool) {
    gauge!("esr_consumer_attached").set(if attached { 1.0 } else { 0.0 });
}
