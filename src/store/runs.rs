//! Export run documents: one per run, the audit trail and the point an
//! interrupted run resumes from.

use bson::oid::ObjectId;
use bson::{doc, DateTime, Document};
use serde::{Deserialize, Serialize};

use super::doubt::{CreateIntent, Doubt};
use super::{now, Find, Store, StoreError};
use crate::domain::{Deanery, Location};

/// Where a run is. A run only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum RunPhase {
    /// Claiming records chunk by chunk; the file is not final yet.
    Claiming,
    /// The file is staged (hash and count recorded) and being made final.
    Finalizing,
    /// The file and its manifest are final; records are being marked.
    Written,
    /// Every claimed record is `EXPORTED` (or `REJECTED`).
    Completed,
}

impl RunPhase {
    /// The stored value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Claiming => "CLAIMING",
            Self::Finalizing => "FINALIZING",
            Self::Written => "WRITTEN",
            Self::Completed => "COMPLETED",
        }
    }
}

/// An `exportRuns` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunDoc {
    /// Run id (UUID).
    #[serde(rename = "_id")]
    pub id: String,
    /// Deanery code.
    pub deanery: String,
    /// Progress.
    pub phase: RunPhase,
    /// Start of the run; its UTC date and time go into the file name and header.
    pub(crate) started_at: DateTime,
    /// Highest record `_id` the run claims (fixed at start).
    pub(crate) claim_up_to: Option<ObjectId>,
    /// Highest record `_id` claimed so far.
    pub(crate) last_claimed_id: Option<ObjectId>,
    /// Valid records claimed.
    pub claimed: i64,
    /// Records rejected.
    pub rejected: i64,
    /// File sequence number, once allocated.
    pub seq: Option<i64>,
    /// File name, once allocated.
    pub file_name: Option<String>,
    /// SHA-256 of the file, once written.
    pub sha256: Option<String>,
    /// Detail lines in the file, once written.
    pub(crate) record_count: Option<i64>,
    /// When the run completed.
    pub(crate) finished_at: Option<DateTime>,
    /// Transactions tried over all of the run's tries (stored as
    /// `attempts`).
    #[serde(default, rename = "attempts")]
    pub transactions: i64,
    /// The last error an attempt stopped on.
    #[serde(default)]
    pub(crate) last_error: Option<String>,
    /// Where and when the file was made final, recorded the moment its
    /// final name existed; records are marked only after this.
    #[serde(default)]
    pub publication: Option<Publication>,
    /// Each time the file was delivered again (`esr-exporter redeliver`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) redeliveries: Vec<Document>,
    /// The final create of the file about to be tried (name and hash),
    /// recorded before it: a later resume that finds nothing under the
    /// name knows the file may have been delivered and taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) create_intent: Option<CreateIntent>,
    /// Held in doubt: nothing under the name after an intent to create it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) doubt: Option<Doubt>,
}

/// Where a run's file was published.
///
/// Stored as `{host, sha256, publishedAt, location: {kind, ...}}`. A
/// document written before locations were typed holds the location flat
/// (`path`, and `destination`, `key`, `etag`, `version` for a bucket or a
/// server); it reads as the same typed location ([`Location::from_flat`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "StoredPublication")]
pub(crate) struct Publication {
    /// Host that published the file (whose folder holds it, for a folder).
    pub host: String,
    /// SHA-256 of the published bytes.
    pub sha256: String,
    /// When the final name came to exist.
    pub(crate) published_at: DateTime,
    /// Where the file is.
    pub location: Location,
}

/// A publication as stored, in either shape.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPublication {
    host: String,
    sha256: String,
    published_at: DateTime,
    location: Option<Location>,
    path: Option<String>,
    destination: Option<String>,
    key: Option<String>,
    etag: Option<String>,
    version: Option<String>,
}

impl TryFrom<StoredPublication> for Publication {
    type Error = String;

    fn try_from(stored: StoredPublication) -> Result<Self, String> {
        let location = match (stored.location, stored.path) {
            (Some(location), _) => location,
            (None, Some(path)) => Location::from_flat(
                path,
                stored.destination,
                stored.key,
                stored.etag,
                stored.version,
            ),
            (None, None) => return Err("a publication with neither `location` nor `path`".into()),
        };
        Ok(Self {
            host: stored.host,
            sha256: stored.sha256,
            published_at: stored.published_at,
            location,
        })
    }
}

impl RunDoc {
    /// A new run, claiming up to `claim_up_to` (none: nothing to claim).
    pub(crate) fn new(deanery: &Deanery, claim_up_to: Option<ObjectId>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            deanery: deanery.to_string(),
            phase: RunPhase::Claiming,
            started_at: now(),
            claim_up_to,
            last_claimed_id: None,
            claimed: 0,
            rejected: 0,
            seq: None,
            file_name: None,
            sha256: None,
            record_count: None,
            finished_at: None,
            transactions: 0,
            last_error: None,
            publication: None,
            redeliveries: Vec::new(),
            create_intent: None,
            doubt: None,
        }
    }

    /// The run's UTC date, `YYYYMMDD`.
    pub(crate) fn file_date(&self) -> String {
        self.started_at.to_chrono().format("%Y%m%d").to_string()
    }

    /// The run's UTC time, `HHMMSS`.
    pub(crate) fn file_time(&self) -> String {
        self.started_at.to_chrono().format("%H%M%S").to_string()
    }
}

/// `DE_<DEANERY>_APP_<YYYYMMDD>_<SEQ>.DAT` (contract).
pub fn file_name(deanery: &Deanery, date: &str, seq: i64) -> String {
    format!("DE_{deanery}_APP_{date}_{seq:05}.DAT")
}

impl Store {
    /// The deanery's unfinished run, if there is one.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy or the document is malformed.
    pub(crate) async fn find_open_run(
        &self,
        deanery: &Deanery,
    ) -> Result<Option<RunDoc>, StoreError> {
        let runs = &self.runs;
        let found = self
            .retry
            .run(self.scope("find_open_run"), &self.counters, || async move {
                runs.find_one(doc! {
                    "deanery": deanery.as_str(),
                    "phase": {"$ne": RunPhase::Completed.as_str()},
                })
                .sort(doc! {"startedAt": 1})
                .max_time(self.max_time)
                .await
            })
            .await?;
        found.map(decode_run).transpose()
    }

    /// Stores a new run.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn insert_run(&self, run: &RunDoc) -> Result<(), StoreError> {
        let document = bson::to_document(run).map_err(|err| StoreError::Malformed {
            what: "export run",
            reason: err.to_string(),
        })?;
        let (runs, document) = (&self.runs, &document);
        let inserted = doc! {"_id": &run.id};
        self.retry
            .write(
                self.scope("insert_run"),
                &self.counters,
                || async move {
                    match runs.insert_one(document.clone()).await {
                        Ok(_) => Ok(()),
                        // A retried insert whose first try did land.
                        Err(err) if super::retry::is_duplicate_key(&err) => Ok(()),
                        Err(err) => Err(err),
                    }
                },
                || self.read_back(runs, &inserted, ()),
            )
            .await?;
        Ok(())
    }

    /// Applies `$set` (and `$inc` of attempts) to a run document, in
    /// whatever phase it is: for what is not a move between phases
    /// (those are [`Store::transition`]).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    async fn update_run(
        &self,
        run_id: &str,
        set: Document,
        add_transactions: i64,
    ) -> Result<(), StoreError> {
        let mut applied = set.clone();
        applied.insert("_id", run_id);
        let (runs, set, applied) = (&self.runs, &set, &applied);
        self.retry
            .write(
                self.scope("update_run"),
                &self.counters,
                || async move {
                    runs.update_one(
                        doc! {"_id": run_id},
                        doc! {"$set": set.clone(), "$inc": {"attempts": add_transactions}},
                    )
                    .await
                    .map(drop)
                },
                || self.read_back(runs, applied, ()),
            )
            .await?;
        Ok(())
    }
}

impl Store {
    /// Records the error an attempt of the run stopped on (`lastError`,
    /// `lastErrorAt`) and adds the attempt's transaction attempts.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn record_run_error(
        &self,
        run_id: &str,
        error: &str,
        add_transactions: i64,
    ) -> Result<(), StoreError> {
        let set = doc! {"lastError": error, "lastErrorAt": now()};
        self.update_run(run_id, set, add_transactions).await
    }

    /// True when a completed run of the deanery already carries this
    /// scheduled slot or this command id.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn trigger_done(
        &self,
        deanery: &Deanery,
        slot: Option<&str>,
        command_id: &str,
    ) -> Result<bool, StoreError> {
        let mut either = vec![doc! {"commands": command_id}];
        if let Some(slot) = slot.filter(|s| *s != "manual") {
            either.push(doc! {"slots": slot});
        }
        let filter = doc! {
            "deanery": deanery.as_str(),
            "phase": RunPhase::Completed.as_str(),
            "$or": either,
        };
        let find = Find::ids(filter);
        let scope = self.scope("find_done_trigger");
        let found = self.read_first(scope, &self.runs, find).await?;
        Ok(found.is_some())
    }
}

pub(super) fn decode_run(document: Document) -> Result<RunDoc, StoreError> {
    bson::from_document(document).map_err(|err| StoreError::Malformed {
        what: "export run",
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_the_contract() {
        let d = Deanery::parse("MER").unwrap();
        assert_eq!(
            file_name(&d, "20261128", 1),
            "DE_MER_APP_20261128_00001.DAT"
        );
        assert_eq!(
            file_name(&d, "20261128", 12345),
            "DE_MER_APP_20261128_12345.DAT"
        );
    }

    #[test]
    fn a_run_document_round_trips_through_bson() {
        let run = RunDoc::new(&Deanery::parse("EOE").unwrap(), Some(ObjectId::new()));
        let document = bson::to_document(&run).unwrap();
        assert_eq!(document.get_str("phase").unwrap(), "CLAIMING");
        let back = decode_run(document).unwrap();
        assert_eq!(back.id, run.id);
        assert_eq!(back.claim_up_to, run.claim_up_to);
    }
}
