//! `sftp.known_hosts_file` read as OpenSSH reads it, each line parsed by
//! `ssh-key`: the lines that name this host (names, `*` and `?` patterns,
//! `!` negations, `[host]:port`, hashed `|1|` names); several keys per
//! host; a `@revoked` key refused wherever else it is listed; and the host
//! key algorithms to offer, those of the keys pinned for the host, so a
//! server that also has another kind of key shows the pinned one.
//! `@cert-authority` lines are read and named in the refusal: host
//! certificates are not accepted, a host's own key must be pinned.

use std::path::Path;

use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{Algorithm, HashAlg, PublicKey};

/// What the file says of one host.
#[derive(Debug, Default)]
pub(super) struct Pinned {
    /// Keys listed for the host, with their line.
    keys: Vec<(usize, PublicKey)>,
    /// `@revoked` keys (for any host), with their line.
    revoked: Vec<(usize, PublicKey)>,
    /// `@cert-authority` lines naming the host.
    authorities: Vec<usize>,
}

/// What the file says of the key a server offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Listed for the host, and not revoked.
    Known,
    /// Not listed for the host.
    Unknown,
    /// The host is listed with other keys of the same type.
    Changed {
        /// The first such line.
        line: usize,
    },
    /// Listed as `@revoked`.
    Revoked {
        /// The `@revoked` line.
        line: usize,
    },
}

impl Pinned {
    /// The lines of `path` that name `host` on `port`.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub(super) fn read(path: &Path, host: &str, port: u16) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        Ok(Self::parse(&text, host, port))
    }

    /// The lines of `text` that name `host` on `port`; a line that does
    /// not parse names no host (as OpenSSH skips it).
    pub(super) fn parse(text: &str, host: &str, port: u16) -> Self {
        let name = match port {
            22 => host.to_owned(),
            _ => format!("[{host}]:{port}"),
        };
        let mut pinned = Self::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let Ok(entry) = line.parse::<Entry>() else {
                continue;
            };
            pinned.add(index + 1, &entry, &name);
        }
        pinned
    }

    fn add(&mut self, line: usize, entry: &Entry, name: &str) {
        let key = entry.public_key().clone();
        match entry.marker() {
            // A revoked key is refused for every host.
            Some(Marker::Revoked) => self.revoked.push((line, key)),
            Some(Marker::CertAuthority) if names(entry.host_patterns(), name) => {
                self.authorities.push(line);
            }
            None if names(entry.host_patterns(), name) => self.keys.push((line, key)),
            _ => {}
        }
    }

    /// What the file says of `key`.
    pub(super) fn verdict(&self, key: &PublicKey) -> Verdict {
        let same = |listed: &PublicKey| listed.key_data() == key.key_data();
        if let Some((line, _)) = self.revoked.iter().find(|(_, k)| same(k)) {
            return Verdict::Revoked { line: *line };
        }
        if self.keys.iter().any(|(_, k)| same(k)) {
            return Verdict::Known;
        }
        let kind = key.algorithm();
        match self.keys.iter().find(|(_, k)| k.algorithm() == kind) {
            Some((line, _)) => Verdict::Changed { line: *line },
            None => Verdict::Unknown,
        }
    }

    /// The host key algorithms to offer: those of the pinned keys, in the
    /// client's order of preference; `None` when nothing is pinned (the
    /// server's key is then refused as unknown, with its fingerprint).
    pub(super) fn algorithms(&self, preferred: &[Algorithm]) -> Option<Vec<Algorithm>> {
        // Revoked ones too: the server then shows the key the file
        // revokes, and the refusal says so.
        let pinned: Vec<Algorithm> = self.keys.iter().map(|(_, key)| key.algorithm()).collect();
        let offered: Vec<Algorithm> = preferred
            .iter()
            .filter(|algorithm| pinned.iter().any(|p| same_kind(p, algorithm)))
            .cloned()
            .collect();
        (!offered.is_empty()).then_some(offered)
    }

    /// What to add to a refusal: the `@cert-authority` lines for the host,
    /// whose certificates are not accepted.
    pub(super) fn authorities_note(&self) -> Option<String> {
        let lines: Vec<String> = self.authorities.iter().map(usize::to_string).collect();
        (!lines.is_empty()).then(|| {
            format!(
                "; sftp.known_hosts_file names a @cert-authority for it (line {}), but host \
                 certificates are not accepted: pin the host's own key",
                lines.join(", ")
            )
        })
    }
}

/// A key's algorithm and an algorithm to offer are of one kind: RSA keys
/// are offered as `rsa-sha2-512` and `rsa-sha2-256` (and `ssh-rsa`).
fn same_kind(key: &Algorithm, offered: &Algorithm) -> bool {
    match (key, offered) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        _ => key == offered,
    }
}

/// True when the host patterns name `name` (`host` or `[host]:port`): a
/// hashed name equal to it, or a pattern that matches it and no negated
/// pattern that does.
fn names(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => hashed(salt, name) == Some(*hash),
        HostPatterns::Patterns(patterns) => {
            let matching = |negated: bool| {
                patterns
                    .iter()
                    .any(|pattern| match pattern.strip_prefix('!') {
                        Some(pattern) => negated && glob(pattern, name),
                        None => !negated && glob(pattern, name),
                    })
            };
            matching(false) && !matching(true)
        }
    }
}

/// HMAC-SHA1 of `name` keyed by `salt`, as OpenSSH hashes known host names.
fn hashed(salt: &[u8], name: &str) -> Option<[u8; 20]> {
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt).ok()?;
    mac.update(name.as_bytes());
    mac.finalize().into_bytes().as_slice().try_into().ok()
}

/// OpenSSH's pattern match: `*` any run of characters, `?` any one,
/// letters compared without case.
fn glob(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) = (
        pattern.to_lowercase().chars().collect(),
        name.to_lowercase().chars().collect(),
    );
    let (mut p, mut n, mut star, mut resume) = (0, 0, None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            (p, n) = (p + 1, n + 1);
        } else if p < pattern.len() && pattern[p] == '*' {
            (star, resume, p) = (Some(p), n, p + 1);
        } else if let Some(at) = star {
            (p, resume) = (at + 1, resume + 1);
            n = resume;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// A key's SHA-256 fingerprint, as `ssh-keygen -l` shows it.
pub(super) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
#[path = "known_hosts_tests.rs"]
mod tests;
