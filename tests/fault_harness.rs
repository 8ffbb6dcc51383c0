//! Fault-injection harness: `cargo test --test fault_harness -- --rounds 20`
//! (`-- --seed N` replays a run; `cargo test --test fault_harness -- --quick`
//! is the short run `scripts/test` and CI do).
//!
//! Each round seeds records for a few deaneries, starts `esr-exporter run`,
//! publishes a command per deanery, injects one fault at a random moment,
//! restarts what was stopped, waits for completion, and checks: every
//! seeded record `EXPORTED` exactly once; each record id in exactly one
//! `.DAT` file, one file per deanery; trailer counts and manifest hashes
//! match; no temporary files; nothing dead-lettered (every command was
//! valid). A publication the daemon holds in doubt (a kill during a final
//! create) is settled as an operator would: `resolve FILE --delivered` when
//! the round's collector took the file (it is then counted among the
//! published), `--not-delivered` otherwise.
//!
//! A run first meets every fault kind ([`Kind::ALL`]) once, in an order
//! and on targets drawn from the seed: kills at a `.DAT`'s create on a
//! bucket (moto, `scripts/services`; once with the file taken by a
//! collector before the restart), kills during an upload and of the server
//! on each SFTP server (OpenSSH's `sshd` and ProFTPD's `mod_sftp`, one per
//! round), every other kind spread over the folder, a bucket and the two
//! SFTP servers. Then `--rounds N` rounds of a random kind on a random
//! target (20; 3 with `--quick`).
//!
//! A fault must be hit to count: a proxy's fault fired on a request, a kill
//! at publication or upload found the request or the upload under way, a
//! failpoint failed at least one of the daemon's commands, a black hole or
//! an `sshd` kill came while records were still to export, AMQP
//! connections were there to close. A round whose fault was not hit is
//! drawn again with an earlier moment, up to three tries, and is otherwise
//! reported as not run. The run prints a table, the kinds it covered, and
//! exits non-zero when a round violated a guarantee or was not run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bson::{doc, oid::ObjectId, DateTime, Document};
use clap::Parser;
use esr_exporter::config::Settings;
use esr_exporter::domain::{Deanery, GenerationCommand, Slot};
use futures_util::TryStreamExt;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use tokio::process::{Child, Command};

#[path = "support/mod.rs"]
mod support;

use support::env::{daemon_env, env_line};
use support::mongo::base_uri;

#[derive(Debug, Parser)]
struct Args {
    /// Random rounds after every kind was met once (default 20; 3 with
    /// `--quick`).
    #[arg(long)]
    rounds: Option<usize>,
    /// Short run for CI: every kind once, then 3 random rounds, of smaller
    /// data.
    #[arg(long)]
    quick: bool,
    /// Random seed (printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Test-harness flags cargo may pass; ignored.
    #[arg(long, hide = true)]
    nocapture: bool,
}

/// Tries of a round whose fault was not hit, each at an earlier moment.
const TRIES: u32 = 3;

/// xorshift64*: enough randomness for choosing faults, reproducible by seed.
struct Rng(u64);

impl Rng {
    /// The generator of one try of one round: the same for a seed whatever
    /// the rounds before it did (a try more or less, a fault hit or not).
    fn of(seed: u64, round: usize, attempt: u32) -> Self {
        // splitmix64 of the three, so neighbouring rounds start apart.
        let mut z = seed
            ^ (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(attempt).wrapping_mul(0xD1B5_4A32_D192_ED03);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// A coin from the high bits: the generator's lowest bit alternates
    /// too regularly.
    fn coin(&mut self) -> bool {
        (self.next() >> 40) & 1 == 0
    }
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// A kind of fault: what a run must meet at least once. Each [`Fault`] is
/// of one kind ([`Fault::kind`]); each kind draws its faults
/// ([`Kind::draw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    KillDaemon,
    CloseBrokerConnections,
    BlackHole,
    BlackHoleMonitorFirst,
    ResetConnections,
    LostReply,
    WriteConflict,
    UnknownCommitResult,
    TooLargeOnCommit,
    NetClose,
    StepDown,
    KillBeforeCreate,
    KillAfterCreate,
    KillTakenInDoubt,
    KillAtSftpUpload,
    KillSshd,
    DeleteQueues,
    MemoryAlarm,
}

impl Kind {
    const ALL: [Self; 18] = [
        Self::KillDaemon,
        Self::CloseBrokerConnections,
        Self::BlackHole,
        Self::BlackHoleMonitorFirst,
        Self::ResetConnections,
        Self::LostReply,
        Self::WriteConflict,
        Self::UnknownCommitResult,
        Self::TooLargeOnCommit,
        Self::NetClose,
        Self::StepDown,
        Self::KillBeforeCreate,
        Self::KillAfterCreate,
        Self::KillTakenInDoubt,
        Self::KillAtSftpUpload,
        Self::KillSshd,
        Self::DeleteQueues,
        Self::MemoryAlarm,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::KillDaemon => "SIGKILL daemon",
            Self::CloseBrokerConnections => "close AMQP conns",
            Self::BlackHole => "black hole",
            Self::BlackHoleMonitorFirst => "black hole, monitor first",
            Self::ResetConnections => "reset MongoDB conns",
            Self::LostReply => "lost reply",
            Self::WriteConflict => "failpoint 112 on find/update",
            Self::UnknownCommitResult => "failpoint unknown commit result",
            Self::TooLargeOnCommit => "failpoint 388 on commit",
            Self::NetClose => "failpoint net-close on find",
            Self::StepDown => "step-down codes",
            Self::KillBeforeCreate => "SIGKILL at .DAT create",
            Self::KillAfterCreate => "SIGKILL after .DAT create",
            Self::KillTakenInDoubt => "SIGKILL after .DAT create, taken",
            Self::KillAtSftpUpload => "SIGKILL during SFTP upload",
            Self::KillSshd => "sshd killed",
            Self::DeleteQueues => "delete retry and DLQ",
            Self::MemoryAlarm => "memory alarm",
        }
    }

    /// The one target a kind needs, if it needs one.
    fn only_on(self) -> Option<Target> {
        match self {
            Self::KillBeforeCreate | Self::KillAfterCreate | Self::KillTakenInDoubt => {
                Some(Target::Bucket)
            }
            Self::KillAtSftpUpload | Self::KillSshd => Some(Target::Sftp),
            _ => None,
        }
    }

    /// Whether a round of this kind can publish to `target` (an SFTP
    /// kind to either SFTP server).
    fn fits(self, target: Target) -> bool {
        self.only_on()
            .is_none_or(|only| only == target || (only, target) == (Target::Sftp, Target::Proftpd))
    }

    /// A fault of this kind, its details drawn.
    fn draw(self, rng: &mut Rng) -> Fault {
        match self {
            Self::KillDaemon => Fault::KillDaemon,
            Self::CloseBrokerConnections => Fault::CloseBrokerConnections,
            Self::BlackHole => Fault::BlackHole {
                hole_ms: 1_000 + rng.below(3_000),
            },
            Self::BlackHoleMonitorFirst => Fault::BlackHoleMonitorFirst {
                hole_ms: 12_000 + rng.below(3_000),
            },
            Self::ResetConnections => Fault::ResetConnections,
            Self::LostReply => Fault::lost_reply(rng),
            Self::WriteConflict => {
                let command = if rng.coin() { "find" } else { "update" };
                let data = doc! {"errorCode": 112, "errorLabels": ["TransientTransactionError"]};
                Fault::fail_point(self, command, data, "112", rng)
            }
            Self::UnknownCommitResult => {
                let data =
                    doc! {"errorCode": 50, "errorLabels": ["UnknownTransactionCommitResult"]};
                Fault::fail_point(self, "commitTransaction", data, "unknown-commit", rng)
            }
            Self::TooLargeOnCommit => {
                let data = doc! {"errorCode": 388};
                Fault::fail_point(self, "commitTransaction", data, "388", rng)
            }
            Self::NetClose => {
                let data = doc! {"closeConnection": true};
                Fault::fail_point(self, "find", data, "net-close", rng)
            }
            Self::StepDown => Fault::step_down(rng),
            Self::KillBeforeCreate => Fault::KillAtPublication {
                after_reply: false,
                taken: false,
            },
            Self::KillAfterCreate => Fault::KillAtPublication {
                after_reply: true,
                taken: false,
            },
            Self::KillTakenInDoubt => Fault::KillAtPublication {
                after_reply: true,
                taken: true,
            },
            Self::KillAtSftpUpload => Fault::KillAtSftpUpload,
            Self::KillSshd => Fault::KillSshd {
                down_ms: 200 + rng.below(2_000),
            },
            Self::DeleteQueues => Fault::DeleteQueues,
            Self::MemoryAlarm => Fault::MemoryAlarm {
                alarm_ms: 1_000 + rng.below(3_000),
            },
        }
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
    /// A `failCommand` failpoint on the daemon's connections: the next
    /// `times` `command`s fail as `data` says.
    FailPoint {
        kind: Kind,
        command: &'static str,
        data: Document,
        times: i32,
        label: String,
    },
    /// Bucket rounds: SIGKILL while the first `.DAT` create is held, before
    /// it reaches the store or after it applied (its reply withheld); when
    /// `taken`, a collector then takes the `.DAT` before the daemon starts
    /// again (a publication in doubt, settled `--delivered`).
    KillAtPublication {
        after_reply: bool,
        taken: bool,
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
    fn kind(&self) -> Kind {
        match self {
            Self::KillDaemon => Kind::KillDaemon,
            Self::CloseBrokerConnections => Kind::CloseBrokerConnections,
            Self::BlackHole { .. } => Kind::BlackHole,
            Self::BlackHoleMonitorFirst { .. } => Kind::BlackHoleMonitorFirst,
            Self::ResetConnections => Kind::ResetConnections,
            Self::LostReply { .. } => Kind::LostReply,
            Self::FailPoint { kind, .. } => *kind,
            Self::KillAtPublication { taken: true, .. } => Kind::KillTakenInDoubt,
            Self::KillAtPublication {
                after_reply: false, ..
            } => Kind::KillBeforeCreate,
            Self::KillAtPublication {
                after_reply: true, ..
            } => Kind::KillAfterCreate,
            Self::KillAtSftpUpload => Kind::KillAtSftpUpload,
            Self::KillSshd { .. } => Kind::KillSshd,
            Self::DeleteQueues => Kind::DeleteQueues,
            Self::MemoryAlarm { .. } => Kind::MemoryAlarm,
        }
    }

    /// `command` failed as `data` says, the next 1-4 times.
    fn fail_point(
        kind: Kind,
        command: &'static str,
        data: Document,
        what: &str,
        rng: &mut Rng,
    ) -> Self {
        let times = 1 + rng.below(4) as i32;
        Self::FailPoint {
            kind,
            command,
            data,
            times,
            label: format!("failpoint {what} on {command} x{times}"),
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
            kind: Kind::StepDown,
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
            } => format!("lost reply {command} {collection} x{times}").replace("  ", " "),
            Self::FailPoint { label, .. } => label.clone(),
            Self::KillAtPublication { taken: true, .. } => {
                "SIGKILL after .DAT create, reply lost, file taken".to_owned()
            }
            Self::KillAtPublication {
                after_reply: false, ..
            } => "SIGKILL at .DAT create".to_owned(),
            Self::KillAtPublication {
                after_reply: true, ..
            } => "SIGKILL after .DAT create, reply lost".to_owned(),
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
    /// OpenSSH's `sshd`.
    Sftp,
    /// ProFTPD's `mod_sftp`.
    Proftpd,
}

impl Target {
    const ALL: [Self; 4] = [Self::Folder, Self::Bucket, Self::Sftp, Self::Proftpd];

    fn name(self) -> &'static str {
        match self {
            Self::Folder => "folder",
            Self::Bucket => "s3",
            Self::Sftp => "sftp",
            Self::Proftpd => "sftp-proftpd",
        }
    }
}

/// One round of a run: a kind on a target.
#[derive(Debug, Clone, Copy)]
struct Planned {
    kind: Kind,
    target: Target,
}

/// The run's rounds: every kind once (the kinds that need a target on it,
/// an SFTP kind on each SFTP server; the others in a drawn order over the
/// targets in turn), then `random` rounds of a kind drawn for a drawn
/// target.
fn plan(seed: u64, random: usize) -> Vec<Planned> {
    let mut rng = Rng::of(seed, 0, 0);
    let mut free: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|kind| kind.only_on().is_none())
        .collect();
    rng.shuffle(&mut free);
    let targets = Target::ALL.len();
    let first = rng.below(targets as u64) as usize;
    let mut rounds: Vec<Planned> = free
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Planned {
            kind,
            target: Target::ALL[(first + i) % targets],
        })
        .collect();
    for kind in Kind::ALL {
        let fitting = Target::ALL.into_iter().filter(|t| kind.fits(*t));
        if kind.only_on().is_some() {
            rounds.extend(fitting.map(|target| Planned { kind, target }));
        }
    }
    rng.shuffle(&mut rounds);
    for _ in 0..random {
        let target = Target::ALL[rng.below(targets as u64) as usize];
        let fitting: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|kind| kind.fits(target))
            .collect();
        let kind = fitting[rng.below(fitting.len() as u64) as usize];
        rounds.push(Planned { kind, target });
    }
    rounds
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
    bucket: Option<support::bucket::TestBucket>,
    sftp: Option<support::sshd::TestSshd>,
    /// The `.DAT` files a collector took from the bucket.
    collected: Vec<Published>,
    /// The publications in doubt the round settled, each `FILE how`.
    settled: Vec<String>,
}

impl Round {
    /// Takes the bucket's first `.DAT` as a collector does (kept, with its
    /// manifest, for the checks); false when there is none.
    async fn collect(&mut self) -> anyhow::Result<bool> {
        let bucket = self
            .bucket
            .as_ref()
            .context("a collector without a bucket")?;
        let objects = bucket.objects().await;
        let Some((key, bytes)) = objects.iter().find(|(k, _)| k.ends_with(".DAT")) else {
            return Ok(false);
        };
        let manifest = objects
            .get(&format!("{key}.json"))
            .cloned()
            .unwrap_or_default();
        let name = key.rsplit('/').next().unwrap_or(key).to_owned();
        bucket.delete(key).await;
        self.collected.push((name, bytes.clone(), manifest));
        Ok(true)
    }

    /// Settles every publication held in doubt as an operator would:
    /// `--delivered` when the collector has the file, else
    /// `--not-delivered` (nothing else takes files here).
    async fn settle_doubts(&mut self, runs: &Collection<Document>) -> anyhow::Result<()> {
        let held = doc! {"doubt.since": {"$exists": true}, "doubt.settled": {"$exists": false}};
        let mut cursor = runs.find(held).await?;
        while let Some(run) = cursor.try_next().await? {
            let file = run.get_str("fileName")?.to_owned();
            let taken = self.collected.iter().any(|(name, _, _)| *name == file);
            let how = if taken {
                "--delivered"
            } else {
                "--not-delivered"
            };
            let output = Command::new(env!("CARGO_BIN_EXE_esr-exporter"))
                .args(["resolve", &file, how])
                .env_clear()
                .envs(&self.env)
                .stdin(Stdio::null())
                .output()
                .await?;
            anyhow::ensure!(
                output.status.success(),
                "resolve {file} {how}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            self.settled.push(format!("{file} {how}"));
        }
        Ok(())
    }

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
        let parsed = match support::export_file::parse(&bytes) {
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
        violations.extend(support::export_file::manifest_mismatches(
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
    let dead = support::broker::queue_len(
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
        files.extend(round.collected.iter().cloned());
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

/// How many of a failpoint's `times` failures the daemon met. The
/// harness sends `command` itself from a client of the same application
/// name (the failpoint's scope), without the driver's retries, until it
/// succeeds: each failure is one the daemon left. Works the same on
/// `mongod`, and on SecantusDB, whose `configureFailPoint` reply has no
/// `count`.
async fn fail_point_met(
    app: &str,
    database: &str,
    command: &str,
    times: i32,
) -> anyhow::Result<i32> {
    let mut options = ClientOptions::parse(base_uri()).await?;
    options.app_name = Some(app.to_owned());
    options.retry_reads = Some(false);
    options.retry_writes = Some(false);
    options.server_selection_timeout = Some(Duration::from_secs(20));
    let probe = Client::with_options(options)?;
    let scratch: Collection<Document> = probe.database(database).collection("faultProbe");
    // Created outside the failpoint's commands, so a transaction may write.
    scratch.insert_one(doc! {}).await?;
    let mut left = 0;
    for _ in 0..times {
        let answered = match command {
            "find" => scratch.find_one(doc! {}).await.map(drop),
            "update" => scratch
                .update_one(doc! {}, doc! {"$inc": {"n": 1}})
                .await
                .map(drop),
            "commitTransaction" => {
                let mut session = probe.start_session().await?;
                session.start_transaction().await?;
                scratch.insert_one(doc! {}).session(&mut session).await?;
                session.commit_transaction().await
            }
            other => bail!("no probe for a failpoint on {other}"),
        };
        match answered {
            Ok(()) => break,
            Err(_) => left += 1,
        }
    }
    probe.shutdown().await;
    Ok(times - left)
}

/// Proves [`fail_point_met`] counts: a failpoint armed for an application
/// nobody runs is met 0 times (and the probe uses it up). A server has one
/// `failCommand` failpoint, which each `configureFailPoint` replaces: when
/// another client sets failpoints on the same server (tests run alongside),
/// a replaced failpoint would count as met, so the harness stops instead.
async fn fail_points_counted(client: &Client) -> anyhow::Result<()> {
    let app = format!("esr-faults-unmet-{}", uuid::Uuid::new_v4().simple());
    let data = doc! {"errorCode": 112, "failCommands": ["find"], "appName": &app};
    client
        .database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": data})
        .await
        .context("configureFailPoint (SecantusDB needs --enable-test-commands)")?;
    let database = format!("esr_faults_unmet_{}", &app[17..29]);
    let met = fail_point_met(&app, &database, "find", 1).await?;
    client.database(&database).drop().await?;
    anyhow::ensure!(
        met == 0,
        "a failpoint nobody met counted as met {met} times: another client sets \
         failpoints on this server (run the harness alone against it), or the \
         server ignores them"
    );
    Ok(())
}

/// True while some seeded record is not yet `EXPORTED`.
async fn under_way(records: &Collection<Document>, total: usize) -> anyhow::Result<bool> {
    let exported = records.count_documents(doc! {"status": "EXPORTED"}).await?;
    Ok(exported < total as u64)
}

/// One try of a round: `planned`'s kind on its target, its details, data
/// and moment drawn from `rng`; the moment is earlier at each try (a fault
/// that came after the work is drawn again).
async fn run_round(
    client: &Client,
    rng: &mut Rng,
    planned: Planned,
    attempt: u32,
    quick: bool,
    dir: &Path,
) -> anyhow::Result<Report> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let log_dir = dir.join("logs");
    let out = dir.join("exports");
    std::fs::create_dir_all(&log_dir)?;
    let app = format!("esr-faults-{id}");
    let chunk = [10u64, 25, 50, 100, 250][rng.below(5) as usize];
    let target = planned.target;
    let fault = planned.kind.draw(rng);
    let target_bucket = match target {
        Target::Bucket => Some(support::bucket::TestBucket::create().await),
        _ => None,
    };
    let target_sftp = match target {
        Target::Sftp => Some(support::sshd::TestSshd::start().await),
        Target::Proftpd => Some(support::sshd::TestSshd::start_proftpd().await),
        _ => None,
    };
    let s3proxy = match fault {
        Fault::KillAtPublication { .. } => {
            Some(support::s3proxy::S3Proxy::start(&support::bucket::s3_endpoint()).await)
        }
        _ => None,
    };
    let proxy = match fault.needs_proxy() {
        true => {
            Some(support::proxy::WireProxy::start(&support::mongo::primary_of(client).await?).await)
        }
        false => None,
    };
    let uri = proxy
        .as_ref()
        .map_or_else(base_uri, support::proxy::WireProxy::uri);
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
            .map_or_else(support::bucket::s3_endpoint, |p| p.endpoint());
        env.extend(support::bucket::bucket_env(
            &target.destination(),
            &endpoint,
        ));
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
        collected: Vec::new(),
        settled: Vec::new(),
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
    let latest_ms = (if quick { 800 } else { 2_000 }) >> (2 * (attempt - 1));
    let at_ms = rng.below(latest_ms);
    tokio::time::sleep(Duration::from_millis(at_ms)).await;
    let admin = client.database("admin");
    // Whether the fault met the daemon at work (the proxy's faults and the
    // failpoints are looked at once the run is done).
    let mut hit = true;
    match &fault {
        Fault::KillAtPublication { after_reply, taken } => {
            let proxy = s3proxy
                .as_ref()
                .context("kill at publication without a proxy")?;
            let action = match after_reply {
                true => support::s3proxy::Action::HoldAfter,
                false => support::s3proxy::Action::HoldBefore,
            };
            let held = proxy.add(support::s3proxy::Rule::new("PUT", ".DAT", action).times(1));
            let deadline = Instant::now() + Duration::from_secs(60);
            while held.matched() == 0 && Instant::now() < deadline {
                // Every file went by before the rule was in place.
                if !under_way(&records, total).await? {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            hit = held.matched() > 0;
            if *after_reply {
                tokio::time::sleep(Duration::from_millis(200)).await; // it applies
            }
            daemon.kill().await?; // SIGKILL
            if *taken {
                hit &= round.collect().await?;
            }
            daemon = round.spawn_daemon()?;
        }
        Fault::KillDaemon => {
            // A daemon killed before it did any work is killed all the same.
            daemon.kill().await?; // SIGKILL
            daemon = round.spawn_daemon()?;
        }
        Fault::KillAtSftpUpload => {
            let sshd = round.sftp.as_ref().context("SFTP fault without sshd")?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let uploading = |sshd: &support::sshd::TestSshd| {
                sshd.temporaries()
                    .iter()
                    .any(|t| t.starts_with(".DE_") && t.contains(".DAT.") && !t.contains(".json."))
            };
            while !uploading(sshd) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Else the upload went by between two looks.
            hit = uploading(sshd);
            daemon.kill().await?; // SIGKILL
            daemon = round.spawn_daemon()?;
        }
        Fault::KillSshd { down_ms } => {
            let sshd = round.sftp.as_mut().context("SFTP fault without sshd")?;
            sshd.kill();
            hit = under_way(&records, total).await?;
            tokio::time::sleep(Duration::from_millis(*down_ms)).await;
            sshd.restart().await;
        }
        Fault::CloseBrokerConnections => {
            // At the moment, or as soon as the daemon has connected.
            let deadline = Instant::now() + Duration::from_secs(10);
            while support::broker::close_connections(&app).await? == 0 {
                if Instant::now() > deadline {
                    hit = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Fault::DeleteQueues => {
            support::broker::delete_queues(
                &round.settings.amqp,
                &[
                    round.settings.amqp.retry_queue(),
                    round.settings.amqp.dead_letter_queue(),
                ],
            )
            .await?;
        }
        Fault::MemoryAlarm { alarm_ms } => {
            let _alarm = support::broker::MemoryAlarm::raise().await?;
            tokio::time::sleep(Duration::from_millis(*alarm_ms)).await;
        }
        Fault::BlackHole { hole_ms } | Fault::BlackHoleMonitorFirst { hole_ms } => {
            let proxy = proxy.as_ref().context("black hole without a proxy")?;
            proxy.black_hole();
            // Records still to export once the hole is open: the daemon's
            // next requests fall into it.
            hit = under_way(&records, total).await?;
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
            proxy.arm_times(support::proxy::Fault::LostReply, *times, move |r| {
                r.is(command, collection, "")
            });
        }
        Fault::ResetConnections => {
            let proxy = proxy.as_ref().context("reset without a proxy")?;
            proxy.arm(support::proxy::Fault::Reset, |r| r.command == "update");
        }
        Fault::FailPoint {
            command,
            data,
            times,
            ..
        } => {
            fail_points_counted(client).await?;
            let mut data = data.clone();
            data.insert("failCommands", vec![*command]);
            data.insert("appName", &app);
            admin
                .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": *times}, "data": data})
                .await
                .context("configureFailPoint (SecantusDB needs --enable-test-commands)")?;
        }
    }

    // Wait for completion, settling what is held in doubt.
    let runs = client
        .database(&round.settings.mongodb.database)
        .collection::<Document>("exportRuns");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        round.settle_doubts(&runs).await?;
        let done = records.count_documents(doc! {"status": "EXPORTED"}).await? == total as u64
            && support::broker::queue_len(&round.settings.amqp, &round.settings.amqp.queue).await?
                == 0
            && support::broker::queue_len(&round.settings.amqp, &round.settings.amqp.retry_queue())
                .await?
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
    // What the armed faults met. A fault armed on a request that never
    // came did nothing.
    let mut met = String::new();
    if let Fault::FailPoint { command, times, .. } = &fault {
        let database = &round.settings.mongodb.database;
        let fired = fail_point_met(&app, database, command, *times).await?;
        admin
            .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
            .await?;
        hit = fired > 0;
        met = format!(" (hit {fired}/{times})");
    }
    if let Some(proxy) = &proxy {
        if !matches!(
            fault,
            Fault::BlackHole { .. } | Fault::BlackHoleMonitorFirst { .. }
        ) {
            hit = proxy.fired().is_some();
        }
        if let Fault::LostReply { times, .. } = fault {
            met = format!(" (hit {}/{times})", proxy.fired_times());
        }
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
    if !hit {
        met = " (not hit)".to_owned();
    }
    if !round.settled.is_empty() {
        met.push_str(&format!(" (in doubt, resolved {})", round.settled.len()));
    }
    if target != Target::Folder {
        met.push_str(&format!(" [{}]", target.name()));
    }

    // Clean up the round's queues and database.
    support::broker::delete_topology(&round.settings.amqp).await;
    client
        .database(&round.settings.mongodb.database)
        .drop()
        .await?;
    Ok(Report {
        kind: fault.kind(),
        target,
        hit,
        fault: format!("{} (chunk {chunk}){met}", fault.label()),
        records: total,
        fault_at_ms: at_ms,
        took: elapsed,
        violations,
    })
}

/// What one try of a round did and found.
struct Report {
    kind: Kind,
    target: Target,
    /// Whether the fault met the daemon at work.
    hit: bool,
    /// The fault, its chunk size, whether it was hit, the destination.
    fault: String,
    records: usize,
    /// When the fault came, after the commands were published.
    fault_at_ms: u64,
    took: Duration,
    /// The guarantees the round found broken; empty when it passed.
    violations: Vec<String>,
}

/// How a round ended, after its tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    /// Its fault was not hit in any try: neither passed nor failed.
    NotRun,
}

impl Report {
    fn outcome(&self) -> Outcome {
        match (self.violations.is_empty(), self.hit) {
            (false, _) => Outcome::Failed,
            (true, true) => Outcome::Passed,
            (true, false) => Outcome::NotRun,
        }
    }

    /// The try's row of the table.
    fn row(&self, round: &str, last_try: bool) -> String {
        let result = match self.outcome() {
            Outcome::Passed => "ok".to_owned(),
            Outcome::Failed => format!("VIOLATED: {}", self.violations.join("; ")),
            Outcome::NotRun if last_try => format!("NOT RUN: not hit in {TRIES} tries"),
            Outcome::NotRun => "not hit, drawn again".to_owned(),
        };
        let (fault, records, at_ms) = (&self.fault, self.records, self.fault_at_ms);
        let took = self.took.as_secs_f64();
        format!("{round:>5}  {fault:<70} {records:>7} {at_ms:>6}ms {took:>8.1}s  {result}")
    }
}

/// The closing summary: per kind, the targets of the rounds that met it
/// (passed or failed), and the kinds that no round met.
fn coverage(ends: &[Report]) -> (Vec<String>, Vec<&'static str>) {
    let mut met: BTreeMap<Kind, Vec<&'static str>> = BTreeMap::new();
    for report in ends.iter().filter(|r| r.outcome() != Outcome::NotRun) {
        met.entry(report.kind)
            .or_default()
            .push(report.target.name());
    }
    let mut lines = Vec::new();
    let mut missing = Vec::new();
    for kind in Kind::ALL {
        match met.get(&kind) {
            Some(targets) => lines.push(format!("  {:<34} {}", kind.name(), targets.join(", "))),
            None => missing.push(kind.name()),
        }
    }
    (lines, missing)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let random = args.rounds.unwrap_or(if args.quick { 3 } else { 20 });
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    for kind in Kind::ALL {
        assert_eq!(kind.draw(&mut Rng::of(seed, 0, 0)).kind(), kind);
    }
    let rounds = plan(seed, random);
    let client = Client::with_uri_str(base_uri()).await?;
    fail_points_counted(&client).await?;
    let work = tempfile::Builder::new().prefix("esr-faults-").tempdir()?;
    let begun = Instant::now();
    println!(
        "fault-injection harness: {} rounds ({} kinds once, {random} random), seed {seed}",
        rounds.len(),
        Kind::ALL.len()
    );
    println!(
        "{:>5}  {:<70} {:>7} {:>8} {:>9}  result",
        "round", "fault", "records", "fault at", "took"
    );
    let mut ends = Vec::new();
    for (index, planned) in rounds.iter().enumerate() {
        let index = index + 1;
        let mut attempt = 1;
        let end = loop {
            let mut rng = Rng::of(seed, index, attempt);
            let dir = work.path().join(format!("round-{index:02}-{attempt}"));
            let try_of = run_round(&client, &mut rng, *planned, attempt, args.quick, &dir).await;
            let report = match try_of {
                Ok(report) => report,
                // The round could not be carried out: keep its logs, which
                // the error names, before the folder would be removed.
                Err(err) => {
                    let kept = work.keep();
                    return Err(err.context(format!("logs kept in {}", kept.display())));
                }
            };
            let last = attempt == TRIES || report.outcome() != Outcome::NotRun;
            let label = match attempt {
                1 => index.to_string(),
                _ => format!("{index}.{attempt}"),
            };
            println!("{}", report.row(&label, last));
            if last {
                break report;
            }
            attempt += 1;
        };
        ends.push(end);
    }
    let count = |outcome| ends.iter().filter(|r| r.outcome() == outcome).count();
    let (passed, failed, not_run) = (
        count(Outcome::Passed),
        count(Outcome::Failed),
        count(Outcome::NotRun),
    );
    let (lines, missing) = coverage(&ends);
    println!(
        "kinds covered: {} of {}, in {:.0} s",
        lines.len(),
        Kind::ALL.len(),
        begun.elapsed().as_secs_f64()
    );
    for line in lines {
        println!("{line}");
    }
    if !missing.is_empty() {
        println!("kinds not run: {}", missing.join(", "));
    }
    let not_run_rounds: Vec<String> = ends
        .iter()
        .filter(|r| r.outcome() == Outcome::NotRun)
        .map(|r| format!("{} [{}]", r.kind.name(), r.target.name()))
        .collect();
    if !not_run_rounds.is_empty() {
        println!("rounds not run: {}", not_run_rounds.join(", "));
    }
    let broken = failed > 0 || not_run > 0 || !missing.is_empty();
    if broken {
        // Keep the logs of failed rounds and of faults never hit.
        let kept = work.keep();
        println!("logs kept in {}", kept.display());
    }
    // Not run is not passed: the closing line names it, and it fails the run.
    match not_run {
        0 => println!("faults: {passed} passed, {failed} failed"),
        _ => println!("faults: {passed} passed, {failed} failed, {not_run} not run"),
    }
    if broken {
        std::process::exit(1);
    }
    Ok(())
}
