//! Connection URIs that may carry secrets: shown with the password and
//! every sensitive option value replaced by `***`, and checked at load so a
//! URI that cannot be parsed is never echoed.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// Query options whose values are secrets (compared case-insensitively),
/// besides any option whose name contains "password", "secret" or "token".
const SENSITIVE_OPTIONS: [&str; 2] = ["authmechanismproperties", "sslpemkeypassword"];

/// A connection URI that may carry a password. `Debug`, `Display` and
/// `Serialize` show it redacted; only [`SecretUri::expose`] gives the real
/// value.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretUri(String);

impl SecretUri {
    /// Wraps a URI.
    pub fn new(uri: impl Into<String>) -> Self {
        Self(uri.into())
    }

    /// The real URI, for connecting. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the URI pins one host (`directConnection=true`): after a
    /// step-down the driver keeps talking to the demoted node.
    pub(crate) fn pins_one_host(&self) -> bool {
        split(&self.0)
            .and_then(|parts| parts.query)
            .is_some_and(|query| {
                query
                    .split('&')
                    .any(|pair| pair.eq_ignore_ascii_case("directConnection=true"))
            })
    }

    /// The URI with its password and sensitive option values as `***`.
    pub fn redacted(&self) -> String {
        redact_uri(&self.0)
    }

    /// `text` (say, a driver's error message) with every secret of this
    /// URI replaced by `***`, raw or percent-decoded.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut scrubbed = text.to_owned();
        for secret in secrets(&self.0) {
            let decoded = percent_decode(&secret);
            for form in [secret, decoded] {
                if !form.is_empty() {
                    scrubbed = scrubbed.replace(&form, "***");
                }
            }
        }
        scrubbed
    }
}

impl fmt::Debug for SecretUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUri({})", self.redacted())
    }
}

impl fmt::Display for SecretUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUri {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// The parts of a URI: scheme with `://`, user info, hosts and path, query.
struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    rest: &'a str,
    query: Option<&'a str>,
}

/// Splits a URI. A password that was not percent-encoded may itself hold
/// `@`, `/` or `?` (such a URI is refused at load, but is still never
/// shown), so the user info is found from the end.
fn split(uri: &str) -> Option<Parts<'_>> {
    let scheme_end = uri.find("://")? + 3;
    let after = &uri[scheme_end..];
    // The user info ends at the last `@` that a host list follows (an `@`
    // in an option value may hide the hosts too: shown too little, never
    // too much).
    let ats: Vec<usize> = after.match_indices('@').map(|(i, _)| i).collect();
    let at = ats
        .iter()
        .rev()
        .find(|&&at| host_list_follows(&after[at + 1..]))
        .or(ats.last())
        .copied();
    let (userinfo, hosts) = match at {
        Some(at) => (Some(&after[..at]), &after[at + 1..]),
        None => (None, after),
    };
    let (rest, query) = match hosts.find('?') {
        Some(q) => (&hosts[..q], Some(&hosts[q + 1..])),
        None => (hosts, None),
    };
    Some(Parts {
        scheme: &uri[..scheme_end],
        userinfo,
        rest,
        query,
    })
}

/// True when `text` starts with a plausible host list, up to the path or
/// the query.
fn host_list_follows(text: &str) -> bool {
    let hosts = text.split(['/', '?']).next().unwrap_or("");
    !hosts.is_empty()
        && hosts
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:,[]_%".contains(c))
}

fn sensitive(option: &str) -> bool {
    let name = option.to_ascii_lowercase();
    SENSITIVE_OPTIONS.contains(&name.as_str())
        || ["password", "secret", "token"]
            .iter()
            .any(|s| name.contains(s))
}

/// The secret values of a URI: the password and sensitive option values.
fn secrets(uri: &str) -> Vec<String> {
    let Some(parts) = split(uri) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    if let Some((_, password)) = parts.userinfo.and_then(|u| u.split_once(':')) {
        found.push(password.to_owned());
    }
    for pair in parts.query.unwrap_or("").split('&') {
        if let Some((name, value)) = pair.split_once('=') {
            if sensitive(name) {
                found.push(value.to_owned());
                // `KEY:value,KEY:value` (authMechanismProperties): each value too.
                let pairs = value.split(',').filter_map(|p| p.split_once(':'));
                found.extend(pairs.map(|(_, v)| v.to_owned()));
            }
        }
    }
    found
}

/// Replaces the password of `scheme://user:password@host...` and the values
/// of sensitive query options with `***`. The user name, hosts and other
/// options stay visible, because operators need them. Text without a
/// scheme is shown as `***`: it cannot be told apart from a secret.
pub(crate) fn redact_uri(uri: &str) -> String {
    let Some(parts) = split(uri) else {
        return "***".to_owned();
    };
    let mut shown = parts.scheme.to_owned();
    if let Some(userinfo) = parts.userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => shown.push_str(&format!("{user}:***@")),
            None => shown.push_str(&format!("{userinfo}@")),
        }
    }
    shown.push_str(parts.rest);
    if let Some(query) = parts.query {
        let options: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if sensitive(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&options.join("&"));
    }
    shown
}

/// The scheme of a URI and a note that the rest is hidden: how a URI that
/// cannot be parsed is reported.
pub(super) fn scheme_only(uri: &str) -> String {
    match uri.find("://") {
        Some(end)
            if uri[..end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            format!("{}://… (rest hidden)", &uri[..end])
        }
        _ => "(hidden)".to_owned(),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_with_any_characters_are_redacted() {
        for password in ["s3cr%40t", "pa?ss", "p@ss/w?rd#x", "a:b:c", "%3F%40"] {
            let uri = format!("mongodb://esr:{password}@db1:27017,db2:27017/?replicaSet=rs0");
            let shown = redact_uri(&uri);
            assert_eq!(
                shown, "mongodb://esr:***@db1:27017,db2:27017/?replicaSet=rs0",
                "{password}"
            );
            let amqp = format!("amqp://guest:{password}@h:5672/%2f");
            assert_eq!(
                redact_uri(&amqp),
                "amqp://guest:***@h:5672/%2f",
                "{password}"
            );
        }
    }

    #[test]
    fn sensitive_options_are_redacted_and_others_kept() {
        let uri = "mongodb://h/?tls=true&tlsCertificateKeyFilePassword=kf%21pw\
                   &authMechanismProperties=AWS_SESSION_TOKEN:tok123&appName=x";
        let shown = redact_uri(uri);
        assert_eq!(
            shown,
            "mongodb://h/?tls=true&tlsCertificateKeyFilePassword=***\
             &authMechanismProperties=***&appName=x"
        );
        let secret = SecretUri::new(uri);
        let message =
            secret.scrub("failed: bad value kf!pw and tok123 in AWS_SESSION_TOKEN:tok123");
        assert!(
            !message.contains("kf!pw") && !message.contains("tok123"),
            "{message}"
        );
    }

    #[test]
    fn a_uri_pinning_one_host_is_recognised() {
        assert!(SecretUri::new("mongodb://h/?directConnection=true").pins_one_host());
        assert!(SecretUri::new("mongodb://h/?appName=x&directconnection=TRUE").pins_one_host());
        assert!(!SecretUri::new("mongodb://h/?replicaSet=rs0").pins_one_host());
        assert!(!SecretUri::new("mongodb://h/?directConnection=false").pins_one_host());
    }

    #[test]
    fn uris_without_password_are_shown_unchanged_and_non_uris_hidden() {
        assert_eq!(redact_uri("mongodb://h:27017/"), "mongodb://h:27017/");
        assert_eq!(redact_uri("mongodb://user@h/"), "mongodb://user@h/");
        assert_eq!(redact_uri("not a uri with hunter2"), "***");
        // An `@` in an option value hides more than needed, never less.
        let shown = redact_uri("mongodb://u:pw@h/?authMechanismProperties=SERVICE_NAME:a@b");
        assert!(!shown.contains("pw"), "{shown}");
        assert_eq!(
            scheme_only("mongodb://u:pa?ss@h/"),
            "mongodb://… (rest hidden)"
        );
    }
}
