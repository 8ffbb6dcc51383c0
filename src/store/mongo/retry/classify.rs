//! Which MongoDB errors are transient: the one place failures are
//! classified, by the categories of the server's own `error_codes.yml`,
//! the same for every command.

use mongodb::error::{
    Error as MongoError, ErrorKind, WriteFailure, RETRYABLE_WRITE_ERROR,
    TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};

/// MongoDB's WriteConflict error code.
pub(crate) const WRITE_CONFLICT: i32 = 112;

/// Labels that make any error transient, whatever its code.
pub(crate) const TRANSIENT_LABELS: [&str; 4] = [
    TRANSIENT_TRANSACTION_ERROR,
    RETRYABLE_WRITE_ERROR,
    "SystemOverloadedError", // 8.x: the server sheds load
    "RetryableError",        // 8.x: safe to retry
];

/// The categories of MongoDB's `error_codes.yml` whose codes are worth
/// another try after a delay: the node or the network went away, the
/// primary changed, the server is shutting down or shedding load, an
/// operation was interrupted or ran out of time, a cursor was lost on
/// such a change. A code in none of them is permanent, on every command.
pub(crate) const TRANSIENT_CATEGORIES: [&str; 9] = [
    "RetriableError",
    "NetworkError",
    "NetworkTimeoutError",
    "NotPrimaryError",
    "ShutdownError",
    "CursorInvalidatedError",
    "ExceededTimeLimitError",
    "Interruption",
    "SystemOverloadedError",
];

/// `(code, name, categories)` of the server's codes in a transient
/// category, as `error_codes.yml` lists them (server 8.x), and of the
/// three transient codes it gives no category: 112 WriteConflict (another
/// writer won; the whole transaction runs again), 133
/// FailedToSatisfyReadPreference (mongos while a shard elects a primary)
/// and 10058 LegacyNotPrimary (older servers' "not primary").
#[rustfmt::skip]
pub(crate) const SERVER_CODES: [(i32, &str, &[&str]); 44] = [
    (6, "HostUnreachable", &["NetworkError", "RetriableError"]),
    (7, "HostNotFound", &["NetworkError", "RetriableError"]),
    (24, "LockTimeout", &["Interruption"]),
    (43, "CursorNotFound", &["CursorInvalidatedError"]),
    (50, "MaxTimeMSExpired", &["Interruption", "ExceededTimeLimitError"]),
    (89, "NetworkTimeout", &["NetworkError", "RetriableError", "NetworkTimeoutError"]),
    (91, "ShutdownInProgress", &["ShutdownError", "CancellationError", "RetriableError"]),
    (96, "OperationFailed", &["CursorInvalidatedError"]),
    (WRITE_CONFLICT, "WriteConflict", &[]),
    (133, "FailedToSatisfyReadPreference", &[]),
    (134, "ReadConcernMajorityNotAvailableYet", &["RetriableError"]),
    (175, "QueryPlanKilled", &["CursorInvalidatedError"]),
    (189, "PrimarySteppedDown", &["NotPrimaryError", "RetriableError"]),
    (202, "NetworkInterfaceExceededTimeLimit", &["ExceededTimeLimitError", "NetworkTimeoutError"]),
    (237, "CursorKilled", &["Interruption", "CursorInvalidatedError"]),
    (262, "ExceededTimeLimit", &["Interruption", "ExceededTimeLimitError", "RetriableError"]),
    (279, "ClientDisconnect", &["Interruption"]),
    (281, "TransactionCoordinatorSteppingDown", &["Interruption"]),
    (282, "TransactionCoordinatorReachedAbortDecision", &["Interruption"]),
    (290, "TransactionExceededLifetimeLimitSeconds", &["Interruption", "ExceededTimeLimitError"]),
    (314, "ObjectIsBusy", &["CursorInvalidatedError"]),
    (317, "ConnectionPoolExpired", &["NetworkError", "RetriableError"]),
    (333, "ServiceExecutorInShutdown", &["ShutdownError", "CancellationError"]),
    (355, "InterruptedDueToStorageChange", &["Interruption", "CancellationError"]),
    (358, "InternalTransactionNotSupported", &["RetriableError"]),
    (384, "ConnectionError", &["NetworkError", "RetriableError"]),
    (402, "ResourceExhausted", &["RetriableError"]),
    (406, "MigrationBlockingOperationCoordinatorCleaningUp", &["RetriableError"]),
    (407, "PooledConnectionAcquisitionExceededTimeLimit", &["ExceededTimeLimitError", "RetriableError"]),
    (412, "UpdatesStillPending", &["RetriableError"]),
    (433, "AdmissionQueueOverflow", &["SystemOverloadedError"]),
    (449, "RateLimitExceeded", &["SystemOverloadedError"]),
    (450, "PooledConnectionAcquisitionRejected", &["SystemOverloadedError"]),
    (453, "InterruptedDueToReshardingCriticalSection", &["Interruption", "RetriableError"]),
    (462, "IngressRequestRateLimitExceeded", &["SystemOverloadedError", "RetriableError"]),
    (9001, "SocketException", &["NetworkError", "RetriableError"]),
    (10058, "LegacyNotPrimary", &[]),
    (10107, "NotWritablePrimary", &["NotPrimaryError", "RetriableError"]),
    (11600, "InterruptedAtShutdown", &["Interruption", "ShutdownError", "CancellationError", "RetriableError"]),
    (11601, "Interrupted", &["Interruption"]), // also what killSessions does to a slow holder
    (11602, "InterruptedDueToReplStateChange", &["Interruption", "NotPrimaryError", "RetriableError"]),
    (13435, "NotPrimaryNoSecondaryOk", &["NotPrimaryError", "RetriableError"]),
    (13436, "NotPrimaryOrSecondary", &["NotPrimaryError", "RetriableError"]),
    (91331, "RetriableRemoteCommandFailure", &["Interruption", "RetriableError"]),
];

/// Codes with no transient category that are transient all the same
/// (see [`SERVER_CODES`]).
const UNCATEGORISED_TRANSIENT: [i32; 3] = [WRITE_CONFLICT, 133, 10058];

/// `(code, name)` of the errors that say the transaction was too big for
/// the server: 388 TransactionTooLargeForCache, 10334 BSONObjectTooLarge.
/// A transaction that covers fewer records may pass, so it runs again on
/// half the chunk; any other operation fails on them for good.
pub(crate) const TOO_LARGE_CODES: [(i32, &str); 2] = [
    (388, "TransactionTooLargeForCache"),
    (10334, "BSONObjectTooLarge"),
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
    /// The driver has given up on the server (no server selectable within
    /// `mongodb.server_selection_timeout_ms`, or its monitor timed out and
    /// interrupted the operation): end the attempt at once, as when the
    /// server does not answer within the bound, and write nothing more.
    Unreachable,
    /// The transaction was too big for the server: run it again on fewer
    /// records; permanent anywhere else.
    TooLarge,
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

/// True for a server error code in a transient category of
/// [`SERVER_CODES`], or one of the uncategorised transient codes.
pub(crate) fn code_is_transient(code: i32) -> bool {
    UNCATEGORISED_TRANSIENT.contains(&code)
        || SERVER_CODES.iter().any(|(row, _, categories)| {
            *row == code
                && categories
                    .iter()
                    .any(|category| TRANSIENT_CATEGORIES.contains(category))
        })
}

/// True when the driver has given up on the server rather than the
/// server answering: server selection timed out, or the connection was
/// interrupted because the server's monitor timed out (a black hole the
/// monitor noticed before the operation's own deadline).
pub(crate) fn is_unreachable(err: &MongoError) -> bool {
    match err.kind.as_ref() {
        ErrorKind::ServerSelection { .. } => true,
        ErrorKind::ConnectionPoolCleared { message, .. } => monitor_gave_up(message),
        ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    }
}

/// True when `code` is a row of `table`.
fn listed(table: &[(i32, &str)], code: i32) -> bool {
    table.iter().any(|(row, _)| *row == code)
}

/// True for the message of a pool the driver cleared because the
/// server's monitor timed out (rather than because an operation failed).
fn monitor_gave_up(message: &str) -> bool {
    message.contains("server monitor timeout")
}

/// What the failed command was: `UnknownTransactionCommitResult` only
/// means "retry the commit" for the commit itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// An operation, alone or inside a transaction.
    Operation,
    /// A transaction's `commitTransaction`.
    Commit,
}

/// Classifies an error of a command in `phase`.
pub(crate) fn classify(err: &MongoError, phase: Phase) -> Transience {
    if is_unreachable(err) {
        return Transience::Unreachable;
    }
    if phase == Phase::Commit && err.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) {
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
    if error_code(err).is_some_and(|code| listed(&TOO_LARGE_CODES, code)) {
        return Transience::TooLarge;
    }
    match err.kind.as_ref() {
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => Transience::Transient,
        _ => Transience::Permanent,
    }
}

/// True when a failed write may nevertheless have been applied: its
/// outcome is unknown (a write concern error), or the connection failed
/// after the request may have reached the server (a lost reply).
pub(crate) fn outcome_unknown(err: &MongoError) -> bool {
    classify(err, Phase::Operation) == Transience::UnknownOutcome
        || (matches!(err.kind.as_ref(), ErrorKind::Io(_)) && !is_unreachable(err))
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
