//! MongoDB: the records collection of the contract, export run documents,
//! per-deanery leases and file sequence counters; their indexes; and every
//! read and write the export engine makes, each under the retry policy.

pub mod retry;
mod runs;
mod slots;
mod unexportable;

use std::time::Duration;

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime, Document};
use futures_util::TryStreamExt;
use mongodb::error::Error as MongoError;
use mongodb::options::ClientOptions;
use mongodb::{Client, ClientSession, Collection, Cursor, IndexModel};

pub use retry::{Attempts, RetryError, RetryPolicy, RetryScope};
pub use runs::{file_name, Publication, RunDoc, RunPhase};
pub use slots::{SlotClaim, StuckRecords};

use crate::config::Settings;
use crate::domain::{AppRow, Deanery, RecordStatus};

/// The records index every status query uses: waiting records by deanery
/// in `_id` order, the deaneries with work, the stuck-record watchdog. With
/// `status` first, each reads only the records in that status, however many
/// have been exported before.
pub const RECORDS_BY_STATUS_INDEX: &str = "esr_exporter_status_deanery_id";
/// The records index of a run's claimed records.
pub const RECORDS_BY_RUN_INDEX: &str = "esr_exporter_run_status_id";
/// The records index earlier versions created (`deanery`, `status`, `_id`),
/// no longer used; a WARN at start says how to drop it.
pub const LEGACY_RECORDS_INDEX: &str = "esr_exporter_deanery_status_id";
/// An index with the same keys exists under another name or options.
const INDEX_OPTIONS_CONFLICT: i32 = 85;
/// An index with the same name exists with other keys.
const INDEX_KEY_SPECS_CONFLICT: i32 = 86;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection string could not be used.
    #[error("invalid MongoDB configuration (key `mongodb.uri`): {0}")]
    Configuration(String),
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
    /// One of this daemon's indexes cannot be had as it needs: its name is
    /// taken by other keys, or an index with its keys cannot serve queries.
    #[error("index `{name}` on `{collection}`: {reason}")]
    Index {
        /// Collection name.
        collection: String,
        /// This daemon's name for the index.
        name: String,
        /// What is wrong, and what to do.
        reason: String,
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
            Self::Configuration(_) | Self::Index { .. } | Self::Malformed { .. } => false,
        }
    }
}

/// Marker carried inside a driver error when the lease check in a claim
/// transaction fails, so the transaction aborts without retrying.
#[derive(Debug)]
struct LeaseLost;

/// Outcome of asking for a deanery's lease.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseOutcome {
    /// This process holds the lease now.
    Acquired {
        /// The session of a previous holder whose lease had lapsed (it
        /// died), which was ended so its open transaction let go.
        lapsed_session: Option<Document>,
    },
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
    /// Records rejected by this chunk: `_id` and reason.
    pub rejections: Vec<(Bson, String)>,
    /// How many of the ids offered were dealt with (all, unless a conflict
    /// made the transaction take fewer).
    pub covered: usize,
    /// The end of the `_id` range dealt with.
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

/// An index this daemon needs: its name and keys.
type IndexSpec = (&'static str, Document);

/// What keeps an index from serving every query on its keys, if anything.
fn index_flaw(options: &mongodb::options::IndexOptions) -> Option<&'static str> {
    if options.hidden == Some(true) {
        Some("hidden")
    } else if options.partial_filter_expression.is_some() {
        Some("partial")
    } else if options.sparse == Some(true) {
        Some("sparse")
    } else if options.collation.is_some() {
        Some("under a collation")
    } else {
        None
    }
}

/// The records a run has claimed and not yet marked (or rejected).
fn claimed_by(run_id: &str) -> Document {
    doc! {"exportRunId": run_id, "status": RecordStatus::Exporting.as_str()}
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
            .map_err(|err| {
                StoreError::Configuration(settings.mongodb.uri.scrub(&err.to_string()))
            })?;
        options.server_selection_timeout = Some(Duration::from_millis(
            settings.mongodb.server_selection_timeout_ms,
        ));
        if options.app_name.is_none() {
            options.app_name = Some("esr-exporter".to_owned());
        }
        let client = Client::with_options(options).map_err(|err| {
            StoreError::Configuration(settings.mongodb.uri.scrub(&err.to_string()))
        })?;
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
        self.admin_command("ping", doc! {"ping": 1}).await
    }

    /// One admin command, not retried.
    async fn admin_command(&self, op: &'static str, command: Document) -> Result<(), StoreError> {
        self.client
            .database("admin")
            .run_command(command)
            .await
            .map(drop)
            .map_err(|source| StoreError::Mongo(retry::permanent(op, source)))
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

    /// Creates the indexes this daemon needs; a no-op when they exist. An
    /// index with the same keys under another name (say, created by the
    /// service that writes the records) serves as well and is used, unless
    /// it is hidden, partial, sparse or has a collation. The records index
    /// of earlier versions (`deanery` first) is left for operators to drop
    /// once no replica runs an earlier version; a WARN says so.
    ///
    /// # Errors
    /// [`StoreError::Index`] when one of this daemon's index names is taken
    /// by other keys or an index with its keys cannot serve queries; or
    /// MongoDB failing beyond the retry policy.
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
        let scope = RetryScope {
            op: "create_indexes",
            deanery: None,
        };
        let plan: [(&Collection<Document>, Vec<IndexSpec>); 2] = [
            (
                &self.records,
                vec![
                    (
                        RECORDS_BY_STATUS_INDEX,
                        doc! {"status": 1, "deanery": 1, "_id": 1},
                    ),
                    (
                        RECORDS_BY_RUN_INDEX,
                        doc! {"exportRunId": 1, "status": 1, "_id": 1},
                    ),
                ],
            ),
            (
                &self.runs,
                vec![
                    (
                        "deanery_phase_startedAt",
                        doc! {"deanery": 1, "phase": 1, "startedAt": 1},
                    ),
                    ("deanery_startedAt", doc! {"deanery": 1, "startedAt": -1}),
                    ("deanery_slots", doc! {"deanery": 1, "slots": 1}),
                    ("deanery_commands", doc! {"deanery": 1, "commands": 1}),
                ],
            ),
        ];
        for (collection, indexes) in plan {
            for (name, keys) in indexes {
                let model = &index(keys, name);
                let conflict = self
                    .retry
                    .run(scope, &mut attempts, || async move {
                        match collection.create_index(model.clone()).await {
                            Ok(_) => Ok(None),
                            Err(err) => match retry::error_code(&err) {
                                Some(
                                    code @ (INDEX_OPTIONS_CONFLICT | INDEX_KEY_SPECS_CONFLICT),
                                ) => Ok(Some((code, err.to_string()))),
                                _ => Err(err),
                            },
                        }
                    })
                    .await?;
                let index_error = |reason: String| StoreError::Index {
                    collection: collection.name().to_owned(),
                    name: name.to_owned(),
                    reason,
                };
                match conflict {
                    None => {}
                    Some((INDEX_KEY_SPECS_CONFLICT, message)) => {
                        return Err(index_error(format!(
                            "the name is taken by an index with other keys; drop or rename that index ({message})"
                        )))
                    }
                    Some((_, message)) => {
                        let existing = self
                            .index_with_keys(collection, &model.keys, &mut attempts)
                            .await?;
                        match existing {
                            Some((existing, None)) => tracing::info!(
                                collection = collection.name(),
                                index = name,
                                existing = %existing,
                                "an index with these keys exists under another name; using it"
                            ),
                            Some((existing, Some(flaw))) => {
                                return Err(index_error(format!(
                                    "index `{existing}` has these keys but is {flaw}, so queries cannot rely on it; \
                                     drop it or make it a plain index"
                                )))
                            }
                            None => return Err(index_error(message)),
                        }
                    }
                }
            }
        }
        let records = &self.records;
        let names = self
            .retry
            .run(scope, &mut attempts, || async move {
                records.list_index_names().await
            })
            .await?;
        if names.iter().any(|name| name == LEGACY_RECORDS_INDEX) {
            tracing::warn!(
                collection = records.name(),
                index = LEGACY_RECORDS_INDEX,
                replaced_by = RECORDS_BY_STATUS_INDEX,
                "the records index of earlier versions is no longer used and costs every write; \
                 drop it once no replica runs an earlier version"
            );
        }
        Ok(())
    }

    /// The index of `collection` with exactly `keys`: its name, and what
    /// keeps it from serving every query (hidden, partial, ...), if anything.
    async fn index_with_keys(
        &self,
        collection: &Collection<Document>,
        keys: &Document,
        attempts: &mut Attempts,
    ) -> Result<Option<(String, Option<&'static str>)>, StoreError> {
        let scope = RetryScope {
            op: "list_indexes",
            deanery: None,
        };
        let indexes: Vec<IndexModel> = self
            .retry
            .run(scope, attempts, || async move {
                collection.list_indexes().await?.try_collect().await
            })
            .await?;
        Ok(indexes
            .into_iter()
            .find(|index| &index.keys == keys)
            .map(|index| {
                let options = index.options.unwrap_or_default();
                let flaw = index_flaw(&options);
                (options.name.unwrap_or_default(), flaw)
            }))
    }

    /// Takes the deanery's lease for `owner` (whose MongoDB session is
    /// `session_id`) when it is free, lapsed, or already `owner`'s.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn acquire_lease(
        &self,
        deanery: &Deanery,
        owner: &str,
        session_id: &Document,
        ttl: Duration,
        attempts: &mut Attempts,
    ) -> Result<LeaseOutcome, StoreError> {
        let leases = &self.leases;
        // A holder that died inside a transaction left that transaction
        // open, holding the lease document itself: end its session before
        // writing the lease, or the write waits for the server to time the
        // transaction out (transactionLifetimeLimitSeconds, 60 s).
        let current = self
            .retry
            .run(scope("read_lease", deanery), attempts, || async move {
                leases.find_one(doc! {"_id": deanery.as_str()}).await
            })
            .await?;
        let mut lapsed_session = None;
        if let Some(current) = current {
            let lapsed = current
                .get_datetime("expiresAt")
                .is_ok_and(|expires| *expires <= now());
            let other = current.get_str("owner").is_ok_and(|o| o != owner);
            if lapsed && other {
                if let Ok(session) = current.get_document("sessionId") {
                    if let Err(err) = self.kill_session(session).await {
                        tracing::warn!(deanery = %deanery, error = %err, "could not end the lapsed lease holder's session");
                    }
                    lapsed_session = Some(session.clone());
                }
            }
        }
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
                        doc! {"$set": {
                            "owner": owner,
                            "sessionId": session_id.clone(),
                            "expiresAt": in_future(ttl),
                            "acquiredAt": now,
                        }},
                    )
                    .upsert(true)
                    .await;
                match result {
                    Ok(_) => Ok(true),
                    // The document exists and did not match: someone else holds it.
                    Err(err) if retry::is_duplicate_key(&err) => Ok(false),
                    Err(err) => Err(err),
                }
            })
            .await?;
        if acquired {
            return Ok(LeaseOutcome::Acquired { lapsed_session });
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

    /// Ends a session (and aborts its open transaction) so the records it
    /// had written inside the transaction are free at once; best effort.
    pub async fn kill_session(&self, session_id: &Document) -> Result<(), StoreError> {
        self.admin_command("kill_session", doc! {"killSessions": [session_id.clone()]})
            .await
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
                    .find_one(doc! {
                        "deanery": deanery.as_str(),
                        "status": RecordStatus::ToExport.as_str(),
                        "_id": {"$type": "objectId"},
                    })
                    .sort(doc! {"_id": -1})
                    .projection(doc! {"_id": 1})
                    .await
            })
            .await?;
        Ok(found.and_then(|d| d.get_object_id("_id").ok()))
    }

    /// The `_id`s of the deanery's waiting records after `after` and up to
    /// `up_to`, in order: one cursor for the whole run, read a chunk at a
    /// time. Each claim then reads its records by a tight `_id` range, which
    /// costs the same however large the backlog behind it is.
    ///
    /// # Errors
    /// When the query cannot be started within the retry policy.
    pub async fn waiting_ids(
        &self,
        deanery: &Deanery,
        after: Option<ObjectId>,
        up_to: ObjectId,
        batch_size: u32,
        attempts: &mut Attempts,
    ) -> Result<Cursor<Document>, StoreError> {
        let mut id_range = doc! {"$lte": up_to};
        if let Some(after) = after {
            id_range.insert("$gt", after);
        }
        let filter = doc! {
            "deanery": deanery.as_str(),
            "status": RecordStatus::ToExport.as_str(),
            "_id": id_range,
        };
        self.id_cursor("find_waiting_ids", deanery, filter, batch_size, attempts)
            .await
    }

    /// `_id`s of the records matching `filter`, in order, `batch_size` at a time.
    async fn id_cursor(
        &self,
        op: &'static str,
        deanery: &Deanery,
        filter: Document,
        batch_size: u32,
        attempts: &mut Attempts,
    ) -> Result<Cursor<Document>, StoreError> {
        let (records, filter) = (&self.records, &filter);
        Ok(self
            .retry
            .run(scope(op, deanery), attempts, || async move {
                records
                    .find(filter.clone())
                    .sort(doc! {"_id": 1})
                    .projection(doc! {"_id": 1})
                    .batch_size(batch_size)
                    .await
            })
            .await?)
    }

    /// Claims records in one short transaction: renews the lease (and stops
    /// if it was lost), reads the `TO_EXPORT` records in the `_id` range of
    /// `ids` (sorted, from [`Store::waiting_ids`]), marks the valid ones
    /// `EXPORTING` and the invalid ones `REJECTED` with their reasons,
    /// allocates the run's file name on the first valid record, and moves
    /// the run document forward; all or nothing. After a transient failure
    /// the retry covers half as many ids: a smaller transaction gives
    /// another writer a smaller window. [`ClaimedChunk::covered`] says how
    /// many of `ids` were dealt with.
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
        ids: &[ObjectId],
        attempts: &mut Attempts,
    ) -> Result<ClaimedChunk, StoreError> {
        if ids.is_empty() {
            return Ok(ClaimedChunk::default());
        }
        let mut txn = self.retry.transaction(scope("claim_chunk", deanery));
        let mut covered = ids.len();
        let result = async {
            loop {
                txn.begin(session, attempts).await?;
                let (first, last) = (ids[0], ids[covered - 1]);
                let outcome = self
                    .try_claim_chunk(session, run, (first, last), deanery, owner, lease_ttl)
                    .await;
                match txn.end(session, outcome, attempts).await? {
                    Some(mut chunk) => {
                        chunk.covered = covered;
                        return Ok(chunk);
                    }
                    None => covered = (covered / 2).max(1),
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
    async fn try_claim_chunk(
        &self,
        s: &mut ClientSession,
        run: &RunDoc,
        (first, last): (ObjectId, ObjectId),
        deanery: &Deanery,
        owner: &str,
        lease_ttl: Duration,
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
        let in_range = doc! {
            "deanery": deanery.as_str(),
            "status": RecordStatus::ToExport.as_str(),
            "_id": {"$gte": first, "$lte": last},
        };
        let mut cursor = records
            .find(in_range.clone())
            .sort(doc! {"_id": 1})
            .session(&mut *s)
            .await?;
        let mut chunk = ClaimedChunk {
            last_id: Some(last),
            ..ClaimedChunk::default()
        };
        let mut rejections: Vec<(Bson, String)> = Vec::new();
        while let Some(document) = cursor.next(&mut *s).await {
            let document = document?;
            match AppRow::from_document(&document, deanery) {
                Ok(row) => chunk.rows.push(row),
                Err(reason) => {
                    rejections.push((document.get("_id").cloned().unwrap_or(Bson::Null), reason))
                }
            }
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
        if !chunk.rows.is_empty() {
            // The snapshot (plus this transaction's own rejections) makes the
            // range hold exactly the rows just read; a range update is
            // cheaper for the server than an `$in` list of ids.
            records
                .update_many(
                    in_range,
                    doc! {"$set": {
                        "status": RecordStatus::Exporting.as_str(),
                        "exportRunId": &run.id,
                    }},
                )
                .session(&mut *s)
                .await?;
        }
        let mut set = doc! {"lastClaimedId": last};
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
                "$inc": {"claimed": chunk.rows.len() as i64, "rejected": rejections.len() as i64},
            },
        )
        .session(&mut *s)
        .await?;
        chunk.rejections = rejections;
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
                    .find(claimed_by(run_id))
                    .sort(doc! {"_id": 1})
                    .batch_size(batch_size)
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
    pub async fn reject_claimed(
        &self,
        session: &mut ClientSession,
        run_id: &str,
        deanery: &Deanery,
        rejections: &[(ObjectId, String)],
        batch: usize,
        attempts: &mut Attempts,
    ) -> Result<Vec<(ObjectId, String)>, StoreError> {
        let (records, runs) = (&self.records, &self.runs);
        let mut rejected = Vec::new();
        for part in rejections.chunks(batch.max(1)) {
            let mut txn = self.retry.transaction(scope("reject_claimed", deanery));
            loop {
                txn.begin(session, attempts).await?;
                let outcome = async {
                    let mut modified = Vec::new();
                    for (id, reason) in part {
                        let mut filter = claimed_by(run_id);
                        filter.insert("_id", id);
                        let result = records
                            .update_one(
                                filter,
                                doc! {"$set": {
                                    "status": RecordStatus::Rejected.as_str(),
                                    "rejectionReason": reason,
                                    "rejectedAt": now(),
                                }},
                            )
                            .session(&mut *session)
                            .await?;
                        if result.modified_count == 1 {
                            modified.push((*id, reason.clone()));
                        }
                    }
                    if !modified.is_empty() {
                        let n = modified.len() as i64;
                        runs.update_one(
                            doc! {"_id": run_id},
                            doc! {"$inc": {"claimed": -n, "rejected": n}},
                        )
                        .session(&mut *session)
                        .await?;
                    }
                    Ok(modified)
                }
                .await;
                if let Some(modified) = txn.end(session, outcome, attempts).await? {
                    rejected.extend(modified);
                    break;
                }
            }
        }
        Ok(rejected)
    }

    /// How many records the run has claimed and not yet marked.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn count_claimed(
        &self,
        run_id: &str,
        deanery: &Deanery,
        attempts: &mut Attempts,
    ) -> Result<u64, StoreError> {
        let records = &self.records;
        Ok(self
            .retry
            .run(scope("count_claimed", deanery), attempts, || async move {
                records.count_documents(claimed_by(run_id)).await
            })
            .await?)
    }

    /// The `_id`s of the records a run has claimed and not yet marked, in
    /// order (to find the mark boundaries of a resumed run).
    ///
    /// # Errors
    /// When the query cannot be started within the retry policy.
    pub async fn claimed_ids(
        &self,
        run_id: &str,
        deanery: &Deanery,
        batch_size: u32,
        attempts: &mut Attempts,
    ) -> Result<Cursor<Document>, StoreError> {
        let filter = claimed_by(run_id);
        self.id_cursor("find_claimed_ids", deanery, filter, batch_size, attempts)
            .await
    }

    /// Marks the run's claimed records with `_id` in `(after, up_to]`
    /// `EXPORTED` with the file name, in one short transaction (`up_to`
    /// `None`: all the rest).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    #[allow(clippy::too_many_arguments)]
    pub async fn mark_exported(
        &self,
        session: &mut ClientSession,
        run_id: &str,
        deanery: &Deanery,
        file_name: &str,
        after: Option<ObjectId>,
        up_to: Option<ObjectId>,
        attempts: &mut Attempts,
    ) -> Result<(), StoreError> {
        let records = &self.records;
        let mut filter = claimed_by(run_id);
        let mut id_range = Document::new();
        if let Some(after) = after {
            id_range.insert("$gt", after);
        }
        if let Some(up_to) = up_to {
            id_range.insert("$lte", up_to);
        }
        if !id_range.is_empty() {
            filter.insert("_id", id_range);
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
                return Ok(());
            }
        }
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
        // A `$group` on the status-first index reads only the waiting and
        // claimed records (a `distinct` on SecantusDB reads every document).
        // A record without a deanery groups under null and is rejected.
        let pipeline = vec![
            doc! {"$match": {"status": {"$in": [RecordStatus::ToExport.as_str(), RecordStatus::Exporting.as_str()]}}},
            doc! {"$group": {"_id": "$deanery"}},
        ];
        let pipeline = &pipeline;
        let groups: Vec<Document> = self
            .retry
            .run(scope, attempts, || async move {
                records
                    .aggregate(pipeline.clone())
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        let mut codes: Vec<Bson> = groups
            .into_iter()
            .map(|group| group.get("_id").cloned().unwrap_or(Bson::Null))
            .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::options::{Collation, IndexOptions};

    #[test]
    fn only_a_plain_index_serves_every_query_on_its_keys() {
        assert_eq!(index_flaw(&IndexOptions::default()), None);
        let named = IndexOptions::builder().name("writer".to_owned()).build();
        assert_eq!(index_flaw(&named), None);
        let hidden = IndexOptions::builder().hidden(true).build();
        assert_eq!(index_flaw(&hidden), Some("hidden"));
        let partial = IndexOptions::builder()
            .partial_filter_expression(doc! {"status": "TO_EXPORT"})
            .build();
        assert_eq!(index_flaw(&partial), Some("partial"));
        let sparse = IndexOptions::builder().sparse(true).build();
        assert_eq!(index_flaw(&sparse), Some("sparse"));
        let collated = IndexOptions::builder()
            .collation(Collation::builder().locale("en".to_owned()).build())
            .build();
        assert_eq!(index_flaw(&collated), Some("under a collation"));
    }
}
