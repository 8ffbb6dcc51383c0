//! Where a published file is: a path on a host's folder, an object in a
//! bucket, or a path on an SFTP server. One typed value, recorded on the
//! run document, with no field that is empty for one of the kinds.

use serde::{Deserialize, Serialize};

use super::DestinationUrl;

/// Where a published file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Location {
    /// A file in a folder of the host that published it.
    Folder {
        /// The file's absolute path on that host.
        path: String,
    },
    /// An object in a bucket.
    Object {
        /// The destination, `s3://bucket/prefix`.
        destination: String,
        /// The object key.
        key: String,
        /// The object's ETag, when the store gives one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        etag: Option<String>,
        /// The object's version, on a versioned bucket.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// A file on an SFTP server.
    Server {
        /// The destination, `sftp://user@host:port/folder`.
        destination: String,
        /// The file's path on the server.
        path: String,
    },
}

impl Location {
    /// Where the file is, as one string: its path on the host, or its URL
    /// (`s3://bucket/key`, `sftp://user@host:port/folder/name`).
    pub fn address(&self) -> String {
        match self {
            Self::Folder { path } => path.clone(),
            Self::Object {
                destination, key, ..
            } => {
                let bucket = destination
                    .trim_start_matches("s3://")
                    .split('/')
                    .next()
                    .unwrap_or_default();
                format!("s3://{bucket}/{key}")
            }
            Self::Server { destination, path } => {
                let name = path.rsplit('/').next().unwrap_or(path);
                format!("{}/{name}", destination.trim_end_matches('/'))
            }
        }
    }

    /// The destination URL as configured; `None` for a folder.
    pub fn destination_url(&self) -> Option<&str> {
        match self {
            Self::Folder { .. } => None,
            Self::Object { destination, .. } | Self::Server { destination, .. } => {
                Some(destination)
            }
        }
    }

    /// The destination the file went to: its bucket or server, or the
    /// folder that holds its path.
    pub fn destination(&self) -> DestinationUrl {
        let parsed = self
            .destination_url()
            .and_then(|url| DestinationUrl::parse(url).ok());
        parsed.unwrap_or_else(|| {
            let path = std::path::Path::new(self.folder_path().unwrap_or_default());
            DestinationUrl::Folder(path.parent().map(std::path::Path::to_path_buf))
        })
    }

    fn folder_path(&self) -> Option<&str> {
        match self {
            Self::Folder { path } => Some(path),
            _ => None,
        }
    }

    /// The location a run document written before locations were typed
    /// records: the full path or URL in `path`, and, for a bucket or a
    /// server, the destination, the key and the object's ETag and version
    /// beside it.
    pub fn from_flat(
        path: String,
        destination: Option<String>,
        key: Option<String>,
        etag: Option<String>,
        version: Option<String>,
    ) -> Self {
        match destination {
            None => Self::Folder { path },
            Some(destination) if destination.starts_with("sftp://") => Self::Server {
                destination,
                path: key.unwrap_or(path),
            },
            Some(destination) => Self::Object {
                key: key.unwrap_or_else(|| object_key_of(&path)),
                destination,
                etag,
                version,
            },
        }
    }
}

/// The key of `s3://bucket/key`.
fn object_key_of(url: &str) -> String {
    let rest = url.trim_start_matches("s3://");
    rest.split_once('/')
        .map_or_else(String::new, |(_, key)| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gives_its_address_and_destination() {
        let folder = Location::Folder {
            path: "/exports/DE_MER_APP_20261203_00001.DAT".to_owned(),
        };
        assert_eq!(folder.address(), "/exports/DE_MER_APP_20261203_00001.DAT");
        assert_eq!(
            folder.destination(),
            DestinationUrl::Folder(Some("/exports".into()))
        );
        let object = Location::Object {
            destination: "s3://esr/app".to_owned(),
            key: "app/DE_MER_APP_20261203_00001.DAT".to_owned(),
            etag: Some("\"e\"".to_owned()),
            version: None,
        };
        assert_eq!(
            object.address(),
            "s3://esr/app/DE_MER_APP_20261203_00001.DAT"
        );
        assert_eq!(object.destination_url(), Some("s3://esr/app"));
        let server = Location::Server {
            destination: "sftp://esr@host:22/in".to_owned(),
            path: "/in/DE_MER_APP_20261203_00001.DAT".to_owned(),
        };
        assert_eq!(
            server.address(),
            "sftp://esr@host:22/in/DE_MER_APP_20261203_00001.DAT"
        );
    }

    #[test]
    fn a_flat_record_reads_as_its_kind() {
        let object = Location::from_flat(
            "s3://esr/app/F.DAT".to_owned(),
            Some("s3://esr/app".to_owned()),
            None,
            None,
            Some("v1".to_owned()),
        );
        assert_eq!(
            object,
            Location::Object {
                destination: "s3://esr/app".to_owned(),
                key: "app/F.DAT".to_owned(),
                etag: None,
                version: Some("v1".to_owned()),
            }
        );
        let server = Location::from_flat(
            "sftp://esr@h:22/in/F.DAT".to_owned(),
            Some("sftp://esr@h:22/in".to_owned()),
            Some("/in/F.DAT".to_owned()),
            None,
            None,
        );
        assert_eq!(server.address(), "sftp://esr@h:22/in/F.DAT");
        let folder = Location::from_flat("/x/F.DAT".to_owned(), None, None, None, None);
        assert_eq!(
            folder,
            Location::Folder {
                path: "/x/F.DAT".to_owned()
            }
        );
    }
}
