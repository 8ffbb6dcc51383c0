//! The classification table, row by row, on errors as the driver builds
//! them from a server reply.

use bson::doc;
use mongodb::error::{Error as MongoError, ErrorKind};

use super::*;

/// A command error with this code, as the driver decodes a server reply.
fn command_error(code: i32) -> MongoError {
    let command = bson::from_document(doc! {"code": code, "codeName": "Test", "errmsg": "test"})
        .expect("a command error decodes");
    MongoError::from(ErrorKind::Command(command))
}

/// How a command failing with `code` is classified.
fn classified(code: i32) -> Transience {
    classify(&command_error(code), Phase::Operation)
}

#[test]
fn every_code_of_a_transient_category_is_transient_on_every_command() {
    for (code, name, _) in SERVER_CODES {
        for phase in [Phase::Operation, Phase::Commit] {
            assert_eq!(
                classify(&command_error(code), phase),
                Transience::Transient,
                "{code} {name}"
            );
        }
    }
}

#[test]
fn every_row_but_the_uncategorised_three_names_a_transient_category() {
    for (code, name, categories) in SERVER_CODES {
        let categorised = categories
            .iter()
            .any(|category| TRANSIENT_CATEGORIES.contains(category));
        assert!(
            categorised || UNCATEGORISED_TRANSIENT.contains(&code),
            "{code} {name}"
        );
    }
}

#[test]
fn the_codes_a_replica_set_or_a_sharded_cluster_produces_are_transient() {
    let required = [
        6, 7, 24, 50, 89, 91, 112, 133, 189, 202, 237, 262, 402, 9001, 10058, 10107, 11600, 11601,
        11602, 13435, 13436, 91331,
    ];
    for code in required {
        assert!(code_is_transient(code), "{code} must be transient");
    }
}

#[test]
fn a_transaction_too_large_runs_again_smaller() {
    for (code, name) in TOO_LARGE_CODES {
        assert_eq!(classified(code), Transience::TooLarge, "{code} {name}");
    }
}

#[tokio::test]
async fn a_driver_that_gave_up_on_the_server_ends_the_attempt() {
    // A real server selection timeout: nothing listens on port 1.
    let uri = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100&connectTimeoutMS=100";
    let client = mongodb::Client::with_uri_str(uri)
        .await
        .expect("a valid URI");
    let err = client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .expect_err("nothing answers");
    assert_eq!(
        classify(&err, Phase::Commit),
        Transience::Unreachable,
        "{err}"
    );
    let timed_out = MongoError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "connect timed out",
    ));
    assert_eq!(
        classify(&timed_out, Phase::Operation),
        Transience::Unreachable
    );
    assert!(monitor_gave_up(
        "Connection to 127.0.0.1:1 interrupted due to server monitor timeout"
    ));
    assert!(!monitor_gave_up(
        "Connection pool for 127.0.0.1:1 cleared because another operation failed with: reset"
    ));
}

#[test]
fn codes_outside_the_table_are_permanent() {
    for (code, name) in [
        (2, "BadValue"),
        (13, "Unauthorized"),
        (11000, "DuplicateKey"),
        (85, "IndexOptionsConflict"),
    ] {
        assert_eq!(classified(code), Transience::Permanent, "{code} {name}");
    }
}

#[test]
fn the_labels_of_the_table_are_named_as_the_server_sends_them() {
    assert_eq!(
        TRANSIENT_LABELS,
        [
            "TransientTransactionError",
            "RetryableWriteError",
            "SystemOverloadedError",
            "RetryableError"
        ]
    );
}

/// What the driver says of a connection the server reset.
fn connection_reset() -> MongoError {
    MongoError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "reset",
    ))
}

#[test]
fn network_errors_are_transient_and_custom_errors_permanent() {
    let io = connection_reset();
    assert_eq!(classify(&io, Phase::Operation), Transience::Transient);
    assert_eq!(
        classify(&MongoError::custom("x"), Phase::Operation),
        Transience::Permanent
    );
}

/// A write concern error with this code, as the driver decodes a reply
/// whose write was applied but not acknowledged as asked.
fn write_concern_error(code: i32) -> MongoError {
    let concern = bson::from_document(doc! {"code": code, "codeName": "Test", "errmsg": "test"})
        .expect("a write concern error decodes");
    MongoError::from(ErrorKind::Write(
        mongodb::error::WriteFailure::WriteConcernError(concern),
    ))
}

#[test]
fn every_unknown_outcome_code_is_read_back_before_anything_else() {
    for (code, name) in UNKNOWN_OUTCOME_CODES {
        assert_eq!(
            classified(code),
            Transience::UnknownOutcome,
            "{code} {name}"
        );
        assert!(outcome_unknown(&command_error(code)), "{code} {name}");
    }
}

#[test]
fn a_write_concern_error_leaves_the_outcome_unknown_whatever_its_code() {
    for code in [64, 11602, 91] {
        assert_eq!(
            classify(&write_concern_error(code), Phase::Operation),
            Transience::UnknownOutcome,
            "{code}"
        );
    }
}

#[test]
fn a_lost_connection_leaves_a_write_unknown_and_a_duplicate_key_does_not() {
    let io = connection_reset();
    assert!(outcome_unknown(&io));
    assert!(!outcome_unknown(&command_error(11000)));
    assert!(!outcome_unknown(&command_error(112)));
}
