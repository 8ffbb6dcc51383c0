//! The operations of [`Sftp`]: each under the request policy, each try
//! bounded, a lost connection dropped so the next try connects again.

use std::future::Future;
use std::path::Path as LocalPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh_sftp::protocol::OpenFlags;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::super::error::{DestinationError, FailureKind};
use super::super::upload::{self, Ready};
use super::super::Found;
use super::connect::Connection;
use super::failure::{explain, no_such_file, Failed};
use super::{Sftp, TEMP_DIR};

/// Bytes per read and write of a file.
const BUFFER: usize = 256 * 1024;
/// Each started 8 MiB of an upload or read-back gets one request bound.
const BYTES_PER_BOUND: u64 = 8 << 20;

/// What a created file is made of.
#[derive(Clone, Copy)]
enum Source<'a> {
    Bytes(&'a Bytes),
    File(&'a LocalPath),
}

impl Sftp {
    /// Runs `op` on the connection under the policy; `bound` is one try's.
    pub(super) async fn request<T, F, Fut>(
        &self,
        op: &'static str,
        name: &str,
        bound: Duration,
        try_once: F,
    ) -> Result<T, DestinationError>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T, Failed>>,
    {
        let key = self.key(name);
        let whole = bound + self.settings.connect_timeout();
        self.policy
            .run((&self.url, op, &key), whole, || async {
                let connection = self.connection().await?;
                let failed = match tokio::time::timeout(bound, try_once(connection.clone())).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(failed)) => failed,
                    Err(_) => return Err(self.timed_out(&connection, op, name, bound).await),
                };
                if failed.lost {
                    self.forget(&connection).await;
                }
                let unanswered = failed.lost || failed.kind == FailureKind::Timeout;
                Err(DestinationError {
                    unanswered,
                    ..DestinationError::new(failed.kind, &self.url, op, &key, failed.detail)
                })
            })
            .await
    }

    async fn timed_out(
        &self,
        connection: &Arc<Connection>,
        op: &'static str,
        name: &str,
        bound: Duration,
    ) -> DestinationError {
        self.forget(connection).await;
        DestinationError::timed_out(&self.url, op, &self.key(name), bound)
    }

    /// One look at the server, no retry: connect and find the folder.
    ///
    /// # Errors
    /// What that look met.
    pub async fn check(&self) -> Result<(), DestinationError> {
        let connection = self.connection().await?;
        let fail = |kind, detail: String| {
            DestinationError::new(kind, &self.url, "check", &self.dir, detail)
        };
        match connection.sftp.metadata(self.dir.clone()).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(fail(
                FailureKind::Permanent,
                "the path is not a folder".to_owned(),
            )),
            Err(err) => {
                let failed = Failed::from(err);
                if failed.lost {
                    self.forget(&connection).await;
                }
                Err(fail(failed.kind, failed.detail))
            }
        }
    }

    /// What the name holds (its size); `None` when absent.
    ///
    /// # Errors
    /// When the server fails beyond the policy.
    pub async fn lookup(&self, name: &str) -> Result<Option<Found>, DestinationError> {
        let path = self.key(name);
        let size = self
            .request("stat", name, self.policy.timeout, |c| {
                let path = path.clone();
                async move {
                    match c.sftp.metadata(path).await {
                        Ok(meta) => Ok(Some(meta.len())),
                        Err(err) if no_such_file(&err) => Ok(None),
                        Err(err) => Err(Failed::from(err)),
                    }
                }
            })
            .await?;
        Ok(size.map(|size| Found {
            size,
            etag: None,
            version: None,
        }))
    }

    /// The SHA-256 of the file's bytes, read back; `None` when absent.
    ///
    /// # Errors
    /// When the server fails beyond the policy.
    pub async fn sha256(
        &self,
        name: &str,
        found: &Found,
    ) -> Result<Option<String>, DestinationError> {
        let path = self.key(name);
        let bound = self.policy.timeout * bounds_for(found.size);
        self.request("read", name, bound, |c| {
            let path = path.clone();
            async move {
                let mut file = match c.sftp.open(path).await {
                    Ok(file) => file,
                    Err(err) if no_such_file(&err) => return Ok(None),
                    Err(err) => return Err(Failed::from(err)),
                };
                Ok(Some(hash(&mut file).await?))
            }
        })
        .await
    }

    /// The file's bytes, for a small file such as a manifest.
    ///
    /// # Errors
    /// When the server fails beyond the policy.
    pub async fn read_small(&self, name: &str) -> Result<Option<Bytes>, DestinationError> {
        let path = self.key(name);
        self.request("read", name, self.policy.timeout, |c| {
            let path = path.clone();
            async move {
                match c.sftp.read(path).await {
                    Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                    Err(err) if no_such_file(&err) => Ok(None),
                    Err(err) => Err(Failed::from(err)),
                }
            }
        })
        .await
    }

    /// Creates the name with these bytes only if nothing is there.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists; others as classified.
    pub async fn create_bytes(&self, name: &str, bytes: Bytes) -> Result<Found, DestinationError> {
        let size = bytes.len() as u64;
        let temp = self.upload(name, Source::Bytes(&bytes), size).await?;
        self.rename_into(name, &temp, size).await
    }

    /// Uploads a local file to a temporary name, durable.
    ///
    /// # Errors
    /// As the read or the upload meets them.
    pub(in crate::destination) async fn upload_file(
        &self,
        name: &str,
        file: &LocalPath,
    ) -> Result<Ready, DestinationError> {
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|err| self.local_error(name, file, &err))?
            .len();
        let key = self.upload(name, Source::File(file), size).await?;
        Ok(Ready::Temporary { key, size })
    }

    /// Renames what is ready to the name only if absent.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists; others as classified.
    pub(in crate::destination) async fn finish(
        &self,
        name: &str,
        ready: Ready,
    ) -> Result<Found, DestinationError> {
        match ready {
            Ready::Temporary { key, size } => self.rename_into(name, &key, size).await,
            Ready::Bytes(bytes) => self.create_bytes(name, bytes).await,
            Ready::Local(_) => Err(upload::mismatched(&self.url, &self.key(name))),
        }
    }

    fn local_error(&self, name: &str, file: &LocalPath, err: &std::io::Error) -> DestinationError {
        let detail = format!("cannot read the staged file {}: {err}", file.display());
        DestinationError::new(
            FailureKind::Transient,
            &self.url,
            "create",
            &self.key(name),
            detail,
        )
    }

    /// Uploads to a temporary name (its folder made when missing) and
    /// makes it durable; the temporary's path. A refused write removes it.
    async fn upload(
        &self,
        name: &str,
        source: Source<'_>,
        size: u64,
    ) -> Result<String, DestinationError> {
        let bound = self.policy.timeout * bounds_for(size);
        let dir = self.dir.clone();
        let base = name.rsplit('/').next().unwrap_or(name).to_owned();
        self.request("upload", name, bound, |c| {
            let (dir, base) = (dir.clone(), base.clone());
            async move {
                let temp = format!(
                    "{dir}/{TEMP_DIR}/.{base}.{}.tmp",
                    uuid::Uuid::new_v4().simple()
                );
                match upload(&c, &dir, &temp, source).await {
                    Ok(()) => Ok(temp),
                    Err(failed) => Err(refused(&c, &dir, &temp, failed, size).await),
                }
            }
        })
        .await
    }

    /// Removes the name (absent is fine).
    ///
    /// # Errors
    /// When the server fails beyond the policy.
    pub async fn delete(&self, name: &str) -> Result<(), DestinationError> {
        let path = self.key(name);
        self.request("delete", name, self.policy.timeout, |c| {
            let path = path.clone();
            async move {
                match c.sftp.remove_file(path).await {
                    Ok(()) => Ok(()),
                    Err(err) if no_such_file(&err) => Ok(()),
                    Err(err) => Err(Failed::from(err)),
                }
            }
        })
        .await
    }

    /// Removes temporary files (`.<name_prefix>….tmp` under
    /// [`TEMP_DIR`]) a killed process left. Only safe while holding the
    /// deanery's lease. Lists that folder alone, never the published files.
    ///
    /// # Errors
    /// When the server fails beyond the policy.
    pub async fn remove_temporaries(&self, name_prefix: &str) -> Result<usize, DestinationError> {
        let wanted = format!(".{name_prefix}");
        self.remove_in_temp_dir(move |name, _| name.starts_with(&wanted) && name.ends_with(".tmp"))
            .await
    }

    /// Removes the probe files killed processes left
    /// ([`super::super::leftovers`]).
    ///
    /// # Errors
    /// When the server fails beyond the policy.
    pub(crate) async fn remove_left_probes(&self) -> Result<usize, DestinationError> {
        let now = chrono::Utc::now();
        self.remove_in_temp_dir(move |name, modified| {
            super::super::leftovers::is_left_over(name, modified, now)
        })
        .await
    }

    /// Removes the files of [`TEMP_DIR`] that `left` says a killed process
    /// left (given each name and when it was last modified, if the server
    /// says).
    async fn remove_in_temp_dir(
        &self,
        left: impl Fn(&str, Option<chrono::DateTime<chrono::Utc>>) -> bool + Clone + Send + Sync,
    ) -> Result<usize, DestinationError> {
        let temp_dir = self.key(TEMP_DIR);
        let names = self
            .request("list", TEMP_DIR, self.policy.timeout * 4, |c| {
                let (temp_dir, left) = (temp_dir.clone(), left.clone());
                async move {
                    let entries = match c.sftp.read_dir(temp_dir).await {
                        Ok(entries) => entries,
                        Err(err) if no_such_file(&err) => return Ok(Vec::new()),
                        Err(err) => return Err(Failed::from(err)),
                    };
                    Ok(entries
                        .filter(|entry| left(&entry.file_name(), modified(entry)))
                        .map(|entry| entry.file_name())
                        .collect::<Vec<_>>())
                }
            })
            .await?;
        for name in &names {
            self.delete(&format!("{TEMP_DIR}/{name}")).await?;
            tracing::info!(destination = %self.url, path = %format!("{temp_dir}/{name}"), "removed a temporary file left by an interrupted process");
        }
        Ok(names.len())
    }
}

/// When a directory entry was last modified, if the server says.
fn modified(entry: &russh_sftp::client::fs::DirEntry) -> Option<chrono::DateTime<chrono::Utc>> {
    let mtime = entry.metadata().mtime?;
    chrono::DateTime::from_timestamp(i64::from(mtime), 0)
}

/// The number of request bounds an operation on `size` bytes gets.
fn bounds_for(size: u64) -> u32 {
    u32::try_from(size / BYTES_PER_BOUND + 1).unwrap_or(u32::MAX)
}

/// Writes `source` to `temp` (created exclusively, its folder made when
/// missing) and makes it durable before closing it.
async fn upload(c: &Connection, dir: &str, temp: &str, source: Source<'_>) -> Result<(), Failed> {
    let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
    let mut file = match c.sftp.open_with_flags(temp, flags).await {
        Err(err) if no_such_file(&err) => {
            make_temp_dir(c, dir).await?;
            c.sftp.open_with_flags(temp, flags).await?
        }
        other => other?,
    };
    match source {
        Source::Bytes(bytes) => file.write_all(bytes).await?,
        Source::File(path) => {
            let local = tokio::fs::File::open(path).await.map_err(|err| {
                Failed::new(
                    FailureKind::Transient,
                    format!("cannot read the staged file {}: {err}", path.display()),
                )
            })?;
            let mut reader = tokio::io::BufReader::with_capacity(BUFFER, local);
            tokio::io::copy_buf(&mut reader, &mut file).await?;
        }
    }
    file.flush().await?;
    file.sync_all().await?;
    file.shutdown().await?;
    Ok(())
}

/// Creates [`TEMP_DIR`] under the destination's folder (another writer
/// may have just made it). A folder that cannot be made is said as such,
/// not as a write's failure (a full disk, a quota).
async fn make_temp_dir(c: &Connection, dir: &str) -> Result<(), Failed> {
    let temp_dir = format!("{dir}/{TEMP_DIR}");
    let err = match c.sftp.create_dir(temp_dir.clone()).await {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    match c.sftp.metadata(temp_dir.clone()).await {
        Ok(meta) if meta.is_dir() => Ok(()),
        _ => {
            let cause = err.to_string();
            let mut failed = Failed::from(err);
            failed.detail = format!(
                "cannot create the folder {temp_dir} for temporaries: {cause} (does {dir} \
                 exist, and may this user create a folder in it?)"
            );
            Err(failed)
        }
    }
}

/// An upload the server refused (the connection still up): its temporary
/// removed (each try uploads under a new name), and the refusal explained
/// by the folder's file system.
async fn refused(c: &Connection, dir: &str, temp: &str, failed: Failed, size: u64) -> Failed {
    if failed.lost {
        return failed;
    }
    drop(c.sftp.remove_file(temp).await);
    let fs = c.sftp.fs_info(dir).await.ok().flatten();
    explain(failed, fs.as_ref(), size)
}

/// The SHA-256 of everything `reader` gives, in hex.
async fn hash(reader: &mut (impl AsyncRead + Unpin)) -> Result<String, Failed> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}
