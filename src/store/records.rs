//! The records: the `_id` cursors a run reads, the records it has claimed,
//! rejecting and marking them, the deaneries with work, and the stuck
//! records the watchdog reports.

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime, Document};
use futures_util::future::BoxFuture;
use mongodb::error::Error as MongoError;
use mongodb::options::FindOptions;
use mongodb::ClientSession;

use super::mongo::cursor::BoundedCursor;
use super::retry::TransactionBody;
use super::{now, open_runs, Find, IdRange, RetryScope, Store, StoreError};
use crate::domain::{AppRow, Deanery, RecordStatus};

/// Which fields of a record a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fields {
    /// The `_id` alone (the mark boundaries of a resumed run).
    Ids,
    /// What the file needs ([`AppRow::projection`]).
    Row,
}

/// A read of records in `_id` order, a batch at a time.
pub(super) struct Read<'a> {
    pub(super) scope: RetryScope<'a>,
    pub(super) filter: Document,
    /// The fields returned; all when `None`.
    pub(super) projection: Option<Document>,
    pub(super) batch_size: u32,
}

/// The deanery's waiting (`TO_EXPORT`) records.
pub(super) fn waiting(deanery: &Deanery) -> Document {
    doc! {"deanery": deanery.as_str(), "status": RecordStatus::ToExport.as_str()}
}

/// The deanery's waiting records whose `_id` matches `id`.
pub(super) fn waiting_of(deanery: &Deanery, id: impl Into<Bson>) -> Document {
    let mut filter = waiting(deanery);
    filter.insert("_id", id.into());
    filter
}

/// The records a run has claimed and not yet marked (or rejected).
fn claimed_by(run_id: &str) -> Document {
    doc! {"exportRunId": run_id, "status": RecordStatus::Exporting.as_str()}
}

/// Why a record is `REJECTED`, and by which run when a run's claim found
/// it: the one update every rejection writes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rejection<'a> {
    pub(super) reason: &'a str,
    pub(super) run_id: Option<&'a str>,
}

impl<'a> Rejection<'a> {
    /// A rejection outside any run.
    pub(super) fn because(reason: &'a str) -> Self {
        Self {
            reason,
            run_id: None,
        }
    }

    /// The update that rejects a record.
    pub(super) fn update(&self) -> Document {
        let mut set = doc! {
            "status": RecordStatus::Rejected.as_str(),
            "rejectionReason": self.reason,
            "rejectedAt": now(),
        };
        if let Some(run_id) = self.run_id {
            set.insert("exportRunId", run_id);
        }
        doc! {"$set": set}
    }
}

/// One transaction of [`Store::reject_claimed`]: a part of the rejections.
struct RejectTransaction<'a> {
    store: &'a Store,
    run_id: &'a str,
    part: &'a [(ObjectId, String)],
}

impl TransactionBody for RejectTransaction<'_> {
    type Output = Vec<(ObjectId, String)>;

    fn try_once<'s>(
        &'s mut self,
        session: &'s mut ClientSession,
    ) -> BoxFuture<'s, Result<Self::Output, MongoError>> {
        Box::pin(
            self.store
                .try_reject_claimed(session, self.run_id, self.part),
        )
    }
}

/// What marking a published run's records sets.
#[derive(Debug, Clone)]
pub(crate) struct Marking<'a> {
    /// The run.
    pub(crate) run_id: &'a str,
    /// Its file's name.
    pub(crate) file_name: &'a str,
    /// Its publication's time: `exportedAt` of every record.
    pub(crate) exported_at: DateTime,
}

impl Store {
    /// The highest `_id` among the deanery's `TO_EXPORT` records: a new run
    /// claims up to it, so a writer that keeps adding records cannot keep a
    /// run going for ever.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn max_to_export_id(
        &self,
        deanery: &Deanery,
    ) -> Result<Option<ObjectId>, StoreError> {
        let waiting = waiting_of(deanery, doc! {"$type": "objectId"});
        let find = Find::ids(waiting).sorted(doc! {"_id": -1});
        let scope = self.scope("find_backlog");
        let found = self.read_first(scope, &self.records, find).await?;
        Ok(found.and_then(|d| d.get_object_id("_id").ok()))
    }

    /// The records `read` selects, in `_id` order, `batch_size` at a time.
    pub(super) async fn records_in_order(
        &self,
        read: Read<'_>,
    ) -> Result<BoundedCursor, StoreError> {
        let (records, read) = (&self.records, &read);
        let options = FindOptions::builder()
            .sort(doc! {"_id": 1})
            .projection(read.projection.clone())
            .batch_size(read.batch_size)
            .max_time(self.max_time)
            .build();
        let options = &options;
        let cursor = self
            .retry
            .run(read.scope, &self.counters, || async move {
                records
                    .find(read.filter.clone())
                    .with_options(options.clone())
                    .await
            })
            .await?;
        Ok(BoundedCursor::new(cursor, &self.retry, read.scope.op))
    }

    /// Streams the records a run has claimed and not yet marked, in `_id`
    /// order, `batch_size` at a time (memory stays flat): their `fields`.
    ///
    /// # Errors
    /// When the query cannot be started.
    pub(crate) async fn claimed(
        &self,
        run_id: &str,
        fields: Fields,
        batch_size: u32,
    ) -> Result<BoundedCursor, StoreError> {
        let (op, projection) = match fields {
            Fields::Ids => ("find_claimed_ids", doc! {"_id": 1}),
            Fields::Row => ("stream_claimed", AppRow::projection()),
        };
        let read = Read {
            scope: self.scope(op),
            filter: claimed_by(run_id),
            projection: Some(projection),
            batch_size,
        };
        self.records_in_order(read).await
    }

    /// How many records the run has claimed and not yet marked.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn count_claimed(&self, run_id: &str) -> Result<u64, StoreError> {
        let records = &self.records;
        Ok(self
            .retry
            .run(self.scope("count_claimed"), &self.counters, || async move {
                records
                    .count_documents(claimed_by(run_id))
                    .max_time(self.max_time)
                    .await
            })
            .await?)
    }

    /// Rejects records a run had claimed but which turned invalid before
    /// they were written (another writer changed them), and moves the run's
    /// counters by as many as were rejected, in one transaction per
    /// `batch` records: the counters never drift from the records. Returns
    /// the records this call rejected (an earlier, interrupted attempt may
    /// have rejected some already; another writer may have moved some).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn reject_claimed(
        &self,
        session: &mut ClientSession,
        run_id: &str,
        rejections: &[(ObjectId, String)],
        batch: usize,
    ) -> Result<Vec<(ObjectId, String)>, StoreError> {
        let mut rejected = Vec::new();
        for part in rejections.chunks(batch.max(1)) {
            let body = RejectTransaction {
                store: self,
                run_id,
                part,
            };
            let modified = self
                .retry
                .in_transaction(self.scope("reject_claimed"), session, &self.counters, body)
                .await?;
            rejected.extend(modified);
        }
        Ok(rejected)
    }

    /// One attempt of one transaction of [`Store::reject_claimed`].
    async fn try_reject_claimed(
        &self,
        s: &mut ClientSession,
        run_id: &str,
        part: &[(ObjectId, String)],
    ) -> Result<Vec<(ObjectId, String)>, MongoError> {
        let mut modified = Vec::new();
        for (id, reason) in part {
            let mut filter = claimed_by(run_id);
            filter.insert("_id", id);
            let result = self
                .records
                .update_one(filter, Rejection::because(reason).update())
                .session(&mut *s)
                .await?;
            if result.modified_count == 1 {
                modified.push((*id, reason.clone()));
            }
        }
        if !modified.is_empty() {
            let n = modified.len() as i64;
            self.runs
                .update_one(
                    doc! {"_id": run_id},
                    doc! {"$inc": {"claimed": -n, "rejected": n}},
                )
                .session(&mut *s)
                .await?;
        }
        Ok(modified)
    }

    /// Marks the run's claimed records with `_id` in `(after, up_to]`
    /// `EXPORTED` with the file's name, in one statement outside any
    /// transaction. Once the publication is recorded, the records to mark
    /// are exactly those `EXPORTING` under the run, so the statement is
    /// idempotent: after a kill, a lost reply or a transient error it is
    /// run again as it is. `exportedAt` is the publication's time, the
    /// same for every record of the run. Returns the records it changed.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn mark_exported(
        &self,
        marking: &Marking<'_>,
        range: IdRange,
    ) -> Result<u64, StoreError> {
        let filter = range.narrow(claimed_by(marking.run_id));
        let update = doc! {"$set": {
            "status": RecordStatus::Exported.as_str(),
            "exportedAt": marking.exported_at,
            "exportFileName": marking.file_name,
        }};
        let (records, filter, update) = (&self.records, &filter, &update);
        let result = self
            .retry
            .run(self.scope("mark_exported"), &self.counters, || async move {
                records.update_many(filter.clone(), update.clone()).await
            })
            .await?;
        Ok(result.modified_count)
    }

    /// Deanery codes, as stored, of records waiting to be exported or
    /// claimed by an unfinished run.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn deaneries_with_work(&self) -> Result<Vec<Bson>, StoreError> {
        let scope = RetryScope::global("list_deaneries");
        let mut codes = self.deaneries_waiting(scope).await?;
        let (runs, max_time) = (&self.runs, self.max_time);
        let open = self
            .retry
            .run(scope, &self.counters, || async move {
                runs.distinct("deanery", open_runs())
                    .max_time(max_time)
                    .await
            })
            .await?;
        for code in open {
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        Ok(codes)
    }

    /// Deanery values of the waiting and claimed records.
    async fn deaneries_waiting(&self, scope: RetryScope<'_>) -> Result<Vec<Bson>, StoreError> {
        // A `$group` on the status-first index reads only the waiting and
        // claimed records (a `distinct` on SecantusDB reads every document).
        // A record without a deanery groups under null and is rejected.
        let pipeline = vec![
            doc! {"$match": {"status": {"$in": [RecordStatus::ToExport.as_str(), RecordStatus::Exporting.as_str()]}}},
            doc! {"$group": {"_id": "$deanery"}},
        ];
        let groups = self.read_all(scope, &self.records, pipeline).await?;
        Ok(groups
            .into_iter()
            .map(|group| group.get("_id").cloned().unwrap_or(Bson::Null))
            .collect())
    }

    /// Rejects the waiting records whose deanery value is not a valid code,
    /// so they are visible instead of silently never exported. Returns how
    /// many were rejected.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn reject_invalid_deanery(
        &self,
        value: &Bson,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let scope = RetryScope::global("reject_invalid_deanery");
        let filter = doc! {"deanery": value.clone(), "status": RecordStatus::ToExport.as_str()};
        self.reject_where(scope, filter, reason).await
    }

    /// Rejects the records `filter` selects (outside any run) with
    /// `reason`; returns how many it changed.
    pub(super) async fn reject_where(
        &self,
        scope: RetryScope<'_>,
        filter: Document,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let (records, filter) = (&self.records, &filter);
        let result = self
            .retry
            .run(scope, &self.counters, || async move {
                records
                    .update_many(filter.clone(), Rejection::because(reason).update())
                    .await
            })
            .await?;
        Ok(result.modified_count)
    }
}
