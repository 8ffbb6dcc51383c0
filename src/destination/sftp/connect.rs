//! One SSH connection to the server with its SFTP session: the host key
//! checked against `sftp.known_hosts_file` before anything is sent, then
//! key authentication, then the `sftp` subsystem. Every step is bounded by
//! `sftp.connect_timeout_ms`.

use std::sync::{Arc, Mutex};

use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;

use super::super::error::{DestinationError, FailureKind};
use super::known_hosts::{fingerprint, Pinned, Verdict};
use super::Target;
use crate::config::SftpSettings;

/// What the host key check found, for the error that follows a refusal.
#[derive(Debug, Clone)]
enum HostKey {
    /// What `sftp.known_hosts_file` says of the offered key.
    Checked {
        verdict: Verdict,
        fingerprint: String,
    },
    /// The server offered a certificate.
    Certificate,
}

/// The client side of the handshake: checks the server's host key.
struct HostCheck {
    pinned: Arc<Pinned>,
    verdict: Arc<Mutex<Option<HostKey>>>,
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let found = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => HostKey::Checked {
                verdict: self.pinned.verdict(key),
                fingerprint: fingerprint(key),
            },
            _ => HostKey::Certificate,
        };
        let known = matches!(
            &found,
            HostKey::Checked {
                verdict: Verdict::Known,
                ..
            }
        );
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(found);
        }
        Ok(known)
    }
}

/// An open connection and its SFTP session.
pub(super) struct Connection {
    handle: Handle<HostCheck>,
    pub(super) sftp: SftpSession,
}

impl Connection {
    /// True once the SSH connection is gone.
    pub(super) fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Connects, checks the host key, authenticates and opens SFTP, all
    /// within `sftp.connect_timeout_ms`.
    ///
    /// # Errors
    /// Timeout, refused connection (transient); unknown or changed host
    /// key, authentication refused, no SFTP subsystem (permanent).
    pub(super) async fn open(
        url: &str,
        target: &Target,
        settings: &SftpSettings,
    ) -> Result<Self, DestinationError> {
        let bound = settings.connect_timeout();
        match tokio::time::timeout(bound, Self::open_unbounded(url, target, settings)).await {
            Ok(result) => result,
            Err(_) => Err(DestinationError::new(
                FailureKind::Timeout,
                url,
                "connect",
                &target.to_string(),
                format!(
                    "no SSH handshake within {} ms (sftp.connect_timeout_ms); the attempt is retried later",
                    bound.as_millis()
                ),
            )),
        }
    }

    async fn open_unbounded(
        url: &str,
        target: &Target,
        settings: &SftpSettings,
    ) -> Result<Self, DestinationError> {
        let fail = |kind, detail: String| {
            DestinationError::new(kind, url, "connect", &target.to_string(), detail)
        };
        let key = russh::keys::load_secret_key(
            &settings.private_key_file,
            settings.private_key_passphrase.expose(),
        )
        .map_err(|err| fail(FailureKind::Permanent, key_not_loaded(settings, &err)))?;
        let pinned = Pinned::read(&settings.known_hosts_file, &target.host, target.port)
            .map(Arc::new)
            .map_err(|reason| fail(FailureKind::Permanent, reason))?;
        let verdict = Arc::new(Mutex::new(None));
        let check = HostCheck {
            pinned: pinned.clone(),
            verdict: verdict.clone(),
        };
        let config = Arc::new(client_config(settings, &pinned));
        let connected = client::connect(config, (target.host.as_str(), target.port), check).await;
        let mut handle = match connected {
            Ok(handle) => handle,
            Err(err) => return Err(refused(&fail, target, &pinned, &verdict, &err)),
        };
        authenticate(&mut handle, target, key)
            .await
            .map_err(|(kind, detail)| fail(kind, detail))?;
        let sftp = open_sftp(&handle, settings)
            .await
            .map_err(|(kind, detail)| fail(kind, detail))?;
        Ok(Self { handle, sftp })
    }
}

/// The SSH client's settings: bounded, kept alive, and offering only the
/// host key algorithms of the keys pinned for the host.
fn client_config(settings: &SftpSettings, pinned: &Pinned) -> client::Config {
    let mut preferred = russh::Preferred::default();
    if let Some(algorithms) = pinned.algorithms(&preferred.key) {
        preferred.key = algorithms.into();
    }
    client::Config {
        inactivity_timeout: Some(settings.request_timeout() * 4),
        keepalive_interval: Some(settings.request_timeout() / 2),
        keepalive_max: 2,
        nodelay: true,
        preferred,
        ..client::Config::default()
    }
}

/// Why the connection did not come up: a host key refused (permanent, with
/// its fingerprint), or the network (transient).
fn refused(
    fail: &impl Fn(FailureKind, String) -> DestinationError,
    target: &Target,
    pinned: &Pinned,
    verdict: &Mutex<Option<HostKey>>,
    err: &russh::Error,
) -> DestinationError {
    let verdict = verdict.lock().ok().and_then(|v| v.clone());
    let host = target.known_hosts_name();
    let authorities = pinned.authorities_note().unwrap_or_default();
    let detail = match verdict {
        Some(HostKey::Checked { verdict: Verdict::Unknown, fingerprint }) => format!("the host key of {host} ({fingerprint}) is not in sftp.known_hosts_file: refusing to connect, nothing is sent (add the server's key after checking its fingerprint){authorities}"),
        Some(HostKey::Checked { verdict: Verdict::Changed { line }, fingerprint }) => format!("the host key of {host} CHANGED: the server offers {fingerprint}, sftp.known_hosts_file line {line} lists another; refusing to connect, nothing is sent"),
        Some(HostKey::Checked { verdict: Verdict::Revoked { line }, fingerprint }) => format!("the host key of {host} ({fingerprint}) is REVOKED in sftp.known_hosts_file line {line}: refusing to connect, nothing is sent"),
        Some(HostKey::Certificate) => format!("the host key of {host} was refused: the server offered a host certificate; only keys listed in sftp.known_hosts_file are accepted{authorities}"),
        Some(HostKey::Checked { verdict: Verdict::Known, .. }) | None => {
            return fail(FailureKind::Transient, format!("cannot connect: {err}"))
        }
    };
    fail(FailureKind::Permanent, detail)
}

/// Key authentication as the URL's user. An RSA key signs with the best
/// hash the server takes.
async fn authenticate(
    handle: &mut Handle<HostCheck>,
    target: &Target,
    key: russh::keys::PrivateKey,
) -> Result<(), (FailureKind, String)> {
    let transient = |err: russh::Error| {
        (
            FailureKind::Transient,
            format!("connection lost while authenticating: {err}"),
        )
    };
    let hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(transient)?
        .flatten();
    let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
    let result = handle
        .authenticate_publickey(target.user.clone(), key)
        .await
        .map_err(transient)?;
    if result.success() {
        return Ok(());
    }
    // A server killed or restarting during the authentication ends it as
    // a failure too: only an answer on a connection still open is a
    // refusal.
    if handle.is_closed() {
        return Err((
            FailureKind::Transient,
            "connection lost while authenticating (the server closed it)".to_owned(),
        ));
    }
    Err((
        FailureKind::Permanent,
        format!(
            "the server refused key authentication as {} (is the public key of sftp.private_key_file in the user's authorized_keys?)",
            target.user
        ),
    ))
}

/// The `sftp` subsystem on a new channel, its requests bounded.
async fn open_sftp(
    handle: &Handle<HostCheck>,
    settings: &SftpSettings,
) -> Result<SftpSession, (FailureKind, String)> {
    let transient = |err: russh::Error| {
        (
            FailureKind::Transient,
            format!("cannot open the SFTP channel: {err}"),
        )
    };
    let channel = handle.channel_open_session().await.map_err(transient)?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(transient)?;
    // A server without an SFTP subsystem and one that went away during the
    // session's start (a restart, sshd killed) end it alike, the channel
    // dropped: transient, so a restarting server is waited for, and a
    // missing subsystem keeps failing, said at WARN and then ERROR.
    let sftp = SftpSession::new(channel.into_stream())
        .await
        .map_err(|err| {
            (
                FailureKind::Transient,
                format!("the SFTP session did not start (the server offers no SFTP subsystem, or the connection dropped): {err}"),
            )
        })?;
    // Our own bound (each try's, naming its setting) fires first; the
    // session's is a backstop for a request no try waits on.
    sftp.set_timeout(settings.request_timeout().as_secs() + 2);
    Ok(sftp)
}

/// Why the private key could not be loaded, naming the setting to fix: an
/// encrypted key without a passphrase, or one the passphrase given does
/// not open (which the key library reports only as a cryptographic error).
fn key_not_loaded(settings: &SftpSettings, err: &russh::keys::Error) -> String {
    let file = settings.private_key_file.display();
    let hint = match (err, settings.private_key_passphrase.expose().is_some()) {
        (russh::keys::Error::KeyIsEncrypted, false) => {
            "; the key is encrypted: give its passphrase in sftp.private_key_passphrase \
             (or sftp.private_key_passphrase_file)"
        }
        (_, true) => "; is sftp.private_key_passphrase the passphrase of this key?",
        (_, false) => "",
    };
    format!("cannot load the private key {file} (sftp.private_key_file): {err}{hint}")
}
