//! The reads (and the one write) behind the incident commands: a record
//! by id, the runs around it and its deanery's lease; the published files
//! newest first; a file's run and its records in `_id` order; a
//! redelivery recorded on its run. Every query goes through an index.

use bson::{doc, Bson, DateTime, Document};

use super::mongo::cursor::BoundedCursor;
use super::runs::decode_run;
use super::{Attempts, Find, RetryScope, RunDoc, Store, StoreError};
use crate::domain::RecordStatus;

fn scope(op: &'static str) -> RetryScope<'static> {
    RetryScope { op, deanery: None }
}

impl Store {
    /// The record with this `_id`, if any.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn find_record(&self, id: &Bson) -> Result<Option<Document>, StoreError> {
        let find = Find::of(doc! {"_id": id.clone()});
        let mut attempts = Attempts::default();
        self.find_first(scope("find_record"), &self.records, find, &mut attempts)
            .await
    }

    /// One run document matching `filter` (the first by `sort`).
    async fn one_run(
        &self,
        op: &'static str,
        filter: Document,
        sort: Document,
    ) -> Result<Option<RunDoc>, StoreError> {
        let find = Find {
            sort: Some(sort),
            ..Find::of(filter)
        };
        let mut attempts = Attempts::default();
        let found = self
            .find_first(scope(op), &self.runs, find, &mut attempts)
            .await?;
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
        let mut attempts = Attempts::default();
        self.find_first(scope("read_lease"), &self.leases, find, &mut attempts)
            .await
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
        let find = Find {
            sort: Some(doc! {"publication.publishedAt": -1}),
            limit: Some(limit),
            ..Find::of(filter)
        };
        let mut attempts = Attempts::default();
        let found = self
            .find_all(scope("published_runs"), &self.runs, find, &mut attempts)
            .await?;
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
        let filter = doc! {"exportRunId": run_id, "status": {"$in": statuses.to_vec()}};
        let (records, filter) = (&self.records, &filter);
        let mut attempts = Attempts::default();
        let cursor = self
            .retry
            .run(scope("records_of_run"), &mut attempts, || async move {
                records
                    .find(filter.clone())
                    .sort(doc! {"_id": 1})
                    .batch_size(batch_size)
                    .max_time(self.max_time)
                    .await
            })
            .await?;
        Ok(BoundedCursor::new(cursor, &self.retry, "records_of_run"))
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
        let filter = doc! {"exportRunId": run_id, "updatedAt": {"$gt": since}};
        let find = Find {
            projection: Some(doc! {"_id": 1}),
            sort: Some(doc! {"_id": 1}),
            limit: Some(20),
            ..Find::of(filter)
        };
        let mut attempts = Attempts::default();
        let found = self
            .find_all(
                scope("records_updated_since"),
                &self.records,
                find,
                &mut attempts,
            )
            .await?;
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
        let (runs, redelivery) = (&self.runs, &redelivery);
        let mut attempts = Attempts::default();
        self.retry
            .run(scope("record_redelivery"), &mut attempts, || async move {
                runs.update_one(
                    doc! {"_id": run_id},
                    doc! {"$push": {"redeliveries": redelivery.clone()}},
                )
                .await
            })
            .await?;
        Ok(())
    }
}
