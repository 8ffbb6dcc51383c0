//! Creating a name from a local file: up to
//! `s3.multipart_threshold_bytes` its bytes in one conditional PUT, above
//! that its parts uploaded to a temporary key and the name created by one
//! conditional copy. The upload and the create are two steps
//! ([`super::super::Upload`]), so a run can record its intent between them.

use std::path::Path as LocalPath;

use bytes::Bytes;
use object_store::ObjectStoreExt;

use super::{Bucket, MAX_SINGLE_COPY, TEMP_DIR};
use crate::destination::error::{DestinationError, FailureKind};
use crate::destination::upload::{self, Ready};
use crate::destination::Found;

impl Bucket {
    /// Makes a local file ready for `name`: up to
    /// `s3.multipart_threshold_bytes` its bytes, read for one conditional
    /// PUT; above, its parts uploaded to a temporary key.
    ///
    /// # Errors
    /// As the read or the upload meets them.
    pub(in crate::destination) async fn upload_file(
        &self,
        name: &str,
        file: &LocalPath,
    ) -> Result<Ready, DestinationError> {
        let size = std::fs::metadata(file)
            .map_err(|err| self.local_error(name, file, &err))?
            .len();
        if size <= self.multipart_threshold {
            let bytes = tokio::fs::read(file)
                .await
                .map_err(|err| self.local_error(name, file, &err))?;
            return Ok(Ready::Bytes(Bytes::from(bytes)));
        }
        self.refuse_over_single_copy(name, size)?;
        let temp = format!("{TEMP_DIR}/.{name}.{}.tmp", uuid::Uuid::new_v4().simple());
        self.upload_parts(&temp, file, size).await?;
        Ok(Ready::Temporary { key: temp, size })
    }

    /// Creates the name from what is ready only if absent: one conditional
    /// PUT, or one conditional copy of the temporary (then removed).
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists; others as classified.
    pub(in crate::destination) async fn finish(
        &self,
        name: &str,
        ready: Ready,
    ) -> Result<Found, DestinationError> {
        let (temp, size) = match ready {
            Ready::Bytes(bytes) => return self.create_bytes(name, bytes).await,
            Ready::Local(_) => return Err(upload::mismatched(&self.url, &self.key(name))),
            Ready::Temporary { key, size } => (key, size),
        };
        let copied = self.copy_if_absent(&temp, name).await;
        if let Err(err) = self.delete(&temp).await {
            tracing::warn!(destination = %self.url, key = %self.key(&temp), error = %crate::error_chain::Chain(&err), "could not remove a temporary object; the next run of the deanery removes it");
        }
        copied?;
        // The copy's reply carries no ETag: look the new object up.
        Ok(self.lookup(name).await?.unwrap_or(Found {
            size,
            etag: None,
            version: None,
        }))
    }

    /// A large file's name is created by one conditional copy, and S3
    /// copies at most 5 GiB in one request: refused before any upload.
    pub(super) fn refuse_over_single_copy(
        &self,
        name: &str,
        size: u64,
    ) -> Result<(), DestinationError> {
        if size <= MAX_SINGLE_COPY {
            return Ok(());
        }
        Err(DestinationError::new(
            FailureKind::Permanent,
            &self.url,
            "create",
            &self.key(name),
            format!(
                "the file is {size} bytes, over the 5 GiB that S3 copies in one request; a bucket's \
                 name is created only if absent by one conditional copy, so nothing was uploaded \
                 (publish such a file to a folder or an SFTP server)"
            ),
        ))
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

    /// Uploads the file in parts under a temporary name (unconditional:
    /// the crate sends no condition on a multipart completion), one part
    /// in flight while the next is read, so memory holds two parts.
    async fn upload_parts(
        &self,
        temp: &str,
        file: &LocalPath,
        size: u64,
    ) -> Result<(), DestinationError> {
        let parts = size / self.part_size as u64 + 2;
        let bound = self.policy.timeout * u32::try_from(parts).unwrap_or(u32::MAX);
        self.request("upload", temp, bound, || async {
            crate::destination::multipart::upload(
                self.store.as_ref(),
                &self.path(temp),
                file,
                self.part_size,
            )
            .await
            .map_err(|err| match err {
                crate::destination::multipart::UploadError::Store(err) => {
                    self.fail("upload", temp, &err)
                }
                crate::destination::multipart::UploadError::Local(err) => {
                    self.local_error(temp, file, &err)
                }
            })
        })
        .await
    }

    /// Copies `from` to `to` only if `to` is absent: a multipart copy
    /// completed with `If-None-Match: *`.
    pub(crate) async fn copy_if_absent(
        &self,
        from: &str,
        to: &str,
    ) -> Result<(), DestinationError> {
        let (from_path, to_path) = (self.path(from), self.path(to));
        self.request("create", to, self.policy.timeout * 2, || async {
            self.store
                .copy_if_not_exists(&from_path, &to_path)
                .await
                .map_err(|err| self.fail("create", to, &err))
        })
        .await
    }
}
