//! An SFTP server (`russh` and `russh-sftp`, on tokio): every file is
//! uploaded to a temporary name in [`TEMP_DIR`], made durable
//! (`fsync@openssh.com` where offered), then renamed to its name with
//! plain `SSH_FXP_RENAME`, which OpenSSH refuses when the name exists
//! (never `posix-rename@openssh.com`, which would overwrite it). Names are
//! looked up by size and SHA-256 read back.

mod connect;
mod failure;
mod known_hosts;
mod ops;
mod probe;
mod rename;

use std::fmt;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::error::DestinationError;
use super::retry::RequestPolicy;
use crate::config::SftpSettings;
use crate::domain::DestinationUrl;
use connect::Connection;

/// The folder under the destination's path that holds temporary and probe
/// files: starting with a dot, so a collector taking `DE_*_APP_*.DAT`
/// ignores it, and listed alone when temporaries are looked for.
pub(super) const TEMP_DIR: &str = ".esr-exporter-tmp";

/// Who and where: `USER@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) user: String,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    /// The host as `known_hosts` names it: `host`, or `[host]:port`.
    pub(crate) fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.known_hosts_name())
    }
}

/// A folder on an SFTP server, with the request policy of `[sftp]`. One
/// connection is kept and shared; one that fails is dropped and the next
/// request connects again.
#[derive(Clone)]
pub struct Sftp {
    url: String,
    dir: String,
    target: Target,
    settings: SftpSettings,
    policy: RequestPolicy,
    connection: Arc<Mutex<Option<Arc<Connection>>>>,
}

impl fmt::Debug for Sftp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sftp")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Sftp {
    /// A client for `sftp://user@host:port/path`. Nothing is sent until
    /// the first operation.
    pub fn open(url: &DestinationUrl, settings: &SftpSettings) -> Option<Self> {
        let DestinationUrl::Sftp {
            user,
            host,
            port,
            path,
        } = url
        else {
            return None;
        };
        Some(Self {
            url: url.to_string(),
            dir: path.clone(),
            target: Target {
                user: user.clone(),
                host: host.clone(),
                port: *port,
            },
            settings: settings.clone(),
            policy: RequestPolicy::from_sftp(settings),
            connection: Arc::new(Mutex::new(None)),
        })
    }

    /// `sftp://user@host:port/path`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The absolute path of a file name on the server.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }

    /// The open connection, connecting first when there is none.
    async fn connection(&self) -> Result<Arc<Connection>, DestinationError> {
        let mut slot = self.connection.lock().await;
        if let Some(open) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(open.clone());
        }
        *slot = None;
        let open = Arc::new(Connection::open(&self.url, &self.target, &self.settings).await?);
        *slot = Some(open.clone());
        Ok(open)
    }

    /// Drops `failed` (if it is still the kept one): the next request
    /// connects again.
    async fn forget(&self, failed: &Arc<Connection>) {
        let mut slot = self.connection.lock().await;
        if slot.as_ref().is_some_and(|kept| Arc::ptr_eq(kept, failed)) {
            *slot = None;
        }
    }
}
