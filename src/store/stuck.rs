//! The stuck records the watchdog reports: waiting or claimed records a
//! past slot should have exported, per deanery.

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime, Document};

use super::{int, oldest_created, RetryScope, Store, StoreError};
use crate::domain::RecordStatus;

/// Waiting records of one deanery that a past slot should have exported.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckRecords {
    /// Deanery value as stored.
    pub deanery: Bson,
    /// How many.
    pub count: u64,
    /// Creation time of the oldest (by `createdAt`, else its `_id`).
    pub(crate) oldest: Option<DateTime>,
}

/// An `ObjectId` as old as `time` (to the second) and lower than every id
/// generated from then on.
fn first_id_at(time: DateTime) -> ObjectId {
    let seconds = u32::try_from(time.timestamp_millis() / 1000).unwrap_or(u32::MAX);
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&seconds.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// The stuck-record pipeline: waiting or claimed records created before
/// `before`, grouped by deanery.
fn stuck_pipeline(before: DateTime) -> Vec<Document> {
    vec![
        // The status stage alone first, so the status-first index serves
        // it: only waiting and claimed records are read, whatever the history.
        doc! {"$match": {
            "status": {"$in": [RecordStatus::ToExport.as_str(), RecordStatus::Exporting.as_str()]},
        }},
        doc! {"$match": {
            "$or": [
                {"createdAt": {"$lt": before}},
                {"createdAt": {"$exists": false}, "_id": {"$lt": first_id_at(before)}},
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
    ]
}

fn stuck_row(row: &Document) -> StuckRecords {
    StuckRecords {
        deanery: row.get("_id").cloned().unwrap_or(Bson::Null),
        count: int(row.get("n")).map_or(0, |n| u64::try_from(n).unwrap_or(0)),
        oldest: oldest_created(row, "oldest", "firstId"),
    }
}

impl Store {
    /// `TO_EXPORT` or `EXPORTING` records created before `before`, per
    /// deanery (records without `createdAt` are dated by their `_id`).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn stuck_records(&self, before: DateTime) -> Result<Vec<StuckRecords>, StoreError> {
        let scope = RetryScope::global("find_stuck_records");
        let rows = self
            .read_all(scope, &self.records, stuck_pipeline(before))
            .await?;
        Ok(rows.iter().map(stuck_row).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_time_sorts_before_every_id_made_since() {
        let now = DateTime::now();
        let first = first_id_at(now);
        assert!(first <= ObjectId::new());
        assert_eq!(
            first.timestamp().timestamp_millis(),
            now.timestamp_millis() / 1000 * 1000
        );
    }

    #[test]
    fn a_stuck_row_counts_any_numeric_type_and_dates_by_id_when_needed() {
        let id = ObjectId::new();
        let row = doc! {"_id": "MER", "n": 3.0, "oldest": Bson::Null, "firstId": id};
        let stuck = stuck_row(&row);
        assert_eq!(stuck.count, 3);
        assert_eq!(stuck.oldest, Some(id.timestamp()));
    }
}
