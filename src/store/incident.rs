//! The reads (and the one write) behind the incident commands: a record
//! by id, the runs around it and its deanery's lease; the published files
//! newest first; a file's run and its records in `_id` order; a
//! redelivery recorded on its run. Every query goes through an index.

use bson::{doc, Bson, DateTime, Document};

use super::mongo::cursor::BoundedCursor;
use super::records::Read;
use super::runs::decode_run;
use super::{Find, RetryScope, RunDoc, Store, StoreError};
use crate::domain::RecordStatus;

impl Store {
    /// The record with this `_id`, if any.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn find_record(&self, id: &Bson) -> Result<Option<Document>, StoreError> {
        let find = Find::of(doc! {"_id": id.clone()});
        let scope = RetryScope::global("find_record");
        self.read_first(scope, &self.records, find).await
    }

    /// One run document matching `filter` (the first by `sort`).
    async fn one_run(
        &self,
        op: &'static str,
        filter: Document,
        sort: Document,
    ) -> Result<Option<RunDoc>, StoreError> {
        let find = Find::of(filter).sorted(sort);
        let scope = RetryScope::global(op);
        let found = self.read_first(scope, &self.runs, find).await?;
        found.map(decode_run).transpose()
    }

    /// The run with this id.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy or the run is malformed.
    pub(crate) async fn find_run(&self, run_id: &str) -> Result<Option<RunDoc>, StoreError> {
        self.one_run("find_run", doc! {"_id": run_id}, doc! {})
            .await
    }

    /// The deanery's newest run started at or after `since`.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy or the run is malformed.
    pub(crate) async fn latest_run_since(
        &self,
        deanery: &str,
        since: DateTime,
    ) -> Result<Option<RunDoc>, StoreError> {
        let filter = doc! {"deanery": deanery, "startedAt": {"$gte": since}};
        self.one_run("latest_run_since", filter, doc! {"startedAt": -1})
            .await
    }

    /// The run whose file has this name.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy or the run is malformed.
    pub(crate) async fn run_by_file(&self, file_name: &str) -> Result<Option<RunDoc>, StoreError> {
        self.one_run("run_by_file", doc! {"fileName": file_name}, doc! {})
            .await
    }

    /// The deanery's lease document, if one was ever taken.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn lease_of(&self, deanery: &str) -> Result<Option<Document>, StoreError> {
        let find = Find::of(doc! {"_id": deanery});
        let scope = RetryScope::global("read_lease");
        self.read_first(scope, &self.leases, find).await
    }

    /// Runs with a published file, newest publication first.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy or a run is malformed.
    pub(crate) async fn published_runs(
        &self,
        deanery: Option<&str>,
        since: Option<DateTime>,
        limit: i64,
    ) -> Result<Vec<RunDoc>, StoreError> {
        let mut filter = doc! {"publication.publishedAt": {"$gte": since.unwrap_or(DateTime::MIN)}};
        if let Some(deanery) = deanery {
            filter.insert("deanery", deanery);
        }
        let newest_first = doc! {"publication.publishedAt": -1};
        let find = Find::of(filter).sorted(newest_first).limited(limit);
        let scope = RetryScope::global("published_runs");
        let found = self.read_all(scope, &self.runs, find).await?;
        found.into_iter().map(decode_run).collect()
    }

    /// The records a run wrote into its file (claimed or marked), in
    /// `_id` order.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn records_of_run(
        &self,
        run_id: &str,
        batch_size: u32,
    ) -> Result<BoundedCursor, StoreError> {
        let statuses = [
            RecordStatus::Exporting.as_str(),
            RecordStatus::Exported.as_str(),
        ];
        let read = Read {
            scope: RetryScope::global("records_of_run"),
            filter: doc! {"exportRunId": run_id, "status": {"$in": statuses.to_vec()}},
            projection: None,
            batch_size,
        };
        self.records_in_order(read).await
    }

    /// Ids of the run's records whose `updatedAt` is after `since` (at most 20).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn records_updated_since(
        &self,
        run_id: &str,
        since: DateTime,
    ) -> Result<Vec<String>, StoreError> {
        let find = Find::ids(doc! {"exportRunId": run_id, "updatedAt": {"$gt": since}});
        let find = find.sorted(doc! {"_id": 1}).limited(20);
        let scope = RetryScope::global("records_updated_since");
        let found = self.read_all(scope, &self.records, find).await?;
        Ok(found
            .iter()
            .filter_map(|d| {
                d.get("_id").map(|id| match id {
                    Bson::ObjectId(oid) => oid.to_hex(),
                    other => other.to_string(),
                })
            })
            .collect())
    }

    /// Appends a redelivery to the run's `redeliveries`.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn record_redelivery(
        &self,
        run_id: &str,
        redelivery: Document,
    ) -> Result<(), StoreError> {
        let push = doc! {"$push": {"redeliveries": redelivery}};
        let (runs, push) = (&self.runs, &push);
        let scope = RetryScope::global("record_redelivery");
        self.retry
            .run(scope, &self.counters, || async move {
                runs.update_one(doc! {"_id": run_id}, push.clone()).await
            })
            .await?;
        Ok(())
    }
}
