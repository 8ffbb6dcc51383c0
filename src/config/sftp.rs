//! `[sftp]`: how an `sftp://` destination is reached. Authentication is by
//! key only; the server's host key must be listed in `known_hosts_file`.
//! The key's passphrase is a secret: it prints as `***`, and it may come
//! from a file (`sftp.private_key_passphrase_file`).

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::ConfigError;
use crate::domain::DestinationUrl;

/// `[sftp]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SftpSettings {
    /// The client's private key (OpenSSH format), readable by this user only.
    pub(crate) private_key_file: PathBuf,
    /// The key's passphrase, if it has one; redacted when printed.
    pub(crate) private_key_passphrase: SecretText,
    /// `private_key_passphrase_file`: read at load into the passphrase.
    #[serde(default, skip_serializing, rename = "private_key_passphrase_file")]
    pub(crate) _passphrase_file: serde::de::IgnoredAny,
    /// The server's host keys, OpenSSH `known_hosts` format.
    pub(crate) known_hosts_file: PathBuf,
    /// Bound of connecting, the handshake and authentication.
    pub(crate) connect_timeout_ms: u64,
    /// Bound of each request (an upload: of each part of it).
    pub(crate) request_timeout_ms: u64,
    /// First backoff delay of a retried request.
    pub(crate) min_delay_ms: u64,
    /// Largest backoff delay.
    pub(crate) max_delay_ms: u64,
    /// Tries of one operation, the first included.
    pub(crate) max_attempts: u32,
    /// No retry starts after this much time since the first try.
    pub(crate) max_elapsed_ms: u64,
}

impl SftpSettings {
    /// Bound of connecting and authenticating.
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Bound of each request.
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// With an `sftp://` destination: both files are given and readable,
    /// the key is not readable by others, and the bounds are sane.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key (and the path, never a
    /// file's content).
    pub(crate) fn validate(&self, destination: &DestinationUrl) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        let within = |ms: u64| (100..=3_600_000).contains(&ms);
        if !within(self.connect_timeout_ms) || !within(self.request_timeout_ms) {
            let key = if within(self.connect_timeout_ms) {
                "sftp.request_timeout_ms"
            } else {
                "sftp.connect_timeout_ms"
            };
            return Err(invalid(key, "must be between 100 and 3600000".to_owned()));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(invalid(
                "sftp.max_attempts",
                "must be between 1 and 100".to_owned(),
            ));
        }
        if self.min_delay_ms == 0
            || self.max_delay_ms < self.min_delay_ms
            || self.max_elapsed_ms > 86_400_000
        {
            return Err(invalid(
                "sftp.max_delay_ms",
                "delays must be positive, max not less than min, and sftp.max_elapsed_ms at most a day".to_owned(),
            ));
        }
        if !matches!(destination, DestinationUrl::Sftp { .. }) {
            return Ok(());
        }
        readable("sftp.private_key_file", &self.private_key_file, true)?;
        readable("sftp.known_hosts_file", &self.known_hosts_file, false)
    }
}

/// A given, readable file; a private key must not be readable by others.
fn readable(key: &'static str, path: &Path, private: bool) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { key, reason };
    if path.as_os_str().is_empty() {
        return Err(invalid(
            "is required with an sftp:// export.destination".to_owned(),
        ));
    }
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|err| invalid(format!("cannot read {shown}: {err}")))?;
    let mode = meta.permissions().mode() & 0o777;
    // Group read is allowed: a Kubernetes Secret mounted for `fsGroup` is
    // 0440.
    if private && mode & 0o037 != 0 {
        return Err(invalid(format!(
            "{shown} can be read or written by other users (mode {mode:04o}); make it 0400, 0440 or 0600"
        )));
    }
    std::fs::File::open(path).map_err(|err| invalid(format!("cannot read {shown}: {err}")))?;
    Ok(())
}

/// A secret that is not a URI: shown as `***` when set, empty when not.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretText(String);

impl SecretText {
    /// The value, `None` when empty. Never log this.
    pub(crate) fn expose(&self) -> Option<&str> {
        Some(self.0.as_str()).filter(|s| !s.is_empty())
    }

    fn shown(&self) -> &'static str {
        if self.0.is_empty() {
            ""
        } else {
            "***"
        }
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretText({})", self.shown())
    }
}

impl Serialize for SecretText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.shown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passphrase_never_prints() {
        let secret = SecretText("hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), "SecretText(***)");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"***\"");
        assert_eq!(secret.expose(), Some("hunter2"));
        assert_eq!(SecretText::default().expose(), None);
    }

    #[test]
    fn a_private_key_others_can_read_is_refused_naming_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not shown").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = readable("sftp.private_key_file", &key, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sftp.private_key_file") && err.contains("0644"),
            "{err}"
        );
        assert!(!err.contains("not shown"), "{err}");
        for fine in [0o400, 0o440, 0o600] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(fine)).unwrap();
            assert!(
                readable("sftp.private_key_file", &key, true).is_ok(),
                "{fine:o}"
            );
        }
        let missing = readable("sftp.known_hosts_file", Path::new(""), false).unwrap_err();
        assert!(missing.to_string().contains("required"), "{missing}");
    }
}
