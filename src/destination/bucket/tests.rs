//! Unit tests of the bucket that send nothing.
use super::*;

#[tokio::test]
async fn a_file_over_five_gib_is_refused_before_anything_is_sent() {
    let env = std::collections::HashMap::new();
    let settings = crate::config::Settings::load_with_env(None, Some(env)).unwrap();
    let bucket = Bucket::open("b", "app", &settings.s3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_SINGLE_COPY + 1)
        .unwrap();
    let err = bucket.upload_file("F.DAT", &big).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent, "{err}");
    assert!(
        err.detail.contains("5 GiB") && err.detail.contains("nothing was uploaded"),
        "{err}"
    );
    assert!(bucket
        .refuse_over_single_copy("F.DAT", MAX_SINGLE_COPY)
        .is_ok());
}
