//! Fault-injection harness: `cargo test --test fault_harness -- --rounds 20`
//! (`-- --seed N` replays a run; `cargo test --test fault_harness -- --quick`
//! is the short run `scripts/test` and CI do).
//!
//! Each round seeds records for a few deaneries, starts `esr-exporter run`,
//! publishes a command per deanery, injects one fault at a random moment
//! (SIGKILL of the daemon, its RabbitMQ connections closed, a MongoDB
//! failpoint: write conflicts, unknown commit results, step-down codes, closed
//! connections; or, through a wire-protocol proxy, a black hole of 1-4 s or
//! a write applied whose reply is lost), restarts what was stopped, waits for completion, and checks:
//! every seeded record `EXPORTED` exactly once; each record id in exactly
//! one `.DAT` file, one file per deanery; trailer counts and manifest
//! hashes match; no temporary files; nothing dead-lettered (every command
//! was valid). Prints a table and exits non-zero on any violation.
//!
//! Every third round publishes to a bucket (moto, `scripts/services`)
//! instead of the folder, and every third to an SFTP server (OpenSSH's
//! `sshd`, one per round). Half of the bucket rounds kill the daemon at the
//! `.DAT`'s create, held by an HTTP proxy before the request or after it
//! applied; half of the SFTP rounds kill the daemon during the `.DAT`'s
//! upload, or kill `sshd` with its sessions and start it again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bson::{doc, oid::ObjectId, DateTime, Document};
use clap::Parser;
use esr_exporter::config::Settings;
use esr_exporter::domain::{Deanery, GenerationCommand, Slot};
use futures_util::TryStreamExt;
use mongodb::Client;
use tokio::process::{Child, Command};

#[path = "support/bucket.rs"]
mod bucket;
#[path = "support/env.rs"]
mod env_support;
#[path = "support/export_file.rs"]
mod export_file;
#[path = "support/mongo.rs"]
mod mongo_support;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/s3proxy.rs"]
mod s3proxy;
#[path = "support/sshd.rs"]
mod sshd;
#[path = "support/broker.rs"]
mod support;

use env_support::{daemon_env, env_line};
use mongo_support::base_uri;

#[derive(Debug, Parser)]
struct Args {
    /// Rounds to run.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Short run for CI: 6 rounds of smaller data.
    #[arg(long)]
    quick: bool,
    /// Random seed (printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Test-harness flags cargo may pass; ignored.
    #[arg(long, hide = true)]
    nocapture: bool,
}

/// xorshift64*: enough randomness for choosing faults, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone)]
enum Fault {
    KillDaemon,
    CloseBrokerConnections,
    /// MongoDB stops answering (sockets held open) for `hole_ms`.
    BlackHole {
        hole_ms: u64,
    },
    /// Every MongoDB connection closed on the next `update` (a network blip).
    ResetConnections,
    /// The next `times` requests `command` on `collection` are applied and
    /// their replies lost.
    LostReply {
        command: &'static str,
        collection: &'static str,
        times: usize,
    },
    FailPoint {
        command: &'static str,
        data: Document,
        times: i32,
        label: String,
    },
    /// Bucket rounds: SIGKILL while the first `.DAT` create is held, before
    /// it reaches the store or after it applied (its reply withheld).
    KillAtPublication {
        after_reply: bool,
    },
    /// SFTP rounds: SIGKILL while the `.DAT`'s temporary file is written.
    KillAtSftpUpload,
    /// SFTP rounds: `sshd` and its sessions SIGKILLed, started again after
    /// `down_ms`.
    KillSshd {
        down_ms: u64,
    },
    /// `<queue>.retry` and `<queue>.dlq` deleted while the daemon runs.
    DeleteQueues,
    /// A RabbitMQ memory alarm (every publisher blocked) for `alarm_ms`.
    MemoryAlarm {
        alarm_ms: u64,
    },
    /// MongoDB stops answering for `hole_ms` with the run's bound at 20 s,
    /// so the driver's monitor (10 s) notices before the bound does.
    BlackHoleMonitorFirst {
        hole_ms: u64,
    },
}

impl Fault {
    /// A fault for a round; bucket and SFTP rounds also draw kills at
    /// publication.
    fn pick_for(rng: &mut Rng, target: Target) -> Self {
        // High bits: the generator's lowest bit alternates too regularly
        // for a coin.
        let coin = |rng: &mut Rng| (rng.next() >> 40) & 1 == 0;
        match target {
            Target::Bucket if coin(rng) => Self::KillAtPublication {
                after_reply: coin(rng),
            },
            Target::Sftp if coin(rng) => match coin(rng) {
                true => Self::KillAtSftpUpload,
                false => Self::KillSshd {
                    down_ms: 200 + rng.below(2_000),
                },
            },
            _ => Self::pick(rng),
        }
    }

    fn pick(rng: &mut Rng) -> Self {
        match rng.below(12) {
            9 => Self::DeleteQueues,
            10 => Self::MemoryAlarm {
                alarm_ms: 1_000 + rng.below(3_000),
            },
            11 => Self::BlackHoleMonitorFirst {
                hole_ms: 12_000 + rng.below(3_000),
            },
            0 | 1 => Self::KillDaemon,
            2 => Self::CloseBrokerConnections,
            3 => Self::BlackHole {
                hole_ms: 1_000 + rng.below(3_000),
            },
            4 => Self::lost_reply(rng),
            5 => Self::step_down(rng),
            6 => match rng.below(2) {
                0 => Self::step_down(rng),
                _ => Self::ResetConnections,
            },
            _ => {
                let times = 1 + rng.below(4) as i32;
                let (command, data, what) = match rng.below(5) {
                    4 => ("commitTransaction", doc! {"errorCode": 388}, "388"),
                    0 => (
                        "find",
                        doc! {"errorCode": 112, "errorLabels": ["TransientTransactionError"]},
                        "112",
                    ),
                    1 => (
                        "update",
                        doc! {"errorCode": 112, "errorLabels": ["TransientTransactionError"]},
                        "112",
                    ),
                    2 => (
                        "commitTransaction",
                        doc! {"errorCode": 50, "errorLabels": ["UnknownTransactionCommitResult"]},
                        "unknown-commit",
                    ),
                    _ => ("find", doc! {"closeConnection": true}, "net-close"),
                };
                Self::FailPoint {
                    command,
                    data,
                    times,
                    label: format!("failpoint {what} on {command} x{times}"),
                }
            }
        }
    }

    /// A write applied whose reply never arrives (twice: past the
    /// driver's own retry).
    fn lost_reply(rng: &mut Rng) -> Self {
        let (command, collection) = [
            ("findAndModify", "exportLeases"),
            ("insert", "exportRuns"),
            ("update", "exportRuns"),
            ("update", "generatedAppRecords"),
            ("commitTransaction", ""),
        ][rng.below(5) as usize];
        Self::LostReply {
            command,
            collection,
            times: 1 + rng.below(2) as usize,
        }
    }

    /// What a primary stepping down answers: 10107, 11602 or 189, or the
    /// connection closed, on update, find or commitTransaction.
    fn step_down(rng: &mut Rng) -> Self {
        let command = ["update", "find", "commitTransaction"][rng.below(3) as usize];
        let (data, what) = match rng.below(4) {
            0 => (doc! {"errorCode": 10107}, "10107"),
            1 => (doc! {"errorCode": 11602}, "11602"),
            2 => (doc! {"errorCode": 189}, "189"),
            _ => (doc! {"closeConnection": true}, "step-down close"),
        };
        let times = 1 + rng.below(3) as i32;
        Self::FailPoint {
            command,
            data,
            times,
            label: format!("failpoint {what} on {command} x{times}"),
        }
    }

    /// True when the daemon must reach MongoDB through the proxy.
    fn needs_proxy(&self) -> bool {
        matches!(
            self,
            Self::BlackHole { .. }
                | Self::BlackHoleMonitorFirst { .. }
                | Self::LostReply { .. }
                | Self::ResetConnections
        )
    }

    fn label(&self) -> String {
        match self {
            Self::KillDaemon => "SIGKILL daemon".to_owned(),
            Self::CloseBrokerConnections => "close AMQP conns".to_owned(),
            Self::BlackHole { hole_ms } => format!("black hole {hole_ms} ms"),
            Self::ResetConnections => "reset MongoDB conns".to_owned(),
            Self::LostReply {
                command,
                collection,
                times,
            } => format!("lost reply {command} {collection} x{times}"),
            Self::FailPoint { label, .. } => label.clone(),
            Self::KillAtPublication { after_reply: false } => "SIGKILL at .DAT create".to_owned(),
            Self::KillAtPublication { after_reply: true } => {
                "SIGKILL after .DAT create, reply lost".to_owned()
            }
            Self::KillAtSftpUpload => "SIGKILL during .DAT upload".to_owned(),
            Self::KillSshd { down_ms } => format!("sshd killed, down {down_ms} ms"),
            Self::DeleteQueues => "delete retry and DLQ".to_owned(),
            Self::MemoryAlarm { alarm_ms } => format!("memory alarm {alarm_ms} ms"),
            Self::BlackHoleMonitorFirst { hole_ms } => {
                format!("black hole {hole_ms} ms, monitor first")
            }
        }
    }
}

/// Where a round publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Folder,
    Bucket,
    Sftp,
}

impl Target {
    /// Every third round to a bucket, every third to an SFTP server.
    fn of_round(index: usize) -> Self {
        match index % 3 {
            0 => Self::Bucket,
            2 => Self::Sftp,
            _ => Self::Folder,
        }
    }
}

const CODES: [&str; 8] = ["MER", "EOE", "LDN", "OXF", "WES", "SEV", "KSS", "NWN"];

fn record(deanery: &str, n: usize) -> Document {
    let day = 86_400_000_i64;
    doc! {
        "_id": ObjectId::new(), "deanery": deanery, "status": "TO_EXPORT",
        "positionNumber": format!("{deanery}/F/{n:06}"), "firstName": "Rhys",
        "lastName": format!("Evans-{n}"), "placementStartDate": DateTime::from_millis(20_800 * day),
        "wte": 1.0, "createdAt": DateTime::now(),
    }
}

struct Round {
    id: String,
    env: HashMap<String, String>,
    settings: Settings,
    dir: PathBuf,
    log_dir: PathBuf,
    daemons_started: usize,
    bucket: Option<bucket::TestBucket>,
    sftp: Option<sshd::TestSshd>,
}

impl Round {
    fn spawn_daemon(&mut self) -> anyhow::Result<Child> {
        self.daemons_started += 1;
        let log = std::fs::File::create(
            self.log_dir
                .join(format!("daemon-{}.log", self.daemons_started)),
        )?;
        Ok(Command::new(env!("CARGO_BIN_EXE_esr-exporter"))
            .arg("run")
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?)
    }
}

/// Checks the round's guarantees; returns the violations.
async fn check(
    client: &Client,
    round: &Round,
    seeded: &HashMap<String, Vec<ObjectId>>,
) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    let records = client
        .database(&round.settings.mongodb.database)
        .collection::<Document>("generatedAppRecords");
    let total: usize = seeded.values().map(Vec::len).sum();
    let exported = records.count_documents(doc! {"status": "EXPORTED"}).await?;
    if exported != total as u64 {
        violations.push(format!("{exported} of {total} records EXPORTED"));
    }
    let mut file_of: HashMap<String, String> = HashMap::new();
    let mut files_per_deanery: HashMap<String, usize> = HashMap::new();
    let (files, temporaries) = published(round).await?;
    for name in temporaries {
        violations.push(format!("temporary file left: {name}"));
    }
    for (name, bytes, manifest) in files {
        let parsed = match export_file::parse(&bytes) {
            Ok(parsed) => parsed,
            Err(err) => {
                violations.push(format!("{name}: {err}"));
                continue;
            }
        };
        *files_per_deanery
            .entry(parsed.header.deanery.clone())
            .or_default() += 1;
        let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
        let count = parsed.details.len();
        violations.extend(export_file::manifest_mismatches(
            &name, &bytes, count, &manifest,
        ));
        for id in parsed.ids() {
            if let Some(other) = file_of.insert(id.clone(), name.clone()) {
                violations.push(format!("record {id} in {other} and {name}"));
            }
        }
    }
    for (deanery, ids) in seeded {
        let files = files_per_deanery.get(deanery).copied().unwrap_or(0);
        if files != 1 {
            violations.push(format!("{deanery}: {files} files"));
        }
        let expected: HashSet<String> = ids.iter().map(|id| id.to_hex()).collect();
        let missing = expected
            .iter()
            .filter(|id| !file_of.contains_key(*id))
            .count();
        if missing > 0 {
            violations.push(format!("{deanery}: {missing} records in no file"));
        }
    }
    let mut cursor = records
        .find(doc! {})
        .projection(doc! {"_id": 1, "exportFileName": 1})
        .await?;
    let mut mismatched = 0;
    while let Some(record) = cursor.try_next().await? {
        let id = record.get_object_id("_id")?.to_hex();
        if record.get_str("exportFileName").ok() != file_of.get(&id).map(String::as_str) {
            mismatched += 1;
        }
    }
    if mismatched > 0 {
        violations.push(format!(
            "{mismatched} records name another file than theirs"
        ));
    }
    let dead = support::queue_len(
        &round.settings.amqp,
        &round.settings.amqp.dead_letter_queue(),
    )
    .await?;
    if dead > 0 {
        violations.push(format!("{dead} valid commands dead-lettered"));
    }
    Ok(violations)
}

/// A published file: name, bytes, its manifest's bytes.
type Published = (String, Vec<u8>, Vec<u8>);

/// The round's published files and leftover temporaries, from its folder
/// or its bucket.
async fn published(round: &Round) -> anyhow::Result<(Vec<Published>, Vec<String>)> {
    let (mut files, mut temporaries) = (Vec::new(), Vec::new());
    if let Some(bucket) = &round.bucket {
        let objects = bucket.objects().await;
        for (key, bytes) in &objects {
            let name = key.rsplit('/').next().unwrap_or(key).to_owned();
            if name.starts_with('.') {
                temporaries.push(key.clone());
            } else if name.ends_with(".DAT") {
                let manifest = objects
                    .get(&format!("{key}.json"))
                    .cloned()
                    .unwrap_or_default();
                files.push((name, bytes.clone(), manifest));
            }
        }
        return Ok((files, temporaries));
    }
    if let Some(sshd) = &round.sftp {
        let dir = sshd.inbox.clone();
        let (files, _) = folder_files(&dir)?;
        return Ok((files, sshd.temporaries()));
    }
    folder_files(&round.dir)
}

/// The `.DAT` files of a folder with their manifests, and its `.tmp` files.
fn folder_files(dir: &Path) -> anyhow::Result<(Vec<Published>, Vec<String>)> {
    let (mut files, mut temporaries) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            temporaries.push(name);
        } else if name.ends_with(".DAT") {
            let manifest = std::fs::read(path.with_file_name(format!("{name}.json")))?;
            files.push((name, std::fs::read(&path)?, manifest));
        }
    }
    Ok((files, temporaries))
}

async fn run_round(
    client: &Client,
    rng: &mut Rng,
    index: usize,
    quick: bool,
    work: &Path,
) -> anyhow::Result<Report> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let dir = work.join(format!("round-{index:02}"));
    let log_dir = dir.join("logs");
    let out = dir.join("exports");
    std::fs::create_dir_all(&log_dir)?;
    let app = format!("esr-faults-{id}");
    let chunk = [10u64, 25, 50, 100, 250][rng.below(5) as usize];
    let target = Target::of_round(index);
    let fault = Fault::pick_for(rng, target);
    let target_bucket = match target {
        Target::Bucket => Some(bucket::TestBucket::create().await),
        _ => None,
    };
    let target_sftp = match target {
        Target::Sftp => Some(sshd::TestSshd::start().await),
        _ => None,
    };
    let s3proxy = match fault {
        Fault::KillAtPublication { .. } => {
            Some(s3proxy::S3Proxy::start(&bucket::s3_endpoint()).await)
        }
        _ => None,
    };
    let proxy = match fault.needs_proxy() {
        true => Some(proxy::WireProxy::start(&mongo_support::primary_of(client).await?).await),
        false => None,
    };
    let uri = proxy.as_ref().map_or_else(base_uri, proxy::WireProxy::uri);
    let mut env: HashMap<String, String> = daemon_env(&app, &format!("esr.faults.{id}"))
        .into_iter()
        .collect();
    env.extend(env_line(
        "ESR_EXPORT__LEASE_SECONDS=2 ESR_AMQP__MAX_ATTEMPTS=100 ESR_RETRY__MAX_DELAY_MS=200",
    ));
    let where_to = [
        ("ESR_MONGODB__URI", format!("{uri}&appName={app}")),
        ("ESR_MONGODB__DATABASE", format!("esr_faults_{id}")),
        ("ESR_EXPORT__OUTPUT_DIR", out.display().to_string()),
        ("ESR_EXPORT__CHUNK_SIZE", chunk.to_string()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
    ];
    env.extend(where_to.map(|(key, value)| (key.to_owned(), value)));
    if let Some(target) = &target_bucket {
        let endpoint = s3proxy
            .as_ref()
            .map_or_else(bucket::s3_endpoint, |p| p.endpoint());
        env.extend(bucket::bucket_env(&target.destination(), &endpoint));
    }
    if let Some(sshd) = &target_sftp {
        env.extend(sshd.env());
    }
    if proxy.is_some() {
        // A black hole fails an attempt after this long; with the bound at
        // 20 s, the driver's monitor (10 s) gives up on the server first.
        let bound = match fault {
            Fault::BlackHoleMonitorFirst { .. } => "20000",
            _ => "2000",
        };
        env.insert("ESR_MONGODB__OPERATION_TIMEOUT_MS".into(), bound.into());
    }
    let settings = Settings::load_with_env(None, Some(env.clone()))?;
    let mut round = Round {
        id,
        env,
        settings,
        dir: out,
        log_dir,
        daemons_started: 0,
        bucket: target_bucket,
        sftp: target_sftp,
    };

    // Seed.
    let records = client
        .database(&round.settings.mongodb.database)
        .collection::<Document>("generatedAppRecords");
    let deaneries = 2 + rng.below(2) as usize;
    let mut seeded: HashMap<String, Vec<ObjectId>> = HashMap::new();
    let first = rng.below(CODES.len() as u64) as usize;
    for k in 0..deaneries {
        let code = CODES[(first + k) % CODES.len()];
        let n = if quick {
            500 + rng.below(1_500)
        } else {
            1_000 + rng.below(4_000)
        } as usize;
        let docs: Vec<Document> = (0..n).map(|i| record(code, i)).collect();
        seeded.insert(
            code.to_owned(),
            docs.iter()
                .map(|d| d.get_object_id("_id").unwrap())
                .collect(),
        );
        records.insert_many(docs).await?;
    }
    let total: usize = seeded.values().map(Vec::len).sum();

    // Start, command, fault.
    let started = Instant::now();
    let mut daemon = round.spawn_daemon()?;
    let publisher =
        esr_exporter::broker::Publisher::connect(&round.settings.amqp, "harness").await?;
    for code in seeded.keys() {
        let command = GenerationCommand::new(&Deanery::parse(code)?, Slot::Manual, "fault-harness");
        publisher.publish(&command).await?;
    }
    publisher.close().await;
    let at_ms = rng.below(if quick { 800 } else { 2_000 });
    tokio::time::sleep(Duration::from_millis(at_ms)).await;
    let admin = client.database("admin");
    let mut missed = false;
    match &fault {
        Fault::KillAtPublication { after_reply } => {
            let proxy = s3proxy
                .as_ref()
                .context("kill at publication without a proxy")?;
            let action = match after_reply {
                true => s3proxy::Action::HoldAfter,
                false => s3proxy::Action::HoldBefore,
            };
            let held = proxy.add(s3proxy::Rule::new("PUT", ".DAT", action).times(1));
            let deadline = Instant::now() + Duration::from_secs(60);
            while held.matched() == 0 && Instant::now() < deadline {
                // Every file went by before the rule was in place.
                let exported = doc! {"status": "EXPORTED"};
                if records.count_documents(exported).await? as usize == total {
                    missed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if *after_reply {
                tokio::time::sleep(Duration::from_millis(200)).await; // it applies
            }
            daemon.kill().await?; // SIGKILL
            daemon = round.spawn_daemon()?;
        }
        Fault::KillDaemon => {
            daemon.kill().await?; // SIGKILL
            daemon = round.spawn_daemon()?;
        }
        Fault::KillAtSftpUpload => {
            let sshd = round.sftp.as_ref().context("SFTP fault without sshd")?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let uploading = |sshd: &sshd::TestSshd| {
                sshd.temporaries()
                    .iter()
                    .any(|t| t.starts_with(".DE_") && t.contains(".DAT.") && !t.contains(".json."))
            };
            while !uploading(sshd) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if !uploading(sshd) {
                missed = true; // the upload went by between two looks
            }
            daemon.kill().await?; // SIGKILL
            daemon = round.spawn_daemon()?;
        }
        Fault::KillSshd { down_ms } => {
            let sshd = round.sftp.as_mut().context("SFTP fault without sshd")?;
            sshd.kill();
            tokio::time::sleep(Duration::from_millis(*down_ms)).await;
            sshd.restart().await;
        }
        Fault::CloseBrokerConnections => {
            support::close_connections(&app).await?;
        }
        Fault::DeleteQueues => {
            support::delete_queues(
                &round.settings.amqp,
                &[
                    round.settings.amqp.retry_queue(),
                    round.settings.amqp.dead_letter_queue(),
                ],
            )
            .await?;
        }
        Fault::MemoryAlarm { alarm_ms } => {
            let _alarm = support::MemoryAlarm::raise().await?;
            tokio::time::sleep(Duration::from_millis(*alarm_ms)).await;
        }
        Fault::BlackHole { hole_ms } | Fault::BlackHoleMonitorFirst { hole_ms } => {
            let proxy = proxy.as_ref().context("black hole without a proxy")?;
            proxy.black_hole();
            tokio::time::sleep(Duration::from_millis(*hole_ms)).await;
            proxy.heal();
        }
        Fault::LostReply {
            command,
            collection,
            times,
        } => {
            let proxy = proxy.as_ref().context("lost reply without a proxy")?;
            let (command, collection) = (*command, *collection);
            proxy.arm_times(proxy::Fault::LostReply, *times, move |r| {
                r.is(command, collection, "")
            });
        }
        Fault::ResetConnections => {
            let proxy = proxy.as_ref().context("reset without a proxy")?;
            proxy.arm(proxy::Fault::Reset, |r| r.command == "update");
        }
        Fault::FailPoint {
            command,
            data,
            times,
            ..
        } => {
            let mut data = data.clone();
            data.insert("failCommands", vec![*command]);
            data.insert("appName", &app);
            admin
                .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": *times}, "data": data})
                .await
                .context("configureFailPoint (SecantusDB needs --enable-test-commands)")?;
        }
    }

    // Wait for completion.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = records.count_documents(doc! {"status": "EXPORTED"}).await? == total as u64
            && support::queue_len(&round.settings.amqp, &round.settings.amqp.queue).await? == 0
            && support::queue_len(&round.settings.amqp, &round.settings.amqp.retry_queue()).await?
                == 0;
        if done {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "round {}: the daemon exited on its own ({status}); logs in {}",
                round.id,
                round.log_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    if matches!(fault, Fault::FailPoint { .. }) {
        admin
            .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
            .await?;
    }
    // Stop cleanly.
    let pid = daemon.id().context("daemon pid")?.to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(60), daemon.wait()).await??;
    let mut violations = check(client, &round, &seeded).await?;
    if !status.success() {
        violations.push(format!("daemon exited with {status} on SIGTERM"));
    }
    if !violations.is_empty() {
        violations.push(format!("logs in {}", round.log_dir.display()));
    }

    // A fault armed on a request that never came did nothing: say so.
    let mut fired = match &proxy {
        Some(proxy) if proxy.fired().is_none() => " (not hit)".to_owned(),
        Some(proxy) if matches!(fault, Fault::LostReply { .. }) => {
            format!(" (hit {})", proxy.fired_times())
        }
        _ => String::new(),
    };
    if missed {
        fired.push_str(" (not hit)");
    }
    match target {
        Target::Bucket => fired.push_str(" [s3]"),
        Target::Sftp => fired.push_str(" [sftp]"),
        Target::Folder => {}
    }

    // Clean up the round's queues and database.
    support::delete_topology(&round.settings.amqp).await;
    client
        .database(&round.settings.mongodb.database)
        .drop()
        .await?;
    Ok(Report {
        fault: format!("{} (chunk {chunk}){fired}", fault.label()),
        records: total,
        fault_at_ms: at_ms,
        took: elapsed,
        violations,
    })
}

/// What one round did and found.
struct Report {
    /// The fault, its chunk size, whether it was hit, the destination.
    fault: String,
    records: usize,
    /// When the fault came, after the commands were published.
    fault_at_ms: u64,
    took: Duration,
    /// The guarantees the round found broken; empty when it passed.
    violations: Vec<String>,
}

impl Report {
    /// The round's row of the table.
    fn row(&self, index: usize) -> String {
        let result = match self.violations.is_empty() {
            true => "ok".to_owned(),
            false => format!("VIOLATED: {}", self.violations.join("; ")),
        };
        let (fault, records, at_ms) = (&self.fault, self.records, self.fault_at_ms);
        let took = self.took.as_secs_f64();
        format!("{index:>5}  {fault:<58} {records:>7} {at_ms:>6}ms {took:>8.1}s  {result}")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rounds = if args.quick { 6 } else { args.rounds };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    let mut rng = Rng(seed);
    let client = Client::with_uri_str(base_uri()).await?;
    let work = tempfile::Builder::new().prefix("esr-faults-").tempdir()?;
    println!("fault-injection harness: {rounds} rounds, seed {seed}");
    println!(
        "{:>5}  {:<58} {:>7} {:>8} {:>9}  result",
        "round", "fault", "records", "fault at", "took"
    );
    let mut failed = 0;
    for index in 1..=rounds {
        let round = run_round(&client, &mut rng, index, args.quick, work.path()).await;
        let report = match round {
            Ok(report) => report,
            // The round could not be carried out: keep its logs, which
            // the error names, before the folder would be removed.
            Err(err) => {
                let kept = work.keep();
                return Err(err.context(format!("logs kept in {}", kept.display())));
            }
        };
        if !report.violations.is_empty() {
            failed += 1;
        }
        println!("{}", report.row(index));
    }
    if failed > 0 {
        // Keep the logs of failed rounds.
        let kept = work.keep();
        println!("logs kept in {}", kept.display());
    }
    println!("faults: {} passed, {failed} failed", rounds - failed);
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
