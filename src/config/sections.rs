//! The settings sections, one per part of the daemon, as typed values.
//! Values that need parsing (the cron schedule, the time zone, deanery
//! codes, the file mode) are parsed once at load (see [`super::raw`]), so
//! nothing later can fail on them.

use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::secret::SecretUri;
use super::serialise;
use crate::domain::{Deanery, DestinationUrl};

/// `[mongodb]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSettings {
    /// Connection string; redacted when printed.
    pub uri: SecretUri,
    /// `uri_file`: read at load into `uri` (see `sources`); accepted here
    /// so the key is known.
    #[serde(default, skip_serializing, rename = "uri_file")]
    pub(crate) _uri_file: serde::de::IgnoredAny,
    /// Database name.
    pub database: String,
    /// GeneratedAppRecords collection.
    pub records_collection: String,
    /// Export run documents.
    pub(crate) runs_collection: String,
    /// Per-deanery leases.
    pub(crate) leases_collection: String,
    /// File sequence counters.
    pub(crate) sequences_collection: String,
    /// Schedule slot documents.
    pub(crate) slots_collection: String,
    /// How long an operation waits for a reachable server.
    pub(crate) server_selection_timeout_ms: u64,
    /// The bound of every MongoDB operation: `maxTimeMS`, `wtimeout`,
    /// `maxCommitTimeMS`, the connect timeout and the client-side deadline.
    pub(crate) operation_timeout_ms: u64,
    /// Acknowledgement of writes outside transactions.
    pub(crate) write_concern: WriteConcernLevel,
    /// Read concern of reads outside transactions.
    pub(crate) read_concern: ReadConcernLevel,
}

/// `mongodb.write_concern`: who acknowledges a write made outside a
/// transaction (run documents, leases, slots). Transactions always commit
/// with `majority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WriteConcernLevel {
    /// A majority of voting members (`w: "majority"`): a failover cannot
    /// roll the write back.
    Majority,
    /// The primary alone (`w: 1`): for a standalone server only; a
    /// failover may roll the write back.
    Primary,
}

/// `mongodb.read_concern`: what reads outside transactions see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ReadConcernLevel {
    /// Only majority-committed data, which a failover cannot roll back.
    Majority,
    /// The node's latest data, committed or not.
    Local,
}

/// `[amqp]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Broker URI; redacted when printed.
    pub uri: SecretUri,
    /// `uri_file`: read at load into `uri` (see `sources`); accepted here
    /// so the key is known.
    #[serde(default, skip_serializing, rename = "uri_file")]
    pub(crate) _uri_file: serde::de::IgnoredAny,
    /// Queue that carries generation commands.
    pub queue: String,
    /// `quorum` or `classic`.
    pub(crate) queue_type: QueueType,
    /// Unacknowledged deliveries per replica.
    pub(crate) prefetch: u16,
    /// Quorum queues: deliveries before the broker dead-letters a message.
    pub(crate) delivery_limit: u32,
    /// Processing attempts of one command before it is dead-lettered.
    pub(crate) max_attempts: u32,
    /// Delay before a transiently failed command is tried again.
    pub(crate) retry_delay_ms: u64,
    /// An export attempt stops at a safe point after this many seconds.
    pub(crate) processing_timeout_seconds: u64,
    /// First reconnect delay.
    pub(crate) reconnect_min_delay_ms: u64,
    /// Largest reconnect delay.
    pub(crate) reconnect_max_delay_ms: u64,
    /// Connection name shown by the broker.
    pub(crate) connection_name: String,
    /// How long a publish waits for the broker's confirm (a blocked or
    /// silent broker) before it fails.
    pub(crate) publish_timeout_ms: u64,
}

impl AmqpSettings {
    /// The dead-letter exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }

    /// The dead-letter queue.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    /// How long a publish waits for its confirm.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    /// The delay queue for retries.
    pub fn retry_queue(&self) -> String {
        format!("{}.retry", self.queue)
    }

    /// Unbounded backoff with jitter between the reconnect delays: for
    /// waiting out a dependency that is away (broker, database at start,
    /// firing a slot).
    pub(crate) fn reconnect_backoff(&self) -> impl Iterator<Item = Duration> {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.reconnect_min_delay_ms))
            .with_max_delay(Duration::from_millis(self.reconnect_max_delay_ms))
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// RabbitMQ queue type of the command queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum QueueType {
    /// Replicated, with a delivery limit and a dead-letter exchange.
    Quorum,
    /// Plain durable queue (reuse of an existing one).
    Classic,
}

/// `[export]`
#[derive(Debug, Clone, Serialize)]
pub struct ExportSettings {
    /// Folder for `.DAT` files and manifests: the local staging folder,
    /// and the destination itself when `destination` is a folder.
    pub output_dir: PathBuf,
    /// Where published files go (`export.destination`).
    #[serde(serialize_with = "serialise::display")]
    pub destination: DestinationUrl,
    /// Permissions of written files; configured (and printed) as octal
    /// digits such as `"0644"`, validated at load.
    #[serde(serialize_with = "serialise::octal")]
    pub(crate) file_mode: u32,
    /// Records claimed per transaction.
    pub chunk_size: u32,
    /// Records marked `EXPORTED` per statement.
    pub(crate) mark_batch_size: u32,
    /// Records per batch when streaming claimed records back.
    pub(crate) cursor_batch_size: u32,
    /// Lease lifetime without renewal, in seconds.
    pub lease_seconds: u64,
    /// Deaneries exported at once by `export --all`.
    pub parallel_runs: u32,
    /// What a resume does with a publication in doubt (`export.in_doubt`).
    #[serde(serialize_with = "serialise::display")]
    pub in_doubt: InDoubt,
}

/// What a resume does when an interrupted final create left nothing under
/// the file's name: the file may have been delivered and taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InDoubt {
    /// Hold the run until someone settles it (`esr-exporter resolve`).
    #[default]
    Hold,
    /// Publish the recorded bytes again, with a WARN naming the file: for
    /// receivers that drop a name they have already seen.
    Publish,
}

impl InDoubt {
    /// `"hold"` or `"publish"`.
    ///
    /// # Errors
    /// Anything else, with what is accepted.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        match value {
            "hold" => Ok(Self::Hold),
            "publish" => Ok(Self::Publish),
            other => Err(format!("must be \"hold\" or \"publish\", not {other:?}")),
        }
    }
}

impl std::fmt::Display for InDoubt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hold => "hold",
            Self::Publish => "publish",
        })
    }
}

impl ExportSettings {
    /// `file_mode` as permission bits (validated at load).
    pub(crate) fn file_mode_bits(&self) -> u32 {
        self.file_mode
    }

    /// Lease lifetime as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}

/// `[s3]`: how a bucket destination is talked to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Bound of each request to the store.
    pub(crate) request_timeout_ms: u64,
    /// Bound of establishing a connection.
    pub(crate) connect_timeout_ms: u64,
    /// Files larger than this are uploaded in parts.
    pub(crate) multipart_threshold_bytes: u64,
    /// Size of each part of a multipart upload.
    pub(crate) part_size_bytes: u64,
    /// First backoff delay of a retried request.
    pub(crate) min_delay_ms: u64,
    /// Largest backoff delay.
    pub(crate) max_delay_ms: u64,
    /// Tries of one operation, the first included.
    pub(crate) max_attempts: u32,
    /// No retry starts after this much time since the first try.
    pub(crate) max_elapsed_ms: u64,
}

impl S3Settings {
    /// Bound of each request.
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// `[retry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// First backoff delay.
    pub(crate) min_delay_ms: u64,
    /// Largest backoff delay.
    pub max_delay_ms: u64,
    /// Attempts per transaction or operation, the first included.
    pub(crate) max_attempts: u32,
    /// No retry starts after this much time since the first attempt.
    pub(crate) max_elapsed_ms: u64,
}

/// `[schedule]`
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleSettings {
    /// Whether this replica publishes scheduled commands.
    pub enabled: bool,
    /// Six-field cron expression: sec min hour day-of-month month
    /// day-of-week (printed as written).
    #[serde(serialize_with = "serialise::display")]
    pub cron: cron::Schedule,
    /// IANA time zone the expression is read in.
    #[serde(serialize_with = "serialise::display")]
    pub(crate) timezone: Tz,
    /// Deaneries commanded at every slot.
    #[serde(serialize_with = "serialise::deaneries")]
    pub deaneries: Vec<Deanery>,
    /// Window in which a missed slot is caught up on start.
    pub catch_up_window_minutes: u64,
    /// Lease on a slot being fired.
    pub(crate) slot_lease_seconds: u64,
}

/// `[watchdog]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogSettings {
    /// Whether this replica runs the watchdog.
    pub enabled: bool,
    /// Seconds between checks.
    pub(crate) period_seconds: u64,
    /// Minutes after a slot before its waiting records count as stuck.
    pub grace_minutes: u64,
    /// Publish catch-up commands for stuck deaneries.
    pub(crate) catch_up: bool,
    /// A waiting record whose placement starts within this many days (or
    /// started already) is due soon.
    pub due_within_days: u64,
}

impl WatchdogSettings {
    /// The latest placement start of a record due soon at `now`.
    pub(crate) fn due_by(&self, now: chrono::DateTime<chrono::Utc>) -> bson::DateTime {
        let days = i64::try_from(self.due_within_days).unwrap_or(i64::MAX);
        bson::DateTime::from_chrono(now + chrono::Duration::days(days.min(36_500)))
    }
}

/// `[daemon]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    /// Grace period for in-flight work on shutdown.
    pub(crate) shutdown_grace_seconds: u64,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address, `host:port`.
    pub listen: String,
    /// Serve the status page at `GET /`.
    pub status_page: bool,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
    /// Filter used when `RUST_LOG` is not set.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for machines.
    Json,
    /// Human-readable lines.
    Pretty,
}
