//! What replicas tell each other through the slots collection: each
//! scheduling replica's schedule settings (cron, zone, deaneries), kept
//! fresh, so a replica can see settings that differ from its own and fire
//! for the deaneries any live replica lists; and the server's clock, to
//! measure this replica's against.

use bson::{doc, DateTime, Document};

use super::{now, Find, RetryScope, Store, StoreError};

/// `_id` prefix of the replicas' settings documents.
const REPLICA_PREFIX: &str = "schedule/replica/";

impl Store {
    /// Records this replica's schedule settings (`seenAt` now).
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn register_schedule(
        &self,
        replica: &str,
        settings: Document,
    ) -> Result<(), StoreError> {
        let (slots, settings) = (&self.slots, &settings);
        let id = format!("{REPLICA_PREFIX}{replica}");
        let id = &id;
        self.retry
            .run(
                RetryScope::global("register_schedule"),
                &self.counters,
                || async move {
                    let mut set = settings.clone();
                    set.insert("seenAt", now());
                    slots
                        .update_one(doc! {"_id": id}, doc! {"$set": set})
                        .upsert(true)
                        .await
                },
            )
            .await?;
        Ok(())
    }

    /// Removes this replica's settings document (at a clean stop), so
    /// the replicas that stay do not compare theirs with a replica gone.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn withdraw_schedule(&self, replica: &str) -> Result<(), StoreError> {
        let (slots, id) = (&self.slots, &format!("{REPLICA_PREFIX}{replica}"));
        self.retry
            .run(
                RetryScope::global("withdraw_schedule"),
                &self.counters,
                || async move { slots.delete_one(doc! {"_id": id}).await },
            )
            .await?;
        Ok(())
    }

    /// Every replica's settings document seen since `since`, its own
    /// included; each has `_id` `schedule/replica/<replica>`.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn live_schedules(
        &self,
        since: DateTime,
    ) -> Result<Vec<(String, Document)>, StoreError> {
        let filter =
            doc! {"_id": {"$regex": format!("^{REPLICA_PREFIX}")}, "seenAt": {"$gte": since}};
        let found = self
            .read_all(
                RetryScope::global("live_schedules"),
                &self.slots,
                Find::of(filter),
            )
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|d| {
                let id = d
                    .get_str("_id")
                    .ok()?
                    .strip_prefix(REPLICA_PREFIX)?
                    .to_owned();
                Some((id, d))
            })
            .collect())
    }

    /// The server's clock (`hello`'s `localTime`), bounded like every
    /// operation; none when the server does not report it.
    ///
    /// # Errors
    /// When MongoDB does not answer.
    pub(crate) async fn server_time(&self) -> Result<Option<DateTime>, StoreError> {
        let admin = self.client.database("admin");
        let hello = admin.run_command(doc! {"hello": 1});
        let reply = self
            .retry
            .bounded(RetryScope::global("hello"), hello)
            .await?
            .map_err(|source| StoreError::Mongo(super::retry::permanent("hello", source)))?;
        Ok(reply.get_datetime("localTime").ok().copied())
    }
}
