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
//! 4. the same export on a fresh seed while a concurrent writer keeps
//!    updating random `TO_EXPORT` records: retries, WriteConflicts,
//!    throughput relative to the uncontended run, and a check that every
//!    record is in exactly one file.
//!
//! Prints the figures; targets are in BENCHMARKS.md.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bson::{doc, oid::ObjectId, DateTime, Document};
use clap::Parser;
use futures_util::TryStreamExt;
use mongodb::{Client, Collection};

const DEANERIES: [&str; 14] = [
    "MER", "EOE", "LDN", "OXF", "WES", "SEV", "KSS", "NWN", "YHD", "EMD", "WMD", "NTH", "PEN",
    "TVD",
];

#[derive(Debug, Parser)]
struct Args {
    /// Records to seed.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Use this server instead of starting a fresh secantusd-rs.
    #[arg(long)]
    mongodb_uri: Option<String>,
    /// Skip the contended scenario.
    #[arg(long)]
    no_contention: bool,
    /// Export chunk size.
    #[arg(long, default_value_t = 1000)]
    chunk_size: u32,
    /// cargo bench passes --bench; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Server {
    uri: String,
    child: Option<std::process::Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_server(uri: Option<String>) -> anyhow::Result<Server> {
    if let Some(uri) = uri {
        return Ok(Server {
            uri,
            child: None,
            _dir: None,
        });
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let child = std::process::Command::new("secantusd-rs")
        .args(["--port", &port.to_string(), "--storage-path"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("Failed to start secantusd-rs (install it with scripts/services, or pass --mongodb-uri)")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("secantusd-rs did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Server {
        uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
        child: Some(child),
        _dir: Some(dir),
    })
}

fn record(deanery: &str, n: usize) -> Document {
    let day = 86_400_000_i64;
    doc! {
        "_id": ObjectId::new(),
        "deanery": deanery,
        "status": "TO_EXPORT",
        "positionNumber": format!("{deanery}/RX{:03}/ST3/{n:07}", n % 500),
        "gmcNumber": format!("{}", 7_000_000 + n),
        "title": "Dr",
        "firstName": "Amelia",
        "lastName": if n.is_multiple_of(9) { "O'Connor, Jr" } else { "Smith" },
        "gender": "F",
        "niNumber": "QQ123456C",
        "emailAddress": format!("doctor.{n}@example.nhs.uk"),
        "gradeAbbreviation": "ST3",
        "specialty": "General Practice",
        "dateOfBirth": DateTime::from_millis(9_000 * day),
        "placementStartDate": DateTime::from_millis(20_700 * day),
        "placementEndDate": DateTime::from_millis(21_100 * day),
        "wte": 0.8,
        "createdAt": DateTime::now(),
        "updatedAt": DateTime::now(),
    }
}

/// Creates the collection's indexes first (as `esr-exporter` does at
/// start), so the floor is measured on the same collection the export sees.
async fn prepare(uri: &str, db: &str) -> anyhow::Result<()> {
    let env = [
        ("ESR_MONGODB__URI".to_owned(), uri.to_owned()),
        ("ESR_MONGODB__DATABASE".to_owned(), db.to_owned()),
    ]
    .into_iter()
    .collect();
    let settings = esr_exporter::config::Settings::load_with_env(None, Some(env))?;
    esr_exporter::store::Store::build(&settings).await?;
    Ok(())
}

async fn seed(records: &Collection<Document>, n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        batch.push(record(DEANERIES[i % DEANERIES.len()], i));
        if batch.len() == 10_000 {
            records.insert_many(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        records.insert_many(batch).await?;
    }
    Ok(started.elapsed())
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

struct ExportRun {
    wall: Duration,
    peak_rss_kib: u64,
    exported: u64,
    attempts: u64,
    retries: u64,
    write_conflicts: u64,
    failed: usize,
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn export_all(uri: &str, db: &str, dir: &Path, chunk: u32) -> anyhow::Result<ExportRun> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_esr-exporter"))
        .args(["export", "--all"])
        .env("ESR_MONGODB__URI", uri)
        .env("ESR_MONGODB__DATABASE", db)
        .env("ESR_EXPORT__OUTPUT_DIR", dir)
        .env("ESR_EXPORT__CHUNK_SIZE", chunk.to_string())
        .env("ESR_RETRY__MAX_ATTEMPTS", "50")
        .env("ESR_LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id().context("no pid")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .map(|_| text)
    });
    // VmHWM is the peak; sample it until the process exits.
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let wall = started.elapsed();
    let text = reader.await??;
    if !status.success() {
        bail!("export --all exited with {status}: {text}");
    }
    let mut run = ExportRun {
        wall,
        peak_rss_kib: peak,
        exported: 0,
        attempts: 0,
        retries: 0,
        write_conflicts: 0,
        failed: 0,
    };
    for line in text.lines() {
        let summary: serde_json::Value = serde_json::from_str(line)?;
        run.exported += summary["exported"].as_u64().unwrap_or(0);
        run.attempts += summary["attempts"].as_u64().unwrap_or(0);
        run.retries += summary["retries"].as_u64().unwrap_or(0);
        run.write_conflicts += summary["writeConflicts"].as_u64().unwrap_or(0);
        run.failed += usize::from(summary["status"] != "completed");
    }
    Ok(run)
}

/// Every record EXPORTED, each id in exactly one .DAT file.
async fn verify(records: &Collection<Document>, dir: &Path, n: usize) -> anyhow::Result<()> {
    let exported = records.count_documents(doc! {"status": "EXPORTED"}).await?;
    if exported != n as u64 {
        bail!("{exported} of {n} records EXPORTED");
    }
    let mut seen = HashSet::with_capacity(n);
    for entry in std::fs::read_dir(dir)? {
        let path: PathBuf = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            bail!("temporary file left: {name}");
        }
        if !name.ends_with(".DAT") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for line in text.split("\r\n").filter(|l| l.starts_with("APP,")) {
            let id = line.split(',').nth(1).unwrap_or_default().to_owned();
            if !seen.insert(id.clone()) {
                bail!("record {id} is in more than one file line");
            }
        }
    }
    if seen.len() != n {
        bail!("{} distinct records in files, expected {n}", seen.len());
    }
    Ok(())
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = start_server(args.mongodb_uri.clone())?;
    let client = Client::with_uri_str(&server.uri).await?;
    let n = args.records;
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
        "export:  {:>9.0} records/s  ({} exported in {:.2} s; {} transaction attempts, {} retries; peak RSS {:.1} MiB)",
        export_rate,
        run.exported,
        run.wall.as_secs_f64(),
        run.attempts,
        run.retries,
        run.peak_rss_kib as f64 / 1024.0
    );
    println!(
        "ratio export time / floor time: {:.2}",
        run.wall.as_secs_f64() / floor_time.as_secs_f64()
    );
    client.database(&db_name).drop().await?;

    // The design's commands alone, on a fresh seed of the same shape.
    let db_name = format!("esr_bench_commands_{}", std::process::id());
    let records = client
        .database(&db_name)
        .collection::<Document>("generatedAppRecords");
    prepare(&server.uri, &db_name).await?;
    seed(&records, n).await?;
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
    let db_name = format!("esr_bench_contended_{}", std::process::id());
    let records = client
        .database(&db_name)
        .collection::<Document>("generatedAppRecords");
    prepare(&server.uri, &db_name).await?;
    seed(&records, n).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (records, stop, writes) = (records.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sample = records
                    .aggregate(vec![
                        doc! {"$match": {"status": "TO_EXPORT"}},
                        doc! {"$sample": {"size": 20}},
                        doc! {"$project": {"_id": 1}},
                    ])
                    .await;
                let Ok(cursor) = sample else { continue };
                let picked: Vec<Document> = cursor.try_collect().await.unwrap_or_default();
                if picked.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                for d in picked {
                    let id = d.get_object_id("_id").unwrap();
                    if let Ok(r) = records
                        .update_one(
                            doc! {"_id": id, "status": "TO_EXPORT"},
                            doc! {"$set": {"updatedAt": DateTime::now()}, "$inc": {"touched": 1}},
                        )
                        .await
                    {
                        writes.fetch_add(r.modified_count, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let dir = tempfile::tempdir()?;
    let contended = export_all(&server.uri, &db_name, dir.path(), args.chunk_size).await?;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    verify(&records, dir.path(), n).await?;
    let contended_rate = rate(contended.exported, contended.wall);
    println!(
        "contended: {:>7.0} records/s  ({} exported in {:.2} s; {} concurrent writes; {} WriteConflicts, {} retries, {} failed runs) = {:.0}% of uncontended; nothing lost or duplicated",
        contended_rate,
        contended.exported,
        contended.wall.as_secs_f64(),
        writes.load(Ordering::Relaxed),
        contended.write_conflicts,
        contended.retries,
        contended.failed,
        100.0 * contended_rate / export_rate
    );
    client.database(&db_name).drop().await?;
    Ok(())
}
