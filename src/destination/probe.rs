//! The start-up proof that a bucket refuses a second create of a name:
//! some S3-compatible servers accept `If-None-Match: *` and ignore it, and
//! on such a store two replicas could each write the same file. A probe
//! object under the prefix is created twice (plain put, then the
//! multipart copy large files use), then deleted; then the probe objects
//! of processes killed during their probe ([`super::leftovers`]).

use bytes::Bytes;

use super::bucket::Bucket;
use super::error::{DestinationError, FailureKind};

/// Proves the bucket refuses to create a name twice, both ways names are
/// created, and cleans up after itself.
///
/// # Errors
/// [`FailureKind::Permanent`] when the store accepted a second create;
/// otherwise the failure met (403, missing bucket, timeout, ...).
pub(crate) async fn probe(bucket: &Bucket) -> Result<(), DestinationError> {
    // Without credentials nothing can be created, nor cleaned up: say so
    // once, before anything is tried.
    bucket.credentials("probe", super::bucket::TEMP_DIR).await?;
    let name = format!(
        "{}/.{}",
        super::bucket::TEMP_DIR,
        super::leftovers::probe_name()
    );
    let copy = format!("{name}.copy");
    let mut created = false;
    let proven = prove(bucket, &name, &copy, &mut created).await;
    // Nothing to remove if its first create was refused (a 403, a missing
    // bucket); one whose outcome is unknown (a timeout) is removed too.
    for leftover in [&name, &copy].into_iter().filter(|_| created) {
        if let Err(err) = bucket.delete(leftover).await {
            tracing::warn!(destination = %bucket.url(), key = %bucket.key(leftover), error = %crate::error_chain::Chain(&err), "could not remove the probe object");
        }
    }
    proven?;
    // Those of processes killed during their probe, once this one passed.
    if let Err(err) = bucket.remove_left_probes().await {
        tracing::warn!(destination = %bucket.url(), error = %crate::error_chain::Chain(&err), "could not remove the probe objects killed processes left; the next start tries again");
    }
    Ok(())
}

async fn prove(
    bucket: &Bucket,
    name: &str,
    copy: &str,
    created: &mut bool,
) -> Result<(), DestinationError> {
    let body = Bytes::from_static(b"esr-exporter: proves this store refuses a second create\n");
    let first = bucket.create_bytes(name, body.clone()).await;
    *created = might_have_created(&first);
    first?;
    refused_again(bucket, name, bucket.create_bytes(name, body).await)?;
    bucket.copy_if_absent(name, copy).await?;
    refused_again(bucket, copy, bucket.copy_if_absent(name, copy).await)
}

/// Whether a create that ended so may have left its object: all but a
/// refusal (which [`FailureKind::Permanent`] is) may have.
pub(super) fn might_have_created<T>(create: &Result<T, DestinationError>) -> bool {
    !matches!(create, Err(err) if err.kind == FailureKind::Permanent)
}

/// The second create must have been refused as occupied.
fn refused_again<T>(
    bucket: &Bucket,
    name: &str,
    second: Result<T, DestinationError>,
) -> Result<(), DestinationError> {
    match second {
        Err(err) if err.kind == FailureKind::Occupied => Ok(()),
        Err(err) => Err(err),
        Ok(_) => Err(DestinationError::new(
            FailureKind::Permanent,
            bucket.url(),
            "probe",
            &bucket.key(name),
            "the store accepted a second create of the same name: it ignores \
             If-None-Match: *, so it cannot guarantee a file is delivered once \
             (refused; use a store that honours conditional writes)",
        )),
    }
}
