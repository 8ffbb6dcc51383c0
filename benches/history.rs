//! History benchmark:
//! `cargo bench --bench history [-- --history 0,1000000 --waiting 10000]`.
//!
//! The records collection only grows: every record ever exported stays.
//! For each history size, on a fresh SecantusDB (or `--mongodb-uri`, one
//! database per size) with the exporter's indexes, this seeds that many
//! `EXPORTED` records (with one completed run document per thousand) and
//! `--waiting` `TO_EXPORT` records over 14 deaneries, then times:
//!
//! - `esr-exporter status --json` (the release binary, as a process);
//! - the status page, `GET /` of a running daemon (the slowest of five);
//! - the listing of deaneries with work (`export::deaneries_to_export`);
//! - the watchdog's stuck-record query;
//! - `esr-exporter export --all` of the waiting records, with its peak RSS.
//!
//! What a run costs should grow with the waiting records, never with the
//! history; the targets are in BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bson::{doc, Document};
use clap::Parser;
use mongodb::{Client, Collection};

mod common;
#[path = "common/status_page.rs"]
mod status_page;
#[path = "../tests/support/mod.rs"]
mod support;
use common::{export_all, prepare, record, seed, start_server, DEANERIES};

#[derive(Debug, Parser)]
struct Args {
    /// Exported records already in the collection, one scenario each.
    #[arg(long, value_delimiter = ',', default_value = "0,1000000")]
    history: Vec<usize>,
    /// Records waiting to be exported.
    #[arg(long, default_value_t = 10_000)]
    waiting: usize,
    /// Use this server instead of starting a fresh secantusd-rs per size.
    #[arg(long)]
    mongodb_uri: Option<String>,
    /// cargo bench passes --bench; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One scenario's figures.
struct Figures {
    history: usize,
    seed: Duration,
    status: Duration,
    page: Duration,
    listing: Duration,
    watchdog: Duration,
    export: Duration,
    peak_rss_kib: u64,
}

/// `n` exported records and a completed run document per thousand.
async fn seed_history(db: &mongodb::Database, n: usize) -> anyhow::Result<()> {
    let records: Collection<Document> = db.collection("generatedAppRecords");
    let runs: Collection<Document> = db.collection("exportRuns");
    let day = 86_400_000_i64;
    let now = bson::DateTime::now().timestamp_millis();
    let (mut batch, mut run_docs) = (Vec::with_capacity(10_000), Vec::new());
    for i in 0..n {
        let deanery = DEANERIES[i % DEANERIES.len()];
        let run = format!("history-{deanery}-{}", i / 1_000);
        let file = format!(
            "DE_{deanery}_APP_2025{:04}_00001.DAT",
            101 + (i / 1_000) % 28
        );
        let mut exported = record(deanery, i);
        let at = bson::DateTime::from_millis(now - (1 + (i / 1_000) as i64) * day);
        exported.insert("status", "EXPORTED");
        exported.insert("exportRunId", &run);
        exported.insert("exportFileName", &file);
        exported.insert("exportedAt", at);
        exported.insert("createdAt", at);
        batch.push(exported);
        if i % 1_000 == 0 {
            run_docs.push(doc! {
                "_id": &run, "deanery": deanery, "phase": "COMPLETED", "startedAt": at,
                "finishedAt": at, "claimed": 1_000_i64, "rejected": 0_i64, "recordCount": 1_000_i64,
                "fileName": &file, "seq": 1_i64, "attempts": 2_i64,
            });
        }
        if batch.len() == 10_000 {
            records.insert_many(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        records.insert_many(batch).await?;
    }
    if !run_docs.is_empty() {
        runs.insert_many(run_docs).await?;
    }
    Ok(())
}

fn settings(uri: &str, db: &str) -> anyhow::Result<esr_exporter::config::Settings> {
    let env = [
        ("ESR_MONGODB__URI".to_owned(), uri.to_owned()),
        ("ESR_MONGODB__DATABASE".to_owned(), db.to_owned()),
    ]
    .into_iter()
    .collect();
    Ok(esr_exporter::config::Settings::load_with_env(
        None,
        Some(env),
    )?)
}

/// `esr-exporter status --json` as a process: its wall time.
async fn time_status(uri: &str, db: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_esr-exporter"))
        .args(["status", "--json"])
        .env("ESR_MONGODB__URI", uri)
        .env("ESR_MONGODB__DATABASE", db)
        .env("ESR_LOG__LEVEL", "warn")
        .output()
        .await?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!("status failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(took)
}

/// The listing of deaneries with work and the watchdog's query, in process.
async fn time_queries(uri: &str, db: &str, waiting: usize) -> anyhow::Result<(Duration, Duration)> {
    let store = esr_exporter::store::Store::connect(&settings(uri, db)?).await?;
    let started = Instant::now();
    let listed = esr_exporter::export::deaneries_to_export(&store).await?;
    let listing = started.elapsed();
    if waiting > 0 && listed.len() != DEANERIES.len() {
        bail!(
            "listed {} deaneries, expected {}",
            listed.len(),
            DEANERIES.len()
        );
    }
    let started = Instant::now();
    let stuck = store.stuck_records(bson::DateTime::now()).await?;
    let watchdog = started.elapsed();
    let counted: u64 = stuck.iter().map(|s| s.count).sum();
    if counted != waiting as u64 {
        bail!("the watchdog counted {counted} waiting records, expected {waiting}");
    }
    Ok((listing, watchdog))
}

async fn scenario(args: &Args, history: usize) -> anyhow::Result<Figures> {
    let server = start_server(args.mongodb_uri.clone())?;
    let db_name = format!("esr_history_{history}");
    let client = Client::with_uri_str(&server.uri).await?;
    let db = client.database(&db_name);
    db.drop().await?;
    prepare(&server.uri, &db_name).await?;
    let started = Instant::now();
    seed_history(&db, history).await?;
    seed(&db.collection("generatedAppRecords"), args.waiting).await?;
    let seeded = started.elapsed();
    let status = time_status(&server.uri, &db_name).await?;
    let page = status_page::time_status_page(&server.uri, &db_name, 5).await?;
    let (listing, watchdog) = time_queries(&server.uri, &db_name, args.waiting).await?;
    let dir = tempfile::tempdir()?;
    let run = export_all(&server.uri, &db_name, dir.path(), 1_000).await?;
    if run.failed > 0 || run.exported != args.waiting as u64 {
        bail!(
            "export --all exported {} of {} ({} failed)",
            run.exported,
            args.waiting,
            run.failed
        );
    }
    db.drop()
        .await
        .context("dropping the scenario's database")?;
    Ok(Figures {
        history,
        seed: seeded,
        status,
        page,
        listing,
        watchdog,
        export: run.wall,
        peak_rss_kib: run.peak_rss_kib,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1_000.0)
}

fn print_table(rows: &[Figures], waiting: usize) {
    println!(
        "waiting records: {waiting} over {} deaneries",
        DEANERIES.len()
    );
    println!("| history | seed | status | status page | listing | watchdog query | export --all | peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} MiB |",
            f.history,
            ms(f.seed),
            ms(f.status),
            ms(f.page),
            ms(f.listing),
            ms(f.watchdog),
            ms(f.export),
            f.peak_rss_kib as f64 / 1024.0
        );
    }
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return;
    };
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64().max(1e-6);
    println!(
        "history {} / {}: status {:.2}x, status page {:.2}x, listing {:.2}x, watchdog {:.2}x, export {:.2}x, peak RSS {:.2}x (target: each within 1.25x; status and the page under 1 s)",
        last.history, first.history,
        ratio(first.status, last.status), ratio(first.page, last.page),
        ratio(first.listing, last.listing),
        ratio(first.watchdog, last.watchdog), ratio(first.export, last.export),
        last.peak_rss_kib as f64 / (first.peak_rss_kib as f64).max(1.0),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for &history in &args.history {
        let figures = scenario(&args, history).await?;
        eprintln!("history {history}: done");
        rows.push(figures);
    }
    print_table(&rows, args.waiting);
    Ok(())
}
