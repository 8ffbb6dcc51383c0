//! Where a staged file is published: the local folder, or a bucket.
//!
//! One small interface, knowing nothing of records or runs: prove at start
//! that a name cannot be created twice ([`Destination::probe`]); create a
//! name only if absent; look up what a name holds (size, ETag, SHA-256
//! read back); remove temporaries a killed process left. The folder's own
//! publication (hard link, never over a file) stays in `export::file`.

mod bucket;
mod error;
pub(crate) mod metrics;
mod multipart;
mod probe;
mod retry;

pub use bucket::Bucket;
pub use error::{DestinationError, FailureKind};

use crate::config::Settings;
use crate::domain::DestinationUrl;

/// What a name holds at a destination (or was just created with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Bytes.
    pub size: u64,
    /// The store's ETag, if it gives one.
    pub etag: Option<String>,
    /// The object version, on a versioned bucket.
    pub version: Option<String>,
}

/// What a name holds compared with the bytes a run recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Nothing under the name.
    Absent,
    /// The recorded bytes (SHA-256 read back).
    Same(Found),
    /// Other bytes, with their SHA-256.
    Other(String),
}

/// Where files go, from `export.destination`.
#[derive(Debug, Clone)]
pub enum Destination {
    /// The folder `export.output_dir`.
    Folder,
    /// An S3-compatible bucket.
    Bucket(Bucket),
}

impl Destination {
    /// The destination the settings name. Nothing is sent yet.
    ///
    /// # Errors
    /// When the AWS environment cannot configure a client.
    pub fn from_settings(settings: &Settings) -> Result<Self, DestinationError> {
        match &settings.export.destination {
            DestinationUrl::Folder(_) => Ok(Self::Folder),
            DestinationUrl::S3 { bucket, prefix } => {
                Bucket::open(bucket, prefix, &settings.s3).map(Self::Bucket)
            }
        }
    }

    /// The destination the settings name, proven by [`Destination::probe`].
    ///
    /// # Errors
    /// When it cannot be configured, reached or proven.
    pub async fn proven(settings: &Settings) -> Result<Self, DestinationError> {
        let destination = Self::from_settings(settings)?;
        destination.probe().await?;
        Ok(destination)
    }

    /// Proves a bucket refuses a second create of a name (a folder's
    /// hard link always does).
    ///
    /// # Errors
    /// When the proof fails or the store cannot be reached.
    pub async fn probe(&self) -> Result<(), DestinationError> {
        match self {
            Self::Folder => Ok(()),
            Self::Bucket(bucket) => bucket.probe().await,
        }
    }

    /// The scheme, for metric labels: `file` or `s3`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Folder => "file",
            Self::Bucket(_) => "s3",
        }
    }
}

impl Bucket {
    /// Proves this bucket refuses a second create of a name.
    ///
    /// # Errors
    /// When the proof fails or the store cannot be reached.
    pub async fn probe(&self) -> Result<(), DestinationError> {
        probe::probe(self).await
    }

    /// What the name holds compared with `sha256`: absent, the same bytes
    /// (read back and hashed), or other bytes.
    ///
    /// # Errors
    /// When the store fails beyond the policy.
    pub async fn holding(&self, name: &str, sha256: &str) -> Result<Holding, DestinationError> {
        let Some(found) = self.lookup(name).await? else {
            return Ok(Holding::Absent);
        };
        Ok(match self.sha256(name).await? {
            None => Holding::Absent,
            Some(hash) if hash == sha256 => Holding::Same(found),
            Some(hash) => Holding::Other(hash),
        })
    }
}
