//! The claim of one chunk of waiting records, in one short transaction:
//! lease check, read, reject the invalid, mark the valid `EXPORTING`,
//! allocate the run's file name, move the run forward; all or nothing.

use std::time::Duration;

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use mongodb::error::Error as MongoError;
use mongodb::options::ReturnDocument;
use mongodb::ClientSession;

use futures_util::future::BoxFuture;

use super::leases::lease_renewal;
use super::records::{waiting, Rejection};
use super::retry::TransactionBody;
use super::{in_future, runs, IdRange, RetryError, RunDoc, RunPhase, Store, StoreError};
use crate::domain::{AppRow, Deanery, RecordStatus};

/// What one claim transaction did, applied by the caller after commit.
#[derive(Debug, Default)]
pub(crate) struct ClaimedChunk {
    /// Valid records claimed (now `EXPORTING`), in `_id` order.
    pub rows: Vec<AppRow>,
    /// Records rejected by this chunk: `_id` and reason.
    pub rejections: Vec<(Bson, String)>,
    /// How many waiting records the claim read (valid and rejected).
    pub(crate) covered: usize,
    /// The most it could read: the size asked for, unless a conflict made
    /// its retries take fewer. Fewer read than this means none was left.
    pub(crate) limit: usize,
    /// The end of the `_id` range dealt with.
    pub(crate) last_id: Option<ObjectId>,
    /// `(seq, file name)` when this chunk allocated the run's file name.
    pub(crate) assigned_file: Option<(i64, String)>,
    /// Time spent reading the chunk's records (the committed attempt).
    pub(crate) read_time: std::time::Duration,
    /// Time spent writing them `EXPORTING` and advancing the run.
    pub(crate) write_time: std::time::Duration,
}

/// The records one claim read, in `_id` order.
#[derive(Debug, Default)]
struct ChunkRead {
    /// The valid ones, as rows.
    rows: Vec<AppRow>,
    /// The invalid ones: `_id` and reason.
    rejections: Vec<(Bson, String)>,
    /// The `_id` of the last one read.
    last: Option<ObjectId>,
}

impl ChunkRead {
    fn add(&mut self, document: &Document, deanery: &Deanery) {
        self.last = document.get_object_id("_id").ok().or(self.last);
        match AppRow::from_document(document, deanery) {
            Ok(row) => self.rows.push(row),
            Err(reason) => {
                let id = document.get("_id").cloned().unwrap_or(Bson::Null);
                self.rejections.push((id, reason));
            }
        }
    }
}

/// Marker carried inside a driver error when the lease check in a claim
/// transaction fails, so the transaction aborts without retrying.
#[derive(Debug)]
struct LeaseLost;

/// Marker carried inside a driver error when the run is no longer
/// `CLAIMING` (another process moved it on), so the claim aborts.
#[derive(Debug)]
struct RunMovedOn;

/// Whose claim it is: the run, and the holder of its deanery's lease.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim<'a> {
    /// The run the records are claimed for.
    pub(crate) run: &'a RunDoc,
    /// Its deanery.
    pub(crate) deanery: &'a Deanery,
    /// The lease holder, renewed in each claim.
    pub(crate) owner: &'a str,
    /// How long each renewal holds the lease for.
    pub(crate) lease_ttl: Duration,
    /// Records per batch of the claim's read (`export.cursor_batch_size`).
    pub(crate) batch_size: u32,
}

/// The claim transaction's body. After a transient failure the retry
/// reads half as many records: a smaller transaction gives another writer
/// a smaller window.
struct ClaimTransaction<'a> {
    store: &'a Store,
    claim: Claim<'a>,
    /// The run's bound: it claims the waiting records after its last
    /// claimed `_id` and up to this one.
    up_to: ObjectId,
    /// How many of them the attempt reads, at most.
    limit: usize,
    /// Whether an attempt ran before (only a whole-transaction retry runs
    /// the body again).
    retrying: bool,
}

impl TransactionBody for ClaimTransaction<'_> {
    type Output = ClaimedChunk;

    fn try_once<'s>(
        &'s mut self,
        session: &'s mut ClientSession,
    ) -> BoxFuture<'s, Result<ClaimedChunk, MongoError>> {
        if self.retrying {
            self.limit = (self.limit / 2).max(1);
        }
        self.retrying = true;
        Box::pin(async move {
            let (claim, up_to, limit) = (&self.claim, self.up_to, self.limit);
            let mut chunk = self
                .store
                .try_claim_chunk(session, claim, up_to, limit)
                .await?;
            chunk.limit = self.limit;
            Ok(chunk)
        })
    }
}

/// A stored counter as an `i64`.
fn counter_seq(counter: &Document) -> Result<i64, MongoError> {
    match counter.get("seq") {
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        _ => Err(MongoError::custom("sequence counter without seq")),
    }
}

impl Store {
    /// Claims records in one short transaction: renews the lease (and stops
    /// if it was lost), reads the first `limit` `TO_EXPORT` records after
    /// the run's last claimed `_id` and up to `up_to`, in `_id` order,
    /// marks the valid ones `EXPORTING` and the invalid ones `REJECTED`
    /// with their reasons, allocates the run's file name on the first
    /// valid record, and moves the run document forward; all or nothing.
    /// After a transient failure the retry reads half as many: a smaller
    /// transaction gives another writer a smaller window.
    /// [`ClaimedChunk::covered`] says how many were read, and
    /// [`ClaimedChunk::limit`] how many could have been.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`], or MongoDB failing beyond the policy.
    pub(crate) async fn claim_chunk(
        &self,
        session: &mut ClientSession,
        claim: Claim<'_>,
        (up_to, limit): (ObjectId, usize),
    ) -> Result<ClaimedChunk, StoreError> {
        let (run, deanery) = (claim.run, claim.deanery);
        let body = ClaimTransaction {
            store: self,
            claim,
            up_to,
            limit: limit.max(1),
            retrying: false,
        };
        let result = self
            .retry
            .in_transaction(self.scope("claim_chunk"), session, &self.counters, body)
            .await;
        result.map_err(|err| lease_lost_or_mongo(err, deanery, &run.id))
    }

    /// One attempt of [`Store::claim_chunk`]'s transaction body.
    async fn try_claim_chunk(
        &self,
        s: &mut ClientSession,
        claim: &Claim<'_>,
        up_to: ObjectId,
        limit: usize,
    ) -> Result<ClaimedChunk, MongoError> {
        self.renew_lease_in(s, claim).await?;
        let reading = std::time::Instant::now();
        let after = claim.run.last_claimed_id;
        let in_range = IdRange::after(after, Some(up_to)).narrow(waiting(claim.deanery));
        let read = self.read_chunk(s, in_range, limit, claim).await?;
        let read_time = reading.elapsed();
        let Some(last) = read.last else {
            return Ok(ClaimedChunk::default());
        };
        let writing = std::time::Instant::now();
        let (rows, rejections) = (read.rows, read.rejections);
        self.reject_in_claim(s, &rejections, &claim.run.id).await?;
        if !rows.is_empty() {
            // The snapshot (plus this transaction's own rejections) makes the
            // range up to the last record read hold exactly the rows just
            // read; a range update is cheaper for the server than an `$in`
            // list of ids.
            let claimed = IdRange::after(after, Some(last));
            let in_claim = claimed.narrow(waiting(claim.deanery));
            self.mark_exporting(s, in_claim, &claim.run.id).await?;
        }
        let covered = rows.len() + rejections.len();
        let mut set = doc! {"lastClaimedId": last};
        let mut assigned_file = None;
        if claim.run.file_name.is_none() && !rows.is_empty() {
            let (seq, name) = self.allocate_file_name(s, claim).await?;
            set.insert("seq", seq);
            set.insert("fileName", &name);
            assigned_file = Some((seq, name));
        }
        let counts = (rows.len() as i64, rejections.len() as i64);
        self.advance_run(s, &claim.run.id, set, counts).await?;
        Ok(ClaimedChunk {
            rows,
            rejections,
            covered,
            limit,
            last_id: Some(last),
            assigned_file,
            read_time,
            write_time: writing.elapsed(),
        })
    }

    /// Renews the lease inside the transaction; a lost lease aborts it.
    async fn renew_lease_in(
        &self,
        s: &mut ClientSession,
        claim: &Claim<'_>,
    ) -> Result<(), MongoError> {
        let (filter, update) =
            lease_renewal(claim.deanery, claim.owner, in_future(claim.lease_ttl));
        let renewed = self.leases.update_one(filter, update).session(s).await?;
        if renewed.matched_count == 0 {
            return Err(MongoError::custom(LeaseLost));
        }
        Ok(())
    }

    /// The first `limit` records `in_range` selects, in `_id` order.
    async fn read_chunk(
        &self,
        s: &mut ClientSession,
        in_range: Document,
        limit: usize,
        claim: &Claim<'_>,
    ) -> Result<ChunkRead, MongoError> {
        let mut cursor = self
            .records
            .find(in_range)
            .projection(AppRow::projection())
            .sort(doc! {"_id": 1})
            .limit(limit as i64)
            .batch_size(claim.batch_size.min(limit as u32))
            .session(&mut *s)
            .max_time(self.max_time)
            .await?;
        let mut read = ChunkRead::default();
        while let Some(document) = cursor.next(&mut *s).await {
            read.add(&document?, claim.deanery);
        }
        Ok(read)
    }

    /// Rejects the chunk's invalid records, each with its reason.
    async fn reject_in_claim(
        &self,
        s: &mut ClientSession,
        rejections: &[(Bson, String)],
        run_id: &str,
    ) -> Result<(), MongoError> {
        for (id, reason) in rejections {
            self.records
                .update_one(
                    doc! {"_id": id, "status": RecordStatus::ToExport.as_str()},
                    Rejection {
                        reason,
                        run_id: Some(run_id),
                    }
                    .update(),
                )
                .session(&mut *s)
                .await?;
        }
        Ok(())
    }

    /// Marks the waiting records of the range `EXPORTING` for the run.
    async fn mark_exporting(
        &self,
        s: &mut ClientSession,
        in_range: Document,
        run_id: &str,
    ) -> Result<(), MongoError> {
        self.records
            .update_many(
                in_range,
                doc! {"$set": {
                    "status": RecordStatus::Exporting.as_str(),
                    "exportRunId": run_id,
                }},
            )
            .session(s)
            .await?;
        Ok(())
    }

    /// The next file sequence number of the deanery on the run's date,
    /// and the file name it gives.
    async fn allocate_file_name(
        &self,
        s: &mut ClientSession,
        claim: &Claim<'_>,
    ) -> Result<(i64, String), MongoError> {
        let (deanery, date) = (claim.deanery, claim.run.file_date());
        let counter = self
            .sequences
            .find_one_and_update(
                doc! {"_id": format!("{deanery}:{date}")},
                doc! {"$inc": {"seq": 1_i64}},
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(s)
            .await?
            .unwrap_or_default();
        let seq = counter_seq(&counter)?;
        if !(1..=99_999).contains(&seq) {
            return Err(MongoError::custom(format!(
                "file sequence {seq} for {deanery} on {date} is outside 1..=99999"
            )));
        }
        Ok((seq, runs::file_name(deanery, &date, seq)))
    }

    /// Moves the run document forward by one chunk: `set`, and its
    /// `(claimed, rejected)` counters.
    async fn advance_run(
        &self,
        s: &mut ClientSession,
        run_id: &str,
        set: Document,
        (claimed, rejected): (i64, i64),
    ) -> Result<(), MongoError> {
        let advanced = self
            .runs
            .update_one(
                doc! {"_id": run_id, "phase": RunPhase::Claiming.as_str()},
                doc! {
                    "$set": set,
                    "$inc": {"claimed": claimed, "rejected": rejected},
                },
            )
            .session(s)
            .await?;
        if advanced.matched_count == 0 {
            return Err(MongoError::custom(RunMovedOn));
        }
        Ok(())
    }
}

/// A claim that stopped on a lost lease is [`StoreError::LeaseLost`]; on
/// a run moved on, [`StoreError::StaleTransition`].
fn lease_lost_or_mongo(err: RetryError, deanery: &Deanery, run_id: &str) -> StoreError {
    let custom = |found: fn(&MongoError) -> bool| err.mongo().is_some_and(found);
    if custom(|e| e.get_custom::<LeaseLost>().is_some()) {
        StoreError::LeaseLost {
            deanery: deanery.to_string(),
        }
    } else if custom(|e| e.get_custom::<RunMovedOn>().is_some()) {
        StoreError::StaleTransition {
            run_id: run_id.to_owned(),
            expected: RunPhase::Claiming.as_str().to_owned(),
            found: "another phase".to_owned(),
        }
    } else {
        StoreError::Mongo(err)
    }
}
