//! Bucket support for the tests, the fault harness and the benchmarks: a
//! bucket of its own per test or run on the S3-compatible server (`ESR_TEST_S3_ENDPOINT`, else moto
//! on 127.0.0.1:9000), the environment that points the binary at it
//! (directly or through a fault proxy), and readers of what it holds.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use super::env::{env_line, s3_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The S3-compatible server under test.
pub fn s3_endpoint() -> String {
    std::env::var("ESR_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".to_owned())
}

/// A bucket created for one test, and a client that reads it directly.
pub struct TestBucket {
    pub name: String,
    endpoint: String,
    store: AmazonS3,
}

/// The key prefix tests publish under.
pub const PREFIX: &str = "app";

impl TestBucket {
    /// Creates a new, empty bucket on the server under test.
    pub async fn create() -> Self {
        Self::create_on(&s3_endpoint()).await
    }

    /// Creates a new, empty bucket on the server at `endpoint`.
    pub async fn create_on(endpoint: &str) -> Self {
        let name = format!(
            "esr-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let status = raw_request(endpoint, "PUT", &format!("/{name}")).await;
        assert_eq!(
            status, 200,
            "create bucket {name} on {endpoint} (run scripts/services)"
        );
        // rustls through reqwest takes the process's default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(&name)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        Self {
            name,
            endpoint: endpoint.to_owned(),
            store,
        }
    }

    /// Turns versioning on: a delete then leaves a delete marker.
    pub async fn enable_versioning(&self) {
        let body = "<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>Enabled</Status></VersioningConfiguration>";
        let path = format!("/{}?versioning", self.name);
        let status = raw_request_with(&self.endpoint, "PUT", &path, body).await;
        assert_eq!(status, 200, "versioning on {}", self.name);
    }

    pub fn destination(&self) -> String {
        format!("s3://{}/{PREFIX}", self.name)
    }

    /// Every object under the bucket: key → bytes.
    pub async fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let metas: Vec<_> = self.store.list(None).try_collect().await.unwrap();
        let mut objects = BTreeMap::new();
        for meta in metas {
            let bytes = self
                .store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            objects.insert(meta.location.to_string(), bytes.to_vec());
        }
        objects
    }

    /// The `.DAT` keys under the prefix.
    pub async fn dat_keys(&self) -> Vec<String> {
        let objects = self.objects().await;
        objects
            .keys()
            .filter(|k| k.ends_with(".DAT"))
            .cloned()
            .collect()
    }

    pub async fn put(&self, key: &str, bytes: &[u8]) {
        self.store
            .put(&Path::from(key), bytes.to_vec().into())
            .await
            .unwrap();
    }

    pub async fn delete(&self, key: &str) {
        self.store.delete(&Path::from(key)).await.unwrap();
    }

    /// Asserts the bucket holds nothing but published files and their
    /// manifests: no temporary or probe object is left.
    pub async fn assert_only_published(&self) {
        for key in self.objects().await.keys() {
            assert!(
                !key.split('/').any(|segment| segment.starts_with('.')),
                "temporary or probe object left behind: {key}"
            );
        }
    }

    /// Checks every `.DAT` against its manifest and returns the ids of its
    /// detail lines per file name. Panics on a malformed file.
    pub async fn files(&self) -> BTreeMap<String, Vec<String>> {
        let objects = self.objects().await;
        let mut files = BTreeMap::new();
        for (key, bytes) in objects.iter().filter(|(k, _)| k.ends_with(".DAT")) {
            let manifest: serde_json::Value =
                serde_json::from_slice(&objects[&format!("{key}.json")]).expect("manifest");
            assert_eq!(
                manifest["sha256"],
                hex::encode(Sha256::digest(bytes)),
                "{key}"
            );
            let text = std::str::from_utf8(bytes).unwrap();
            let ids: Vec<String> = text
                .split("\r\n")
                .filter(|line| line.starts_with("APP,"))
                .map(|line| line.split(',').nth(1).unwrap().to_owned())
                .collect();
            assert_eq!(manifest["recordCount"], ids.len(), "{key}");
            let name = key.rsplit('/').next().unwrap().to_owned();
            files.insert(name, ids);
        }
        files
    }
}

/// The environment that points the binary at `endpoint` (the server, or a
/// proxy in front of it) with this bucket as its destination.
pub fn bucket_env(destination: &str, endpoint: &str) -> Vec<(String, String)> {
    let mut env = s3_env(destination, endpoint, "test-secret-never-printed");
    env.extend(env_line(
        "ESR_S3__REQUEST_TIMEOUT_MS=3000 ESR_S3__MIN_DELAY_MS=20 ESR_S3__MAX_DELAY_MS=200 \
         ESR_EXPORT__LEASE_SECONDS=2",
    ));
    env
}

/// One HTTP/1.1 request without a body; the status code.
async fn raw_request(endpoint: &str, method: &str, path: &str) -> u16 {
    raw_request_with(endpoint, method, path, "").await
}

/// One unsigned request with `body` (moto takes them); its status.
async fn raw_request_with(endpoint: &str, method: &str, path: &str, body: &str) -> u16 {
    let host = endpoint.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("connect S3");
    let length = body.len();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("S3 answers")
    .unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
