//! A file streamed to a store in parts, with at most one part in flight
//! while the next is read: memory holds about two parts, whatever the
//! file's size.

use std::path::Path as LocalPath;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

/// Read buffer; parts are assembled from these.
const READ_CHUNK: usize = 256 * 1024;

/// Why an upload failed.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The store refused or failed.
    Store(object_store::Error),
    /// The staged file could not be read.
    Local(std::io::Error),
}

/// Uploads `file` to `path` in parts of `part_size`; aborts the upload
/// on any failure so no parts are left behind by this process.
pub(crate) async fn upload(
    store: &impl ObjectStore,
    path: &Path,
    file: &LocalPath,
    part_size: usize,
) -> Result<(), UploadError> {
    let upload = store
        .put_multipart(path)
        .await
        .map_err(UploadError::Store)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
    match stream_into(&mut writer, file).await {
        Ok(()) => writer.finish().await.map(drop).map_err(UploadError::Store),
        Err(err) => {
            let _ = writer.abort().await;
            Err(err)
        }
    }
}

async fn stream_into(writer: &mut WriteMultipart, file: &LocalPath) -> Result<(), UploadError> {
    let mut file = tokio::fs::File::open(file)
        .await
        .map_err(UploadError::Local)?;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = file.read(&mut buf).await.map_err(UploadError::Local)?;
        if read == 0 {
            return Ok(());
        }
        writer
            .wait_for_capacity(1)
            .await
            .map_err(UploadError::Store)?;
        writer.write(&buf[..read]);
    }
}
