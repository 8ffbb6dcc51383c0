//! Where a staged file is published: the local folder, a bucket, or an
//! SFTP server.
//!
//! One small interface, knowing nothing of records or runs: prove at start
//! that a name cannot be created twice ([`Destination::probe`]); create a
//! name only if absent; look up what a name holds (size, ETag, SHA-256
//! read back); remove temporaries a killed process left. The folder's own
//! publication (hard link, never over a file) stays in `export::file`.

mod bucket;
mod credentials;
mod error;
mod leftovers;
pub(crate) mod metrics;
mod multipart;
mod probe;
mod retry;
mod sftp;

pub use bucket::Bucket;
pub use error::{DestinationError, FailureKind};
pub use sftp::Sftp;

use std::path::Path;

use bytes::Bytes;

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
    /// A folder on an SFTP server.
    Sftp(Sftp),
}

impl Destination {
    /// The destination the settings name. Nothing is sent yet.
    ///
    /// # Errors
    /// When the AWS environment cannot configure a client.
    pub fn from_settings(settings: &Settings) -> Result<Self, DestinationError> {
        Self::of(&settings.export.destination, settings)
    }

    /// The destination `url` names, with the settings' client sections.
    ///
    /// # Errors
    /// When the AWS environment cannot configure a client.
    pub fn of(url: &DestinationUrl, settings: &Settings) -> Result<Self, DestinationError> {
        match url {
            DestinationUrl::Folder(_) => Ok(Self::Folder),
            DestinationUrl::S3 { bucket, prefix } => {
                Bucket::open(bucket, prefix, &settings.s3).map(Self::Bucket)
            }
            DestinationUrl::Sftp { .. } => {
                Ok(Sftp::open(url, &settings.sftp).map_or(Self::Folder, Self::Sftp))
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

    /// Proves a bucket or server refuses a second create of a name (a
    /// folder's hard link always does).
    ///
    /// # Errors
    /// When the proof fails or the store cannot be reached.
    pub async fn probe(&self) -> Result<(), DestinationError> {
        match self.remote() {
            None => Ok(()),
            Some(remote) => remote.probe().await,
        }
    }

    /// The scheme, for metric labels: `file`, `s3` or `sftp`.
    pub fn scheme(&self) -> &'static str {
        self.remote().map_or("file", |remote| remote.scheme())
    }

    /// The destination when it is not the local folder.
    pub fn remote(&self) -> Option<Remote<'_>> {
        match self {
            Self::Folder => None,
            Self::Bucket(bucket) => Some(Remote::Bucket(bucket)),
            Self::Sftp(sftp) => Some(Remote::Sftp(sftp)),
        }
    }
}

/// A destination other than the local folder: what publishing a file
/// needs of it, the same for a bucket and a server.
#[derive(Debug, Clone, Copy)]
pub enum Remote<'a> {
    /// An S3-compatible bucket.
    Bucket(&'a Bucket),
    /// A folder on an SFTP server.
    Sftp(&'a Sftp),
}

/// Calls the same method on whichever destination it is.
macro_rules! either {
    ($remote:expr, $inner:ident => $call:expr) => {
        match $remote {
            Remote::Bucket($inner) => $call,
            Remote::Sftp($inner) => $call,
        }
    };
}

impl Remote<'_> {
    /// `s3://bucket/prefix` or `sftp://user@host:port/path`.
    pub fn url(&self) -> &str {
        either!(self, r => r.url())
    }

    /// The object key or server path of a file name.
    pub fn key(&self, name: &str) -> String {
        either!(self, r => r.key(name))
    }

    /// `s3` or `sftp`, for metric labels.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Bucket(_) => "s3",
            Self::Sftp(_) => "sftp",
        }
    }

    /// One look, no retry (readiness).
    ///
    /// # Errors
    /// What that look met.
    pub async fn check(&self) -> Result<(), DestinationError> {
        either!(self, r => r.check().await)
    }

    /// Proves a second create of a name is refused.
    ///
    /// # Errors
    /// When the proof fails or the destination cannot be reached.
    pub async fn probe(&self) -> Result<(), DestinationError> {
        either!(self, r => r.probe().await)
    }

    /// What the name holds (size, ETag, version); `None` when absent.
    ///
    /// # Errors
    /// When the destination fails beyond the policy.
    pub async fn lookup(&self, name: &str) -> Result<Option<Found>, DestinationError> {
        either!(self, r => r.lookup(name).await)
    }

    /// The bytes of a small file such as a manifest.
    ///
    /// # Errors
    /// When the destination fails beyond the policy.
    pub async fn read_small(&self, name: &str) -> Result<Option<Bytes>, DestinationError> {
        either!(self, r => r.read_small(name).await)
    }

    /// Creates the name with these bytes only if nothing is there.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists; others as classified.
    pub async fn create_bytes(&self, name: &str, bytes: Bytes) -> Result<Found, DestinationError> {
        either!(self, r => r.create_bytes(name, bytes).await)
    }

    /// Creates the name from a local file only if nothing is there.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists; others as classified.
    pub async fn create_from_file(
        &self,
        name: &str,
        file: &Path,
    ) -> Result<Found, DestinationError> {
        either!(self, r => r.create_from_file(name, file).await)
    }

    /// Removes the name (absent is fine).
    ///
    /// # Errors
    /// When the destination fails beyond the policy.
    pub async fn delete(&self, name: &str) -> Result<(), DestinationError> {
        either!(self, r => r.delete(name).await)
    }

    /// Removes temporaries of `name_prefix` a killed process left (only
    /// while holding the deanery's lease).
    ///
    /// # Errors
    /// When the destination fails beyond the policy.
    pub async fn remove_temporaries(&self, name_prefix: &str) -> Result<usize, DestinationError> {
        either!(self, r => r.remove_temporaries(name_prefix).await)
    }

    /// What the name holds compared with `sha256`: absent, the same bytes
    /// (read back and hashed), or other bytes.
    ///
    /// # Errors
    /// When the destination fails beyond the policy.
    pub async fn holding(&self, name: &str, sha256: &str) -> Result<Holding, DestinationError> {
        let Some(found) = self.lookup(name).await? else {
            return Ok(Holding::Absent);
        };
        let hash = either!(self, r => r.sha256(name).await)?;
        Ok(match hash {
            None => Holding::Absent,
            Some(hash) if hash == sha256 => Holding::Same(found),
            Some(hash) => Holding::Other(hash),
        })
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
}
