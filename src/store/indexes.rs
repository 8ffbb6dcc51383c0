//! The indexes this daemon needs, created idempotently at start. An index
//! with the same keys under another name (say, created by the service that
//! writes the records) serves as well and is used, unless something keeps
//! it from serving every query on its keys.

use std::time::Duration;

use bson::{doc, Document};
use futures_util::TryStreamExt;
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

use super::{retry, RetryScope, Store, StoreError};

/// The records index every status query uses: waiting records by deanery
/// in `_id` order, the deaneries with work, the stuck-record watchdog. With
/// `status` first, each reads only the records in that status, however many
/// have been exported before.
pub const RECORDS_BY_STATUS_INDEX: &str = "esr_exporter_status_deanery_id";
/// The records index of a run's claimed records.
pub(crate) const RECORDS_BY_RUN_INDEX: &str = "esr_exporter_run_status_id";
/// The records index earlier versions created (`deanery`, `status`, `_id`),
/// no longer used; a WARN at start says how to drop it.
pub const LEGACY_RECORDS_INDEX: &str = "esr_exporter_deanery_status_id";
/// The collection does not exist (yet).
const NAMESPACE_NOT_FOUND: i32 = 26;
/// An index with the same keys exists under another name or options.
const INDEX_OPTIONS_CONFLICT: i32 = 85;
/// An index with the same name exists with other keys.
const INDEX_KEY_SPECS_CONFLICT: i32 = 86;

/// How long one index build may take: on a large records collection it
/// legitimately runs far past `mongodb.operation_timeout_ms`, and the
/// daemon does nothing else until its indexes exist.
const INDEX_BUILD_DEADLINE: Duration = Duration::from_secs(3_600);

const CREATE_INDEXES: RetryScope<'static> = RetryScope::global("create_indexes");

/// An index this daemon needs: its name and keys.
type IndexSpec = (&'static str, Document);

/// `NamespaceExists`: a collection is there already.
const NAMESPACE_EXISTS: i32 = 48;
/// `Unauthorized`.
const UNAUTHORIZED: i32 = 13;

/// A conflict `createIndexes` reported: its code and message.
type Conflict = (i32, String);

/// The records indexes.
fn records_indexes() -> Vec<IndexSpec> {
    vec![
        (
            RECORDS_BY_STATUS_INDEX,
            doc! {"status": 1, "deanery": 1, "_id": 1},
        ),
        (
            RECORDS_BY_RUN_INDEX,
            doc! {"exportRunId": 1, "status": 1, "_id": 1},
        ),
    ]
}

/// The export runs indexes.
fn runs_indexes() -> Vec<IndexSpec> {
    vec![
        (
            "deanery_phase_startedAt",
            doc! {"deanery": 1, "phase": 1, "startedAt": 1},
        ),
        ("deanery_startedAt", doc! {"deanery": 1, "startedAt": -1}),
        // The status report's recent runs and every open-run lookup.
        ("startedAt", doc! {"startedAt": -1}),
        ("phase_startedAt", doc! {"phase": 1, "startedAt": -1}),
        ("deanery_slots", doc! {"deanery": 1, "slots": 1}),
        ("deanery_commands", doc! {"deanery": 1, "commands": 1}),
        // `files` and `redeliver`: published files newest first, a file by name.
        ("publishedAt", doc! {"publication.publishedAt": -1}),
        (
            "deanery_publishedAt",
            doc! {"deanery": 1, "publication.publishedAt": -1},
        ),
        ("fileName", doc! {"fileName": 1}),
    ]
}

fn index_model(name: &str, keys: Document) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_owned()).build())
        .build()
}

/// What keeps an index from serving every query on its keys, if anything.
fn index_flaw(options: &IndexOptions) -> Option<&'static str> {
    if options.hidden == Some(true) {
        Some("hidden")
    } else if options.partial_filter_expression.is_some() {
        Some("partial")
    } else if options.sparse == Some(true) {
        Some("sparse")
    } else if options.collation.is_some() {
        Some("under a collation")
    } else {
        None
    }
}

/// Key specs compared as the server does: by field order and value, so
/// `{status: 1}`, `{status: 1.0}` and `{status: 1_i64}` are one index.
pub(super) fn same_keys(a: &Document, b: &Document) -> bool {
    fn number(value: &bson::Bson) -> Option<f64> {
        match value {
            bson::Bson::Int32(n) => Some(f64::from(*n)),
            bson::Bson::Int64(n) => Some(*n as f64),
            bson::Bson::Double(n) => Some(*n),
            _ => None,
        }
    }
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| {
            ka == kb
                && match (number(va), number(vb)) {
                    (Some(x), Some(y)) => x == y,
                    _ => va == vb,
                }
        })
}

fn index_error(collection: &Collection<Document>, name: &str, reason: String) -> StoreError {
    StoreError::Index {
        collection: collection.name().to_owned(),
        name: name.to_owned(),
        reason,
    }
}

impl Store {
    /// Creates the indexes this daemon needs; a no-op when they exist. An
    /// index with the same keys under another name (say, created by the
    /// service that writes the records) serves as well and is used, unless
    /// it is hidden, partial, sparse or has a collation. The records index
    /// of earlier versions (`deanery` first) is left for operators to drop
    /// once no replica runs an earlier version; a WARN says so.
    ///
    /// # Errors
    /// [`StoreError::Index`] when one of this daemon's index names is taken
    /// by other keys or an index with its keys cannot serve queries; or
    /// MongoDB failing beyond the retry policy.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        for (collection, name, keys) in self.index_plan() {
            self.ensure_index(collection, name, keys).await?;
        }
        self.ensure_sequences().await?;
        self.warn_of_legacy_index().await
    }

    /// Creates the file-sequence collection if it is missing. Left to the
    /// first claims, a fresh database's collection would be created inside
    /// their transactions, and two runs at once would meet a WriteConflict
    /// ("namespace already in use"). A user who may not create collections
    /// leaves it to the first claim, as before.
    async fn ensure_sequences(&self) -> Result<(), StoreError> {
        let namespace = self.sequences.namespace();
        let db = self.client.database(&namespace.db);
        let (db, name) = (&db, namespace.coll.as_str());
        let created = self
            .retry
            .run(
                RetryScope::global("create_collection"),
                &self.counters,
                || async move {
                    match db.create_collection(name).await {
                        Ok(()) => Ok(true),
                        Err(err) if retry::error_code(&err) == Some(NAMESPACE_EXISTS) => Ok(true),
                        Err(err) if retry::error_code(&err) == Some(UNAUTHORIZED) => Ok(false),
                        Err(err) => Err(err),
                    }
                },
            )
            .await?;
        if !created {
            tracing::info!(
                collection = name,
                "not allowed to create the collection; the first claim creates it"
            );
        }
        Ok(())
    }

    /// Creates one index, or makes sure an index with its keys serves.
    async fn ensure_index(
        &self,
        collection: &Collection<Document>,
        name: &'static str,
        keys: Document,
    ) -> Result<(), StoreError> {
        let model = index_model(name, keys);
        match self.create_index(collection, &model).await? {
            None => Ok(()),
            Some((INDEX_KEY_SPECS_CONFLICT, message)) => Err(index_error(
                collection,
                name,
                format!(
                    "the name is taken by an index with other keys; drop or rename that index ({message})"
                ),
            )),
            Some((_, message)) => {
                self.use_existing_index(collection, name, &model.keys, message)
                    .await
            }
        }
    }

    /// `createIndexes` for one index; a name or options conflict is
    /// returned, not an error.
    async fn create_index(
        &self,
        collection: &Collection<Document>,
        model: &IndexModel,
    ) -> Result<Option<Conflict>, StoreError> {
        Ok(self
            .retry
            .with_deadline(INDEX_BUILD_DEADLINE)
            .run(CREATE_INDEXES, &self.counters, || async move {
                match collection.create_index(model.clone()).await {
                    Ok(_) => Ok(None),
                    Err(err) => match retry::error_code(&err) {
                        Some(code @ (INDEX_OPTIONS_CONFLICT | INDEX_KEY_SPECS_CONFLICT)) => {
                            Ok(Some((code, err.to_string())))
                        }
                        _ => Err(err),
                    },
                }
            })
            .await?)
    }

    /// An index with `keys` exists under another name or options: use it
    /// if it serves every query on its keys, else say what to do.
    async fn use_existing_index(
        &self,
        collection: &Collection<Document>,
        name: &str,
        keys: &Document,
        message: String,
    ) -> Result<(), StoreError> {
        match self.index_with_keys(collection, keys).await? {
            Some((existing, None)) => {
                tracing::info!(
                    collection = collection.name(),
                    index = name,
                    existing = %existing,
                    "an index with these keys exists under another name; using it"
                );
                Ok(())
            }
            Some((existing, Some(flaw))) => Err(index_error(
                collection,
                name,
                format!(
                    "index `{existing}` has these keys but is {flaw}, so queries cannot rely on it; \
                     drop it or make it a plain index"
                ),
            )),
            None => Err(index_error(collection, name, message)),
        }
    }

    /// The index of `collection` with exactly `keys`: its name, and what
    /// keeps it from serving every query (hidden, partial, ...), if anything.
    async fn index_with_keys(
        &self,
        collection: &Collection<Document>,
        keys: &Document,
    ) -> Result<Option<(String, Option<&'static str>)>, StoreError> {
        let scope = RetryScope::global("list_indexes");
        let indexes: Vec<IndexModel> = self
            .retry
            .run(scope, &self.counters, || async move {
                match collection.list_indexes().await {
                    Ok(cursor) => cursor.try_collect().await,
                    // A collection not created yet has no indexes.
                    Err(err) if retry::error_code(&err) == Some(NAMESPACE_NOT_FOUND) => {
                        Ok(Vec::new())
                    }
                    Err(err) => Err(err),
                }
            })
            .await?;
        Ok(indexes
            .into_iter()
            .find(|index| same_keys(&index.keys, keys))
            .map(|index| {
                let options = index.options.unwrap_or_default();
                let flaw = index_flaw(&options);
                (options.name.unwrap_or_default(), flaw)
            }))
    }

    /// The indexes this daemon needs that are missing (or cannot serve),
    /// as `collection.name`: reads that rely on them would scan the whole
    /// collection, history included.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub async fn missing_indexes(&self) -> Result<Vec<String>, StoreError> {
        let mut missing = Vec::new();
        for (collection, name, keys) in self.index_plan() {
            let found = self.index_with_keys(collection, &keys).await?;
            if !matches!(found, Some((_, None))) {
                missing.push(format!("{}.{name}", collection.name()));
            }
        }
        Ok(missing)
    }

    /// Every index this daemon relies on, with its collection.
    fn index_plan(&self) -> Vec<(&Collection<Document>, &'static str, Document)> {
        let on = |collection, indexes: Vec<IndexSpec>| {
            indexes
                .into_iter()
                .map(move |(name, keys)| (collection, name, keys))
        };
        on(&self.records, records_indexes())
            .chain(on(&self.runs, runs_indexes()))
            .collect()
    }

    /// A WARN when the records index of earlier versions still exists.
    async fn warn_of_legacy_index(&self) -> Result<(), StoreError> {
        let records = &self.records;
        let names = self
            .retry
            .run(CREATE_INDEXES, &self.counters, || async move {
                records.list_index_names().await
            })
            .await?;
        if names.iter().any(|name| name == LEGACY_RECORDS_INDEX) {
            tracing::warn!(
                collection = records.name(),
                index = LEGACY_RECORDS_INDEX,
                replaced_by = RECORDS_BY_STATUS_INDEX,
                "the records index of earlier versions is no longer used and costs every write; \
                 drop it once no replica runs an earlier version"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::options::Collation;

    #[test]
    fn key_specs_compare_by_value_like_the_server() {
        let ours = doc! {"status": 1, "deanery": 1, "_id": 1};
        assert!(same_keys(
            &ours,
            &doc! {"status": 1.0, "deanery": 1.0, "_id": 1.0}
        ));
        assert!(same_keys(
            &ours,
            &doc! {"status": 1_i64, "deanery": 1, "_id": 1_i64}
        ));
        assert!(!same_keys(
            &ours,
            &doc! {"status": 1, "deanery": -1, "_id": 1}
        ));
        assert!(!same_keys(
            &ours,
            &doc! {"deanery": 1, "status": 1, "_id": 1}
        ));
        assert!(!same_keys(&ours, &doc! {"status": 1, "deanery": 1}));
        assert!(!same_keys(&doc! {"a": "text"}, &doc! {"a": 1}));
    }

    #[test]
    fn only_a_plain_index_serves_every_query_on_its_keys() {
        assert_eq!(index_flaw(&IndexOptions::default()), None);
        let named = IndexOptions::builder().name("writer".to_owned()).build();
        assert_eq!(index_flaw(&named), None);
        let hidden = IndexOptions::builder().hidden(true).build();
        assert_eq!(index_flaw(&hidden), Some("hidden"));
        let partial = IndexOptions::builder()
            .partial_filter_expression(doc! {"status": "TO_EXPORT"})
            .build();
        assert_eq!(index_flaw(&partial), Some("partial"));
        let sparse = IndexOptions::builder().sparse(true).build();
        assert_eq!(index_flaw(&sparse), Some("sparse"));
        let collated = IndexOptions::builder()
            .collation(Collation::builder().locale("en".to_owned()).build())
            .build();
        assert_eq!(index_flaw(&collated), Some("under a collation"));
    }
}
