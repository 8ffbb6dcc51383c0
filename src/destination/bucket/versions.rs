//! A versioned bucket's history of one key (`ListObjectVersions`, which
//! the `object_store` crate does not offer: one request signed with its
//! SigV4 signer). A delete marker as the newest version of a key, with an
//! object version before it, proves the name was created and then taken.

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::HttpRequestBody;
use serde::Deserialize;

use super::Bucket;
use crate::destination::error::{DestinationError, FailureKind};
use crate::destination::Found;

/// Where a bucket's requests go: what `ListObjectVersions` needs.
#[derive(Debug, Clone)]
pub(super) struct VersionsClient {
    /// `https://s3.REGION.amazonaws.com/BUCKET`, the endpoint and bucket,
    /// or the bucket's virtual host, as the store's client addresses it.
    pub bucket_endpoint: String,
    /// The signing region.
    pub region: String,
    http: reqwest::Client,
}

impl VersionsClient {
    /// A client for the bucket at `bucket_endpoint`.
    pub(super) fn new(bucket_endpoint: String, region: String) -> Self {
        Self {
            bucket_endpoint,
            region,
            http: reqwest::Client::new(),
        }
    }

    /// The raw `ListObjectVersions` reply for keys starting with `key`.
    pub(super) async fn list(
        &self,
        store: &AmazonS3,
        signs: bool,
        key: &str,
    ) -> Result<Bytes, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/", self.bucket_endpoint.trim_end_matches('/')),
            &[("prefix", key), ("versions", "")],
        )
        .map_err(|err| err.to_string())?;
        let mut request = http::Request::get(url.as_str())
            .body(HttpRequestBody::from(Bytes::new()))
            .map_err(|err| err.to_string())?;
        if signs {
            let credential = store
                .credentials()
                .get_credential()
                .await
                .map_err(|err| err.to_string())?;
            AwsAuthorizer::new(&credential, "s3", &self.region)
                .try_authorize(&mut request, None)
                .map_err(|err| err.to_string())?;
        }
        let reply = self
            .http
            .get(url)
            .headers(request.headers().clone())
            .send()
            .await
            .map_err(|err| crate::error_chain::Chain(&err).to_string())?;
        let status = reply.status();
        let body = reply.bytes().await.map_err(|err| err.to_string())?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            // The store answered: its status says whether to try again.
            return Err(format!("{ANSWERED}{}: {}", status.as_u16(), text.trim()));
        }
        Ok(body)
    }
}

impl Bucket {
    /// The version of `name` a delete marker hides, when the newest
    /// version under the name is one (a versioned bucket: the name was
    /// created and then taken); `None` otherwise, or when the versions
    /// cannot be listed (said at WARN).
    pub async fn taken(&self, name: &str) -> Option<Found> {
        let key = self.key(name);
        let signs = self.credentials.signs();
        let listed = self
            .request("list versions", name, self.policy.timeout, || async {
                let reply = self.versions.list(&self.store, signs, &key).await;
                let reply = reply.map_err(|err| failed(&self.url, &key, err))?;
                deleted_version(&reply, &key).map_err(|err| failed(&self.url, &key, err))
            })
            .await;
        listed.unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cannot read the name's versions; a delete marker cannot settle the doubt");
            None
        })
    }
}

/// Where the store's client sends a bucket's requests, as the crate
/// addresses them (an endpoint, path or virtual-hosted style, or AWS's).
pub(super) fn client_of(builder: &AmazonS3Builder, bucket: &str) -> VersionsClient {
    let value = |key| builder.get_config_value(&key);
    let region = value(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".to_owned());
    let virtual_hosted = value(AmazonS3ConfigKey::VirtualHostedStyleRequest)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = match (value(AmazonS3ConfigKey::Endpoint), virtual_hosted) {
        (Some(endpoint), true) => endpoint,
        (Some(endpoint), false) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
        (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
    };
    VersionsClient::new(endpoint, region)
}

/// The versions and delete markers of a `ListObjectVersions` reply.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListVersionsResult {
    #[serde(default, rename = "Version")]
    versions: Vec<Entry>,
    #[serde(default, rename = "DeleteMarker")]
    delete_markers: Vec<Entry>,
}

/// One version or delete marker.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    #[serde(default)]
    version_id: Option<String>,
    #[serde(default)]
    is_latest: bool,
    #[serde(default)]
    size: u64,
    #[serde(default, rename = "ETag")]
    etag: Option<String>,
}

/// The version a delete marker hides, when the newest version of `key`
/// is a delete marker with an object version before it.
///
/// # Errors
/// A reply that is not a version listing.
pub(super) fn deleted_version(reply: &[u8], key: &str) -> Result<Option<Found>, String> {
    let text = std::str::from_utf8(reply).map_err(|err| err.to_string())?;
    let listing: ListVersionsResult =
        quick_xml::de::from_str(text).map_err(|err| format!("not a version listing: {err}"))?;
    let deleted = listing
        .delete_markers
        .iter()
        .any(|marker| marker.key == key && marker.is_latest);
    if !deleted {
        return Ok(None);
    }
    let hidden = listing.versions.into_iter().find(|v| v.key == key);
    Ok(hidden.map(|version| Found {
        size: version.size,
        etag: version.etag,
        version: version.version_id,
    }))
}

/// How a listing the store refused is said: `HTTP <status>: <body>`.
const ANSWERED: &str = "HTTP ";

/// A version listing that failed: said, and treated as "cannot tell". A
/// refusal with a 4xx (no `s3:ListBucketVersions`) is not tried again.
pub(super) fn failed(destination: &str, key: &str, detail: String) -> DestinationError {
    let status = detail
        .strip_prefix(ANSWERED)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    let kind = status.map_or(
        FailureKind::Transient,
        crate::destination::error::classify_status,
    );
    DestinationError::new(
        kind,
        destination,
        "list versions",
        key,
        format!("{detail} (a bucket's delete markers are read with s3:ListBucketVersions)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>app/DE_MER_APP_20261207_00001.DAT</Prefix><IsTruncated>false</IsTruncated>
  <DeleteMarker><Key>app/DE_MER_APP_20261207_00001.DAT</Key><VersionId>d2</VersionId><IsLatest>true</IsLatest></DeleteMarker>
  <Version><Key>app/DE_MER_APP_20261207_00001.DAT</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><ETag>"abc"</ETag><Size>42</Size></Version>
  <Version><Key>app/DE_MER_APP_20261207_00001.DAT.json</Key><VersionId>v0</VersionId><IsLatest>true</IsLatest><Size>7</Size></Version>
</ListVersionsResult>"#;

    #[test]
    fn a_delete_marker_over_a_version_is_a_file_taken() {
        let found = deleted_version(LISTING.as_bytes(), "app/DE_MER_APP_20261207_00001.DAT")
            .unwrap()
            .expect("taken");
        assert_eq!(found.version.as_deref(), Some("v1"));
        assert_eq!(found.size, 42);
    }

    #[test]
    fn a_listing_refused_with_a_4xx_is_not_tried_again() {
        let denied = failed(
            "s3://b/app",
            "k",
            "HTTP 403: <Error>AccessDenied</Error>".into(),
        );
        assert_eq!(denied.kind, FailureKind::Permanent);
        assert!(denied.detail.contains("s3:ListBucketVersions"), "{denied}");
        let busy = failed("s3://b/app", "k", "HTTP 503: SlowDown".into());
        assert_eq!(busy.kind, FailureKind::Transient);
        let lost = failed("s3://b/app", "k", "connection reset".into());
        assert_eq!(lost.kind, FailureKind::Transient);
    }

    #[test]
    fn a_key_without_a_newest_delete_marker_is_not_taken() {
        let manifest = "app/DE_MER_APP_20261207_00001.DAT.json";
        assert_eq!(deleted_version(LISTING.as_bytes(), manifest).unwrap(), None);
        let restored = LISTING.replace(
            "<IsLatest>true</IsLatest></DeleteMarker>",
            "<IsLatest>false</IsLatest></DeleteMarker>",
        );
        let key = "app/DE_MER_APP_20261207_00001.DAT";
        assert_eq!(deleted_version(restored.as_bytes(), key).unwrap(), None);
    }
}
