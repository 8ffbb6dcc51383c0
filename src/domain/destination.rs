//! `export.destination`: where published files go, parsed once at load.

use std::fmt;
use std::path::PathBuf;

/// Where a run's staged file is published (contract: "Destinations").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationUrl {
    /// The local folder `export.output_dir` (empty setting) or the folder
    /// a `file:///ABS/PATH` names.
    Folder(Option<PathBuf>),
    /// Objects `PREFIX/<file>` in an S3-compatible bucket.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
    },
    /// Files in a folder of an SFTP server.
    Sftp {
        /// The user to authenticate as (by key only).
        user: String,
        /// Host name or address (an IPv6 address without brackets).
        host: String,
        /// Port, 22 unless given.
        port: u16,
        /// Absolute folder on the server, without a trailing `/`.
        path: String,
    },
}

impl DestinationUrl {
    /// Parses the setting. Nothing but a bucket and a key prefix is
    /// accepted in an `s3://` URL: credentials come from the AWS
    /// environment, never from the URL (it is printed and recorded).
    ///
    /// # Errors
    /// A message saying what is wrong, without echoing the value's
    /// user-info part.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(Self::Folder(None));
        }
        let Some((scheme, rest)) = value.split_once("://") else {
            return Err(
                "must be empty, file:///ABS/PATH, s3://BUCKET/PREFIX or sftp://USER@HOST:PORT/ABS/PATH"
                    .to_owned(),
            );
        };
        match scheme {
            "file" => parse_file(rest),
            "s3" => parse_s3(rest),
            "sftp" => parse_sftp(rest),
            other => Err(format!(
                "the scheme {other}:// is not supported (supported: file://, s3://, sftp://)"
            )),
        }
    }

    /// The scheme, for metric labels: `file`, `s3` or `sftp`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Folder(_) => "file",
            Self::S3 { .. } => "s3",
            Self::Sftp { .. } => "sftp",
        }
    }

    /// The object key of a file name under the prefix.
    pub fn key_of(prefix: &str, name: &str) -> String {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        }
    }
}

fn parse_file(rest: &str) -> Result<DestinationUrl, String> {
    if !rest.starts_with('/') {
        return Err("a file:// destination must be an absolute path: file:///ABS/PATH".to_owned());
    }
    Ok(DestinationUrl::Folder(Some(PathBuf::from(rest))))
}

fn parse_s3(rest: &str) -> Result<DestinationUrl, String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains('@') || bucket.contains(':') {
        return Err(
            "an s3:// destination takes no user, password or port: credentials come from \
             the AWS environment (AWS_ACCESS_KEY_ID, web identity, instance metadata)"
                .to_owned(),
        );
    }
    if rest.contains('?') || rest.contains('#') {
        return Err("an s3:// destination takes no query or fragment".to_owned());
    }
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid_bucket {
        return Err(
            "the bucket name must be 3 to 63 lowercase letters, digits, dots or hyphens".to_owned(),
        );
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part == "." || part == "..") {
        return Err("the key prefix may not contain . or .. segments".to_owned());
    }
    // The store's paths drop empty segments: `app//x` would be recorded as
    // one key and written under another.
    if prefix.contains("//") {
        return Err("the key prefix may not contain an empty segment (//)".to_owned());
    }
    Ok(DestinationUrl::S3 {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// `USER@HOST:PORT/ABS/PATH`: key authentication only, so a password in
/// the URL is refused (without echoing it).
fn parse_sftp(rest: &str) -> Result<DestinationUrl, String> {
    const FORM: &str = "an sftp:// destination is sftp://USER@HOST:PORT/ABS/PATH";
    if rest.contains('?') || rest.contains('#') {
        return Err("an sftp:// destination takes no query or fragment".to_owned());
    }
    let (authority, path) = rest
        .find('/')
        .map_or((rest, ""), |at| (&rest[..at], &rest[at..]));
    let Some((user, host_port)) = authority.rsplit_once('@') else {
        return Err(format!("{FORM}: the user is missing"));
    };
    if user.contains(':') {
        return Err(
            "an sftp:// destination takes no password: authentication is by key              (sftp.private_key_file)"
                .to_owned(),
        );
    }
    let (host, port) =
        split_host_port(host_port).ok_or_else(|| format!("{FORM}: bad host or port"))?;
    let path = path.trim_end_matches('/');
    if user.is_empty() || host.is_empty() || path.is_empty() {
        return Err(format!(
            "{FORM}: the user, host and absolute path are required"
        ));
    }
    if path.split('/').any(|part| part == "." || part == "..") {
        return Err("the path may not contain . or .. segments".to_owned());
    }
    Ok(DestinationUrl::Sftp {
        user: user.to_owned(),
        host,
        port,
        path: path.to_owned(),
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; 22 when no port is given.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => 22,
        Some(port) => port.parse().ok().filter(|p| *p > 0)?,
    };
    Some((host.to_owned(), port))
}

impl fmt::Display for DestinationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Folder(None) => Ok(()),
            Self::Folder(Some(path)) => write!(f, "file://{}", path.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Self::Sftp {
                user,
                host,
                port,
                path,
            } if host.contains(':') => write!(f, "sftp://{user}@[{host}]:{port}{path}"),
            Self::Sftp {
                user,
                host,
                port,
                path,
            } => write!(f, "sftp://{user}@{host}:{port}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_file_urls_are_folders() {
        assert_eq!(DestinationUrl::parse(""), Ok(DestinationUrl::Folder(None)));
        assert_eq!(
            DestinationUrl::parse("file:///srv/exports"),
            Ok(DestinationUrl::Folder(Some(PathBuf::from("/srv/exports"))))
        );
        assert!(DestinationUrl::parse("file://relative/path").is_err());
    }

    #[test]
    fn s3_urls_give_bucket_and_trimmed_prefix() {
        let url = DestinationUrl::parse("s3://esr-exports/app/out/").unwrap();
        assert_eq!(
            url,
            DestinationUrl::S3 {
                bucket: "esr-exports".into(),
                prefix: "app/out".into()
            }
        );
        assert_eq!(url.to_string(), "s3://esr-exports/app/out");
        assert_eq!(
            DestinationUrl::parse("s3://esr-exports")
                .unwrap()
                .to_string(),
            "s3://esr-exports"
        );
        assert_eq!(DestinationUrl::key_of("app", "F.DAT"), "app/F.DAT");
        assert_eq!(DestinationUrl::key_of("", "F.DAT"), "F.DAT");
    }

    #[test]
    fn sftp_urls_give_user_host_port_and_path() {
        let url = DestinationUrl::parse("sftp://esr@files.example:2222/srv/esr/in/").unwrap();
        assert_eq!(
            url,
            DestinationUrl::Sftp {
                user: "esr".into(),
                host: "files.example".into(),
                port: 2222,
                path: "/srv/esr/in".into()
            }
        );
        assert_eq!(url.to_string(), "sftp://esr@files.example:2222/srv/esr/in");
        let v6 = DestinationUrl::parse("sftp://esr@[::1]/in").unwrap();
        assert_eq!(v6.to_string(), "sftp://esr@[::1]:22/in");
        assert_eq!(DestinationUrl::parse(&v6.to_string()), Ok(v6));
        assert_eq!(url.scheme(), "sftp");
    }

    #[test]
    fn sftp_urls_without_user_path_or_with_a_password_are_refused() {
        let err = DestinationUrl::parse("sftp://esr:hunter2@host/in").unwrap_err();
        assert!(!err.contains("hunter2") && err.contains("key"), "{err}");
        assert!(DestinationUrl::parse("sftp://host/in").is_err());
        assert!(DestinationUrl::parse("sftp://esr@host").is_err());
        assert!(DestinationUrl::parse("sftp://esr@host:0/in").is_err());
        assert!(DestinationUrl::parse("sftp://esr@host:x/in").is_err());
        assert!(DestinationUrl::parse("sftp://esr@host/a/../b").is_err());
    }

    #[test]
    fn credentials_other_schemes_and_bad_names_are_refused_without_echo() {
        let err = DestinationUrl::parse("s3://AKIA:secret@bucket/p").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert!(DestinationUrl::parse("az://container/p")
            .unwrap_err()
            .contains("az://"));
        assert!(DestinationUrl::parse("s3://Bad_Bucket/p").is_err());
        assert!(DestinationUrl::parse("s3://bucket/a/../b").is_err());
        let doubled = DestinationUrl::parse("s3://bucket/app//x").unwrap_err();
        assert!(doubled.contains("empty segment"), "{doubled}");
        assert!(DestinationUrl::parse("s3://bucket/p?x=1").is_err());
        assert!(DestinationUrl::parse("/just/a/path").is_err());
    }
}
