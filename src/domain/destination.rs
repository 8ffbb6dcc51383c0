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
            return Err("must be empty, file:///ABS/PATH or s3://BUCKET/PREFIX".to_owned());
        };
        match scheme {
            "file" => parse_file(rest),
            "s3" => parse_s3(rest),
            other => Err(format!(
                "the scheme {other}:// is not supported (supported: file://, s3://)"
            )),
        }
    }

    /// The scheme, for metric labels: `file` or `s3`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Folder(_) => "file",
            Self::S3 { .. } => "s3",
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
    Ok(DestinationUrl::S3 {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

impl fmt::Display for DestinationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Folder(None) => Ok(()),
            Self::Folder(Some(path)) => write!(f, "file://{}", path.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
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
    fn credentials_other_schemes_and_bad_names_are_refused_without_echo() {
        let err = DestinationUrl::parse("s3://AKIA:secret@bucket/p").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert!(DestinationUrl::parse("az://container/p")
            .unwrap_err()
            .contains("az://"));
        assert!(DestinationUrl::parse("s3://Bad_Bucket/p").is_err());
        assert!(DestinationUrl::parse("s3://bucket/a/../b").is_err());
        assert!(DestinationUrl::parse("s3://bucket/p?x=1").is_err());
        assert!(DestinationUrl::parse("/just/a/path").is_err());
    }
}
