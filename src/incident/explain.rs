//! `esr-exporter explain RECORD_ID`: where a record is and why.
//!
//! The record's status, deanery, times, run, file and where the file went,
//! its rejection reason; for a record still waiting, why: no run since it
//! arrived, claimed by an open run (its phase and lease shown), a run since
//! that has not claimed it yet, or stuck past the grace period after the
//! slot that should have exported it.

use bson::{Bson, Document};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::schedule::SlotClock;
use crate::store::{RunDoc, RunPhase, Store, StoreError};

/// What `explain` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The record id as given.
    pub record_id: String,
    /// `TO_EXPORT`, `EXPORTING`, `EXPORTED`, `REJECTED` (as stored).
    pub status: String,
    /// Deanery code (as stored).
    pub deanery: String,
    /// When it arrived: `createdAt`, else its ObjectId's time.
    pub arrived_at: Option<String>,
    /// `updatedAt`, as the writing service set it.
    pub updated_at: Option<String>,
    /// When it was marked `EXPORTED`.
    pub exported_at: Option<String>,
    /// The file it is in.
    pub file: Option<String>,
    /// Why it was rejected.
    pub rejection_reason: Option<String>,
    /// The run that claimed or exported it.
    pub run: Option<RunView>,
    /// Why a record not yet exported is waiting.
    pub waiting: Option<Waiting>,
    /// A waiting record whose placement starts within
    /// `watchdog.due_within_days` (or started already).
    pub due_soon: Option<DueSoon>,
}

/// A waiting record due soon.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DueSoon {
    /// Its `placementStartDate`, RFC 3339.
    pub placement_start: String,
    /// `watchdog.due_within_days`.
    pub within_days: u64,
}

/// A run as `explain` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// Run id.
    pub run_id: String,
    /// `CLAIMING`, `FINALIZING`, `WRITTEN`, `COMPLETED`.
    pub phase: String,
    /// Start.
    pub started_at: String,
    /// End, once completed.
    pub finished_at: Option<String>,
    /// Where its file went (path or URL), once published.
    pub published_to: Option<String>,
    /// SHA-256 of its file, once staged.
    pub sha256: Option<String>,
    /// The error its last attempt stopped on.
    pub last_error: Option<String>,
}

/// Why a record is still waiting.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum Waiting {
    /// No run of its deanery started since it arrived; the next slot will.
    #[serde(rename_all = "camelCase")]
    NoRunSinceArrival {
        /// The next schedule slot.
        next_slot: Option<String>,
    },
    /// A run of its deanery started since it arrived and has not claimed it.
    #[serde(rename_all = "camelCase")]
    RunSinceNotClaimed {
        /// That run.
        run_id: String,
        /// Its phase.
        phase: String,
    },
    /// Claimed by a run that has not completed.
    #[serde(rename_all = "camelCase")]
    ClaimedByOpenRun {
        /// The run.
        run_id: String,
        /// Its phase.
        phase: String,
        /// Who holds the deanery's lease, and until when.
        lease_owner: Option<String>,
        /// When that lease lapses.
        lease_expires_at: Option<String>,
    },
    /// Past the slot that should have exported it, and its grace period.
    #[serde(rename_all = "camelCase")]
    StuckPastGrace {
        /// That slot.
        slot: String,
        /// `watchdog.grace_minutes`.
        grace_minutes: u64,
    },
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn date_of(record: &Document, key: &str) -> Option<DateTime<Utc>> {
    record.get_datetime(key).ok().map(|t| t.to_chrono())
}

/// When a record arrived: `createdAt`, else its ObjectId's time.
fn arrival(record: &Document) -> Option<DateTime<Utc>> {
    date_of(record, "createdAt").or_else(|| {
        record
            .get_object_id("_id")
            .ok()
            .map(|id| id.timestamp().to_chrono())
    })
}

fn text(record: &Document, key: &str) -> Option<String> {
    record
        .get_str(key)
        .ok()
        .map(|s| crate::domain::printable(s, 200))
}

fn run_view(run: &RunDoc) -> RunView {
    RunView {
        run_id: run.id.clone(),
        phase: run.phase.as_str().to_owned(),
        started_at: rfc3339(run.started_at.to_chrono()),
        finished_at: run.finished_at.map(|t| rfc3339(t.to_chrono())),
        published_to: run.publication.as_ref().map(|p| p.location.address()),
        sha256: run.sha256.clone(),
        last_error: run.last_error.clone(),
    }
}

/// The record id as stored: an ObjectId for 24 hex digits, else a string.
pub fn parse_record_id(id: &str) -> Bson {
    bson::oid::ObjectId::parse_str(id).map_or_else(|_| Bson::String(id.to_owned()), Bson::ObjectId)
}

/// Explains the record; `None` when there is no such record.
///
/// # Errors
/// When MongoDB fails beyond the retry policy.
pub async fn explain(
    store: &Store,
    settings: &Settings,
    id: &str,
) -> Result<Option<Explanation>, StoreError> {
    let Some(record) = store.find_record(&parse_record_id(id)).await? else {
        return Ok(None);
    };
    let status = text(&record, "status").unwrap_or_default();
    let deanery = text(&record, "deanery").unwrap_or_default();
    let run = match record.get_str("exportRunId") {
        Ok(run_id) => store.find_run(run_id).await?,
        Err(_) => None,
    };
    let due_soon = match status.as_str() {
        "TO_EXPORT" => due_soon(&record, &settings.watchdog),
        _ => None,
    };
    let waiting = match status.as_str() {
        "TO_EXPORT" => Some(why_waiting(store, settings, &record, &deanery).await?),
        "EXPORTING" => claimed_by(store, run.as_ref(), &deanery).await?,
        _ => None,
    };
    Ok(Some(Explanation {
        record_id: id.to_owned(),
        arrived_at: arrival(&record).map(rfc3339),
        updated_at: date_of(&record, "updatedAt").map(rfc3339),
        exported_at: date_of(&record, "exportedAt").map(rfc3339),
        file: text(&record, "exportFileName"),
        rejection_reason: text(&record, "rejectionReason"),
        run: run.as_ref().map(run_view),
        status,
        deanery,
        waiting,
        due_soon,
    }))
}

/// Whether a waiting record's placement starts within
/// `watchdog.due_within_days`; a record without a date there never is.
fn due_soon(record: &Document, watchdog: &crate::config::WatchdogSettings) -> Option<DueSoon> {
    let start = date_of(record, "placementStartDate")?;
    (start <= watchdog.due_by(Utc::now()).to_chrono()).then(|| DueSoon {
        placement_start: rfc3339(start),
        within_days: watchdog.due_within_days,
    })
}

/// A waiting record: stuck past the grace period, or a run since that has
/// not claimed it, or no run since it arrived.
async fn why_waiting(
    store: &Store,
    settings: &Settings,
    record: &Document,
    deanery: &str,
) -> Result<Waiting, StoreError> {
    let clock = SlotClock::new(&settings.schedule);
    let arrived = arrival(record).unwrap_or_else(Utc::now);
    let grace = chrono::Duration::minutes(settings.watchdog.grace_minutes as i64);
    let due = clock
        .next_after(arrived)
        .filter(|slot| *slot + grace < Utc::now());
    if let Some(slot) = due {
        return Ok(Waiting::StuckPastGrace {
            slot: rfc3339(slot),
            grace_minutes: settings.watchdog.grace_minutes,
        });
    }
    let since = bson::DateTime::from_chrono(arrived);
    Ok(match store.latest_run_since(deanery, since).await? {
        Some(run) => Waiting::RunSinceNotClaimed {
            run_id: run.id,
            phase: run.phase.as_str().to_owned(),
        },
        None => Waiting::NoRunSinceArrival {
            next_slot: clock.next_after(Utc::now()).map(rfc3339),
        },
    })
}

/// A claimed record's open run, with the deanery's lease.
async fn claimed_by(
    store: &Store,
    run: Option<&RunDoc>,
    deanery: &str,
) -> Result<Option<Waiting>, StoreError> {
    let Some(run) = run.filter(|run| run.phase != RunPhase::Completed) else {
        return Ok(None);
    };
    let lease = store.lease_of(deanery).await?;
    Ok(Some(Waiting::ClaimedByOpenRun {
        run_id: run.id.clone(),
        phase: run.phase.as_str().to_owned(),
        lease_owner: lease.as_ref().and_then(|l| text(l, "owner")),
        lease_expires_at: lease
            .as_ref()
            .and_then(|l| date_of(l, "expiresAt"))
            .map(rfc3339),
    }))
}

/// The explanation for people, one fact a line.
pub fn render(e: &Explanation) -> String {
    let mut out = format!(
        "record {}: {}, deanery {}\n",
        e.record_id, e.status, e.deanery
    );
    let mut line = |key: &str, value: Option<&str>| {
        if let Some(value) = value {
            out.push_str(&format!("  {key:<13} {value}\n"));
        }
    };
    line("arrived", e.arrived_at.as_deref());
    line("updated", e.updated_at.as_deref());
    line("rejected", e.rejection_reason.as_deref());
    line("exported", e.exported_at.as_deref());
    line("file", e.file.as_deref());
    if let Some(run) = &e.run {
        let state = format!("{} {} (started {})", run.run_id, run.phase, run.started_at);
        line("run", Some(&state));
        if e.file.is_some() || e.status == "EXPORTING" {
            line("published to", run.published_to.as_deref());
            line("sha256", run.sha256.as_deref());
        }
        line("run error", run.last_error.as_deref());
    }
    if let Some(waiting) = &e.waiting {
        line("waiting", Some(&render_waiting(waiting)));
    }
    if let Some(due) = &e.due_soon {
        let said = format!(
            "DUE SOON: its placement starts {}, within {} days (watchdog.due_within_days)",
            due.placement_start, due.within_days
        );
        line("due soon", Some(&said));
    }
    out
}

fn render_waiting(waiting: &Waiting) -> String {
    match waiting {
        Waiting::NoRunSinceArrival { next_slot } => format!(
            "no run of its deanery since it arrived; the next slot is {}",
            next_slot.as_deref().unwrap_or("(none)")
        ),
        Waiting::RunSinceNotClaimed { run_id, phase } => {
            format!("run {run_id} ({phase}) started since it arrived and has not claimed it")
        }
        Waiting::ClaimedByOpenRun { run_id, phase, lease_owner, lease_expires_at } => format!(
            "claimed by open run {run_id} ({phase}); lease held by {} until {}",
            lease_owner.as_deref().unwrap_or("nobody"),
            lease_expires_at.as_deref().unwrap_or("-")
        ),
        Waiting::StuckPastGrace { slot, grace_minutes } => format!(
            "STUCK: the slot {slot} should have exported it, and its {grace_minutes}-minute grace period is over"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_24_hex_digits_are_object_ids_and_others_strings() {
        assert!(matches!(
            parse_record_id("6b1020fd194dc0c03cc68561"),
            Bson::ObjectId(_)
        ));
        assert_eq!(parse_record_id("legacy-7"), Bson::String("legacy-7".into()));
    }

    #[test]
    fn each_reason_reads_as_a_sentence() {
        let stuck = Waiting::StuckPastGrace {
            slot: "2026-12-01T13:00:00Z".into(),
            grace_minutes: 60,
        };
        assert!(render_waiting(&stuck).starts_with("STUCK: the slot 2026-12-01T13:00:00Z"));
        let json = serde_json::to_value(&stuck).unwrap();
        assert_eq!(json["reason"], "stuckPastGrace");
        assert_eq!(json["graceMinutes"], 60);
    }
}
