//! Why a destination operation failed, and what to do about it: retry the
//! request, end the attempt transiently, or stop and tell an operator.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

/// What kind of failure a destination met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The store did not answer within the bound: the attempt ends
    /// (transiently) at once, without retrying into the silence.
    Timeout,
    /// A 5xx, 429 SlowDown, 409 conflict or a lost connection: retried
    /// with backoff, and transient once the retries are spent.
    Transient,
    /// 403, a missing bucket, bad credentials, a bad request: trying again
    /// will not help until someone fixes something.
    Permanent,
    /// Another object holds the name (or a store ignores the condition).
    Occupied,
}

impl FailureKind {
    /// Label for `esr_destination_failures_total{kind}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Occupied => "occupied",
        }
    }
}

/// A failed destination operation, naming the destination, the
/// operation and the key. Never carries credentials: the store's own
/// messages name the method and URL of the request, not its signature.
#[derive(Debug, thiserror::Error)]
pub struct DestinationError {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The destination, e.g. `s3://bucket/prefix`.
    pub destination: String,
    /// The operation, e.g. `create`, `head`, `probe`.
    pub op: &'static str,
    /// The object key or path concerned.
    pub key: String,
    /// What happened.
    pub detail: String,
    /// The request may have reached the store with no answer back (a
    /// timeout, a connection lost during it): whether it applied is not
    /// known. False when the store answered, or nothing was sent.
    pub unanswered: bool,
}

impl fmt::Display for DestinationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "destination {} ({} {}): {}",
            self.destination, self.op, self.key, self.detail
        )
    }
}

impl DestinationError {
    /// A failure of `kind`.
    pub(crate) fn new(
        kind: FailureKind,
        destination: &str,
        op: &'static str,
        key: &str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            destination: destination.to_owned(),
            op,
            key: key.to_owned(),
            detail: detail.into(),
            unanswered: false,
        }
    }

    /// The store did not answer within `bound`.
    pub(crate) fn timed_out(
        destination: &str,
        op: &'static str,
        key: &str,
        bound: Duration,
    ) -> Self {
        let setting = if destination.starts_with("sftp://") {
            "sftp.request_timeout_ms"
        } else {
            "s3.request_timeout_ms"
        };
        let detail = format!(
            "no answer within {} ms ({setting}); the attempt is retried later",
            bound.as_millis()
        );
        Self {
            unanswered: true,
            ..Self::new(FailureKind::Timeout, destination, op, key, detail)
        }
    }

    /// True when a later attempt may succeed without anyone fixing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, FailureKind::Timeout | FailureKind::Transient)
    }

    /// An object store error, classified.
    pub(crate) fn from_store(
        destination: &str,
        op: &'static str,
        key: &str,
        err: &object_store::Error,
    ) -> Self {
        let kind = classify(err);
        Self {
            unanswered: unanswered(err),
            ..Self::new(kind, destination, op, key, describe(kind, err))
        }
    }
}

/// How an object store error is handled.
pub(crate) fn classify(err: &object_store::Error) -> FailureKind {
    use object_store::Error as E;
    match err {
        // The crate maps a 409 to "already exists" too: on a conditional
        // create that is S3's ConditionalRequestConflict (two writers
        // raced), which is retried; a 412 is the name being taken.
        E::AlreadyExists { source, .. } if status_of(&source.to_string()) == Some(409) => {
            FailureKind::Transient
        }
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            FailureKind::Occupied
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } | E::NotFound { .. } => {
            FailureKind::Permanent
        }
        E::NotSupported { .. } | E::NotImplemented { .. } | E::UnknownConfigurationKey { .. } => {
            FailureKind::Permanent
        }
        E::InvalidPath { .. } => FailureKind::Permanent,
        _ => classify_generic(err),
    }
}

/// A generic error: by its HTTP status when the store answered, by the
/// transport's error kind when it did not.
fn classify_generic(err: &object_store::Error) -> FailureKind {
    if let Some(kind) = transport_kind(err) {
        return match kind {
            object_store::client::HttpErrorKind::Timeout => FailureKind::Timeout,
            _ => FailureKind::Transient,
        };
    }
    match status_of(&err.to_string()) {
        Some(status) => classify_status(status),
        // No status and no transport error: a reply that could not be
        // read (a truncated body, a 200 carrying an error document).
        None => FailureKind::Transient,
    }
}

/// A status code's handling: 5xx, 429 (SlowDown) and 409 (a conditional
/// write raced another) are retried; anything else is permanent.
pub(crate) fn classify_status(status: u16) -> FailureKind {
    match status {
        500..=599 | 429 | 409 | 408 => FailureKind::Transient,
        412 | 304 => FailureKind::Occupied,
        _ => FailureKind::Permanent,
    }
}

/// Whether a request that failed so may have reached the store: any
/// transport failure but a failed connect, or a reply that could not be
/// read; not when the store answered with a status.
fn unanswered(err: &object_store::Error) -> bool {
    match transport_kind(err) {
        Some(object_store::client::HttpErrorKind::Connect) => false,
        Some(_) => true,
        None => status_of(&err.to_string()).is_none() && classify(err) == FailureKind::Transient,
    }
}

/// The transport error under an object store error, if any.
fn transport_kind(err: &object_store::Error) -> Option<object_store::client::HttpErrorKind> {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(http) = cause.downcast_ref::<object_store::client::HttpError>() {
            return Some(http.kind());
        }
        source = cause.source();
    }
    None
}

/// The status code the store's error message reports ("status code:
/// 503"), if any. The crate does not expose it otherwise.
pub(crate) fn status_of(message: &str) -> Option<u16> {
    let after = message.split("status code: ").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|code| (100..600).contains(code))
}

fn describe(kind: FailureKind, err: &object_store::Error) -> String {
    let hint = match kind {
        FailureKind::Permanent => {
            " (check the bucket name, its region and the credentials' permissions: \
             s3:PutObject, s3:GetObject, s3:DeleteObject, s3:ListBucket)"
        }
        _ => "",
    };
    format!("{err}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_retried_only_when_a_retry_can_help() {
        for status in [500, 502, 503, 504, 429, 409] {
            assert_eq!(classify_status(status), FailureKind::Transient, "{status}");
        }
        for status in [400, 401, 403, 404, 301] {
            assert_eq!(classify_status(status), FailureKind::Permanent, "{status}");
        }
        assert_eq!(classify_status(412), FailureKind::Occupied);
    }

    #[test]
    fn the_status_is_read_from_the_store_message() {
        let message = "Generic S3 error: Error performing PUT http://h/b/k in 2ms - \
                       Server returned non-2xx status code: 503 Service Unavailable: <Error>";
        assert_eq!(status_of(message), Some(503));
        assert_eq!(status_of("Generic S3 error: connection reset"), None);
    }

    #[test]
    fn a_409_conflict_is_retried_and_a_412_is_occupied() {
        let conflict = object_store::Error::AlreadyExists {
            path: "k".into(),
            source: "Server returned non-2xx status code: 409 Conflict: ConditionalRequestConflict"
                .into(),
        };
        assert_eq!(classify(&conflict), FailureKind::Transient);
        let taken = object_store::Error::AlreadyExists {
            path: "k".into(),
            source: Box::new(object_store::Error::Precondition {
                path: "k".into(),
                source: "Server returned non-2xx status code: 412 Precondition Failed".into(),
            }),
        };
        assert_eq!(classify(&taken), FailureKind::Occupied);
    }

    #[test]
    fn typed_errors_keep_their_meaning() {
        let exists = object_store::Error::AlreadyExists {
            path: "k".into(),
            source: "412".into(),
        };
        assert_eq!(classify(&exists), FailureKind::Occupied);
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "403".into(),
        };
        assert_eq!(classify(&denied), FailureKind::Permanent);
        let err = DestinationError::from_store("s3://b/p", "create", "p/k", &denied);
        assert!(!err.is_transient());
        assert!(err.to_string().contains("s3://b/p (create p/k)"), "{err}");
    }
}
