//! Streaming reads: a cursor whose every batch must arrive within the
//! deadline, its errors as store errors.

use bson::Document;
use futures_util::TryStreamExt;
use mongodb::Cursor;

use super::retry::{self, Phase, RetryError, RetryPolicy, RetryScope, Transience};
use crate::store::StoreError;

/// A cursor of a run's reads (`getMore` included) bounded like every other
/// operation: a server that stops answering mid-stream fails the attempt
/// within `mongodb.operation_timeout_ms`.
#[derive(Debug)]
pub(crate) struct BoundedCursor {
    cursor: Cursor<Document>,
    policy: RetryPolicy,
    op: &'static str,
}

impl BoundedCursor {
    pub(crate) fn new(cursor: Cursor<Document>, policy: &RetryPolicy, op: &'static str) -> Self {
        Self {
            cursor,
            policy: policy.clone(),
            op,
        }
    }

    /// The next document, `None` at the end.
    ///
    /// # Errors
    /// A cursor cannot be resumed mid-stream: a transient failure (or the
    /// deadline) ends this attempt, and the next attempt streams again from
    /// the start.
    pub(crate) async fn next(&mut self) -> Result<Option<Document>, StoreError> {
        let scope = RetryScope::global(self.op);
        let next = self.cursor.try_next();
        match self.policy.bounded(scope, next).await? {
            Ok(document) => Ok(document),
            Err(err) => Err(StoreError::Mongo(stream_error(&self.policy, self.op, err))),
        }
    }
}

fn stream_error(policy: &RetryPolicy, op: &'static str, err: mongodb::error::Error) -> RetryError {
    match retry::classify(&err, Phase::Operation) {
        Transience::Permanent | Transience::TooLarge => retry::permanent(op, err),
        Transience::Unreachable => policy.unreachable(RetryScope::global(op), err),
        _ => RetryError::Exhausted {
            op,
            attempts: 1,
            elapsed_ms: 0,
            code: retry::error_code(&err),
            source: err,
        },
    }
}
