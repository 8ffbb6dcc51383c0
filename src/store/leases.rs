//! Leases: a document one process holds until it lapses. One primitive,
//! [`Store::take_lease`], serves the per-deanery leases of export runs and
//! the schedule slots; the deanery leases' own operations are here too.

use std::time::Duration;

use bson::{doc, DateTime, Document};
use mongodb::Collection;

use super::{in_future, now, retry, Find, RetryScope, Store, StoreError};
use crate::domain::Deanery;

/// Outcome of asking for a deanery's lease.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LeaseOutcome {
    /// This process holds the lease now.
    Acquired {
        /// The session of a previous holder whose lease had lapsed (it
        /// died), which was ended so its open transaction let go.
        lapsed_session: Option<Document>,
    },
    /// Another process holds it.
    Held {
        /// Its owner id.
        owner: String,
        /// When it lapses unless renewed.
        expires_at: Option<DateTime>,
    },
}

/// One lease document: `id` in `collection`, held by its `owner` until the
/// time in its `expiry` field.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease<'a> {
    /// Where the lease documents are.
    pub(crate) collection: &'a Collection<Document>,
    /// The lease's `_id`.
    pub(crate) id: &'a str,
    /// The field holding when the lease lapses unless renewed.
    pub(crate) expiry: &'static str,
    /// The retry scope of taking it; reading the holder uses `read_op`.
    pub(crate) scope: RetryScope<'a>,
    /// Operation name of reading the holder.
    pub(crate) read_op: &'static str,
}

/// What [`Store::take_lease`] found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Taken {
    /// The caller holds the lease now.
    Taken,
    /// Someone else holds it (or the document did not meet the condition):
    /// the document as it is now, empty if it has gone since.
    Held(Document),
}

/// The filter of a take: the lease document, if it meets `condition` and
/// is lapsed or already `owner`'s.
fn takeable(lease: &Lease<'_>, owner: &str, condition: &Document, now: DateTime) -> Document {
    let mut filter = doc! {"_id": lease.id};
    filter.extend(condition.clone());
    filter.insert("$or", lapsed_or_owned(lease.expiry, owner, now));
    filter
}

fn lapsed_or_owned(expiry: &str, owner: &str, now: DateTime) -> Vec<Document> {
    vec![doc! {expiry: {"$lte": now}}, doc! {"owner": owner}]
}

/// The update of a take: `owner` holds the lease `until` then, plus the
/// caller's `more` operators (their `$set` fields join the holder's).
fn taking(expiry: &str, owner: &str, until: DateTime, mut more: Document) -> Document {
    let mut set = doc! {"owner": owner, expiry: until};
    if let Some(bson::Bson::Document(extra)) = more.remove("$set") {
        set.extend(extra);
    }
    let mut update = doc! {"$set": set};
    update.extend(more);
    update
}

impl Store {
    /// Takes `lease` for `owner` for `ttl` when its document meets
    /// `condition` and is lapsed or already `owner`'s, or does not exist
    /// yet: one upsert, so two processes can never both take it (the
    /// loser's insert finds the `_id` taken). `more(now)` adds update
    /// operators, `now` being the time of this try. When the lease is not
    /// taken, reads the document as it is now.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn take_lease(
        &self,
        lease: &Lease<'_>,
        owner: &str,
        ttl: Duration,
        condition: &Document,
        more: impl Fn(DateTime) -> Document + Sync,
    ) -> Result<Taken, StoreError> {
        // One time for every try, so a read-back can recognise this very
        // take by the expiry it wrote.
        let now = now();
        let until = in_future(ttl);
        let (filter, update) = (
            &takeable(lease, owner, condition, now),
            &taking(lease.expiry, owner, until, more(now)),
        );
        let mut written = doc! {"_id": lease.id, "owner": owner, lease.expiry: until};
        written.extend(condition.clone());
        let written = &written;
        let taken = self
            .retry
            .write(
                lease.scope,
                &self.counters,
                || async move {
                    let result = lease
                        .collection
                        .find_one_and_update(filter.clone(), update.clone())
                        .upsert(true)
                        .await;
                    match result {
                        Ok(_) => Ok(true),
                        // The document exists and did not match: someone else holds it.
                        Err(err) if retry::is_duplicate_key(&err) => Ok(false),
                        Err(err) => Err(err),
                    }
                },
                || self.read_back(lease.collection, written, true),
            )
            .await?;
        if taken {
            return Ok(Taken::Taken);
        }
        let holder = self.read_lease(lease).await?;
        Ok(Taken::Held(holder.unwrap_or_default()))
    }

    /// The lease document, if there is one.
    async fn read_lease(&self, lease: &Lease<'_>) -> Result<Option<Document>, StoreError> {
        let read = RetryScope {
            op: lease.read_op,
            ..lease.scope
        };
        let find = Find::of(doc! {"_id": lease.id});
        self.read_first(read, lease.collection, find).await
    }

    fn deanery_lease<'a>(&'a self, deanery: &'a Deanery) -> Lease<'a> {
        Lease {
            collection: &self.leases,
            id: deanery.as_str(),
            expiry: "expiresAt",
            scope: self.scope("acquire_lease"),
            read_op: "read_lease",
        }
    }

    /// Takes the deanery's lease for `owner` (whose MongoDB session is
    /// `session_id`) when it is free, lapsed, or already `owner`'s.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn acquire_lease(
        &self,
        deanery: &Deanery,
        owner: &str,
        session_id: &Document,
        ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let lease = self.deanery_lease(deanery);
        let lapsed_session = self.end_lapsed_holder(&lease, owner).await?;
        let stamp = |now| doc! {"$set": {"sessionId": session_id.clone(), "acquiredAt": now}};
        let taken = self
            .take_lease(&lease, owner, ttl, &Document::new(), stamp)
            .await?;
        Ok(match taken {
            Taken::Taken => LeaseOutcome::Acquired { lapsed_session },
            Taken::Held(holder) => LeaseOutcome::Held {
                owner: holder.get_str("owner").unwrap_or("unknown").to_owned(),
                expires_at: holder.get_datetime("expiresAt").ok().copied(),
            },
        })
    }

    /// A holder that died inside a transaction left that transaction open,
    /// holding the lease document itself: end its session before writing
    /// the lease, or the write waits for the server to time the transaction
    /// out (transactionLifetimeLimitSeconds, 60 s). Returns the session
    /// ended, if any.
    async fn end_lapsed_holder(
        &self,
        lease: &Lease<'_>,
        owner: &str,
    ) -> Result<Option<Document>, StoreError> {
        let Some(current) = self.read_lease(lease).await? else {
            return Ok(None);
        };
        let lapsed = current
            .get_datetime("expiresAt")
            .is_ok_and(|expires| *expires <= now());
        let other = current.get_str("owner").is_ok_and(|o| o != owner);
        if !(lapsed && other) {
            return Ok(None);
        }
        let Ok(session) = current.get_document("sessionId") else {
            return Ok(None);
        };
        if let Err(err) = self.kill_session(session).await {
            tracing::warn!(lease = %lease.id, error = %crate::error_chain::Chain(&err), "could not end the lapsed lease holder's session");
        }
        Ok(Some(session.clone()))
    }

    /// Ends a session (and aborts its open transaction) so the records it
    /// had written inside the transaction are free at once; best effort.
    pub(crate) async fn kill_session(&self, session_id: &Document) -> Result<(), StoreError> {
        self.admin_command("kill_session", doc! {"killSessions": [session_id.clone()]})
            .await
    }

    /// Extends the lease if `owner` still holds it.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when another process holds it now.
    pub(crate) async fn renew_lease(
        &self,
        deanery: &Deanery,
        owner: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let leases = &self.leases;
        let until = in_future(ttl);
        let (filter, update) = &lease_renewal(deanery, owner, until);
        let renewed = doc! {"_id": deanery.as_str(), "owner": owner, "expiresAt": until};
        let matched = self
            .retry
            .write(
                self.scope("renew_lease"),
                &self.counters,
                || async move {
                    let result = leases.update_one(filter.clone(), update.clone()).await?;
                    Ok(result.matched_count)
                },
                || self.read_back(leases, &renewed, 1),
            )
            .await?;
        if matched == 0 {
            return Err(StoreError::LeaseLost {
                deanery: deanery.to_string(),
            });
        }
        Ok(())
    }

    /// Gives the lease up so the next attempt need not wait for it to lapse.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn release_lease(
        &self,
        deanery: &Deanery,
        owner: &str,
    ) -> Result<(), StoreError> {
        let (leases, held) = (
            &self.leases,
            &doc! {"_id": deanery.as_str(), "owner": owner},
        );
        self.retry
            .write(
                self.scope("release_lease"),
                &self.counters,
                || async move { leases.delete_one(held.clone()).await.map(drop) },
                || async move {
                    let still = self.read_back(leases, held, ()).await?;
                    Ok(still.is_none().then_some(()))
                },
            )
            .await?;
        Ok(())
    }
}

/// The filter and update that extend `owner`'s lease on the deanery
/// `until` then; they match nothing when another process holds it.
pub(crate) fn lease_renewal(
    deanery: &Deanery,
    owner: &str,
    until: DateTime,
) -> (Document, Document) {
    (
        doc! {"_id": deanery.as_str(), "owner": owner},
        doc! {"$set": {"expiresAt": until}},
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_take_matches_a_lapsed_lease_or_the_owners_own() {
        let now = DateTime::from_millis(1_000);
        assert_eq!(
            lapsed_or_owned("leaseUntil", "me", now),
            vec![doc! {"leaseUntil": {"$lte": now}}, doc! {"owner": "me"}]
        );
    }

    #[test]
    fn a_take_sets_the_holder_and_the_callers_fields() {
        let now = DateTime::from_millis(1_000);
        let more = doc! {"$set": {"acquiredAt": now}, "$setOnInsert": {"claimedAt": now}};
        let update = taking("leaseUntil", "me", DateTime::from_millis(61_000), more);
        let set = update.get_document("$set").unwrap();
        let keys: Vec<&str> = set.keys().map(String::as_str).collect();
        assert_eq!(keys, ["owner", "leaseUntil", "acquiredAt"]);
        assert_eq!(
            update.get_document("$setOnInsert").unwrap(),
            &doc! {"claimedAt": now}
        );
    }
}
