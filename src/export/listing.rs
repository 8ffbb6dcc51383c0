//! The deaneries with work, for `export --all`, the scheduler and the
//! watchdog; waiting records whose deanery is not a valid code are
//! rejected on the way, never silently left behind.

use crate::domain::Deanery;
use crate::store::{Store, StoreError};

/// Lists the deaneries `export --all` should run: every valid code with
/// records waiting or a run unfinished. Waiting records whose deanery is
/// not a valid code are marked `REJECTED` with the reason and reported at
/// ERROR, so they are never silently left behind.
///
/// # Errors
/// When MongoDB fails beyond the retry policy.
pub async fn deaneries_to_export(store: &Store) -> Result<Vec<Deanery>, StoreError> {
    let mut deaneries = Vec::new();
    for value in store.deaneries_with_work().await? {
        match value.as_str().map(Deanery::parse) {
            Some(Ok(deanery)) => deaneries.push(deanery),
            other => {
                let reason = match other {
                    Some(Err(err)) => err.to_string(),
                    _ => format!("invalid deanery value {value}: expected a string code"),
                };
                let count = store.reject_invalid_deanery(&value, &reason).await?;
                if count > 0 {
                    tracing::error!(deanery = %crate::domain::printable(&value.to_string(), 64), count, reason = %reason, "records with an invalid deanery code rejected");
                }
            }
        }
    }
    deaneries.sort();
    Ok(deaneries)
}
