//! MongoDB: the records collection of the contract, export run documents,
//! per-deanery leases, schedule slots and file sequence counters; their
//! indexes; and every read and write the export engine makes, each under
//! the retry policy.
//!
//! This file holds the [`Store`] handle (connection, sessions) and
//! [`StoreError`]. Two rooms:
//!
//! - [`mongo`], the plumbing that knows no collection: the client's bounds
//!   and TLS trust, [`retry`] (the retry policy and the retrying
//!   transaction) and bounded streaming reads;
//! - a file per collection or concern, each one responsibility:
//!   - `records`: reading, rejecting and marking records;
//!   - `stuck`: the stuck records the watchdog reports;
//!   - `claim`: the claim transaction of one chunk of records;
//!   - `id_range`: the `_id` ranges those reads and writes cover;
//!   - `unexportable`: waiting records whose `_id` cannot be written;
//!   - `runs`: export run documents;
//!   - `transition`: a run's fenced moves from phase to phase;
//!   - `incident`: the runs, files and records an incident asks about;
//!   - `counts`: the status report's counts and latest runs;
//!   - `leases`: the one lease primitive, and the per-deanery leases on it;
//!   - `slots`: schedule slots (on the lease primitive) and catch-up claims;
//!   - `agreement`: what the replicas' clocks and schedules say;
//!   - `indexes`: the indexes this daemon needs, and reusing equal ones;
//!   - `query`: the small reads collected whole (a find or a pipeline).

mod agreement;
mod claim;
mod counts;
mod doubt;
mod id_range;
mod incident;
mod indexes;
mod leases;
pub mod mongo;
mod query;
mod records;
mod runs;
mod slots;
mod stuck;
mod transition;
mod unexportable;

pub use mongo::retry;

use std::time::Duration;

use bson::{doc, Bson, DateTime, Document};
use futures_util::TryStreamExt;
use mongodb::options::{ClientOptions, ReadPreference, SelectionCriteria};
use mongodb::{Client, ClientSession, Collection};

pub(crate) use claim::{Claim, ClaimedChunk};
pub(crate) use counts::{LatestRun, OldestWaiting, StatusCount, StatusQuery};
pub(crate) use doubt::{CreateIntent, Settlement};
pub(crate) use id_range::IdRange;
pub use indexes::{LEGACY_RECORDS_INDEX, RECORDS_BY_STATUS_INDEX};
pub(crate) use leases::LeaseOutcome;
use query::{Find, Query};
pub(crate) use records::{Fields, Marking};
pub use retry::RetryError;
pub use retry::{Counters, Counts};
pub(crate) use retry::{RetryPolicy, RetryScope};
pub use runs::file_name;
pub(crate) use runs::{Publication, RunDoc, RunPhase};
pub(crate) use slots::SlotClaim;
pub use stuck::StuckRecords;
pub(crate) use transition::Transition;

use crate::config::Settings;
use crate::domain::Deanery;

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
    /// A run transition found the run in a phase it does not leave:
    /// another process moved the run on (this one's lease lapsed).
    /// Nothing was changed; the next attempt resumes from the stored run.
    #[error("run {run_id} is {found}, not {expected}: another process moved it on, so this one changed nothing")]
    StaleTransition {
        /// The run.
        run_id: String,
        /// The phases the transition leaves.
        expected: String,
        /// The stored phase (`missing` when the run is gone).
        found: String,
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
    /// Indexes the reads need are missing: they would scan every record
    /// ever exported, so they are not made.
    #[error(
        "the indexes {} are missing, so this would read the whole collection; \
         create them with `esr-exporter ensure-indexes` (the daemon also creates them at start)",
        .0.join(", ")
    )]
    IndexesMissing(Vec<String>),
    /// The server answers but is not a writable primary.
    #[error("the MongoDB server answers but is not a writable primary (it stepped down, or the URI pins one host)")]
    NotWritablePrimary,
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
            Self::LeaseLost { .. } | Self::StaleTransition { .. } => true,
            Self::Configuration(_)
            | Self::Index { .. }
            | Self::IndexesMissing(_)
            | Self::NotWritablePrimary
            | Self::Malformed { .. } => false,
        }
    }

    /// True when MongoDB did not answer within the bound: writing anything
    /// else to it now would likely wait out the bound again.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Mongo(err) if err.is_timeout())
    }
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
    /// `maxTimeMS` of every query and aggregation, just under the client
    /// deadline: one the client gave up on does not go on grinding the
    /// server, and a slow one reports 50 before the deadline passes.
    max_time: Duration,
    /// Sessions named by a lease that was not given back (see
    /// [`Store::park_session`]), held until the process ends.
    parked: std::sync::Arc<std::sync::Mutex<Vec<ClientSession>>>,
    /// Where this handle's work is counted (a run's own, see
    /// [`Store::for_run`]).
    counters: std::sync::Arc<Counters>,
    /// The deanery whose run this handle serves, labelling its retries.
    deanery: Option<Deanery>,
}

/// Runs not yet `COMPLETED`, by the phases an index can serve.
fn open_runs() -> Document {
    doc! {"phase": {"$in": [
        RunPhase::Claiming.as_str(),
        RunPhase::Finalizing.as_str(),
        RunPhase::Written.as_str(),
    ]}}
}

/// Milliseconds-precision "now", as stored in documents.
pub fn now() -> DateTime {
    DateTime::now()
}

fn in_future(duration: Duration) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() + duration.as_millis() as i64)
}

/// A count as stored by `$sum`: any numeric type.
fn int(value: Option<&Bson>) -> Option<i64> {
    match value? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) => Some(*n as i64),
        _ => None,
    }
}

/// The creation time of the oldest record of an aggregation row: its
/// `createdAt` (a `$min`), else the timestamp of its `firstId` (a `$min`
/// of `_id`) when that is an ObjectId.
fn oldest_created(row: &Document, created: &str, first_id: &str) -> Option<DateTime> {
    row.get_datetime(created)
        .ok()
        .copied()
        .or_else(|| row.get_object_id(first_id).ok().map(|id| id.timestamp()))
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
        let bound = Duration::from_millis(settings.mongodb.operation_timeout_ms);
        mongo::bound_and_concerns(&mut options, settings, bound);
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
            retry: RetryPolicy::new(settings.retry.clone(), bound),
            max_time: retry::server_side(bound),
            parked: std::sync::Arc::default(),
            counters: std::sync::Arc::default(),
            deanery: None,
        };
        Ok(store)
    }

    /// The same handle for one run of `deanery`: its calls are labelled
    /// with the deanery and counted apart from any other handle's
    /// ([`Store::counts`]).
    pub fn for_run(&self, deanery: &Deanery) -> Self {
        Self {
            counters: std::sync::Arc::default(),
            deanery: Some(deanery.clone()),
            ..self.clone()
        }
    }

    /// What this handle's calls counted: transactions, retries,
    /// WriteConflicts.
    pub fn counts(&self) -> Counts {
        self.counters.counts()
    }

    /// The retry scope of `op`, labelled with this handle's deanery.
    fn scope(&self, op: &'static str) -> RetryScope<'_> {
        RetryScope {
            op,
            deanery: self.deanery.as_ref().map(Deanery::as_str),
        }
    }

    /// The same handle for a one-shot command that says its own failure
    /// (`status`, `explain`, ...): a server that cannot be reached or does
    /// not answer is then said once, by the command, not also here.
    pub fn said_by_caller(mut self) -> Self {
        self.retry = self.retry.said_by_caller();
        self
    }

    /// Keeps a session out of the driver's pool for the rest of the
    /// process. A lease that was not given back still names the session,
    /// and whoever takes the lapsed lease over ends that session
    /// (`killSessions`); pooled, it could by then carry another run's
    /// transaction.
    pub fn park_session(&self, session: ClientSession) {
        if let Ok(mut parked) = self.parked.lock() {
            parked.push(session);
        }
    }

    /// Ends the client at exit (`Client::shutdown`): the server's sessions
    /// are ended and the connections closed, waiting at most
    /// `mongodb.operation_timeout_ms` (and no more than 5 s) for a server
    /// that does not answer.
    pub async fn shutdown(self) {
        if let Ok(mut parked) = self.parked.lock() {
            parked.clear();
        }
        let bound = self.retry.deadline().min(Duration::from_secs(5));
        let Self { client, .. } = self;
        if tokio::time::timeout(bound, client.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                bound_ms = bound.as_millis() as u64,
                "MongoDB did not answer the client's shutdown in time; connections dropped"
            );
        }
    }

    /// Whether the server selected for writes is a writable primary
    /// (`hello`), not retried (readiness): a node that stepped down, or one
    /// the URI pins after a failover, answers but cannot take writes.
    ///
    /// # Errors
    /// The driver's error, or [`StoreError::NotWritablePrimary`].
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let admin = self.client.database("admin");
        let hello = admin
            .run_command(doc! {"hello": 1})
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary));
        let scope = RetryScope::global("hello");
        let reply = self
            .retry
            .bounded(scope, hello)
            .await?
            .map_err(|source| StoreError::Mongo(retry::unanswered("hello", source)))?;
        match reply.get_bool("isWritablePrimary") {
            Ok(true) => Ok(()),
            _ => Err(StoreError::NotWritablePrimary),
        }
    }

    /// One admin command, not retried.
    async fn admin_command(&self, op: &'static str, command: Document) -> Result<(), StoreError> {
        let admin = self.client.database("admin");
        let run = admin.run_command(command);
        self.retry
            .bounded(RetryScope::global(op), run)
            .await?
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

    /// A new session for one run's transactions.
    ///
    /// # Errors
    /// When no server can be reached within the policy.
    pub async fn start_session(&self) -> Result<ClientSession, StoreError> {
        let client = &self.client;
        Ok(self
            .retry
            .run(
                RetryScope::global("start_session"),
                &self.counters,
                || async move { client.start_session().await },
            )
            .await?)
    }

    /// Reads back a write whose outcome is unknown: `Some(value)` when a
    /// document matching `filter` is there (with the configured read
    /// concern), `None` when it is not. Not retried: the write's own retry
    /// loop runs it once per try.
    async fn read_back<T>(
        &self,
        collection: &Collection<Document>,
        filter: &Document,
        value: T,
    ) -> Result<Option<T>, mongodb::error::Error> {
        let found = collection
            .find_one(filter.clone())
            .projection(doc! {"_id": 1})
            .max_time(self.max_time)
            .await?;
        Ok(found.map(|_| value))
    }

    /// The first document `find` selects (by its sort), if any.
    async fn read_first(
        &self,
        scope: RetryScope<'_>,
        collection: &Collection<Document>,
        find: Find,
    ) -> Result<Option<Document>, StoreError> {
        let found = self.read_all(scope, collection, find.limited(1));
        Ok(found.await?.into_iter().next())
    }

    /// The documents `query` yields, collected whole (so it is for small
    /// answers: a limit, a grouping, or a handful of documents by nature).
    async fn read_all(
        &self,
        scope: RetryScope<'_>,
        collection: &Collection<Document>,
        query: impl Into<Query>,
    ) -> Result<Vec<Document>, StoreError> {
        let (query, max_time) = (&query.into(), self.max_time);
        Ok(self
            .retry
            .run(scope, &self.counters, || async move {
                let cursor = match query {
                    Query::Find(find) => {
                        let options = find.options(max_time);
                        collection
                            .find(find.filter.clone())
                            .with_options(options)
                            .await?
                    }
                    Query::Pipeline(pipeline) => {
                        collection
                            .aggregate(pipeline.clone())
                            .max_time(max_time)
                            .await?
                    }
                };
                cursor.try_collect().await
            })
            .await?)
    }
}
