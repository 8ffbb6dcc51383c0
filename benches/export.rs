//! Throughput benchmark: `cargo bench --bench export [-- --records 200000]`.
//!
//! Starts a fresh SecantusDB (`secantusd-rs`, temporary storage, free port;
//! or uses `--mongodb-uri`), seeds N records over 14 deaneries, and measures
//! in one run:
//!
//! 1. the floor: stream every `TO_EXPORT` record with a plain cursor, then
//!    set all their statuses with one `updateMany`, on the same server and
//!    collection (with the indexes `esr-exporter` creates);
//! 2. `esr-exporter export --all` (the release binary, as a process):
//!    records per second, transaction attempts, peak RSS (`VmHWM`);
//! 3. on a fresh seed, the design's commands alone: the claim and mark
//!    transactions an export sends (id cursor, range read, `EXPORTING`
//!    update, `EXPORTED` update; two deaneries at a time), with no lease,
//!    run document or file, sent from this process, checked to have
//!    claimed and marked every record; what `esr-exporter` adds shows as
//!    the difference to (2);
//! 4. the same export on a fresh seed while a concurrent writer updates
//!    random `TO_EXPORT` records at a fixed pace (`--writer-rate`, 200 a
//!    second): retries, WriteConflicts,
//!    throughput relative to the uncontended run, and a check that every
//!    record is in exactly one file.
//!
//! With `--destination s3` (or `sftp`), instead: one deanery's run of
//! `--records` (100,000 by default there) to a folder, then to a bucket (or
//! an SFTP server; see `support/s3.rs`).
//!
//! Prints the figures; targets are in BENCHMARKS.md.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bson::{doc, oid::ObjectId, DateTime, Document};
use clap::Parser;
use futures_util::TryStreamExt;
use mongodb::{Client, Collection};

#[path = "common/bucket_runs.rs"]
mod bucket_runs;
mod common;
#[path = "../tests/support/mod.rs"]
mod support;
use common::{export_all, prepare, seed, start_server, verify, DEANERIES};

#[derive(Debug, Parser)]
struct Args {
    /// Records to seed (default 200,000; 100,000 with `--destination s3`
    /// or `sftp`).
    #[arg(long)]
    records: Option<usize>,
    /// `folder` (the full benchmark), `s3` or `sftp`: one run to a folder
    /// against one to a bucket or an SFTP server.
    #[arg(long, default_value = "folder")]
    destination: String,
    /// The S3-compatible server for `--destination s3`.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    s3_endpoint: String,
    /// Use this server instead of starting a fresh secantusd-rs.
    #[arg(long)]
    mongodb_uri: Option<String>,
    /// Skip the contended scenario.
    #[arg(long)]
    no_contention: bool,
    /// Updates a second from the contended scenario's concurrent writer.
    #[arg(long, default_value_t = 200)]
    writer_rate: u32,
    /// Export chunk size (the daemon's default).
    #[arg(long, default_value_t = 2000)]
    chunk_size: u32,
    /// cargo bench passes --bench; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The floor: one plain cursor over every waiting record, one updateMany.
async fn floor(records: &Collection<Document>) -> anyhow::Result<(Duration, Duration, u64)> {
    let started = Instant::now();
    let mut cursor = records
        .find(doc! {"status": "TO_EXPORT"})
        .batch_size(2_000)
        .await?;
    let mut n = 0u64;
    let mut bytes = 0usize;
    while let Some(document) = cursor.try_next().await? {
        n += 1;
        bytes += document.len();
    }
    std::hint::black_box(bytes);
    let streamed = started.elapsed();
    let started = Instant::now();
    records
        .update_many(
            doc! {"status": "TO_EXPORT"},
            doc! {"$set": {"status": "FLOOR"}},
        )
        .await?;
    let updated = started.elapsed();
    // Put them back for the export (not measured).
    records
        .update_many(
            doc! {"status": "FLOOR"},
            doc! {"$set": {"status": "TO_EXPORT"}},
        )
        .await?;
    Ok((streamed, updated, n))
}

/// The claim and mark commands of an export, and nothing else, for every
/// deanery, two deaneries at a time (as `export.parallel_runs = 2`).
async fn design_commands(
    client: &Client,
    records: &Collection<Document>,
    chunk: usize,
    n: usize,
) -> anyhow::Result<Duration> {
    use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};
    let started = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(DEANERIES.to_vec()));
    let (claimed, marked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (client, records, queue) = (client.clone(), records.clone(), queue.clone());
        let (claimed, marked) = (claimed.clone(), marked.clone());
        workers.push(tokio::spawn(async move {
            let mut session = client.start_session().await?;
            loop {
                let Some(deanery) = queue.lock().unwrap().pop() else {
                    return anyhow::Ok(());
                };
                let run_id = uuid::Uuid::new_v4().to_string();
                let ids: Vec<ObjectId> = records
                    .find(doc! {"status": "TO_EXPORT", "deanery": deanery})
                    .sort(doc! {"_id": 1})
                    .projection(doc! {"_id": 1})
                    .batch_size(chunk as u32)
                    .await?
                    .map_ok(|d| d.get_object_id("_id").unwrap())
                    .try_collect()
                    .await?;
                let ranges: Vec<(ObjectId, ObjectId)> = ids
                    .chunks(chunk)
                    .map(|c| (c[0], c[c.len() - 1]))
                    .collect();
                let begin = async |session: &mut mongodb::ClientSession| {
                    session
                        .start_transaction()
                        .read_concern(ReadConcern::snapshot())
                        .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
                        .await
                };
                for &(first, last) in &ranges {
                    let range = doc! {"status": "TO_EXPORT", "deanery": deanery, "_id": {"$gte": first, "$lte": last}};
                    begin(&mut session).await?;
                    let mut cursor = records.find(range.clone()).session(&mut session).await?;
                    let mut bytes = 0;
                    while let Some(d) = cursor.next(&mut session).await {
                        bytes += d?.len();
                    }
                    std::hint::black_box(bytes);
                    let result = records
                        .update_many(range, doc! {"$set": {"status": "EXPORTING", "exportRunId": &run_id}})
                        .session(&mut session)
                        .await?;
                    claimed.fetch_add(result.modified_count, Ordering::Relaxed);
                    session.commit_transaction().await?;
                }
                for &(first, last) in &ranges {
                    begin(&mut session).await?;
                    let result = records
                        .update_many(
                            doc! {"exportRunId": &run_id, "status": "EXPORTING", "_id": {"$gte": first, "$lte": last}},
                            doc! {"$set": {"status": "EXPORTED", "exportedAt": DateTime::now(), "exportFileName": "DE_X_APP_20261128_00001.DAT"}},
                        )
                        .session(&mut session)
                        .await?;
                    marked.fetch_add(result.modified_count, Ordering::Relaxed);
                    session.commit_transaction().await?;
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed();
    let (claimed, marked) = (
        claimed.load(Ordering::Relaxed),
        marked.load(Ordering::Relaxed),
    );
    if claimed != n as u64 || marked != n as u64 {
        bail!("the commands claimed {claimed} and marked {marked} of {n} records");
    }
    Ok(elapsed)
}

/// Every seeded record's `_id` (not measured).
async fn seeded_ids(records: &Collection<Document>) -> anyhow::Result<Vec<ObjectId>> {
    let ids = records
        .find(doc! {})
        .projection(doc! {"_id": 1})
        .await?
        .map_ok(|d| d.get_object_id("_id").unwrap())
        .try_collect()
        .await?;
    Ok(ids)
}

/// Another service editing records while they are exported: `rate`
/// updates a second, each to a record picked at random among those of
/// `ids` still `TO_EXPORT` (one found claimed is dropped from the picks),
/// until `stop`. Counts the updates that changed a record in `writes`.
async fn concurrent_writer(
    records: Collection<Document>,
    mut ids: Vec<ObjectId>,
    rate: u32,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) && !ids.is_empty() {
        ticks.tick().await;
        let pick = fastrand::usize(..ids.len());
        let update = records
            .update_one(
                doc! {"_id": ids[pick], "status": "TO_EXPORT"},
                doc! {"$set": {"updatedAt": DateTime::now()}, "$inc": {"touched": 1}},
            )
            .await;
        match update {
            Ok(result) if result.matched_count == 0 => {
                ids.swap_remove(pick);
            }
            Ok(result) => {
                writes.fetch_add(result.modified_count, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
}

/// A new database `<prefix>_<pid>` with the daemon's indexes and `n`
/// seeded records: its name and records.
async fn fresh_seeded(
    client: &Client,
    uri: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<(String, Collection<Document>)> {
    let db_name = format!("{prefix}_{}", std::process::id());
    let records = client
        .database(&db_name)
        .collection::<Document>("generatedAppRecords");
    prepare(uri, &db_name).await?;
    seed(&records, n).await?;
    Ok((db_name, records))
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = start_server(args.mongodb_uri.clone())?;
    let client = Client::with_uri_str(&server.uri).await?;
    if args.destination == "s3" {
        let n = args.records.unwrap_or(100_000);
        return bucket_runs::compare(&server.uri, &client, n, args.chunk_size, &args.s3_endpoint)
            .await;
    }
    if args.destination == "sftp" {
        let n = args.records.unwrap_or(100_000);
        let sshd = support::sshd::TestSshd::start().await;
        let label = format!("SFTP ({})", sshd.destination());
        return bucket_runs::compare_with(
            &server.uri,
            &client,
            n,
            args.chunk_size,
            &label,
            &sshd.env(),
        )
        .await;
    }
    let n = args.records.unwrap_or(200_000);
    println!(
        "esr-exporter export benchmark: {n} records over {} deaneries, chunk size {}",
        DEANERIES.len(),
        args.chunk_size
    );
    println!("server: {}", server.uri);

    // Uncontended.
    let db_name = format!("esr_bench_{}", std::process::id());
    let records = client
        .database(&db_name)
        .collection::<Document>("generatedAppRecords");
    prepare(&server.uri, &db_name).await?;
    let seeded = seed(&records, n).await?;
    println!("seeded in {:.1} s", seeded.as_secs_f64());
    let (streamed, updated, counted) = floor(&records).await?;
    let floor_time = streamed + updated;
    println!(
        "floor:   {:>9.0} records/s  ({counted} streamed in {:.2} s, one updateMany in {:.2} s)",
        rate(counted, floor_time),
        streamed.as_secs_f64(),
        updated.as_secs_f64()
    );
    let dir = tempfile::tempdir()?;
    let run = export_all(&server.uri, &db_name, dir.path(), args.chunk_size).await?;
    verify(&records, dir.path(), n).await?;
    let export_rate = rate(run.exported, run.wall);
    println!(
        "export:  {export_rate:>9.0} records/s  ({})",
        run.described()
    );
    println!(
        "ratio export time / floor time: {:.2}",
        run.wall.as_secs_f64() / floor_time.as_secs_f64()
    );
    println!("{}", run.phases.render());
    client.database(&db_name).drop().await?;

    // The design's commands alone, on a fresh seed of the same shape.
    let (db_name, records) = fresh_seeded(&client, &server.uri, "esr_bench_commands", n).await?;
    let commands = design_commands(&client, &records, args.chunk_size as usize, n).await?;
    println!(
        "commands: {:>8.0} records/s  (the claim and mark transactions alone in {:.2} s; ratio to the floor {:.2}; the export took {:.2}x these)",
        rate(n as u64, commands),
        commands.as_secs_f64(),
        commands.as_secs_f64() / floor_time.as_secs_f64(),
        run.wall.as_secs_f64() / commands.as_secs_f64()
    );
    client.database(&db_name).drop().await?;

    if args.no_contention {
        return Ok(());
    }

    // Contended: a writer keeps updating random waiting records.
    let (db_name, records) = fresh_seeded(&client, &server.uri, "esr_bench_contended", n).await?;
    let ids = seeded_ids(&records).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(concurrent_writer(
        records.clone(),
        ids,
        args.writer_rate,
        stop.clone(),
        writes.clone(),
    ));
    let dir = tempfile::tempdir()?;
    let contended = export_all(&server.uri, &db_name, dir.path(), args.chunk_size).await?;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    verify(&records, dir.path(), n).await?;
    let contended_rate = rate(contended.exported, contended.wall);
    let (writes, pace) = (writes.load(Ordering::Relaxed), args.writer_rate);
    let share = 100.0 * contended_rate / export_rate;
    println!(
        "contended: {contended_rate:>7.0} records/s  ({}; {writes} concurrent writes at {pace}/s) \
         = {share:.0}% of uncontended; nothing lost or duplicated",
        contended.described()
    );
    client.database(&db_name).drop().await?;
    Ok(())
}
