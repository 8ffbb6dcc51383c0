//! The small reads the store collects whole: a find (filter, fields,
//! order, limit) or an aggregation pipeline.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::options::FindOptions;

/// A small read: which documents, and optionally which fields, in which
/// order, how many.
#[derive(Debug, Default)]
pub(super) struct Find {
    pub(super) filter: Document,
    projection: Option<Document>,
    sort: Option<Document>,
    limit: Option<i64>,
}

impl Find {
    pub(super) fn of(filter: Document) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// The `_id`s alone of the documents `filter` selects.
    pub(super) fn ids(filter: Document) -> Self {
        Self {
            projection: Some(doc! {"_id": 1}),
            ..Self::of(filter)
        }
    }

    pub(super) fn sorted(self, sort: Document) -> Self {
        Self {
            sort: Some(sort),
            ..self
        }
    }

    pub(super) fn limited(self, limit: i64) -> Self {
        Self {
            limit: Some(limit),
            ..self
        }
    }

    pub(super) fn options(&self, max_time: Duration) -> FindOptions {
        FindOptions::builder()
            .projection(self.projection.clone())
            .sort(self.sort.clone())
            .limit(self.limit)
            .max_time(max_time)
            .build()
    }
}

/// A read collected whole: a find, or an aggregation pipeline.
pub(super) enum Query {
    Find(Box<Find>),
    Pipeline(Vec<Document>),
}

impl From<Find> for Query {
    fn from(find: Find) -> Self {
        Query::Find(Box::new(find))
    }
}

impl From<Vec<Document>> for Query {
    fn from(pipeline: Vec<Document>) -> Self {
        Query::Pipeline(pipeline)
    }
}
