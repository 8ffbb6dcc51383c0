//! MongoDB: the records collection of the contract, export run documents,
//! per-deanery leases and file sequence counters; their indexes; and every
//! read and write the export engine makes, each under the retry policy.

pub mod retry;
mod runs;
mod slots;

use std::time::Duration;

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime, Document};
use mongodb::error::Error as MongoError;
use mongodb::options::ClientOptions;
use mongodb::{Client, ClientSession, Collection, Cursor, IndexModel};

pub use retry::{Attempts, RetryError, RetryPolicy, RetryScope};
pub use runs::{file_name, RunDoc, RunPhase};
pub use slots::{SlotClaim, StuckRecords};

use crate::config::Settings;
use crate::domain::{AppRow, Deanery, RecordStatus};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection string could not be used.
    #[error("invalid MongoDB configuration (key `mongodb.uri`): {0}")]
    Configuration(#[source] MongoError),
    /// A MongoDB operation failed for good (after retries, if transient).
    #[error(transparent)]
    Mongo(#[from] RetryError),
    /// This process no longer holds the deanery's lease: another process
    /// took over after it lapsed. The run stops without writing anything.
    #[error("lease on deanery {deanery} lost to another process")]
    LeaseLost {
        /// Deanery code.
        deanery: String,
    },
    /// A stored document does not have the expected shape.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which document.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    /// True when a later attempt may succeed without anyone fixing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Mongo(err) => err.is_transient(),
            Self::LeaseLost { .. } => true,
            Self::Configuration(_) | Self::Malformed { .. } => false,
        }
    }
}

/// Marker carried inside a driver error when the lease check in a claim
/// transaction fails, so the transaction aborts without retrying.
#[derive(Debug)]
struct LeaseLost;

/// Outcome of asking for a deanery's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// This process holds the lease now.
    Acquired,
    /// Another process holds it.
    Held {
        /// Its owner id.
        owner: String,
        /// When it lapses unless renewed.
        expires_at: Option<DateTime>,
    },
}

/// What one claim transaction did, applied by the caller after commit.
#[derive(Debug, Default)]
pub struct ClaimedChunk {
    /// Valid records claimed (now `EXPORTING`), in `_id` order.
    pub rows: Vec<AppRow>,
    /// Records rejected by this chunk.
    pub rejected: u64,
    /// Records looked at.
    pub scanned: usize,
    /// True when fewer records were found than asked for: nothing is left
    /// to claim.
    pub exhausted: bool,
    /// Highest `_id` looked at.
    pub last_id: Option<ObjectId>,
    /// `(seq, file name)` when this chunk allocated the run's file name.
    pub assigned_file: Option<(i64, String)>,
}

/// Handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    records: Collection<Document>,
    runs: Collection<Document>,
    leases: Collection<Document>,
    sequences: Collection<Document>,
    slots: Collection<Document>,
    retry: RetryPolicy,
}

/// Milliseconds-precision "now", as stored in documents.
pub fn now() -> DateTime {
    DateTime::now()
}

fn in_future(duration: Duration) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() + duration.as_millis() as i64)
}

fn scope<'a>(op: &'static str, deanery: &'a Deanery) -> RetryScope<'a> {
    RetryScope {
        op,
        deanery: Some(deanery.as_str()),
    }
}

impl Store {
    /// Connects and creates the indexes this daemon needs, idempotently.
    ///
    /// # Errors
    /// [`StoreError::Configuration`] for an unusable URI; a
    /// [`StoreError::Mongo`] when the indexes cannot be created.
    pub async fn build(settings: &Settings) -> Result<Self, StoreError> {
        let store = Self::connect(settings).await?;
        store.ensure_indexes().await?;
        Ok(store)
    }

    /// A handle without any I/O yet (the driver connects on first use).
    ///
    /// # Errors
    /// [`StoreError::Configuration`] for an unusable URI.
    pub async fn connect(settings: &Settings) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(settings.mongodb.uri.expose())
            .await
            .map_err(StoreError::Configuration)?;
        options.server_selection_timeout = Some(Duration::from_millis(
            settings.mongodb.server_selection_timeout_ms,
        ));
        if options.app_name.is_none() {
            options.app_name = Some("esr-exporter".to_owned());
        }
        let client = Client::with_options(options).map_err(StoreError::Configuration)?;
        let db = client.database(&settings.mongodb.database);
        let store = Self {
            records: db.collection(&settings.mongodb.records_collection),
            runs: db.collection(&settings.mongodb.runs_collection),
            leases: db.collection(&settings.mongodb.leases_collection),
            sequences: db.collection(&settings.mongodb.sequences_collection),
            slots: db.collection(&settings.mongodb.slots_collection),
            client,
            retry: RetryPolicy::new(settings.retry.clone()),
        };
        Ok(store)
    }

    /// One `ping` to the server, not retried (readiness).
    ///
    /// # Errors
    /// The driver's error, as a permanent [`RetryError`].
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map(drop)
            .map_err(|source| {
                StoreError::Mongo(RetryError::Permanent {
                    op: "ping",
                    code: retry::error_code(&source),
                    source,
                })
            })
    }

    /// The records collection (tests and tools seed through it).
    pub fn records(&self) -> &Collection<Document> {
        &self.records
    }

    /// The export runs collection.
    pub fn runs(&self) -> &Collection<Document> {
        &self.runs
    }

    /// The retry policy every operation runs under.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// A new session for one run's transactions.
    ///
    /// # Errors
    /// When no server can be reached within the policy.
    pub async fn start_session(
        &self,
        attempts: &mut Attempts,
    ) -> Result<ClientSession, StoreError> {
        let client = &self.client;
        Ok(self
            .retry
            .run(
                RetryScope {
                    op: "start_session",
                    deanery: None,
                },
                attempts,
                || async move { client.start_session().await },
            )
            .await?)
    }

    /// Creates the indexes this daemon needs; a no-op when they exist.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    mongodb::options::IndexOptions::builder()
                        .name(name.to_owned())
                        .build(),
                )
                .build()
        };
        let mut attempts = Attempts::default();
        let plan: [(&Collection<Document>, Vec<IndexModel>); 2] = [
            (
                &self.records,
                vec![
                    index(
                        doc! {"deanery": 1, "status": 1, "_id": 1},
                        "esr_exporter_deanery_status_id",
                    ),
                    index(
                        doc! {"exportRunId": 1, "status": 1, "_id": 1},
                        "esr_exporter_run_status_id",
                    ),
                ],
            ),
            (
                &self.runs,
                vec![
                    index(
                        doc! {"deanery": 1, "phase": 1, "startedAt": 1},
                        "deanery_phase_startedAt",
                    ),
                    index(doc! {"deanery": 1, "startedAt": -1}, "deanery_startedAt"),
                    index(doc! {"deanery": 1, "slots": 1}, "deanery_slots"),
                    index(doc! {"deanery": 1, "commands": 1}, "deanery_commands"),
                ],
            ),
        ];
        for (collection, models) in plan {
            let models = &models;
            self.retry
                .run(
                    RetryScope {
                        op: "create_indexes",
                        deanery: None,
                    },
                    &mut attempts,
                    || async move { collection.create_indexes(models.clone()).await.map(drop) },
                )
                .await?;
        }
        Ok(())
    }

    /// Takes the deanery's lease for `owner` when it is free, lapsed, or
    /// already `owner`'s.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn acquire_lease(
        &self,
        deanery: &Deanery,
        owner: &str,
        ttl: Duration,
        attempts: &mut Attempts,
    ) -> Result<LeaseOutcome, StoreError> {
        let leases = &self.leases;
        let acquired = self
            .retry
            .run(scope("acquire_lease", deanery), attempts, || async move {
                let now = now();
                let result = leases
                    .find_one_and_update(
                        doc! {
                            "_id": deanery.as_str(),
                            "$or": [{"expiresAt": {"$lte": now}}, {"owner": owner}],
                        },
                        doc! {"$set": {"owner": owner, "expiresAt": in_future(ttl), "acquiredAt": now}},
                    )
                    .upsert(true)
                    .await;
                match result {
                    Ok(_) => Ok(true),
                    // The document exists and did not match: someone else holds it.
                    Err(err) if retry::error_code(&err) == Some(11000) => Ok(false),
                    Err(err) => Err(err),
                }
            })
            .await?;
        if acquired {
            return Ok(LeaseOutcome::Acquired);
        }
        let holder = self
            .retry
            .run(scope("read_lease", deanery), attempts, || async move {
                leases.find_one(doc! {"_id": deanery.as_str()}).await
            })
            .await?
            .unwrap_or_default();
        Ok(LeaseOutcome::Held {
            owner: holder.get_str("owner").unwrap_or("unknown").to_owned(),
            expires_at: holder.get_datetime("expiresAt").ok().copied(),
        })
    }

    /// Extends the lease if `owner` still holds it.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when another process holds it now.
    pub async fn renew_lease(
        &self,
        deanery: &Deanery,
        owner: &str,
        ttl: Duration,
        attempts: &mut Attempts,
    ) -> Result<(), StoreError> {
        let leases = &self.leases;
        let result = self
            .retry
            .run(scope("renew_lease", deanery), attempts, || async move {
                leases
                    .update_one(
                        doc! {"_id": deanery.as_str(), "owner": owner},
                        doc! {"$set": {"expiresAt": in_future(ttl)}},
                    )
                    .await
            })
            .await?;
        if result.matched_count == 0 {
            return Err(StoreError::LeaseLost {
                deanery: deanery.to_string(),
            });
        }
        Ok(())
    }

    /// Gives the lease up so the next attempt need not wait for it to lapse.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn release_lease(
        &self,
        deanery: &Deanery,
        owner: &str,
        attempts: &mut Attempts,
    ) -> Result<(), StoreError> {
        let leases = &self.leases;
        self.retry
            .run(scope("release_lease", deanery), attempts, || async move {
                leases
                    .delete_one(doc! {"_id": deanery.as_str(), "owner": owner})
                    .await
            })
            .await?;
        Ok(())
    }

    /// The highest `_id` among the deanery's `TO_EXPORT` records: a new run
    /// claims up to it, so a writer that keeps adding records cannot keep a
    /// run going for ever.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn max_to_export_id(
        &self,
        deanery: &Deanery,
        attempts: &mut Attempts,
    ) -> Result<Option<ObjectId>, StoreError> {
        let records = &self.records;
        let found = self
            .retry
            .run(scope("find_backlog", deanery), attempts, || async move {
                records
                    .find_one(doc! {"deanery": deanery.as_str(), "status": RecordStatus::ToExport.as_str()})
                    .sort(doc! {"_id": -1})
                    .projection(doc! {"_id": 1})
                    .await
            })
            .await?;
        Ok(found.and_then(|d| d.get_object_id("_id").ok()))
    }

    /// Claims the next chunk of the run's records in one short transaction:
    /// renews the lease (and stops if it was lost), reads up to `chunk_size`
    /// `TO_EXPORT` records after the run's last claimed `_id`, marks the
    /// valid ones `EXPORTING` and the invalid ones `REJECTED` with their
    /// reasons, allocates the run's file name on the first valid record,
    /// and moves the run document forward; all or nothing.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`], or MongoDB failing beyond the policy.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_chunk(
        &self,
        session: &mut ClientSession,
        run: &RunDoc,
        deanery: &Deanery,
        owner: &str,
        lease_ttl: Duration,
        chunk_size: u32,
        attempts: &mut Attempts,
    ) -> Result<ClaimedChunk, StoreError> {
        let Some(up_to) = run.claim_up_to else {
            return Ok(ClaimedChunk {
                exhausted: true,
                ..ClaimedChunk::default()
            });
        };
        let mut txn = self.retry.transaction(scope("claim_chunk", deanery));
        // After a conflict the retry claims half as many records: a smaller
        // transaction has a smaller window for another writer to hit.
        let mut limit = chunk_size;
        let result = async {
            loop {
                txn.begin(session, attempts).await?;
                let outcome = self
                    .try_claim_chunk(session, run, up_to, deanery, owner, lease_ttl, limit)
                    .await;
                match txn.end(session, outcome, attempts).await? {
                    Some(chunk) => return Ok(chunk),
                    None => limit = (limit / 2).max(1),
                }
            }
        }
        .await;
        result.map_err(|err: RetryError| {
            if err.mongo().get_custom::<LeaseLost>().is_some() {
                StoreError::LeaseLost {
                    deanery: deanery.to_string(),
                }
            } else {
                StoreError::Mongo(err)
            }
        })
    }

    /// One attempt of [`Store::claim_chunk`]'s transaction body.
    #[allow(clippy::too_many_arguments)]
    async fn try_claim_chunk(
        &self,
        s: &mut ClientSession,
        run: &RunDoc,
        up_to: ObjectId,
        deanery: &Deanery,
        owner: &str,
        lease_ttl: Duration,
        chunk_size: u32,
    ) -> Result<ClaimedChunk, MongoError> {
        let (records, runs, leases, sequences) =
            (&self.records, &self.runs, &self.leases, &self.sequences);

        let renewed = leases
            .update_one(
                doc! {"_id": deanery.as_str(), "owner": owner},
                doc! {"$set": {"expiresAt": in_future(lease_ttl)}},
            )
            .session(&mut *s)
            .await?;
        if renewed.matched_count == 0 {
            return Err(MongoError::custom(LeaseLost));
        }
        let mut id_range = doc! {"$lte": up_to};
        if let Some(after) = run.last_claimed_id {
            id_range.insert("$gt", after);
        }
        let mut cursor = records
            .find(doc! {
                "deanery": deanery.as_str(),
                "status": RecordStatus::ToExport.as_str(),
                "_id": id_range,
            })
            .sort(doc! {"_id": 1})
            .limit(i64::from(chunk_size))
            .session(&mut *s)
            .await?;
        let mut chunk = ClaimedChunk::default();
        let mut rejections: Vec<(Bson, String)> = Vec::new();
        while let Some(document) = cursor.next(&mut *s).await {
            let document = document?;
            chunk.scanned += 1;
            if let Ok(id) = document.get_object_id("_id") {
                chunk.last_id = Some(id);
            }
            match AppRow::from_document(&document) {
                Ok(row) => chunk.rows.push(row),
                Err(reason) => {
                    rejections.push((document.get("_id").cloned().unwrap_or(Bson::Null), reason))
                }
            }
        }
        chunk.exhausted = chunk.scanned < chunk_size as usize;
        if chunk.scanned == 0 {
            return Ok(chunk);
        }
        if !chunk.rows.is_empty() {
            let ids: Vec<ObjectId> = chunk.rows.iter().map(|r| r.id).collect();
            records
                .update_many(
                    doc! {"_id": {"$in": ids}, "status": RecordStatus::ToExport.as_str()},
                    doc! {"$set": {
                        "status": RecordStatus::Exporting.as_str(),
                        "exportRunId": &run.id,
                    }},
                )
                .session(&mut *s)
                .await?;
        }
        for (id, reason) in &rejections {
            records
                .update_one(
                    doc! {"_id": id, "status": RecordStatus::ToExport.as_str()},
                    doc! {"$set": {
                        "status": RecordStatus::Rejected.as_str(),
                        "rejectionReason": reason,
                        "exportRunId": &run.id,
                        "rejectedAt": now(),
                    }},
                )
                .session(&mut *s)
                .await?;
        }
        chunk.rejected = rejections.len() as u64;
        let mut set = doc! {"lastClaimedId": chunk.last_id};
        if run.file_name.is_none() && !chunk.rows.is_empty() {
            let date = run.file_date();
            let counter = sequences
                .find_one_and_update(
                    doc! {"_id": format!("{deanery}:{date}")},
                    doc! {"$inc": {"seq": 1_i64}},
                )
                .upsert(true)
                .return_document(mongodb::options::ReturnDocument::After)
                .session(&mut *s)
                .await?
                .unwrap_or_default();
            let seq = match counter.get("seq") {
                Some(Bson::Int64(n)) => *n,
                Some(Bson::Int32(n)) => i64::from(*n),
                _ => return Err(MongoError::custom("sequence counter without seq")),
            };
            if !(1..=99_999).contains(&seq) {
                return Err(MongoError::custom(format!(
                    "file sequence {seq} for {deanery} on {date} is outside 1..=99999"
                )));
            }
            let name = runs::file_name(deanery, &date, seq);
            set.insert("seq", seq);
            set.insert("fileName", &name);
            chunk.assigned_file = Some((seq, name));
        }
        runs.update_one(
            doc! {"_id": &run.id},
            doc! {
                "$set": set,
                "$inc": {"claimed": chunk.rows.len() as i64, "rejected": chunk.rejected as i64},
            },
        )
        .session(&mut *s)
        .await?;
        Ok(chunk)
    }

    /// Streams the records a run has claimed and not yet marked, in `_id`
    /// order, `batch_size` at a time (memory stays flat).
    ///
    /// # Errors
    /// When the query cannot be started.
    pub async fn claimed_records(
        &self,
        run_id: &str,
        deanery: &Deanery,
        batch_size: u32,
        attempts: &mut Attempts,
    ) -> Result<Cursor<Document>, StoreError> {
        let records = &self.records;
        Ok(self
            .retry
            .run(scope("stream_claimed", deanery), attempts, || async move {
                records
                    .find(doc! {"exportRunId": run_id, "status": RecordStatus::Exporting.as_str()})
                    .sort(doc! {"_id": 1})
                    .batch_size(batch_size)
                    .await
            })
            .await?)
    }

    /// Rejects records a run had claimed but which turned invalid before
    /// they were written (another writer changed them).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn reject_claimed(
        &self,
        run_id: &str,
        deanery: &Deanery,
        rejections: &[(ObjectId, String)],
        attempts: &mut Attempts,
    ) -> Result<(), StoreError> {
        let (records, runs) = (&self.records, &self.runs);
        for (id, reason) in rejections {
            self.retry
                .run(scope("reject_claimed", deanery), attempts, || async move {
                    let result = records
                        .update_one(
                            doc! {"_id": id, "exportRunId": run_id, "status": RecordStatus::Exporting.as_str()},
                            doc! {"$set": {
                                "status": RecordStatus::Rejected.as_str(),
                                "rejectionReason": reason,
                                "rejectedAt": now(),
                            }},
                        )
                        .await?;
                    if result.modified_count == 1 {
                        runs.update_one(
                            doc! {"_id": run_id},
                            doc! {"$inc": {"claimed": -1_i64, "rejected": 1_i64}},
                        )
                        .await?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(())
    }

    /// Marks up to `chunk_size` of the run's claimed records `EXPORTED` with
    /// the file name, in one short transaction. Returns whether claimed
    /// records may remain (false once the last chunk is marked).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn mark_exported_chunk(
        &self,
        session: &mut ClientSession,
        run_id: &str,
        deanery: &Deanery,
        file_name: &str,
        chunk_size: u32,
        attempts: &mut Attempts,
    ) -> Result<bool, StoreError> {
        let records = &self.records;
        let claimed = doc! {"exportRunId": run_id, "status": RecordStatus::Exporting.as_str()};
        let claimed_ref = &claimed;
        // The last _id of the next chunk bounds the update, so each
        // transaction touches at most `chunk_size` records.
        let boundary = self
            .retry
            .run(
                scope("find_mark_boundary", deanery),
                attempts,
                || async move {
                    records
                        .find_one(claimed_ref.clone())
                        .sort(doc! {"_id": 1})
                        .skip(u64::from(chunk_size.saturating_sub(1)))
                        .projection(doc! {"_id": 1})
                        .await
                },
            )
            .await?
            .and_then(|d| d.get_object_id("_id").ok());
        let mut filter = claimed.clone();
        if let Some(boundary) = boundary {
            filter.insert("_id", doc! {"$lte": boundary});
        }
        let update = doc! {"$set": {
            "status": RecordStatus::Exported.as_str(),
            "exportedAt": now(),
            "exportFileName": file_name,
        }};
        let mut txn = self.retry.transaction(scope("mark_exported", deanery));
        loop {
            txn.begin(session, attempts).await?;
            let outcome = records
                .update_many(filter.clone(), update.clone())
                .session(&mut *session)
                .await;
            if txn.end(session, outcome, attempts).await?.is_some() {
                break;
            }
        }
        Ok(boundary.is_some())
    }

    /// Deanery codes, as stored, of records waiting to be exported or
    /// claimed by an unfinished run.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn deaneries_with_work(
        &self,
        attempts: &mut Attempts,
    ) -> Result<Vec<Bson>, StoreError> {
        let (records, runs) = (&self.records, &self.runs);
        let scope = RetryScope {
            op: "list_deaneries",
            deanery: None,
        };
        let mut codes = self
            .retry
            .run(scope, attempts, || async move {
                records
                    .distinct(
                        "deanery",
                        doc! {"status": {"$in": [RecordStatus::ToExport.as_str(), RecordStatus::Exporting.as_str()]}},
                    )
                    .await
            })
            .await?;
        let open = self
            .retry
            .run(scope, attempts, || async move {
                runs.distinct(
                    "deanery",
                    doc! {"phase": {"$ne": RunPhase::Completed.as_str()}},
                )
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

    /// Rejects the waiting records whose deanery value is not a valid code,
    /// so they are visible instead of silently never exported. Returns how
    /// many were rejected.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn reject_invalid_deanery(
        &self,
        value: &Bson,
        reason: &str,
        attempts: &mut Attempts,
    ) -> Result<u64, StoreError> {
        let records = &self.records;
        let result = self
            .retry
            .run(
                RetryScope {
                    op: "reject_invalid_deanery",
                    deanery: None,
                },
                attempts,
                || async move {
                    records
                        .update_many(
                            doc! {"deanery": value.clone(), "status": RecordStatus::ToExport.as_str()},
                            doc! {"$set": {
                                "status": RecordStatus::Rejected.as_str(),
                                "rejectionReason": reason,
                                "rejectedAt": now(),
                            }},
                        )
                        .await
                },
            )
            .await?;
        Ok(result.modified_count)
    }
}
