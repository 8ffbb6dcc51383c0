//! What the benchmarks share: a fresh SecantusDB per run, realistic
//! records, the exporter's indexes, seeding, and `export --all` as a
//! process with its peak RSS.

#![allow(dead_code)] // each benchmark uses its own part

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bson::{doc, oid::ObjectId, DateTime, Document};
use mongodb::Collection;

pub const DEANERIES: [&str; 14] = [
    "MER", "EOE", "LDN", "OXF", "WES", "SEV", "KSS", "NWN", "YHD", "EMD", "WMD", "NTH", "PEN",
    "TVD",
];

pub struct Server {
    pub uri: String,
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

pub fn start_server(uri: Option<String>) -> anyhow::Result<Server> {
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
        uri: format!("mongodb://127.0.0.1:{port}/?replicaSet=secantus"),
        child: Some(child),
        _dir: Some(dir),
    })
}

pub fn record(deanery: &str, n: usize) -> Document {
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
pub async fn prepare(uri: &str, db: &str) -> anyhow::Result<()> {
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

pub async fn seed(records: &Collection<Document>, n: usize) -> anyhow::Result<Duration> {
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

pub struct ExportRun {
    pub wall: Duration,
    pub peak_rss_kib: u64,
    pub exported: u64,
    pub attempts: u64,
    pub retries: u64,
    pub write_conflicts: u64,
    pub failed: usize,
    /// Where the time went, summed over the runs.
    pub phases: Phases,
}

impl ExportRun {
    /// What the run did, for the figures' lines.
    pub fn described(&self) -> String {
        let secs = self.wall.as_secs_f64();
        let rss_mib = self.peak_rss_kib as f64 / 1024.0;
        let (exported, attempts, retries) = (self.exported, self.attempts, self.retries);
        let (conflicts, failed) = (self.write_conflicts, self.failed);
        format!(
            "{exported} exported in {secs:.2} s; {attempts} transaction attempts, {retries} retries, \
             {conflicts} WriteConflicts, {failed} failed runs; peak RSS {rss_mib:.1} MiB"
        )
    }
}

/// Log filter that keeps the lines with phase timings and the warnings.
const PHASE_LOG_FILTER: &str = "warn,esr_exporter::export::claim=info,\
esr_exporter::export::mark=info,esr_exporter::export::run=debug,esr_exporter::export::try_run=info";

fn read_all<R>(mut from: R) -> tokio::task::JoinHandle<std::io::Result<String>>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut from, &mut text)
            .await
            .map(|_| text)
    })
}

/// Milliseconds per phase, summed over every run of an export (runs of
/// different deaneries overlap, `export.parallel_runs` at a time).
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    pub claim_read: u64,
    pub claim_write: u64,
    /// The claim transactions in all: reads, writes, commits, retries.
    pub claim: u64,
    pub file: u64,
    pub publish: u64,
    pub mark: u64,
    /// Every run's whole attempt (`durationMs`).
    pub runs: u64,
}

impl Phases {
    fn from_log(log: &str) -> Self {
        let mut p = Self::default();
        for line in log.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let ms = |key: &str| v[key].as_u64().unwrap_or(0);
            p.claim_read += ms("claim_read_ms");
            p.claim_write += ms("claim_write_ms");
            p.claim += ms("claim_ms");
            p.file += ms("write_ms");
            p.publish += ms("publish_ms");
            p.mark += ms("mark_ms");
            p.runs += ms("duration_ms");
        }
        p
    }

    /// What the runs spent outside the named phases: leases, run
    /// documents, backlog reads, sequences, the count checks.
    pub fn fixed(&self) -> u64 {
        self.runs
            .saturating_sub(self.claim + self.file + self.publish + self.mark)
    }

    /// One line for people.
    pub fn render(&self) -> String {
        let s = |ms: u64| ms as f64 / 1000.0;
        format!(
            "where the time went (summed over runs): claim {:.2} s (reads {:.2} s, writes {:.2} s, the rest commits and retries), file writing and fsync {:.2} s, publication {:.2} s, marking {:.2} s, per-run fixed costs {:.2} s; runs in all {:.2} s",
            s(self.claim), s(self.claim_read), s(self.claim_write), s(self.file), s(self.publish), s(self.mark), s(self.fixed()), s(self.runs)
        )
    }
}

pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub async fn export_all(uri: &str, db: &str, dir: &Path, chunk: u32) -> anyhow::Result<ExportRun> {
    export_all_with(uri, db, dir, chunk, &[]).await
}

/// [`export_all`] with more environment (a destination, say).
pub async fn export_all_with(
    uri: &str,
    db: &str,
    dir: &Path,
    chunk: u32,
    env: &[(String, String)],
) -> anyhow::Result<ExportRun> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_esr-exporter"))
        .args(["export", "--all"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("ESR_MONGODB__URI", uri)
        .env("ESR_MONGODB__DATABASE", db)
        .env("ESR_EXPORT__OUTPUT_DIR", dir)
        .env("ESR_EXPORT__CHUNK_SIZE", chunk.to_string())
        .env("ESR_RETRY__MAX_ATTEMPTS", "50")
        // The lines that carry each phase's time (see `Phases`).
        .env("ESR_LOG__LEVEL", PHASE_LOG_FILTER)
        .env("ESR_LOG__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id().context("no pid")?;
    let reader = read_all(child.stdout.take().context("no stdout")?);
    let log_reader = read_all(child.stderr.take().context("no stderr")?);
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
    let log = log_reader.await??;
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
        phases: Phases::from_log(&log),
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
pub async fn verify(records: &Collection<Document>, dir: &Path, n: usize) -> anyhow::Result<()> {
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
        let parsed = crate::support::export_file::parse(&std::fs::read(&path)?)
            .map_err(|err| anyhow::anyhow!("{name}: {err}"))?;
        for id in parsed.ids() {
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
