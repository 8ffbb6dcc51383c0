//! Publications in doubt. The final create of a file is recorded as an
//! intent (name and SHA-256) just before it is tried; a resume that then
//! finds nothing under the name cannot tell "never created" from "created
//! and taken by the receiver", so the run is held in doubt until it is
//! settled: by a person (`esr-exporter resolve`), by a versioned bucket's
//! delete marker, or by `export.in_doubt = "publish"`.

use bson::{doc, DateTime};
use serde::{Deserialize, Serialize};

use super::runs::decode_run;
use super::{Find, RetryScope, RunDoc, RunPhase, Store, StoreError};

/// The final create of a run's file was about to be tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateIntent {
    /// The file's name.
    pub name: String,
    /// SHA-256 of the bytes about to be created under it.
    pub sha256: String,
    /// Host that was about to create it.
    pub host: String,
    /// When.
    pub at: DateTime,
}

impl CreateIntent {
    /// The intent to create `name` with `sha256` now, from this host.
    pub(crate) fn now(name: &str, sha256: &str) -> Self {
        Self {
            name: name.to_owned(),
            sha256: sha256.to_owned(),
            host: crate::domain::host_name(),
            at: super::now(),
        }
    }
}

/// How a publication in doubt was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Settlement {
    /// The receiver has the file: nothing is sent, the records are marked.
    Delivered,
    /// The receiver never had it: the recorded bytes are published.
    NotDelivered,
}

impl Settlement {
    /// As said in logs and on the command line.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::NotDelivered => "not delivered",
        }
    }
}

/// A run held because its file's create may have happened and nothing is
/// under the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Doubt {
    /// When a resume first found nothing under the name.
    pub since: DateTime,
    /// How it was settled, once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<Settlement>,
}

impl Store {
    /// Deaneries with a run held in doubt and not yet settled.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy or a run is malformed.
    pub(crate) async fn runs_in_doubt(&self) -> Result<Vec<RunDoc>, StoreError> {
        let filter = doc! {
            "phase": RunPhase::Finalizing.as_str(),
            "doubt.since": {"$exists": true},
            "doubt.settled": {"$exists": false},
        };
        let find = Find::of(filter).sorted(doc! {"phase": 1, "startedAt": -1});
        let found = self
            .read_all(RetryScope::global("runs_in_doubt"), &self.runs, find)
            .await?;
        found.into_iter().map(decode_run).collect()
    }
}
