//! Schedule slot documents: which replica fires a slot, and what it
//! published. The `_id` is the slot instant (RFC 3339 UTC), so two
//! replicas can never both own one slot.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::options::ReadConcern;

use super::leases::{Lease, Taken};
use super::{now, retry, Find, RetryScope, Store, StoreError};

/// Outcome of asking to fire a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlotClaim {
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

impl Store {
    /// Takes the slot for `owner` unless it is published or another
    /// replica's unlapsed lease holds it.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn claim_slot(
        &self,
        slot_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<SlotClaim, StoreError> {
        let slot = Lease {
            collection: &self.slots,
            id: slot_id,
            expiry: "leaseUntil",
            scope: RetryScope::global("claim_slot"),
            read_op: "read_slot",
        };
        let publishing = doc! {"state": "PUBLISHING"};
        let stamp = |now| doc! {"$setOnInsert": {"claimedAt": now}};
        let taken = self
            .take_lease(&slot, owner, lease, &publishing, stamp)
            .await?;
        let Taken::Held(current) = taken else {
            return Ok(SlotClaim::Claimed);
        };
        Ok(match current.get_str("state") {
            Ok("PUBLISHED") => SlotClaim::Published,
            _ => SlotClaim::HeldByOther {
                owner: current.get_str("owner").unwrap_or("unknown").to_owned(),
            },
        })
    }

    /// Records that `owner` published the slot's commands, and the
    /// schedule settings it fired them under.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn slot_published(
        &self,
        slot_id: &str,
        owner: &str,
        commands: Vec<Document>,
        schedule: Document,
    ) -> Result<(), StoreError> {
        let (slots, commands, schedule) = (&self.slots, &commands, &schedule);
        let published = doc! {"_id": slot_id, "owner": owner, "state": "PUBLISHED"};
        let matched = self
            .retry
            .write(
                RetryScope::global("slot_published"),
                &self.counters,
                || async move {
                    let result = slots
                        .update_one(
                            doc! {"_id": slot_id, "owner": owner},
                            doc! {"$set": {"state": "PUBLISHED", "publishedAt": now(), "commands": commands.clone(), "schedule": schedule.clone()}},
                        )
                        .await?;
                    Ok(result.matched_count)
                },
                || self.read_back(slots, &published, 1),
            )
            .await?;
        if matched == 0 {
            // The lease lapsed while publishing and another replica took
            // the slot: it publishes too; consumers treat the duplicates
            // of a completed slot as no-ops.
            tracing::warn!(slot = %slot_id, "slot lease lost while publishing; another replica fires it too");
        }
        Ok(())
    }

    /// The slot document, if the slot was ever claimed.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn slot(&self, slot_id: &str) -> Result<Option<Document>, StoreError> {
        let find = Find::of(doc! {"_id": slot_id});
        let scope = RetryScope::global("read_slot");
        self.read_first(scope, &self.slots, find).await
    }

    /// The owner token of a catch-up claim, read `local`: a claim whose
    /// write concern is still pending is already the primary's, and a
    /// token of ours proves it is this claim. Both a duplicate key and an
    /// unknown outcome are settled by it.
    async fn catch_up_holder(&self, key: &str) -> Result<Option<String>, mongodb::error::Error> {
        let found = self
            .slots
            .find_one(doc! {"_id": key})
            .read_concern(ReadConcern::local())
            .max_time(self.max_time)
            .await?;
        Ok(found.and_then(|claim| claim.get_str("owner").ok().map(str::to_owned)))
    }

    /// Claims the right to publish one catch-up command for `key` (a
    /// deanery and a watchdog period); false if any replica already did.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn claim_once(&self, key: &str) -> Result<bool, StoreError> {
        // A token of this claim: after a lost reply, the retried insert
        // finds the `_id` taken, and only the token tells whose it is.
        let token = uuid::Uuid::new_v4().to_string();
        let (slots, token) = (&self.slots, &token);
        let ours = || async move {
            let holder = self.catch_up_holder(key).await?;
            Ok(holder.map(|owner| owner == *token))
        };
        Ok(self
            .retry
            .write(
                RetryScope::global("claim_catch_up"),
                &self.counters,
                || async move {
                    let claim =
                        doc! {"_id": key, "owner": token, "state": "PUBLISHED", "claimedAt": now()};
                    match slots.insert_one(claim).await {
                        Ok(_) => Ok(true),
                        Err(err) if retry::is_duplicate_key(&err) => {
                            Ok(ours().await?.unwrap_or(false))
                        }
                        Err(err) => Err(err),
                    }
                },
                ours,
            )
            .await?)
    }
}
