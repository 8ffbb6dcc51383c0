//! The status report's queries: counts of the waiting and claimed records
//! by deanery, the oldest waiting record per deanery, what recent runs
//! exported and rejected, each deanery's latest run. Each reads only
//! waiting and in-flight records and recent or open runs, through indexes,
//! so its cost never grows with the exported history. Plain rows, as
//! stored; the report (`crate::status`) shows them.

use bson::{doc, Bson, DateTime, Document};

use super::{int, oldest_created, open_runs, Publication, RetryScope, Store, StoreError};
use crate::domain::RecordStatus;
use crate::store::RunPhase;

const STATUS: RetryScope<'static> = RetryScope::global("status");

/// How many records of one deanery value are in one status value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusCount {
    /// Deanery value as stored (null when absent).
    pub(crate) deanery: Bson,
    /// Status value as stored (null when absent).
    pub(crate) status: Bson,
    /// How many.
    pub(crate) count: i64,
}

/// The oldest `TO_EXPORT` record of one deanery value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OldestWaiting {
    /// Deanery value as stored (null when absent).
    pub(crate) deanery: Bson,
    /// Its creation time (by `createdAt`, else by its `_id`), if known.
    pub(crate) created: Option<DateTime>,
}

/// The most recently started run of one deanery value, read leniently: a
/// field of an unexpected type is absent here.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LatestRun {
    /// Deanery value as stored.
    pub(crate) deanery: Bson,
    /// Run id as stored.
    pub(crate) run_id: Bson,
    /// Phase as stored (a `RunPhase` value, unless malformed).
    pub(crate) phase: Bson,
    /// Start.
    pub(crate) started_at: Option<DateTime>,
    /// End, while unfinished none.
    pub(crate) finished_at: Option<DateTime>,
    /// File name, if one was allocated.
    pub(crate) file_name: Option<String>,
    /// Where the file was published (path or URL), once it was.
    pub(crate) published_to: Option<String>,
    /// Records in the file.
    pub(crate) record_count: Option<i64>,
    /// Records rejected.
    pub(crate) rejected: Option<i64>,
    /// The error the last attempt stopped on.
    pub(crate) last_error: Option<String>,
}

fn value(document: &Document, key: &str) -> Bson {
    document.get(key).cloned().unwrap_or(Bson::Null)
}

fn status_count(row: &Document) -> StatusCount {
    let id = row.get_document("_id").cloned().unwrap_or_default();
    StatusCount {
        deanery: value(&id, "deanery"),
        status: value(&id, "status"),
        count: int(row.get("n")).unwrap_or(0),
    }
}

fn run_totals(row: &Document) -> [StatusCount; 2] {
    let count = |status: RecordStatus, key| StatusCount {
        deanery: value(row, "_id"),
        status: Bson::from(status.as_str()),
        count: int(row.get(key)).unwrap_or(0),
    };
    [
        count(RecordStatus::Exported, "exported"),
        count(RecordStatus::Rejected, "rejected"),
    ]
}

fn oldest_waiting(row: &Document) -> OldestWaiting {
    OldestWaiting {
        deanery: value(row, "_id"),
        created: oldest_created(row, "createdAt", "firstId"),
    }
}

fn latest_run(row: &Document) -> LatestRun {
    let run = row.get_document("run").cloned().unwrap_or_default();
    let text = |key| run.get_str(key).ok().map(str::to_owned);
    let time = |key| run.get_datetime(key).ok().copied();
    LatestRun {
        deanery: value(row, "_id"),
        run_id: value(&run, "_id"),
        phase: value(&run, "phase"),
        started_at: time("startedAt"),
        finished_at: time("finishedAt"),
        file_name: text("fileName"),
        published_to: run
            .get_document("publication")
            .ok()
            .and_then(|p| bson::from_document::<Publication>(p.clone()).ok())
            .map(|p| p.location.address()),
        record_count: int(run.get("recordCount")),
        rejected: int(run.get("rejected")),
        last_error: text("lastError"),
    }
}

/// The collection a status query reads.
#[derive(Debug, Clone, Copy)]
enum Over {
    Records,
    Runs,
}

/// One of the status report's aggregations, and how a row of it is read
/// (into none, one or several values).
pub(crate) struct StatusQuery<T> {
    over: Over,
    pipeline: Vec<Document>,
    read: fn(&Document) -> Vec<T>,
}

impl StatusQuery<StatusCount> {
    /// Counts of the waiting and claimed records by deanery and status.
    pub(crate) fn counts() -> Self {
        let in_flight = [RecordStatus::ToExport, RecordStatus::Exporting].map(RecordStatus::as_str);
        let pipeline = vec![
            doc! {"$match": {"status": {"$in": in_flight.to_vec()}}},
            doc! {"$group": {"_id": {"deanery": "$deanery", "status": "$status"}, "n": {"$sum": 1}}},
        ];
        let read = |row: &Document| vec![status_count(row)];
        StatusQuery {
            over: Over::Records,
            pipeline,
            read,
        }
    }

    /// Records exported (by completed runs) and rejected by the runs
    /// started since `since`, per deanery, as `EXPORTED` and `REJECTED` counts.
    pub(crate) fn recent_run_totals(since: DateTime) -> Self {
        let completed = doc! {"$eq": ["$phase", RunPhase::Completed.as_str()]};
        let pipeline = vec![
            doc! {"$match": {"startedAt": {"$gte": since}}},
            doc! {"$group": {
                "_id": "$deanery",
                "exported": {"$sum": {"$cond": [completed, {"$ifNull": ["$recordCount", 0]}, 0]}},
                "rejected": {"$sum": {"$ifNull": ["$rejected", 0]}},
            }},
        ];
        let read = |row: &Document| run_totals(row).to_vec();
        StatusQuery {
            over: Over::Runs,
            pipeline,
            read,
        }
    }
}

impl StatusQuery<StatusCount> {
    /// The waiting records of each deanery value whose placement starts
    /// by `due_by` (or started), as `DUE_SOON` counts. A record without a
    /// date there is never counted: only dates compare with a date.
    pub(crate) fn due_soon(due_by: DateTime) -> Self {
        let pipeline = vec![
            doc! {"$match": {
                "status": RecordStatus::ToExport.as_str(),
                "placementStartDate": {"$lte": due_by},
            }},
            doc! {"$group": {"_id": "$deanery", "n": {"$sum": 1}}},
        ];
        let read = |row: &Document| {
            vec![StatusCount {
                deanery: value(row, "_id"),
                status: Bson::from(DUE_SOON),
                count: int(row.get("n")).unwrap_or(0),
            }]
        };
        StatusQuery {
            over: Over::Records,
            pipeline,
            read,
        }
    }
}

/// The status report's name for waiting records due soon.
pub(crate) const DUE_SOON: &str = "DUE_SOON";

impl StatusQuery<OldestWaiting> {
    /// The oldest `TO_EXPORT` record of each deanery value.
    pub(crate) fn oldest_waiting() -> Self {
        let pipeline = vec![
            doc! {"$match": {"status": RecordStatus::ToExport.as_str()}},
            doc! {"$group": {"_id": "$deanery", "createdAt": {"$min": "$createdAt"}, "firstId": {"$min": "$_id"}}},
        ];
        let read = |row: &Document| vec![oldest_waiting(row)];
        StatusQuery {
            over: Over::Records,
            pipeline,
            read,
        }
    }
}

impl StatusQuery<LatestRun> {
    /// The most recently started run of each deanery value, among the runs
    /// started since `since` and those still open.
    pub(crate) fn latest_runs(since: DateTime) -> Self {
        let pipeline = vec![
            doc! {"$match": {"$or": [{"startedAt": {"$gte": since}}, open_runs()]}},
            doc! {"$sort": {"startedAt": -1}},
            doc! {"$group": {"_id": "$deanery", "run": {"$first": "$$ROOT"}}},
        ];
        let read = |row: &Document| vec![latest_run(row)];
        StatusQuery {
            over: Over::Runs,
            pipeline,
            read,
        }
    }
}

impl StatusQuery<LastRunTimes> {
    /// When each deanery's runs started since `since` last completed and
    /// last failed an attempt (Unix seconds), for the alerts' gauges.
    pub(crate) fn last_run_times(since: DateTime) -> Self {
        let completed = doc! {"$cond": [
            {"$eq": ["$phase", RunPhase::Completed.as_str()]}, "$finishedAt", Bson::Null
        ]};
        let pipeline = vec![
            doc! {"$match": {"startedAt": {"$gte": since}}},
            doc! {"$group": {
                "_id": "$deanery",
                "completed": {"$max": completed},
                "failed": {"$max": "$lastErrorAt"},
            }},
        ];
        let read = |row: &Document| last_run_times(row).into_iter().collect();
        StatusQuery {
            over: Over::Runs,
            pipeline,
            read,
        }
    }
}

impl Store {
    /// What `query` finds, read.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn status_rows<T>(&self, query: StatusQuery<T>) -> Result<Vec<T>, StoreError> {
        let on = match query.over {
            Over::Records => &self.records,
            Over::Runs => &self.runs,
        };
        let rows = self.read_all(STATUS, on, query.pipeline).await?;
        Ok(rows.iter().flat_map(query.read).collect())
    }
}

/// When one deanery's runs last completed and last failed, Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LastRunTimes {
    /// The deanery, as stored.
    pub(crate) deanery: String,
    /// The latest completion, if any.
    pub(crate) completed: Option<f64>,
    /// The latest failed attempt, if any.
    pub(crate) failed: Option<f64>,
}

fn last_run_times(row: &Document) -> Option<LastRunTimes> {
    let seconds = |key| {
        row.get_datetime(key)
            .ok()
            .map(|at| at.timestamp_millis() as f64 / 1000.0)
    };
    Some(LastRunTimes {
        deanery: row.get_str("_id").ok()?.to_owned(),
        completed: seconds("completed"),
        failed: seconds("failed"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunPhase;

    #[test]
    fn a_latest_run_row_reads_its_fields_leniently() {
        let started = DateTime::from_millis(1_000);
        let row = doc! {"_id": "MER", "run": {
            "_id": "r1",
            "phase": RunPhase::Written.as_str(),
            "startedAt": started,
            "fileName": 7,
            "recordCount": 2.0,
        }};
        let run = latest_run(&row);
        assert_eq!(run.deanery, Bson::from("MER"));
        assert_eq!(run.phase, Bson::from("WRITTEN"));
        assert_eq!(run.started_at, Some(started));
        assert_eq!(run.finished_at, None);
        assert_eq!(run.file_name, None);
        assert_eq!(run.record_count, Some(2));
    }

    #[test]
    fn a_count_row_without_a_deanery_counts_under_null() {
        let row = doc! {"_id": {"status": "TO_EXPORT"}, "n": 4};
        let count = status_count(&row);
        assert_eq!(count.deanery, Bson::Null);
        assert_eq!(count.status, Bson::from("TO_EXPORT"));
        assert_eq!(count.count, 4);
    }
}
