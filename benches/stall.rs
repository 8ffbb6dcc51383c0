//! Stall benchmark: `cargo bench --bench stall [-- --trials 10 --records 30000 --bound-ms 30000]`.
//!
//! How long a run takes to give up on a MongoDB that stops answering. Per
//! trial, on a fresh SecantusDB (or `--mongodb-uri`): seed `--records`
//! waiting records for one deanery, export them through a proxy that
//! black-holes every socket `--after-ms` into the run (a partitioned or
//! frozen primary), and time from the black hole to the failed attempt.
//! Then heal and export again: the run must complete with every record
//! exported once. Prints each trial, the median and the max; the target
//! (at most the bound plus one second) is in BENCHMARKS.md.
//!
//! `--binary` runs the real `esr-exporter export` instead, at the default
//! settings (but `--bound-ms`), and times the black hole to its ERROR line
//! and to its exit: the driver's own monitor (10 s) gives up on the server
//! before the default bound (30 s) does, so this is the path a production
//! black hole takes (targets: ERROR within the bound + 10 s, exit within
//! twice the bound + 10 s).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bson::{doc, Document};
use clap::Parser;
use esr_exporter::config::Settings;
use esr_exporter::destination::Destination;
use esr_exporter::domain::{Deanery, RunStatus};
use esr_exporter::export::Exporter;
use esr_exporter::store::Store;
use mongodb::{Client, Collection};
use tokio::task::JoinHandle;

mod common;
#[path = "../tests/support/mod.rs"]
mod support;
use common::{record, start_server};

#[derive(Debug, Parser)]
struct Args {
    /// Trials.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Waiting records per trial.
    #[arg(long, default_value_t = 30_000)]
    records: usize,
    /// `mongodb.operation_timeout_ms`.
    #[arg(long, default_value_t = 30_000)]
    bound_ms: u64,
    /// When the black hole opens, after the run starts.
    #[arg(long, default_value_t = 1_000)]
    after_ms: u64,
    /// Run the real binary (`esr-exporter export`) and time the black hole
    /// to its ERROR line and to its exit, at the default settings
    /// otherwise.
    #[arg(long)]
    binary: bool,
    /// Use this server instead of starting a fresh SecantusDB.
    #[arg(long)]
    mongodb_uri: Option<String>,
    /// Flags cargo passes to bench binaries; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

async fn exporter(
    uri: &str,
    db: &str,
    dir: &std::path::Path,
    bound_ms: u64,
) -> anyhow::Result<Exporter> {
    let env: HashMap<String, String> = [
        ("ESR_MONGODB__URI", uri.to_owned()),
        ("ESR_MONGODB__DATABASE", db.to_owned()),
        ("ESR_MONGODB__OPERATION_TIMEOUT_MS", bound_ms.to_string()),
        ("ESR_EXPORT__OUTPUT_DIR", dir.display().to_string()),
        ("ESR_EXPORT__LEASE_SECONDS", "2".to_owned()),
        ("ESR_LOG__LEVEL", "error".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = Settings::load_with_env(None, Some(env))?;
    let store = Store::build(&settings).await?;
    let destination = Destination::from_settings(&settings)?;
    Ok(Exporter::new(store, settings.export.clone(), destination))
}

/// What one trial measured from the black hole on.
struct Timing {
    /// To the failed attempt (in-process), or to the ERROR line (binary).
    failed: Duration,
    /// To the process's exit (binary only).
    exited: Option<Duration>,
}

/// Starts `esr-exporter export --deanery MER` through the proxy, at the
/// default settings but the bound; with a task that notes when its ERROR
/// line comes.
fn spawn_export(
    args: &Args,
    proxy_uri: &str,
    db: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(tokio::process::Child, JoinHandle<Option<Instant>>)> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_esr-exporter"))
        .args(["export", "--deanery", "MER"])
        .env_clear()
        .env("ESR_MONGODB__URI", proxy_uri)
        .env("ESR_MONGODB__DATABASE", db)
        .env(
            "ESR_MONGODB__OPERATION_TIMEOUT_MS",
            args.bound_ms.to_string(),
        )
        .env("ESR_EXPORT__OUTPUT_DIR", dir.display().to_string())
        .env("ESR_EXPORT__LEASE_SECONDS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
    let error_seen = tokio::spawn(async move {
        let mut seen = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if seen.is_none() && line.contains("ERROR") && line.contains("export run failed") {
                seen = Some(Instant::now());
            }
        }
        seen
    });
    Ok((child, error_seen))
}

/// Waits for the ERROR line and the exit after the black hole at `opened`.
async fn exit_timing(
    opened: Instant,
    mut child: tokio::process::Child,
    error_seen: tokio::task::JoinHandle<Option<Instant>>,
) -> anyhow::Result<Timing> {
    let status = tokio::time::timeout(Duration::from_secs(600), child.wait()).await??;
    let exited = opened.elapsed();
    let seen = error_seen.await?.context("no ERROR line before exit")?;
    if status.success() {
        bail!("the export exited 0 through a black hole");
    }
    Ok(Timing {
        failed: seen.saturating_duration_since(opened),
        exited: Some(exited),
    })
}

/// One trial: the time from black hole to failed attempt.
async fn trial(args: &Args, server_uri: &str, client: &Client, n: usize) -> anyhow::Result<Timing> {
    let db = format!("esr_stall_{n}_{}", std::process::id());
    let records: Collection<Document> = client.database(&db).collection("generatedAppRecords");
    let docs: Vec<Document> = (0..args.records).map(|i| record("MER", i)).collect();
    for batch in docs.chunks(10_000) {
        records.insert_many(batch.to_vec()).await?;
    }
    let dir = tempfile::tempdir()?;
    let proxy = support::proxy::WireProxy::start(&support::mongo::first_seed(server_uri)).await;
    let exporter = exporter(&proxy.uri(), &db, dir.path(), args.bound_ms).await?;
    let deanery = Deanery::parse("MER")?;

    let timing = if args.binary {
        let (child, error_seen) = spawn_export(args, &proxy.uri(), &db, dir.path())?;
        tokio::time::sleep(Duration::from_millis(args.after_ms)).await;
        proxy.black_hole();
        exit_timing(Instant::now(), child, error_seen).await?
    } else {
        let run = {
            let (exporter, deanery) = (exporter.clone(), deanery.clone());
            tokio::spawn(async move { exporter.run(&deanery).await })
        };
        tokio::time::sleep(Duration::from_millis(args.after_ms)).await;
        proxy.black_hole();
        let opened = Instant::now();
        let failed = run.await?;
        let took = opened.elapsed();
        if failed.status() != RunStatus::Failed {
            bail!("trial {n}: the attempt did not fail: {failed:?}");
        }
        Timing {
            failed: took,
            exited: None,
        }
    };

    proxy.heal();
    completes(&exporter, &deanery, &records, args.records).await?;
    client.database(&db).drop().await?;
    Ok(timing)
}

/// Runs attempts until one completes; checks every record was exported.
async fn completes(
    exporter: &Exporter,
    deanery: &Deanery,
    records: &Collection<Document>,
    n: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while exporter.run(deanery).await.status() != RunStatus::Completed {
        if Instant::now() > deadline {
            bail!("the run did not complete after healing");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let exported = records.count_documents(doc! {"status": "EXPORTED"}).await?;
    if exported != n as u64 {
        bail!("{exported} of {n} records exported after healing");
    }
    Ok(())
}

/// Prints the median and the max of `took`.
fn report(what: &str, took: &mut [Duration], bound: f64) {
    took.sort();
    let median = took[took.len() / 2];
    let max = took[took.len() - 1];
    println!(
        "{what}: median {:.3} s, max {:.3} s (bound {bound:.3} s)",
        median.as_secs_f64(),
        max.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = start_server(args.mongodb_uri.clone())?;
    let client = Client::with_uri_str(&server.uri).await.context("connect")?;
    println!(
        "stall: {} trials, {} records, bound {} ms, black hole {} ms into the run",
        args.trials, args.records, args.bound_ms, args.after_ms
    );
    let mut failed = Vec::new();
    let mut exited = Vec::new();
    for n in 1..=args.trials {
        let timing = trial(&args, &server.uri, &client, n).await?;
        let exit = timing
            .exited
            .map(|e| format!(", to exit {:>7.3} s", e.as_secs_f64()))
            .unwrap_or_default();
        println!(
            "trial {n:>2}: black hole to {} {:>7.3} s{exit}; then completed, every record once",
            if args.binary {
                "ERROR line"
            } else {
                "failed attempt"
            },
            timing.failed.as_secs_f64()
        );
        failed.push(timing.failed);
        exited.extend(timing.exited);
    }
    let bound = Duration::from_millis(args.bound_ms).as_secs_f64();
    report("black hole to failed attempt (ERROR)", &mut failed, bound);
    if !exited.is_empty() {
        report("black hole to exit", &mut exited, bound);
    }
    Ok(())
}
