//! What the destinations count (documented with every other metric in
//! `ops::metrics`): uploads by outcome, bytes, failures by kind, and the
//! duration of each upload.

use std::time::Duration;

use metrics::{counter, histogram};

use super::error::DestinationError;

/// A file (or manifest) created under its final name.
pub(crate) fn record_created(scheme: &'static str, bytes: u64, took: Duration) {
    counter!("esr_destination_uploads_total", "destination" => scheme, "outcome" => "created")
        .increment(1);
    counter!("esr_destination_upload_bytes_total", "destination" => scheme).increment(bytes);
    histogram!("esr_destination_upload_duration_seconds", "destination" => scheme)
        .record(took.as_secs_f64());
}

/// A file found already published with the recorded hash, and kept.
pub(crate) fn record_kept(scheme: &'static str) {
    counter!("esr_destination_uploads_total", "destination" => scheme, "outcome" => "kept")
        .increment(1);
}

/// A failed operation, by kind.
pub(crate) fn record_failure(scheme: &'static str, err: &DestinationError) {
    counter!("esr_destination_uploads_total", "destination" => scheme, "outcome" => "failed")
        .increment(1);
    counter!(
        "esr_destination_failures_total",
        "destination" => scheme,
        "kind" => err.kind.as_str()
    )
    .increment(1);
}
