//! Waiting records no run can claim: their `_id` is not an ObjectId, so
//! they sort apart from the others and cannot be written (a file carries
//! 24 hex characters). Each is rejected with its reason instead of
//! waiting for ever.

use bson::{doc, Bson};

use super::records::{waiting, waiting_of};
use super::{Find, Store, StoreError};
use crate::domain::{bson_type_name, Deanery, RecordStatus};

/// Records looked at per round.
const ROUND: i64 = 1_000;

impl Store {
    /// The lowest and highest `_id` of the deanery's waiting records, in
    /// BSON order. ObjectIds sort together, so when both are ObjectIds no
    /// waiting `_id` is anything else: two index reads (sent together) instead of a scan
    /// for other types (which SecantusDB answers by reading every record).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn waiting_id_extremes(
        &self,
        deanery: &Deanery,
    ) -> Result<(Option<Bson>, Option<Bson>), StoreError> {
        // Both at once: each is a round trip of its own.
        futures_util::future::try_join(
            self.waiting_id_at(deanery, 1),
            self.waiting_id_at(deanery, -1),
        )
        .await
    }

    async fn waiting_id_at(
        &self,
        deanery: &Deanery,
        order: i32,
    ) -> Result<Option<Bson>, StoreError> {
        let find = Find::ids(waiting(deanery)).sorted(doc! {"_id": order});
        let scope = self.scope("find_backlog");
        let found = self.read_first(scope, &self.records, find).await?;
        Ok(found.and_then(|mut d| d.remove("_id")))
    }

    /// Rejects the deanery's waiting records whose `_id` is not an
    /// ObjectId; returns each rejected `_id` with its reason.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn reject_unexportable_ids(
        &self,
        deanery: &Deanery,
    ) -> Result<Vec<(Bson, String)>, StoreError> {
        let mut rejected = Vec::new();
        loop {
            let found = self.unexportable_ids(deanery).await?;
            for id in &found {
                let reason = format!("_id: expected objectId, found {}", bson_type_name(id));
                if self.reject_waiting(id, &reason).await? {
                    rejected.push((id.clone(), reason));
                }
            }
            if (found.len() as i64) < ROUND {
                return Ok(rejected);
            }
        }
    }

    async fn unexportable_ids(&self, deanery: &Deanery) -> Result<Vec<Bson>, StoreError> {
        let unexportable = waiting_of(deanery, doc! {"$not": {"$type": "objectId"}});
        let find = Find::ids(unexportable).limited(ROUND);
        let scope = self.scope("find_unexportable_ids");
        let found = self.read_all(scope, &self.records, find).await?;
        Ok(found
            .into_iter()
            .filter_map(|mut d| d.remove("_id"))
            .collect())
    }

    /// Rejects one waiting record; false when it no longer waits.
    async fn reject_waiting(&self, id: &Bson, reason: &str) -> Result<bool, StoreError> {
        let filter = doc! {"_id": id.clone(), "status": RecordStatus::ToExport.as_str()};
        let scope = self.scope("reject_unexportable");
        Ok(self.reject_where(scope, filter, reason).await? == 1)
    }
}
