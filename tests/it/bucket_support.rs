//! The bucket and SFTP tests' own check: every record delivered once.

use std::collections::BTreeMap;

use bson::{doc, oid::ObjectId};

pub use crate::bucket_store::{bucket_env, pairs, s3_endpoint, TestBucket, PREFIX};
use crate::helpers::TestApp;

/// Asserts every id is `EXPORTED` into exactly one file of the bucket,
/// named on the record, and nothing is left waiting or claimed.
pub async fn assert_delivered_once(app: &TestApp, bucket: &TestBucket, ids: &[ObjectId]) {
    assert_each_once(app, &bucket.files().await, ids).await;
    bucket.assert_only_published().await;
}

/// Asserts every id is `EXPORTED` into exactly one of `files` (ids per file
/// name), named on the record, and no other record is in them.
pub async fn assert_each_once(
    app: &TestApp,
    files: &BTreeMap<String, Vec<String>>,
    ids: &[ObjectId],
) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (file, in_file) in files {
        for id in in_file {
            if let Some(other) = seen.insert(id.clone(), file.clone()) {
                panic!("record {id} is in {other} and in {file}");
            }
        }
    }
    for id in ids {
        let record = app.find(doc! {"_id": id}).await.remove(0);
        assert_eq!(record.get_str("status").unwrap(), "EXPORTED", "{id}");
        let named = record.get_str("exportFileName").unwrap();
        assert_eq!(
            seen.get(&id.to_hex()).map(String::as_str),
            Some(named),
            "{id}"
        );
    }
    assert_eq!(seen.len(), ids.len(), "no other record in the files");
}
