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
                    Err(err) if retry::is_duplicate_key(&err) => Ok(false),
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
        let result = self
            .retry
            .run(scope("slot_published"), attempts, || async move {
                slots
                    .update_one(
                        doc! {"_id": slot_id, "owner": owner},
                        doc! {"$set": {"state": "PUBLISHED", "publishedAt": now(), "commands": commands.clone()}},
                    )
                    .await
            })
            .await?;
        if result.matched_count == 0 {
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

/// Waiting records of one deanery that a past slot should have exported.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckRecords {
    /// Deanery value as stored.
    pub deanery: bson::Bson,
    /// How many.
    pub count: u64,
    /// Creation time of the oldest (by `createdAt`, else its `_id`).
    pub oldest: Option<bson::DateTime>,
}

impl Store {
    /// `TO_EXPORT` or `EXPORTING` records created before `before`, per
    /// deanery (records without `createdAt` are dated by their `_id`).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn stuck_records(
        &self,
        before: bson::DateTime,
        attempts: &mut Attempts,
    ) -> Result<Vec<StuckRecords>, StoreError> {
        use futures_util::TryStreamExt;

        let seconds = u32::try_from(before.timestamp_millis() / 1000).unwrap_or(u32::MAX);
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&seconds.to_be_bytes());
        let id_before = bson::oid::ObjectId::from_bytes(bytes);
        let pipeline = vec![
            doc! {"$match": {
                "status": {"$in": ["TO_EXPORT", "EXPORTING"]},
                "$or": [
                    {"createdAt": {"$lt": before}},
                    {"createdAt": {"$exists": false}, "_id": {"$lt": id_before}},
                    // No creation time to judge by: waiting at all is stuck.
                    {"createdAt": {"$exists": false}, "_id": {"$not": {"$type": "objectId"}}},
                ],
            }},
            doc! {"$group": {
                "_id": "$deanery",
                "n": {"$sum": 1},
                "oldest": {"$min": "$createdAt"},
                "firstId": {"$min": "$_id"},
            }},
        ];
        let (records, pipeline) = (&self.records, &pipeline);
        let rows: Vec<Document> = self
            .retry
            .run(scope("find_stuck_records"), attempts, || async move {
                records
                    .aggregate(pipeline.clone())
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let count = match row.get("n") {
                    Some(bson::Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
                    Some(bson::Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
                    Some(bson::Bson::Double(n)) => *n as u64,
                    _ => 0,
                };
                let oldest = row
                    .get_datetime("oldest")
                    .ok()
                    .copied()
                    .or_else(|| row.get_object_id("firstId").ok().map(|id| id.timestamp()));
                StuckRecords {
                    deanery: row.get("_id").cloned().unwrap_or(bson::Bson::Null),
                    count,
                    oldest,
                }
            })
            .collect())
    }

    /// Claims the right to publish one catch-up command for `key` (a
    /// deanery and a watchdog period); false if any replica already did.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn claim_once(&self, key: &str, attempts: &mut Attempts) -> Result<bool, StoreError> {
        let slots = &self.slots;
        Ok(self
            .retry
            .run(scope("claim_catch_up"), attempts, || async move {
                match slots
                    .insert_one(doc! {"_id": key, "state": "PUBLISHED", "claimedAt": now()})
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(err) if retry::is_duplicate_key(&err) => Ok(false),
                    Err(err) => Err(err),
                }
            })
            .await?)
    }
}
