//! Which MongoDB errors are transient: the one place failures are
//! classified.

use mongodb::error::{
    Error as MongoError, ErrorKind, WriteFailure, RETRYABLE_WRITE_ERROR,
    TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};

/// MongoDB's WriteConflict error code.
pub(crate) const WRITE_CONFLICT: i32 = 112;

/// What makes an error transient, as a table: labels first, then codes.
/// The codes of a replica set changing primary or a node going away (the
/// retryable-error codes of MongoDB's driver specifications), of an
/// operation interrupted or timed out, and of a cursor or query plan lost
/// on such a change: worth another try after a delay. A code not listed
/// is permanent.
pub(crate) const TRANSIENT_LABELS: [&str; 4] = [
    TRANSIENT_TRANSACTION_ERROR,
    RETRYABLE_WRITE_ERROR,
    "SystemOverloadedError", // 8.x: the server sheds load
    "RetryableError",        // 8.x: safe to retry
];

/// `(code, name)` of every transient server error code.
pub(crate) const TRANSIENT_CODES: [(i32, &str); 19] = [
    (6, "HostUnreachable"),
    (7, "HostNotFound"),
    (43, "CursorNotFound"),
    (50, "MaxTimeMSExpired"),
    (89, "NetworkTimeout"),
    (91, "ShutdownInProgress"),
    (WRITE_CONFLICT, "WriteConflict"),
    (134, "ReadConcernMajorityNotAvailableYet"),
    (175, "QueryPlanKilled"),
    (189, "PrimarySteppedDown"),
    (262, "ExceededTimeLimit"),
    (9001, "SocketException"),
    (10058, "LegacyNotPrimary"),
    (10107, "NotWritablePrimary"),
    (11600, "InterruptedAtShutdown"),
    (11601, "Interrupted"), // what killSessions does to a slow holder
    (11602, "InterruptedDueToReplStateChange"),
    (13435, "NotPrimaryNoSecondaryOk"),
    (13436, "NotPrimaryOrSecondary"),
];

/// `(code, name)` of every server error code that leaves a write's outcome
/// unknown: it may have been applied (and may yet be rolled back).
pub(crate) const UNKNOWN_OUTCOME_CODES: [(i32, &str); 1] = [
    (64, "WriteConcernFailed"), // wtimeout passed before a majority had the write
];

/// Every transient MongoDB error is one of these; everything else is
/// permanent. This is the one place failures are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transience {
    /// Retry the whole transaction (or the whole operation): 112
    /// WriteConflict, the TransientTransactionError label, network errors.
    Transient,
    /// The commit may or may not have happened: retry the commit alone.
    UnknownCommitResult,
    /// A write outside a transaction may or may not have been applied (a
    /// write concern error): read it back before retrying or reporting it.
    UnknownOutcome,
    /// Fail fast.
    Permanent,
}

/// The server error code of an error, if it has one.
pub fn error_code(err: &MongoError) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => Some(concern.code),
        ErrorKind::InsertMany(many) => many
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first().map(|e| e.code))
            .or_else(|| many.write_concern_error.as_ref().map(|e| e.code)),
        _ => None,
    }
}

/// MongoDB's DuplicateKey error code.
const DUPLICATE_KEY: i32 = 11000;

/// True for a duplicate `_id` or unique key: an upsert or insert that found
/// the document already there.
pub(crate) fn is_duplicate_key(err: &MongoError) -> bool {
    error_code(err) == Some(DUPLICATE_KEY)
}

/// True for a server error code in [`TRANSIENT_CODES`].
pub(crate) fn code_is_transient(code: i32) -> bool {
    listed(&TRANSIENT_CODES, code)
}

/// True when `code` is a row of `table`.
fn listed(table: &[(i32, &str)], code: i32) -> bool {
    table.iter().any(|(row, _)| *row == code)
}

/// Classifies an error. `UnknownTransactionCommitResult` only means
/// "retry the commit" for the commit itself; the caller says which it was.
pub(crate) fn classify(err: &MongoError, during_commit: bool) -> Transience {
    if during_commit && err.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) {
        return Transience::UnknownCommitResult;
    }
    let concern_error = matches!(
        err.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteConcernError(_))
    );
    let unknown_code = error_code(err).is_some_and(|code| listed(&UNKNOWN_OUTCOME_CODES, code));
    if concern_error || unknown_code {
        return Transience::UnknownOutcome;
    }
    if TRANSIENT_LABELS
        .iter()
        .any(|label| err.contains_label(label))
        || error_code(err).is_some_and(code_is_transient)
    {
        return Transience::Transient;
    }
    match err.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => Transience::Transient,
        _ => Transience::Permanent,
    }
}

/// True when a failed write may nevertheless have been applied: its
/// outcome is unknown (a write concern error), or the connection failed
/// after the request may have reached the server (a lost reply).
pub(crate) fn outcome_unknown(err: &MongoError) -> bool {
    classify(err, false) == Transience::UnknownOutcome
        || matches!(err.kind.as_ref(), ErrorKind::Io(_))
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
