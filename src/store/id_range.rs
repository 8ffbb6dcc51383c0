//! A range of record `_id`s, as every read and write over a slice of a
//! deanery's records states it: a claim's `(last claimed, up_to]`, a
//! marking statement's `(after, up_to]`.

use bson::oid::ObjectId;
use bson::Document;

/// `_id`s after a lower bound (or from the first) up to an upper one (or
/// to the last).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IdRange {
    after: Option<ObjectId>,
    up_to: Option<ObjectId>,
}

impl IdRange {
    /// `(after, up_to]`; a bound that is `None` is left open.
    pub(crate) fn after(after: Option<ObjectId>, up_to: Option<ObjectId>) -> Self {
        Self { after, up_to }
    }

    /// The `_id` condition, or `None` when neither end is bounded.
    pub(crate) fn condition(&self) -> Option<Document> {
        let mut condition = Document::new();
        if let Some(after) = self.after {
            condition.insert("$gt", after);
        }
        if let Some(up_to) = self.up_to {
            condition.insert("$lte", up_to);
        }
        (!condition.is_empty()).then_some(condition)
    }

    /// `filter` narrowed to the range.
    pub(crate) fn narrow(&self, mut filter: Document) -> Document {
        if let Some(condition) = self.condition() {
            filter.insert("_id", condition);
        }
        filter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn a_range_is_open_below_and_closed_above() {
        let (a, b) = (ObjectId::new(), ObjectId::new());
        assert_eq!(IdRange::after(None, None).condition(), None);
        assert_eq!(
            IdRange::after(Some(a), Some(b)).condition(),
            Some(doc! {"$gt": a, "$lte": b})
        );
        assert_eq!(
            IdRange::after(None, Some(b)).condition(),
            Some(doc! {"$lte": b})
        );
    }

    #[test]
    fn an_unbounded_range_leaves_the_filter_as_it_is() {
        let filter = doc! {"exportRunId": "r"};
        assert_eq!(IdRange::default().narrow(filter.clone()), filter);
    }
}
