//! What an SFTP failure means: a status the server answered (permission
//! denied, a full disk, no such file) or a lost connection, which is
//! dropped so the next request connects again.

use std::io;

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::extensions::Statvfs;
use russh_sftp::protocol::StatusCode;

use super::super::error::FailureKind;

/// A failed request, before it names the destination.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) kind: FailureKind,
    /// The connection is unusable: drop it.
    pub(super) lost: bool,
    pub(super) detail: String,
}

impl Failed {
    pub(super) fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            lost: false,
            detail: detail.into(),
        }
    }
}

/// True when the server answered that the path does not exist.
pub(super) fn no_such_file(err: &SftpError) -> bool {
    matches!(err, SftpError::Status(status) if status.status_code == StatusCode::NoSuchFile)
}

/// True when the server answered that the name exists
/// (`SSH_FX_FILE_ALREADY_EXISTS`, 11: ProFTPD's answer to a rename onto an
/// existing name, even to a version 3 client).
pub(super) fn name_taken(err: &SftpError) -> bool {
    matches!(err, SftpError::Status(status) if status.status_code == StatusCode::FileAlreadyExists)
}

/// True when the server answered the generic failure status (OpenSSH's
/// answer to a rename onto an existing name, and to a write on a full disk).
pub(super) fn generic_failure(err: &SftpError) -> bool {
    matches!(err, SftpError::Status(status) if status.status_code == StatusCode::Failure)
}

/// True when a refused rename may mean the target name is taken: the
/// generic failure (OpenSSH), or permission denied (servers that answer
/// so for an existing target). The target is then looked at before the
/// refusal is called anything else, such as a read-only folder.
pub(super) fn rename_refusal_may_mean_taken(err: &SftpError) -> bool {
    generic_failure(err)
        || matches!(err, SftpError::Status(status) if status.status_code == StatusCode::PermissionDenied)
}

impl From<SftpError> for Failed {
    fn from(err: SftpError) -> Self {
        let (kind, lost) = match &err {
            SftpError::Status(status) => match status.status_code {
                StatusCode::NoConnection | StatusCode::ConnectionLost => {
                    (FailureKind::Transient, true)
                }
                // Generic: a full disk or a quota on a write. It may pass.
                StatusCode::Failure
                | StatusCode::NoSpaceOnFilesystem
                | StatusCode::QuotaExceeded
                | StatusCode::LockConflict
                | StatusCode::DeletePending => (FailureKind::Transient, false),
                StatusCode::FileAlreadyExists => (FailureKind::Occupied, false),
                _ => (FailureKind::Permanent, false),
            },
            SftpError::Timeout => (FailureKind::Timeout, true),
            SftpError::Limited(_) => (FailureKind::Permanent, false),
            SftpError::IO(_) | SftpError::UnexpectedPacket | SftpError::UnexpectedBehavior(_) => {
                (FailureKind::Transient, true)
            }
        };
        let hint = match &err {
            SftpError::Status(status) if status.status_code == StatusCode::Failure => {
                " (SSH_FX_FAILURE: a full disk or a quota on the server?)"
            }
            SftpError::Status(status) if status.status_code == StatusCode::PermissionDenied => {
                " (the folder is read-only for this user?)"
            }
            _ => "",
        };
        let detail = match &err {
            SftpError::Timeout => "no answer from the server (sftp.request_timeout_ms)".to_owned(),
            _ => format!("{err}{hint}"),
        };
        Self { kind, lost, detail }
    }
}

impl From<io::Error> for Failed {
    /// A read or write of a remote file: the SFTP error it carries, a
    /// status the server answered (carried as its message alone), or a
    /// lost connection.
    fn from(err: io::Error) -> Self {
        if let Some(sftp) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<SftpError>())
        {
            return Self::from(sftp.clone());
        }
        let answered = err.kind() == io::ErrorKind::Other && err.get_ref().is_some();
        Self {
            kind: FailureKind::Transient,
            lost: !answered,
            detail: if answered {
                format!("the server refused a write: {err}")
            } else {
                err.to_string()
            },
        }
    }
}

/// `statvfs`'s flag for a file system mounted read-only.
const ST_RDONLY: u64 = 1;

/// A write or rename the server refused with no reason it can name
/// (OpenSSH answers the generic failure for a full disk and for a
/// read-only file system alike), explained by the folder's file system as
/// `statvfs@openssh.com` reports it. Both stay transient: someone frees
/// the disk or remounts it, and the next attempt delivers.
pub(super) fn explain(failed: Failed, fs: Option<&Statvfs>, needed: u64) -> Failed {
    let Some(fs) = fs.filter(|_| failed.kind == FailureKind::Transient && !failed.lost) else {
        return failed;
    };
    let free = fs.blocks_avail.saturating_mul(fs.fragment_size);
    let why = if fs.flags & ST_RDONLY != 0 {
        "the folder is on a read-only file system".to_owned()
    } else if free < needed || fs.inodes_avail == 0 {
        format!("the server's disk is full ({free} bytes free, {needed} needed)")
    } else {
        return failed;
    };
    Failed {
        detail: format!("{}; {why}", failed.detail),
        ..failed
    }
}

#[cfg(test)]
mod tests {
    use russh_sftp::protocol::Status;

    use super::*;

    fn status(code: StatusCode) -> SftpError {
        SftpError::Status(Status {
            id: 1,
            status_code: code,
            error_message: "m".into(),
            language_tag: "en".into(),
        })
    }

    #[test]
    fn a_rename_refused_as_failure_or_permission_denied_is_looked_at_again() {
        for code in [StatusCode::Failure, StatusCode::PermissionDenied] {
            assert!(rename_refusal_may_mean_taken(&status(code)), "{code:?}");
        }
        for code in [StatusCode::NoSuchFile, StatusCode::ConnectionLost] {
            assert!(!rename_refusal_may_mean_taken(&status(code)), "{code:?}");
        }
    }

    #[test]
    fn statuses_and_lost_connections_are_classified() {
        let denied = Failed::from(status(StatusCode::PermissionDenied));
        assert_eq!((denied.kind, denied.lost), (FailureKind::Permanent, false));
        assert!(denied.detail.contains("read-only"), "{}", denied.detail);
        let full = Failed::from(status(StatusCode::Failure));
        assert_eq!((full.kind, full.lost), (FailureKind::Transient, false));
        assert!(full.detail.contains("full disk"), "{}", full.detail);
        let lost = Failed::from(status(StatusCode::ConnectionLost));
        assert_eq!((lost.kind, lost.lost), (FailureKind::Transient, true));
        let timeout = Failed::from(SftpError::Timeout);
        assert_eq!((timeout.kind, timeout.lost), (FailureKind::Timeout, true));
        let wrapped = Failed::from(io::Error::from(status(StatusCode::Failure)));
        assert_eq!(wrapped.kind, FailureKind::Transient);
        assert!(!wrapped.lost);
        let reset = Failed::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(reset.lost);
        let refused = Failed::from(io::Error::other("Failure"));
        assert_eq!(
            (refused.kind, refused.lost),
            (FailureKind::Transient, false)
        );
        assert!(no_such_file(&status(StatusCode::NoSuchFile)));
        assert!(generic_failure(&status(StatusCode::Failure)));
    }

    fn fs(flags: u64, blocks_avail: u64) -> Statvfs {
        Statvfs {
            block_size: 4096,
            fragment_size: 4096,
            blocks: 100,
            blocks_free: blocks_avail,
            blocks_avail,
            inodes: 100,
            inodes_free: 50,
            inodes_avail: 50,
            fs_id: 1,
            flags,
            name_max: 255,
        }
    }

    #[test]
    fn a_refused_write_is_explained_by_the_file_system() {
        let refused = || Failed::from(io::Error::other("Failure"));
        let read_only = explain(refused(), Some(&fs(ST_RDONLY, 50)), 10);
        assert!(
            read_only.detail.ends_with("read-only file system"),
            "{}",
            read_only.detail
        );
        let full = explain(refused(), Some(&fs(0, 1)), 10_000);
        assert!(
            full.detail
                .contains("disk is full (4096 bytes free, 10000 needed)"),
            "{}",
            full.detail
        );
        assert_eq!(
            explain(refused(), Some(&fs(0, 50)), 10).detail,
            refused().detail
        );
        assert_eq!(explain(refused(), None, 10).detail, refused().detail);
    }
}
