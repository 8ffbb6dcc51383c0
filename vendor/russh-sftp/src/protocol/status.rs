use thiserror::Error;

use super::{impl_packet_for, impl_request_id, Packet, RequestId};

/// Error Codes for SSH_FXP_STATUS
#[derive(Debug, Error, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum StatusCode {
    /// Indicates successful completion of the operation.
    #[error("Ok")]
    Ok = 0,
    /// Indicates end-of-file condition; for SSH_FX_READ it means that no more data is available in the file,
    /// and for SSH_FX_READDIR it indicates that no more files are contained in the directory.
    #[error("Eof")]
    Eof = 1,
    /// A reference is made to a file which should exist but doesn't.
    #[error("No such file")]
    NoSuchFile = 2,
    /// Authenticated user does not have sufficient permissions to perform the operation.
    #[error("Permission denied")]
    PermissionDenied = 3,
    /// A generic catch-all error message;
    /// it should be returned if an error occurs for which there is no more specific error code defined.
    #[error("Failure")]
    Failure = 4,
    /// May be returned if a badly formatted packet or protocol incompatibility is detected.
    #[error("Bad message")]
    BadMessage = 5,
    /// A pseudo-error which indicates that the client has no connection to the server
    /// (it can only be generated locally by the client, and MUST NOT be returned by servers).
    #[error("No connection")]
    NoConnection = 6,
    /// A pseudo-error which indicates that the connection to the server has been lost
    /// (it can only be generated locally by the client, and MUST NOT be returned by servers).
    #[error("Connection lost")]
    ConnectionLost = 7,
    /// Indicates that an attempt was made to perform an operation which is not supported for the server
    /// (it may be generated locally by the client if e.g. the version number exchange indicates that a required feature is not supported by the server,
    /// or it may be returned by the server if the server does not implement an operation).
    #[error("Operation unsupported")]
    OpUnsupported = 8,
    // Patched in esr-exporter (vendor/README.md): the codes of later
    // drafts (draft-ietf-secsh-filexfer-13, section 9.1), which servers
    // such as ProFTPD's mod_sftp send to version 3 clients too. Without
    // them a status of 9 or more could not be read and the session dropped.
    /// SSH_FX code 9 (draft-ietf-secsh-filexfer-13).
    #[error("Invalid handle")]
    InvalidHandle = 9,
    /// SSH_FX code 10 (draft-ietf-secsh-filexfer-13).
    #[error("No such path")]
    NoSuchPath = 10,
    /// SSH_FX code 11 (draft-ietf-secsh-filexfer-13).
    #[error("File already exists")]
    FileAlreadyExists = 11,
    /// SSH_FX code 12 (draft-ietf-secsh-filexfer-13).
    #[error("Write protected")]
    WriteProtect = 12,
    /// SSH_FX code 13 (draft-ietf-secsh-filexfer-13).
    #[error("No media")]
    NoMedia = 13,
    /// SSH_FX code 14 (draft-ietf-secsh-filexfer-13).
    #[error("No space on file system")]
    NoSpaceOnFilesystem = 14,
    /// SSH_FX code 15 (draft-ietf-secsh-filexfer-13).
    #[error("Quota exceeded")]
    QuotaExceeded = 15,
    /// SSH_FX code 16 (draft-ietf-secsh-filexfer-13).
    #[error("Unknown principal")]
    UnknownPrincipal = 16,
    /// SSH_FX code 17 (draft-ietf-secsh-filexfer-13).
    #[error("Lock conflict")]
    LockConflict = 17,
    /// SSH_FX code 18 (draft-ietf-secsh-filexfer-13).
    #[error("Directory not empty")]
    DirNotEmpty = 18,
    /// SSH_FX code 19 (draft-ietf-secsh-filexfer-13).
    #[error("Not a directory")]
    NotADirectory = 19,
    /// SSH_FX code 20 (draft-ietf-secsh-filexfer-13).
    #[error("Invalid file name")]
    InvalidFilename = 20,
    /// SSH_FX code 21 (draft-ietf-secsh-filexfer-13).
    #[error("Link loop")]
    LinkLoop = 21,
    /// SSH_FX code 22 (draft-ietf-secsh-filexfer-13).
    #[error("Cannot delete")]
    CannotDelete = 22,
    /// SSH_FX code 23 (draft-ietf-secsh-filexfer-13).
    #[error("Invalid parameter")]
    InvalidParameter = 23,
    /// SSH_FX code 24 (draft-ietf-secsh-filexfer-13).
    #[error("File is a directory")]
    FileIsADirectory = 24,
    /// SSH_FX code 25 (draft-ietf-secsh-filexfer-13).
    #[error("Byte range lock conflict")]
    ByteRangeLockConflict = 25,
    /// SSH_FX code 26 (draft-ietf-secsh-filexfer-13).
    #[error("Byte range lock refused")]
    ByteRangeLockRefused = 26,
    /// SSH_FX code 27 (draft-ietf-secsh-filexfer-13).
    #[error("Delete pending")]
    DeletePending = 27,
    /// SSH_FX code 28 (draft-ietf-secsh-filexfer-13).
    #[error("File corrupt")]
    FileCorrupt = 28,
    /// SSH_FX code 29 (draft-ietf-secsh-filexfer-13).
    #[error("Owner invalid")]
    OwnerInvalid = 29,
    /// SSH_FX code 30 (draft-ietf-secsh-filexfer-13).
    #[error("Group invalid")]
    GroupInvalid = 30,
    /// SSH_FX code 31 (draft-ietf-secsh-filexfer-13).
    #[error("No matching byte range lock")]
    NoMatchingByteRangeLock = 31,
    /// A code no draft names (above 31): read, so the session survives.
    #[error("Unknown status code")]
    #[serde(other)]
    Unknown = 32,
}

/// Implementation for SSH_FXP_STATUS as defined in the specification draft
/// <https://datatracker.ietf.org/doc/html/draft-ietf-secsh-filexfer-02#section-7>
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub id: u32,
    pub status_code: StatusCode,
    pub error_message: String,
    pub language_tag: String,
}

impl_request_id!(Status);
impl_packet_for!(Status);
