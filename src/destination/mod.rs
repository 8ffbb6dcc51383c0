//! Where a staged file is published: a folder, a bucket, or an SFTP
//! server, one file each.
//!
//! One small interface, knowing nothing of records or runs: prove at start
//! that a name cannot be created twice ([`Destination::probe`]); create a
//! name only if absent; look up what a name holds (size, ETag, SHA-256
//! read back); remove temporaries a killed process left; say where a name
//! is ([`Destination::location`]). A new kind of destination is a new file
//! here, its settings, and a variant of [`Destination`].

mod bucket;
mod credentials;
mod error;
mod folder;
mod leftovers;
pub(crate) mod metrics;
mod multipart;
mod probe;
mod retry;
mod sftp;
mod upload;

pub use bucket::Bucket;
pub use error::{DestinationError, FailureKind};
pub(crate) use folder::hash_if_present;
pub use folder::Folder;
pub use sftp::Sftp;
pub use upload::Upload;

use std::path::Path;

use bytes::Bytes;

use crate::config::Settings;
use crate::domain::{DestinationUrl, Location};

/// What a name holds at a destination (or was just created with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// A folder on this host (`export.output_dir` by default).
    Folder(Folder),
    /// An S3-compatible bucket.
    Bucket(Bucket),
    /// A folder on an SFTP server.
    Sftp(Sftp),
}

/// Calls the same method on whichever destination it is.
macro_rules! each {
    ($destination:expr, $inner:ident => $call:expr) => {
        match $destination {
            Destination::Folder($inner) => $call,
            Destination::Bucket($inner) => $call,
            Destination::Sftp($inner) => $call,
        }
    };
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
        let output_dir = &settings.export.output_dir;
        let folder = |dir: Option<&Path>| {
            let dir = dir.unwrap_or(output_dir);
            Self::Folder(Folder::new(dir, settings.export.file_mode_bits()))
        };
        match url {
            DestinationUrl::Folder(dir) => Ok(folder(dir.as_deref())),
            DestinationUrl::S3 { bucket, prefix } => {
                Bucket::open(bucket, prefix, &settings.s3).map(Self::Bucket)
            }
            DestinationUrl::Sftp { .. } => {
                Ok(Sftp::open(url, &settings.sftp).map_or_else(|| folder(None), Self::Sftp))
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

    /// The scheme, for metric labels: `file`, `s3` or `sftp`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Folder(_) => "file",
            Self::Bucket(_) => "s3",
            Self::Sftp(_) => "sftp",
        }
    }

    /// The folder's path, `s3://bucket/prefix` or `sftp://user@host:port/path`.
    pub fn url(&self) -> &str {
        each!(self, d => d.url())
    }

    /// The path or object key of a file name.
    pub fn key(&self, name: &str) -> String {
        each!(self, d => d.key(name))
    }

    /// Where a file created under `name` is, with what its create gave.
    pub fn location(&self, name: &str, found: Found) -> Location {
        match self {
            Self::Folder(folder) => Location::Folder {
                path: folder.key(name),
            },
            Self::Bucket(bucket) => Location::Object {
                destination: bucket.url().to_owned(),
                key: bucket.key(name),
                etag: found.etag,
                version: found.version,
            },
            Self::Sftp(sftp) => Location::Server {
                destination: sftp.url().to_owned(),
                path: sftp.key(name),
            },
        }
    }

    /// One look, no retry (readiness).
    ///
    /// # Errors
    /// What that look met.
    pub async fn check(&self) -> Result<(), DestinationError> {
        each!(self, d => d.check().await)
    }

    /// Proves a second create of a name is refused.
    ///
    /// # Errors
    /// When the proof fails or the destination cannot be reached.
    pub async fn probe(&self) -> Result<(), DestinationError> {
        match self {
            Self::Bucket(bucket) => probe::probe(bucket).await,
            Self::Folder(folder) => folder.probe().await,
            Self::Sftp(sftp) => sftp.probe().await,
        }
    }

    /// What the name holds (size, ETag, version); `None` when absent.
    ///
    /// # Errors
    /// When the destination fails beyond the policy.
    pub async fn lookup(&self, name: &str) -> Result<Option<Found>, DestinationError> {
        each!(self, d => d.lookup(name).await)
    }

    /// The bytes of a small file such as a manifest.
    ///
    /// # Errors
    /// When the destination fails beyond the policy.
    pub async fn read_small(&self, name: &str) -> Result<Option<Bytes>, DestinationError> {
        each!(self, d => d.read_small(name).await)
    }

    /// Creates the name with these bytes only if nothing is there.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists; others as classified.
    pub async fn create_bytes(&self, name: &str, bytes: Bytes) -> Result<Found, DestinationError> {
        each!(self, d => d.create_bytes(name, bytes).await)
    }

    /// Makes the local file's bytes ready for `name` without creating it
    /// (a temporary upload, or nothing for a folder).
    ///
    /// # Errors
    /// As the upload meets them.
    pub async fn upload(&self, name: &str, file: &Path) -> Result<Upload, DestinationError> {
        Ok(Upload(each!(self, d => d.upload_file(name, file).await)?))
    }

    /// Creates `name` from an upload only if nothing is there: the one
    /// step that makes the file visible under its name.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists; others as classified.
    pub async fn finish(&self, name: &str, upload: Upload) -> Result<Found, DestinationError> {
        each!(self, d => d.finish(name, upload.0).await)
    }

    /// Removes the name (absent is fine).
    ///
    /// # Errors
    /// When the destination fails beyond the policy.
    pub async fn delete(&self, name: &str) -> Result<(), DestinationError> {
        each!(self, d => d.delete(name).await)
    }

    /// Removes temporaries of `name_prefix` a killed process left (only
    /// while holding the deanery's lease).
    ///
    /// # Errors
    /// When the destination fails beyond the policy.
    pub async fn remove_temporaries(&self, name_prefix: &str) -> Result<usize, DestinationError> {
        each!(self, d => d.remove_temporaries(name_prefix).await)
    }

    /// What a delete marker under the name hides, on a versioned bucket:
    /// proof that the name was created and taken. `None` for a folder or a
    /// server, which keep no history, and when the history cannot be read.
    pub async fn taken(&self, name: &str) -> Option<Found> {
        match self {
            Self::Bucket(bucket) => bucket.taken(name).await,
            Self::Folder(_) | Self::Sftp(_) => None,
        }
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
        // The look-up's size and ETag bound the read back: no second look.
        let hash = each!(self, d => d.sha256(name, &found).await)?;
        Ok(match hash {
            None => Holding::Absent,
            Some(hash) if hash == sha256 => Holding::Same(found),
            Some(hash) => Holding::Other(hash),
        })
    }
}
