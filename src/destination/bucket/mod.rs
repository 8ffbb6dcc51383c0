//! An S3-compatible bucket (the `object_store` crate): every name created
//! only if absent (`If-None-Match: *`), large files uploaded in parts to a
//! temporary key and finished with a conditional multipart copy, names
//! looked up by size, ETag and SHA-256 read back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::S3CopyIfNotExists;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    ClientConfigKey, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};

mod create;
mod versions;

use super::credentials::CredentialSource;
use super::error::{DestinationError, FailureKind};
use super::retry::RequestPolicy;
use super::Found;
use crate::config::S3Settings;
use crate::domain::DestinationUrl;
use versions::VersionsClient;

/// The folder under the prefix that holds temporary and probe objects:
/// starting with a dot, so a collector taking `DE_*_APP_*.DAT` ignores
/// it, and listed alone when temporaries are looked for.
pub(super) const TEMP_DIR: &str = ".esr-exporter-tmp";

/// The most S3 copies in one request (`CopyObject`): 5 GiB.
const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;

/// Bytes read back per request when a file's SHA-256 is checked: at
/// 100 KB/s one range takes about 10 s, well within a request's bound.
pub(super) const READ_BACK_RANGE: u64 = 1024 * 1024;

/// A bucket and key prefix, with the request policy of `[s3]`.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<AmazonS3>,
    credentials: CredentialSource,
    prefix: String,
    url: String,
    policy: RequestPolicy,
    multipart_threshold: u64,
    part_size: usize,
    versions: VersionsClient,
}

impl Bucket {
    /// A client for `s3://bucket/prefix`, configured from the standard AWS
    /// environment (endpoint, region, credentials, `AWS_ALLOW_HTTP`).
    /// Nothing is sent until the first operation.
    ///
    /// # Errors
    /// When the environment cannot configure a client (a permanent failure).
    pub fn open(bucket: &str, prefix: &str, s3: &S3Settings) -> Result<Self, DestinationError> {
        let url = DestinationUrl::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }
        .to_string();
        // The client's TLS (rustls through reqwest) takes the process's
        // default crypto provider: ring, the one rustls is built with here.
        // Installed once; a second call finds it there.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = |key| AmazonS3ConfigKey::Client(key);
        let builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
            // One DeleteObject per name, as before 0.13: not the bulk
            // DeleteObjects POST, which some S3-compatible servers lack.
            .with_disable_bulk_delete(true)
            // Our own policy retries, bounded and logged; the client's is off.
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            // Our own bound (each try's, naming its setting) fires first;
            // the client's is a backstop a second later, never a race.
            .with_config(
                client(ClientConfigKey::Timeout),
                format!("{}ms", s3.request_timeout_ms + 1_000),
            )
            .with_config(
                client(ClientConfigKey::ConnectTimeout),
                format!("{}ms", s3.connect_timeout_ms),
            );
        let credentials = CredentialSource::of(&builder);
        let versions = versions::client_of(&builder, bucket);
        let store = builder
            .build()
            .map_err(|err| DestinationError::from_store(&url, "configure", "", &err))?;
        Ok(Self {
            store: Arc::new(store),
            credentials,
            prefix: prefix.to_owned(),
            url,
            policy: RequestPolicy::from_settings(s3),
            multipart_threshold: s3.multipart_threshold_bytes,
            part_size: s3.part_size_bytes as usize,
            versions,
        })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object key of a file name.
    pub fn key(&self, name: &str) -> String {
        DestinationUrl::key_of(&self.prefix, name)
    }

    fn path(&self, name: &str) -> Path {
        Path::from(self.key(name))
    }

    fn fail(&self, op: &'static str, name: &str, err: &object_store::Error) -> DestinationError {
        DestinationError::from_store(&self.url, op, &self.key(name), err)
    }

    /// Runs one operation under the request policy, once credentials are
    /// at hand: a request that cannot be signed is not retried.
    async fn request<T, F, Fut>(
        &self,
        op: &'static str,
        name: &str,
        bound: Duration,
        try_once: F,
    ) -> Result<T, DestinationError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DestinationError>>,
    {
        self.credentials(op, name).await?;
        let key = self.key(name);
        self.policy
            .run((&self.url, op, &key), bound, try_once)
            .await
    }

    /// Fetches the credentials the environment points at (the client
    /// caches them until shortly before they expire, so this costs a
    /// request only when they are due), in one try bounded by
    /// `s3.request_timeout_ms`. Nothing is sent to the bucket.
    ///
    /// # Errors
    /// [`FailureKind::Transient`] naming where the client looked (a role
    /// may yet be attached, a metadata service come back: the daemon waits
    /// for it at start, a run's attempt is retried later), or
    /// [`FailureKind::Timeout`].
    pub(crate) async fn credentials(
        &self,
        op: &'static str,
        name: &str,
    ) -> Result<(), DestinationError> {
        if !self.credentials.signs() {
            return Ok(());
        }
        let bound = self.policy.timeout;
        let fetched = tokio::time::timeout(bound, self.store.credentials().get_credential()).await;
        let (kind, cause) = match fetched {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => (
                FailureKind::Transient,
                crate::error_chain::Chain(&err).to_string(),
            ),
            Err(_) => (
                FailureKind::Timeout,
                format!(
                    "no answer within {} ms (s3.request_timeout_ms)",
                    bound.as_millis()
                ),
            ),
        };
        Err(DestinationError::new(
            kind,
            &self.url,
            op,
            &self.key(name),
            self.credentials.failure(&cause),
        ))
    }

    /// One look at the bucket, no retry: a HEAD of a name that is never
    /// created answers 404 when the store is reachable and the
    /// credentials may read the prefix.
    ///
    /// # Errors
    /// What that look met.
    pub async fn check(&self) -> Result<(), DestinationError> {
        let name = ".esr-exporter-readiness";
        self.credentials("check", name).await?;
        match self.store.head(&self.path(name)).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(self.fail("check", name, &err)),
        }
    }

    /// What the name holds: size, ETag and version; `None` when absent.
    ///
    /// # Errors
    /// When the store fails beyond the policy.
    pub async fn lookup(&self, name: &str) -> Result<Option<Found>, DestinationError> {
        let path = self.path(name);
        let found = self
            .request("head", name, self.policy.timeout, || async {
                match self.store.head(&path).await {
                    Ok(meta) => Ok(Some(meta)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(err) => Err(self.fail("head", name, &err)),
                }
            })
            .await?;
        Ok(found.map(|meta| Found {
            size: meta.size,
            etag: meta.e_tag,
            version: meta.version,
        }))
    }

    /// The SHA-256 of the object `found` describes, read back in ranges
    /// (each a request with its own bound, all `If-Match` its ETag); `None`
    /// when it is gone. A large file on a slow link is bounded by its progress.
    ///
    /// # Errors
    /// When the store fails beyond the policy, or the object changes while
    /// it is read.
    pub async fn sha256(
        &self,
        name: &str,
        found: &Found,
    ) -> Result<Option<String>, DestinationError> {
        let mut hasher = Sha256::new();
        let mut at = 0;
        while at < found.size {
            let range = at..(at + READ_BACK_RANGE).min(found.size);
            let Some(bytes) = self.read_range(name, range.clone(), found).await? else {
                return Ok(None);
            };
            hasher.update(&bytes);
            at = range.end;
        }
        Ok(Some(hex::encode(hasher.finalize())))
    }

    /// One range of the object `found` describes; `None` when it is gone.
    async fn read_range(
        &self,
        name: &str,
        range: std::ops::Range<u64>,
        found: &Found,
    ) -> Result<Option<Bytes>, DestinationError> {
        let path = self.path(name);
        self.request("read", name, self.policy.timeout, || async {
            let options = GetOptions {
                if_match: found.etag.clone(),
                range: Some(GetRange::Bounded(range.clone())),
                ..GetOptions::default()
            };
            let got = match self.store.get_opts(&path, options).await {
                Ok(got) => got.bytes().await,
                Err(err) => Err(err),
            };
            match got {
                Ok(bytes) => Ok(Some(bytes)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(object_store::Error::Precondition { .. }) => Err(DestinationError::new(
                    FailureKind::Transient,
                    &self.url,
                    "read",
                    &self.key(name),
                    "the object changed while it was read back; it is looked at again",
                )),
                Err(err) => Err(self.fail("read", name, &err)),
            }
        })
        .await
    }

    /// The object's bytes, for a small object such as a manifest.
    ///
    /// # Errors
    /// When the store fails beyond the policy.
    pub async fn read_small(&self, name: &str) -> Result<Option<Bytes>, DestinationError> {
        let path = self.path(name);
        self.request("read", name, self.policy.timeout, || async {
            match self.store.get(&path).await {
                Ok(result) => result
                    .bytes()
                    .await
                    .map(Some)
                    .map_err(|err| self.fail("read", name, &err)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(self.fail("read", name, &err)),
            }
        })
        .await
    }

    /// Creates the name with these bytes only if nothing is there.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists; others as classified.
    pub async fn create_bytes(&self, name: &str, bytes: Bytes) -> Result<Found, DestinationError> {
        let path = self.path(name);
        let size = bytes.len() as u64;
        let put = self
            .request("create", name, self.policy.timeout, || async {
                let payload = PutPayload::from_bytes(bytes.clone());
                let opts = PutOptions::from(PutMode::Create);
                self.store
                    .put_opts(&path, payload, opts)
                    .await
                    .map_err(|err| self.fail("create", name, &err))
            })
            .await?;
        Ok(Found {
            size,
            etag: put.e_tag,
            version: put.version,
        })
    }

    /// Removes the name (absent is fine).
    ///
    /// # Errors
    /// When the store fails beyond the policy.
    pub async fn delete(&self, name: &str) -> Result<(), DestinationError> {
        let path = self.path(name);
        self.request("delete", name, self.policy.timeout, || async {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(err) => Err(self.fail("delete", name, &err)),
            }
        })
        .await
    }

    /// Removes temporary objects (`.<name_prefix>….tmp` under
    /// [`TEMP_DIR`]) a killed process left. Only safe while holding the
    /// deanery's lease. Lists that folder alone, never the published files.
    ///
    /// # Errors
    /// When the store fails beyond the policy.
    pub async fn remove_temporaries(&self, name_prefix: &str) -> Result<usize, DestinationError> {
        let wanted = format!(".{name_prefix}");
        self.remove_in_temp_dir(|name, _| name.starts_with(&wanted) && name.ends_with(".tmp"))
            .await
    }

    /// Removes the probe objects killed processes left
    /// ([`super::leftovers`]).
    ///
    /// # Errors
    /// When the store fails beyond the policy.
    pub(crate) async fn remove_left_probes(&self) -> Result<usize, DestinationError> {
        let now = chrono::Utc::now();
        self.remove_in_temp_dir(|name, modified| {
            super::leftovers::is_left_over(name, Some(modified), now)
        })
        .await
    }

    /// Removes the objects of [`TEMP_DIR`] that `left` says a killed
    /// process left (given each name and when it was last modified).
    async fn remove_in_temp_dir(
        &self,
        left: impl Fn(&str, chrono::DateTime<chrono::Utc>) -> bool,
    ) -> Result<usize, DestinationError> {
        let dir = Path::from(self.key(TEMP_DIR));
        let listing = self
            .request("list", TEMP_DIR, self.policy.timeout * 4, || async {
                self.store
                    .list_with_delimiter(Some(&dir))
                    .await
                    .map_err(|err| self.fail("list", TEMP_DIR, &err))
            })
            .await?;
        let mut removed = 0;
        for meta in listing.objects {
            let name = meta.location.filename().unwrap_or_default().to_owned();
            if left(&name, meta.last_modified) {
                self.delete(&format!("{TEMP_DIR}/{name}")).await?;
                tracing::info!(destination = %self.url, key = %meta.location, "removed a temporary object left by an interrupted process");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests;
