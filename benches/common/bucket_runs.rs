//! `cargo bench --bench export -- --destination s3 [--records 100000]`:
//! one deanery's run of N records exported to a folder, then (on a fresh
//! seed of the same shape) to a bucket on the S3-compatible server at
//! `--s3-endpoint` (moto from `scripts/services` by default); prints both
//! times, the ratio, each peak RSS and the file's size, and checks every
//! record is `EXPORTED`. `--destination sftp` does the same against an
//! SFTP server: OpenSSH's `sshd` started on a loopback port.

use std::time::Instant;

use anyhow::{bail, Context};
use bson::{doc, Document};
use mongodb::{Client, Collection};

use crate::common::{export_all_with, prepare, record, ExportRun};
use crate::support::bucket::TestBucket;
use crate::support::env::s3_env;

/// The deanery the single run exports.
const DEANERY: &str = "MER";

/// Seeds `n` records of one deanery.
async fn seed_one(records: &Collection<Document>, n: usize) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        batch.push(record(DEANERY, i));
        if batch.len() == 10_000 {
            records.insert_many(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        records.insert_many(batch).await?;
    }
    Ok(())
}

/// One export of N records of one deanery; `env` names the destination.
async fn one_run(
    uri: &str,
    client: &Client,
    n: usize,
    chunk: u32,
    env: &[(String, String)],
) -> anyhow::Result<(ExportRun, u64)> {
    let db_name = format!(
        "esr_bench_s3_{}_{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let db_name = format!("{db_name}_{}", uuid::Uuid::new_v4().simple());
    let records = client
        .database(&db_name)
        .collection::<Document>("generatedAppRecords");
    prepare(uri, &db_name).await?;
    seed_one(&records, n).await?;
    let dir = tempfile::tempdir()?;
    let run = export_all_with(uri, &db_name, dir.path(), chunk, env).await?;
    let exported = records.count_documents(doc! {"status": "EXPORTED"}).await?;
    if exported != n as u64 || run.exported != n as u64 {
        bail!(
            "{exported} of {n} records EXPORTED ({} reported)",
            run.exported
        );
    }
    let runs = client
        .database(&db_name)
        .collection::<Document>("exportRuns");
    let run_doc = runs.find_one(doc! {}).await?.context("no run document")?;
    let size = run_doc
        .get_document("publication")
        .ok()
        .and_then(|p| p.get_document("location").ok())
        .and_then(|l| l.get_str("path").ok())
        .map(str::to_owned);
    client.database(&db_name).drop().await?;
    let bytes = match size {
        Some(path) if path.starts_with('/') => {
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        }
        _ => 0,
    };
    Ok((run, bytes))
}

/// Folder against bucket, printed.
pub async fn compare(
    uri: &str,
    client: &Client,
    n: usize,
    chunk: u32,
    endpoint: &str,
) -> anyhow::Result<()> {
    let bucket = TestBucket::create_on(endpoint).await;
    let env = s3_env(&bucket.destination(), endpoint, "bench");
    compare_with(uri, client, n, chunk, &format!("bucket ({endpoint})"), &env).await
}

/// One run to a folder against one to the destination `env` names
/// (`label` says which), printed.
pub async fn compare_with(
    uri: &str,
    client: &Client,
    n: usize,
    chunk: u32,
    label: &str,
    env: &[(String, String)],
) -> anyhow::Result<()> {
    println!("one run of {n} records ({DEANERY}), folder against {label}");
    let (folder, bytes) = one_run(uri, client, n, chunk, &[]).await?;
    let (remote, _) = one_run(uri, client, n, chunk, env).await?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "folder:  {:.2} s, peak RSS {:.1} MiB, file {:.1} MiB",
        folder.wall.as_secs_f64(),
        mib(folder.peak_rss_kib),
        bytes as f64 / 1_048_576.0
    );
    println!(
        "{label}:  {:.2} s, peak RSS {:.1} MiB",
        remote.wall.as_secs_f64(),
        mib(remote.peak_rss_kib)
    );
    println!(
        "ratio destination time / folder time: {:.2}",
        remote.wall.as_secs_f64() / folder.wall.as_secs_f64()
    );
    Ok(())
}
