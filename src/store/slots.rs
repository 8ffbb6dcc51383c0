//! Schedule slot documents: which replica fires a slot, and what it
//! published. The `_id` is the slot instant (RFC 3339 UTC), so two
//! replicas can never both own one slot.

use std::time::Duration;

use bson::{doc, Document};

use super::{in_future, now, retry, Attempts, RetryScope, Store, StoreError};

/// Outcome of asking to fire a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotClaim {
    /// This replica fires it now.
    Claimed,
    /// Its commands were already published.
    Published,
    /// Another replica is firing it (its lease has not lapsed).
    HeldByOther {
        /// That replica's owner id.
        owner: String,
    },
}

fn scope(op: &'static str) -> RetryScope<'static> {
    RetryScope { op, deanery: None }
}

impl Store {
    /// Takes the slot for `owner` unless it is published or another
    /// replica's unlapsed lease holds it.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn claim_slot(
        &self,
        slot_id: &str,
        owner: &str,
        lease: Duration,
        attempts: &mut Attempts,
    ) -> Result<SlotClaim, StoreError> {
        let slots = &self.slots;
        let claimed = self
            .retry
            .run(scope("claim_slot"), attempts, || async move {
                let now = now();
                let result = slots
                    .find_one_and_update(
                        doc! {
                            "_id": slot_id,
                            "state": "PUBLISHING",
                            "$or": [{"leaseUntil": {"$lte": now}}, {"owner": owner}],
                        },
                        doc! {
                            "$set": {"owner": owner, "leaseUntil": in_future(lease)},
                            "$setOnInsert": {"claimedAt": now},
                        },
                    )
                    .upsert(true)
                    .await;
                match result {
                    Ok(_) => Ok(true),
                    Err(err) if retry::error_code(&err) == Some(11000) => Ok(false),
                    Err(err) => Err(err),
                }
            })
            .await?;
        if claimed {
            return Ok(SlotClaim::Claimed);
        }
        let current = self
            .retry
            .run(scope("read_slot"), attempts, || async move {
                slots.find_one(doc! {"_id": slot_id}).await
            })
            .await?
            .unwrap_or_default();
        Ok(match current.get_str("state") {
            Ok("PUBLISHED") => SlotClaim::Published,
            _ => SlotClaim::HeldByOther {
                owner: current.get_str("owner").unwrap_or("unknown").to_owned(),
            },
        })
    }

    /// Records that `owner` published the slot's commands.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn slot_published(
        &self,
        slot_id: &str,
        owner: &str,
        commands: Vec<Document>,
        attempts: &mut Attempts,
    ) -> Result<(), StoreError> {
        let (slots, commands) = (&self.slots, &commands);
        self.retry
            .run(scope("slot_published"), attempts, || async move {
                slots
                    .update_one(
                        doc! {"_id": slot_id, "owner": owner},
                        doc! {"$set": {"state": "PUBLISHED", "publishedAt": now(), "commands": commands.clone()}},
                    )
                    .await
            })
            .await?;
        Ok(())
    }

    /// The slot document, if the slot was ever claimed.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn slot(
        &self,
        slot_id: &str,
        attempts: &mut Attempts,
    ) -> Result<Option<Document>, StoreError> {
        let slots = &self.slots;
        Ok(self
            .retry
            .run(scope("read_slot"), attempts, || async move {
                slots.find_one(doc! {"_id": slot_id}).await
            })
            .await?)
    }
}
