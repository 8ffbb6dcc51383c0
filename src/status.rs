//! The status report: per deanery, record counts by status, the age of the
//! oldest `TO_EXPORT` record, and the last export run.

use std::collections::BTreeMap;

use bson::{doc, Bson, Document};
use futures_util::TryStreamExt;
use serde::Serialize;

use crate::store::{Attempts, RetryScope, Store, StoreError};

/// The whole report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// When the report was made, RFC 3339 UTC.
    pub generated_at: String,
    /// One entry per deanery value found, sorted.
    pub deaneries: Vec<DeaneryStatus>,
}

/// One deanery's line.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeaneryStatus {
    /// Deanery value as stored.
    pub deanery: String,
    /// Record counts by status value.
    pub counts: BTreeMap<String, i64>,
    /// Age in seconds of the oldest `TO_EXPORT` record (by `createdAt`,
    /// else by its `_id` timestamp); null when none waits.
    pub oldest_to_export_age_seconds: Option<i64>,
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
    pub started_at: Option<String>,
    /// End, RFC 3339; null while unfinished.
    pub finished_at: Option<String>,
    /// File name, if one was allocated.
    pub file: Option<String>,
    /// Records in the file.
    pub exported: Option<i64>,
    /// Records rejected.
    pub rejected: Option<i64>,
    /// The error the last attempt stopped on, if it failed.
    pub last_error: Option<String>,
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

fn int(value: Option<&Bson>) -> Option<i64> {
    match value? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) => Some(*n as i64),
        _ => None,
    }
}

fn rfc3339(value: Option<&Bson>) -> Option<String> {
    match value? {
        Bson::DateTime(dt) => Some(
            dt.to_chrono()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        _ => None,
    }
}

/// Builds the report.
///
/// # Errors
/// When MongoDB fails beyond the retry policy.
pub async fn report(store: &Store) -> Result<StatusReport, StoreError> {
    let policy = store.retry_policy();
    let mut attempts = Attempts::default();
    let scope = RetryScope {
        op: "status",
        deanery: None,
    };
    let (records, runs) = (store.records(), store.runs());
    let aggregate = async |collection: &mongodb::Collection<Document>,
                           pipeline: Vec<Document>,
                           attempts: &mut Attempts|
           -> Result<Vec<Document>, StoreError> {
        Ok(policy
            .run(scope, attempts, || async {
                collection
                    .aggregate(pipeline.clone())
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?)
    };

    let counts = aggregate(
        records,
        vec![doc! {"$group": {"_id": {"deanery": "$deanery", "status": "$status"}, "n": {"$sum": 1}}}],
        &mut attempts,
    )
    .await?;
    let oldest = aggregate(
        records,
        vec![
            doc! {"$match": {"status": "TO_EXPORT"}},
            doc! {"$group": {"_id": "$deanery", "createdAt": {"$min": "$createdAt"}, "firstId": {"$min": "$_id"}}},
        ],
        &mut attempts,
    )
    .await?;
    let last_runs = aggregate(
        runs,
        vec![
            doc! {"$sort": {"startedAt": -1}},
            doc! {"$group": {"_id": "$deanery", "run": {"$first": "$$ROOT"}}},
        ],
        &mut attempts,
    )
    .await?;

    let now = chrono::Utc::now();
    let mut by_deanery: BTreeMap<String, DeaneryStatus> = BTreeMap::new();
    fn entry(by_deanery: &mut BTreeMap<String, DeaneryStatus>, key: String) -> &mut DeaneryStatus {
        by_deanery
            .entry(key.clone())
            .or_insert_with(|| DeaneryStatus {
                deanery: key,
                counts: BTreeMap::new(),
                oldest_to_export_age_seconds: None,
                last_run: None,
            })
    }
    for row in counts {
        let id = row.get_document("_id").cloned().unwrap_or_default();
        let status = deanery_key(id.get("status"));
        let n = int(row.get("n")).unwrap_or(0);
        *entry(&mut by_deanery, deanery_key(id.get("deanery")))
            .counts
            .entry(status)
            .or_default() += n;
    }
    for row in oldest {
        let created = match row.get("createdAt") {
            Some(Bson::DateTime(dt)) => Some(dt.to_chrono()),
            _ => match row.get("firstId") {
                Some(Bson::ObjectId(id)) => Some(id.timestamp().to_chrono()),
                _ => None,
            },
        };
        entry(&mut by_deanery, deanery_key(row.get("_id"))).oldest_to_export_age_seconds =
            created.map(|t| (now - t).num_seconds().max(0));
    }
    for row in last_runs {
        let run = row.get_document("run").cloned().unwrap_or_default();
        entry(&mut by_deanery, deanery_key(row.get("_id"))).last_run = Some(LastRun {
            run_id: deanery_key(run.get("_id")),
            phase: deanery_key(run.get("phase")),
            started_at: rfc3339(run.get("startedAt")),
            finished_at: rfc3339(run.get("finishedAt")),
            file: run.get_str("fileName").ok().map(str::to_owned),
            exported: int(run.get("recordCount")),
            rejected: int(run.get("rejected")),
            last_error: run.get_str("lastError").ok().map(str::to_owned),
        });
    }
    Ok(StatusReport {
        generated_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        deaneries: by_deanery.into_values().collect(),
    })
}

/// The report as a table for people.
pub fn render_table(report: &StatusReport) -> String {
    let statuses = ["TO_EXPORT", "EXPORTING", "EXPORTED", "REJECTED"];
    let mut out = format!(
        "{:<9} {:>10} {:>10} {:>10} {:>10} {:>12}  {}\n",
        "DEANERY", "TO_EXPORT", "EXPORTING", "EXPORTED", "REJECTED", "OLDEST_WAIT", "LAST RUN"
    );
    for d in &report.deaneries {
        let count = |s: &str| d.counts.get(s).copied().unwrap_or(0);
        let oldest = d
            .oldest_to_export_age_seconds
            .map_or_else(|| "-".to_owned(), human_age);
        let last = d.last_run.as_ref().map_or_else(
            || "never".to_owned(),
            |r| {
                format!(
                    "{} {} {} file={} exported={} rejected={}{}",
                    r.phase,
                    r.started_at.as_deref().unwrap_or("?"),
                    r.run_id,
                    r.file.as_deref().unwrap_or("-"),
                    r.exported.unwrap_or(0),
                    r.rejected.unwrap_or(0),
                    r.last_error
                        .as_deref()
                        .map(|e| format!(" last_error={e}"))
                        .unwrap_or_default()
                )
            },
        );
        out.push_str(&format!(
            "{:<9} {:>10} {:>10} {:>10} {:>10} {:>12}  {}\n",
            d.deanery,
            count(statuses[0]),
            count(statuses[1]),
            count(statuses[2]),
            count(statuses[3]),
            oldest,
            last
        ));
    }
    out
}

fn human_age(seconds: i64) -> String {
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
