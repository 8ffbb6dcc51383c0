//! The status report: per deanery, the records waiting (`TO_EXPORT`) and
//! claimed (`EXPORTING`), the records exported and rejected by the runs of
//! the last [`WINDOW_DAYS`] days, the age of the oldest waiting record, and
//! the last export run. It reads only waiting and in-flight records and
//! recent or open runs, through the daemon's indexes; when those are
//! missing it says so instead of scanning the history.

use std::collections::BTreeMap;

use bson::Bson;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::RecordStatus;
use crate::store::{LatestRun, OldestWaiting, StatusCount, StatusQuery, Store, StoreError};

/// The days of runs whose exported and rejected records are counted.
pub(crate) const WINDOW_DAYS: i64 = 30;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// When the report was made, RFC 3339 UTC.
    pub(crate) generated_at: String,
    /// `EXPORTED` and `REJECTED` count the runs started in this many days.
    pub window_days: i64,
    /// One entry per deanery value found, sorted.
    pub deaneries: Vec<DeaneryStatus>,
}

/// One deanery's line.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeaneryStatus {
    /// Deanery value as stored.
    pub deanery: String,
    /// Records by status: `TO_EXPORT` and `EXPORTING` as they are now;
    /// `EXPORTED` and `REJECTED` by the runs of the last `windowDays` days.
    pub counts: BTreeMap<String, i64>,
    /// Age in seconds of the oldest `TO_EXPORT` record (by `createdAt`,
    /// else by its `_id` timestamp); null when none waits.
    pub oldest_to_export_age_seconds: Option<i64>,
    /// `TO_EXPORT` records whose placement starts within
    /// `watchdog.due_within_days` (or started already).
    pub due_soon: i64,
    /// The most recent export run.
    pub last_run: Option<LastRun>,
}

/// The most recent run of a deanery.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// Run id.
    pub run_id: String,
    /// `CLAIMING`, `WRITTEN` or `COMPLETED`.
    pub phase: String,
    /// Start, RFC 3339.
    pub(crate) started_at: Option<String>,
    /// End, RFC 3339; null while unfinished.
    pub(crate) finished_at: Option<String>,
    /// File name, if one was allocated.
    pub file: Option<String>,
    /// Where the file was published: its path on the host that published
    /// it, or its URL (`s3://bucket/key`); null until published.
    pub published_to: Option<String>,
    /// Records in the file.
    pub exported: Option<i64>,
    /// Records rejected.
    pub rejected: Option<i64>,
    /// The error the last attempt stopped on, if it failed.
    pub(crate) last_error: Option<String>,
}

impl LastRun {
    /// True when its last attempt failed and it has not completed since.
    pub(crate) fn failed(&self) -> bool {
        self.last_error.is_some() && self.phase != "COMPLETED"
    }
}

/// A stored deanery value as shown: escaped and bounded, since another
/// service wrote it and it may hold line breaks or terminal escapes.
fn deanery_key(value: Option<&Bson>) -> String {
    match value {
        Some(Bson::String(s)) => crate::domain::printable(s, 64),
        Some(Bson::Null) | None => "(none)".to_owned(),
        Some(other) => crate::domain::printable(&other.to_string(), 64),
    }
}

fn rfc3339(time: Option<bson::DateTime>) -> Option<String> {
    time.map(|t| {
        t.to_chrono()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    })
}

/// The report's lines, one per deanery value, sorted by it.
type Lines = BTreeMap<String, DeaneryStatus>;

/// The line of a deanery value, created empty on first use.
fn line<'a>(lines: &'a mut Lines, deanery: &Bson) -> &'a mut DeaneryStatus {
    let key = deanery_key(Some(deanery));
    lines.entry(key.clone()).or_insert_with(|| DeaneryStatus {
        deanery: key,
        // Every status, 0 until counted: a reader of the JSON need not
        // know that a missing key means none.
        counts: COLUMNS
            .iter()
            .map(|status| (status.as_str().to_owned(), 0))
            .collect(),
        oldest_to_export_age_seconds: None,
        due_soon: 0,
        last_run: None,
    })
}

fn add_due_soon(lines: &mut Lines, due: Vec<StatusCount>) {
    for row in due {
        line(lines, &row.deanery).due_soon += row.count;
    }
}

fn add_counts(lines: &mut Lines, counts: Vec<StatusCount>) {
    for row in counts {
        let status = deanery_key(Some(&row.status));
        *line(lines, &row.deanery).counts.entry(status).or_default() += row.count;
    }
}

fn add_oldest(lines: &mut Lines, oldest: Vec<OldestWaiting>, now: DateTime<Utc>) {
    for row in oldest {
        line(lines, &row.deanery).oldest_to_export_age_seconds = row
            .created
            .map(|t| (now - t.to_chrono()).num_seconds().max(0));
    }
}

fn add_last_runs(lines: &mut Lines, runs: Vec<LatestRun>) {
    for run in runs {
        line(lines, &run.deanery).last_run = Some(LastRun {
            run_id: deanery_key(Some(&run.run_id)),
            phase: deanery_key(Some(&run.phase)),
            started_at: rfc3339(run.started_at),
            finished_at: rfc3339(run.finished_at),
            file: run.file_name,
            published_to: run.published_to,
            exported: run.record_count,
            rejected: run.rejected,
            last_error: run.last_error,
        });
    }
}

/// Builds the report; a waiting record is due soon when its placement
/// starts by `due_by` (now and `watchdog.due_within_days`).
///
/// # Errors
/// When MongoDB fails beyond the retry policy.
pub async fn report(store: &Store, due_by: bson::DateTime) -> Result<StatusReport, StoreError> {
    let missing = store.missing_indexes().await?;
    if !missing.is_empty() {
        return Err(StoreError::IndexesMissing(missing));
    }
    let now = Utc::now();
    let since = bson::DateTime::from_chrono(now - chrono::Duration::days(WINDOW_DAYS));
    let counts = store.status_rows(StatusQuery::counts()).await?;
    let totals = StatusQuery::recent_run_totals(since);
    let totals = store.status_rows(totals).await?;
    let oldest = store.status_rows(StatusQuery::oldest_waiting()).await?;
    let last_runs = StatusQuery::latest_runs(since);
    let last_runs = store.status_rows(last_runs).await?;
    let due = store.status_rows(StatusQuery::due_soon(due_by)).await?;

    let mut lines = Lines::new();
    add_counts(&mut lines, counts);
    add_counts(&mut lines, totals);
    add_oldest(&mut lines, oldest, now);
    add_due_soon(&mut lines, due);
    add_last_runs(&mut lines, last_runs);
    Ok(StatusReport {
        generated_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        window_days: WINDOW_DAYS,
        deaneries: lines.into_values().collect(),
    })
}

/// The statuses the table has a column for, in order.
const COLUMNS: [RecordStatus; 4] = [
    RecordStatus::ToExport,
    RecordStatus::Exporting,
    RecordStatus::Exported,
    RecordStatus::Rejected,
];

/// The report as a table for people.
pub(crate) fn render_table(report: &StatusReport) -> String {
    let [a, b, c, d] = COLUMNS.map(RecordStatus::as_str);
    let mut out = format!(
        "EXPORTED and REJECTED: by the runs of the last {} days\n",
        report.window_days
    );
    out += &format!(
        "{:<9} {:>10} {:>10} {:>10} {:>10} {:>12} {:>9}  {}\n",
        "DEANERY", a, b, c, d, "OLDEST_WAIT", "DUE_SOON", "LAST RUN"
    );
    for line in &report.deaneries {
        out.push_str(&render_line(line));
    }
    out
}

/// One deanery's row of the table.
fn render_line(d: &DeaneryStatus) -> String {
    let [a, b, c, e] = COLUMNS.map(|s| d.counts.get(s.as_str()).copied().unwrap_or(0));
    let oldest = d
        .oldest_to_export_age_seconds
        .map_or_else(|| "-".to_owned(), human_age);
    let last = d
        .last_run
        .as_ref()
        .map_or_else(|| "never".to_owned(), render_last_run);
    format!(
        "{:<9} {:>10} {:>10} {:>10} {:>10} {:>12} {:>9}  {}\n",
        d.deanery, a, b, c, e, oldest, d.due_soon, last
    )
}

fn render_last_run(r: &LastRun) -> String {
    format!(
        "{} {} {} file={} to={} exported={} rejected={}{}",
        r.phase,
        r.started_at.as_deref().unwrap_or("?"),
        r.run_id,
        r.file.as_deref().unwrap_or("-"),
        r.published_to.as_deref().unwrap_or("-"),
        r.exported.unwrap_or(0),
        r.rejected.unwrap_or(0),
        r.last_error
            .as_deref()
            .map(|e| format!(" last_error={e}"))
            .unwrap_or_default()
    )
}

/// An age in the largest sensible unit (`5s`, `10m`, `3h`, `3d`).
pub(crate) fn human_age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::human_age;

    #[test]
    fn ages_are_shown_in_the_largest_sensible_unit() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(10_800), "3h");
        assert_eq!(human_age(3 * 86_400), "3d");
    }
}
