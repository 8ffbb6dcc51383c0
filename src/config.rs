//! Settings: `config/default.toml` (compiled in) → `--config FILE` →
//! `ESR_<SECTION>__<KEY>` environment variables, deserialised into typed
//! [`Settings`] and validated once at start. Every error names its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The defaults, exactly as shipped in `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why the settings could not be loaded. The message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type or an unknown key.
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value has the right type but is not acceptable.
    #[error("invalid configuration: key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `export.chunk_size`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// All settings, one section per part of the daemon.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// MongoDB connection and collection names.
    pub mongodb: MongoSettings,
    /// RabbitMQ connection and queue.
    pub amqp: AmqpSettings,
    /// Export files and runs.
    pub export: ExportSettings,
    /// Retry policy for transient MongoDB errors.
    pub retry: RetrySettings,
    /// The daily generation schedule.
    pub schedule: ScheduleSettings,
    /// The stuck-record watchdog.
    pub watchdog: WatchdogSettings,
    /// The daemon's own behaviour.
    pub daemon: DaemonSettings,
    /// HTTP endpoint for health and metrics.
    pub http: HttpSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[mongodb]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSettings {
    /// Connection string; redacted when printed.
    pub uri: SecretUri,
    /// Database name.
    pub database: String,
    /// GeneratedAppRecords collection.
    pub records_collection: String,
    /// Export run documents.
    pub runs_collection: String,
    /// Per-deanery leases.
    pub leases_collection: String,
    /// File sequence counters.
    pub sequences_collection: String,
    /// Schedule slot documents.
    pub slots_collection: String,
    /// How long an operation waits for a reachable server.
    pub server_selection_timeout_ms: u64,
}

/// `[amqp]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Broker URI; redacted when printed.
    pub uri: SecretUri,
    /// Queue that carries generation commands.
    pub queue: String,
    /// `quorum` or `classic`.
    pub queue_type: QueueType,
    /// Unacknowledged deliveries per replica.
    pub prefetch: u16,
    /// Quorum queues: deliveries before the broker dead-letters a message.
    pub delivery_limit: u32,
    /// Processing attempts of one command before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay before a transiently failed command is tried again.
    pub retry_delay_ms: u64,
    /// An export attempt stops at a safe point after this many seconds.
    pub processing_timeout_seconds: u64,
    /// First reconnect delay.
    pub reconnect_min_delay_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_max_delay_ms: u64,
    /// Connection name shown by the broker.
    pub connection_name: String,
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

    /// The delay queue for retries.
    pub fn retry_queue(&self) -> String {
        format!("{}.retry", self.queue)
    }

    /// Unbounded backoff with jitter between the reconnect delays: for
    /// waiting out a dependency that is away (broker, database at start,
    /// firing a slot).
    pub fn reconnect_backoff(&self) -> impl Iterator<Item = Duration> {
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
pub enum QueueType {
    /// Replicated, with a delivery limit and a dead-letter exchange.
    Quorum,
    /// Plain durable queue (reuse of an existing one).
    Classic,
}

/// `[export]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSettings {
    /// Folder for `.DAT` files and manifests.
    pub output_dir: PathBuf,
    /// Permissions of written files, octal digits such as `"0644"`.
    pub file_mode: String,
    /// Records claimed per transaction.
    pub chunk_size: u32,
    /// Records per batch when streaming claimed records back.
    pub cursor_batch_size: u32,
    /// Lease lifetime without renewal, in seconds.
    pub lease_seconds: u64,
    /// Deaneries exported at once by `export --all`.
    pub parallel_runs: u32,
}

impl ExportSettings {
    /// `file_mode` as permission bits (validated at load).
    pub fn file_mode_bits(&self) -> u32 {
        u32::from_str_radix(&self.file_mode, 8).unwrap_or(0o644)
    }

    /// Lease lifetime as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}

/// `[retry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// First backoff delay.
    pub min_delay_ms: u64,
    /// Largest backoff delay.
    pub max_delay_ms: u64,
    /// Attempts per transaction or operation, the first included.
    pub max_attempts: u32,
    /// No retry starts after this much time since the first attempt.
    pub max_elapsed_ms: u64,
}

/// `[schedule]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Whether this replica publishes scheduled commands.
    pub enabled: bool,
    /// Six-field cron expression: sec min hour day-of-month month day-of-week.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// Deaneries commanded at every slot.
    pub deaneries: Vec<String>,
    /// Window in which a missed slot is caught up on start.
    pub catch_up_window_minutes: u64,
    /// Lease on a slot being fired.
    pub slot_lease_seconds: u64,
}

/// `[watchdog]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogSettings {
    /// Whether this replica runs the watchdog.
    pub enabled: bool,
    /// Seconds between checks.
    pub period_seconds: u64,
    /// Minutes after a slot before its waiting records count as stuck.
    pub grace_minutes: u64,
    /// Publish catch-up commands for stuck deaneries.
    pub catch_up: bool,
}

/// `[daemon]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    /// Grace period for in-flight work on shutdown.
    pub shutdown_grace_seconds: u64,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address, `host:port`.
    pub listen: String,
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

mod secret;

pub use secret::{redact_uri, SecretUri};

impl Settings {
    /// Loads the layers and validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key that is missing, unknown, mistyped or invalid.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// Like [`Settings::load`], reading the environment from `env` when given
    /// (tests) instead of the process environment.
    ///
    /// # Errors
    /// See [`Settings::load`].
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        use config::{Config, Environment, File, FileFormat};

        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        let environment = Environment::with_prefix("ESR")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("schedule.deaneries")
            .source(env);
        let settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values the types alone cannot.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        let uri = self.mongodb.uri.expose();
        if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
            return Err(invalid(
                "mongodb.uri",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        self.validate_uris()?;
        let names = [
            ("mongodb.database", &self.mongodb.database),
            (
                "mongodb.records_collection",
                &self.mongodb.records_collection,
            ),
            ("mongodb.runs_collection", &self.mongodb.runs_collection),
            ("mongodb.leases_collection", &self.mongodb.leases_collection),
            (
                "mongodb.sequences_collection",
                &self.mongodb.sequences_collection,
            ),
            ("mongodb.slots_collection", &self.mongodb.slots_collection),
            ("amqp.connection_name", &self.amqp.connection_name),
            ("amqp.queue", &self.amqp.queue),
        ];
        for (key, value) in names {
            if value.trim().is_empty() || value.contains('\0') || value.contains('$') {
                return Err(invalid(key, "must be a non-empty name without '$' or NUL"));
            }
        }
        if self.mongodb.database.contains(['/', '\\', '.', ' ', '"']) {
            return Err(invalid(
                "mongodb.database",
                "must not contain '/', '\\', '.', ' ' or '\"'",
            ));
        }
        let amqp = self.amqp.uri.expose();
        if !(amqp.starts_with("amqp://") || amqp.starts_with("amqps://")) {
            return Err(invalid("amqp.uri", "must start with amqp:// or amqps://"));
        }
        self.validate_bounds()?;
        let dir = self.export.output_dir.as_os_str();
        if dir.to_string_lossy().trim().is_empty() || dir.as_encoded_bytes().contains(&0) {
            return Err(invalid(
                "export.output_dir",
                "must be a folder path, not blank",
            ));
        }
        match u32::from_str_radix(&self.export.file_mode, 8) {
            Ok(bits) if bits <= 0o777 && bits & 0o600 == 0o600 => {}
            _ => return Err(invalid(
                "export.file_mode",
                "must be octal permissions such as \"0644\", readable and writable by the owner",
            )),
        }
        if !(1..=100_000).contains(&self.export.chunk_size) {
            return Err(invalid("export.chunk_size", "must be between 1 and 100000"));
        }
        if !(1..=100_000).contains(&self.export.cursor_batch_size) {
            return Err(invalid(
                "export.cursor_batch_size",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=64).contains(&self.export.parallel_runs) {
            return Err(invalid("export.parallel_runs", "must be between 1 and 64"));
        }
        if self.retry.max_delay_ms < self.retry.min_delay_ms {
            return Err(invalid(
                "retry.max_delay_ms",
                "must not be less than retry.min_delay_ms",
            ));
        }
        if self.amqp.queue.len() > 240 {
            return Err(invalid("amqp.queue", "must be at most 240 bytes"));
        }
        if self.amqp.prefetch == 0 {
            return Err(invalid("amqp.prefetch", "must be at least 1"));
        }
        if !(1..=1_500).contains(&self.amqp.processing_timeout_seconds) {
            return Err(invalid(
                "amqp.processing_timeout_seconds",
                "must be between 1 and 1500 (RabbitMQ's acknowledgement timeout is 30 minutes)",
            ));
        }
        if self.amqp.reconnect_min_delay_ms == 0
            || self.amqp.reconnect_max_delay_ms < self.amqp.reconnect_min_delay_ms
        {
            return Err(invalid(
                "amqp.reconnect_max_delay_ms",
                "delays must be positive and max must not be less than min",
            ));
        }
        if let Err(err) = crate::domain::parse_cron(&self.schedule.cron) {
            return Err(invalid("schedule.cron", err));
        }
        if let Err(err) = crate::domain::parse_timezone(&self.schedule.timezone) {
            return Err(invalid("schedule.timezone", err));
        }
        for code in &self.schedule.deaneries {
            if let Err(err) = crate::domain::Deanery::parse(code) {
                return Err(invalid("schedule.deaneries", err.to_string()));
            }
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!("`{}` is not a host:port address", self.http.listen),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a valid log filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// Both URIs parse as their clients will read them. A URI that does
    /// not is reported by its scheme alone: the rest may hold a password
    /// that was not percent-encoded, and a parser's message would echo it.
    fn validate_uris(&self) -> Result<(), ConfigError> {
        let unparsable = |key: &'static str, uri: &str, what: &str| ConfigError::Invalid {
            key,
            reason: format!(
                "{} cannot be parsed as {what}: an unsupported option, or special \
                 characters in the user name or password that are not percent-encoded \
                 (? as %3F, @ as %40, / as %2F)",
                secret::scheme_only(uri)
            ),
        };
        let mongodb = self.mongodb.uri.expose();
        if mongodb::options::ConnectionString::parse(mongodb).is_err() {
            return Err(unparsable(
                "mongodb.uri",
                mongodb,
                "a MongoDB connection string",
            ));
        }
        let amqp = self.amqp.uri.expose();
        if amqp.parse::<lapin::uri::AMQPUri>().is_err() {
            return Err(unparsable("amqp.uri", amqp, "an AMQP URI"));
        }
        Ok(())
    }

    /// Every duration, count and window within a range that no arithmetic
    /// on it can overflow and no operator means to exceed.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        const DAY_MS: u64 = 86_400_000;
        let bounds: [(&'static str, u64, u64, u64); 16] = [
            (
                "mongodb.server_selection_timeout_ms",
                self.mongodb.server_selection_timeout_ms,
                1,
                600_000,
            ),
            ("retry.min_delay_ms", self.retry.min_delay_ms, 1, 3_600_000),
            ("retry.max_delay_ms", self.retry.max_delay_ms, 1, 3_600_000),
            ("retry.max_elapsed_ms", self.retry.max_elapsed_ms, 0, DAY_MS),
            (
                "retry.max_attempts",
                u64::from(self.retry.max_attempts),
                1,
                1_000,
            ),
            (
                "amqp.delivery_limit",
                u64::from(self.amqp.delivery_limit),
                1,
                1_000,
            ),
            (
                "amqp.max_attempts",
                u64::from(self.amqp.max_attempts),
                1,
                1_000,
            ),
            (
                "amqp.reconnect_min_delay_ms",
                self.amqp.reconnect_min_delay_ms,
                1,
                3_600_000,
            ),
            (
                "amqp.reconnect_max_delay_ms",
                self.amqp.reconnect_max_delay_ms,
                1,
                3_600_000,
            ),
            (
                "schedule.catch_up_window_minutes",
                self.schedule.catch_up_window_minutes,
                0,
                43_200,
            ),
            (
                "schedule.slot_lease_seconds",
                self.schedule.slot_lease_seconds,
                1,
                86_400,
            ),
            (
                "watchdog.period_seconds",
                self.watchdog.period_seconds,
                1,
                86_400,
            ),
            (
                "watchdog.grace_minutes",
                self.watchdog.grace_minutes,
                0,
                43_200,
            ),
            (
                "daemon.shutdown_grace_seconds",
                self.daemon.shutdown_grace_seconds,
                0,
                3_600,
            ),
            ("amqp.retry_delay_ms", self.amqp.retry_delay_ms, 1, DAY_MS),
            ("export.lease_seconds", self.export.lease_seconds, 1, 86_400),
        ];
        for (key, value, low, high) in bounds {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{value} is out of range: must be between {low} and {high}"),
                });
            }
        }
        Ok(())
    }

    /// The settings as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_load_and_match_the_contract() {
        let s = Settings::load_with_env(None, env(&[])).expect("defaults are valid");
        assert_eq!(
            s.mongodb.uri.expose(),
            "mongodb://127.0.0.1:27017/?directConnection=true"
        );
        assert_eq!(s.mongodb.database, "esr");
        assert_eq!(s.mongodb.records_collection, "generatedAppRecords");
        assert_eq!(
            s.amqp.queue,
            "esr.queue.appfilegenerationcommand.create.dataexporter"
        );
        assert_eq!(s.export.output_dir, PathBuf::from("./exports"));
        assert_eq!(s.schedule.cron, "0 0 13 * * *");
        assert_eq!(s.schedule.timezone, "UTC");
        assert_eq!(s.amqp.queue_type, QueueType::Quorum);
        assert!(s.schedule.enabled);
        assert_eq!(s.http.listen, "127.0.0.1:8080");
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("ESR_EXPORT__CHUNK_SIZE", "250"),
                ("ESR_MONGODB__DATABASE", "other"),
                ("ESR_LOG__FORMAT", "pretty"),
            ]),
        )
        .unwrap();
        assert_eq!(s.export.chunk_size, 250);
        assert_eq!(s.mongodb.database, "other");
        assert_eq!(s.log.format, LogFormat::Pretty);
        let s =
            Settings::load_with_env(None, env(&[("ESR_SCHEDULE__DEANERIES", "MER,EOE")])).unwrap();
        assert_eq!(s.schedule.deaneries, ["MER", "EOE"]);
    }

    #[test]
    fn a_mistyped_value_names_its_key() {
        let err = Settings::load_with_env(None, env(&[("ESR_EXPORT__CHUNK_SIZE", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk_size"), "{err}");
    }

    #[test]
    fn an_out_of_range_value_names_its_key() {
        let err = Settings::load_with_env(None, env(&[("ESR_EXPORT__CHUNK_SIZE", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("export.chunk_size"), "{err}");
    }

    #[test]
    fn an_unknown_key_in_a_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[export]\nchunk_sise = 10\n").unwrap();
        let err = Settings::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk_sise"), "{err}");
    }

    #[test]
    fn a_bad_cron_or_timezone_is_refused_by_key() {
        let err = Settings::load_with_env(None, env(&[("ESR_SCHEDULE__CRON", "0 0 25 * * *")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("schedule.cron"), "{err}");
        let err =
            Settings::load_with_env(None, env(&[("ESR_SCHEDULE__TIMEZONE", "Europe/Atlantis")]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("schedule.timezone"), "{err}");
    }

    #[test]
    fn a_file_layer_sits_under_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(&path, "[export]\nchunk_size = 10\nlease_seconds = 5\n").unwrap();
        let s = Settings::load_with_env(Some(&path), env(&[("ESR_EXPORT__LEASE_SECONDS", "7")]))
            .unwrap();
        assert_eq!(s.export.chunk_size, 10);
        assert_eq!(s.export.lease_seconds, 7);
    }

    #[test]
    fn passwords_are_redacted_everywhere_they_are_shown() {
        let uri = SecretUri::new("mongodb://esr:s3cr%40t@db1:27017,db2:27017/?replicaSet=rs0");
        assert_eq!(
            uri.redacted(),
            "mongodb://esr:***@db1:27017,db2:27017/?replicaSet=rs0"
        );
        assert!(!format!("{uri:?}").contains("s3cr"));
        assert!(!format!("{uri}").contains("s3cr"));
        let s = Settings::load_with_env(
            None,
            env(&[
                ("ESR_MONGODB__URI", "mongodb://u:hunter2@h/"),
                ("ESR_AMQP__URI", "amqp://guest:rabbitpw@h:5672/%2f"),
            ]),
        )
        .unwrap();
        let printed = s.to_redacted_toml();
        assert!(!printed.contains("hunter2") && !printed.contains("rabbitpw"));
        assert!(printed.contains("mongodb://u:***@h/"), "{printed}");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    /// The README's configuration table lists exactly the keys of
    /// `config/default.toml`, with the same defaults.
    #[test]
    fn the_readme_configuration_reference_matches_the_defaults() {
        let defaults: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
        let mut expected = std::collections::BTreeMap::new();
        for (section, table) in &defaults {
            for (key, value) in table.as_table().unwrap() {
                let shown = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Array(a) if a.is_empty() => "[]".to_owned(),
                    other => other.to_string(),
                };
                expected.insert(format!("{section}.{key}"), shown);
            }
        }
        let readme = include_str!("../README.md");
        let mut documented = std::collections::BTreeMap::new();
        for line in readme.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 4 || !cells[1].starts_with('`') {
                continue;
            }
            let key = cells[1].trim_matches('`');
            let looks_like_key = key.split('.').count() == 2
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
            if !looks_like_key {
                continue;
            }
            let default = cells[2].trim_matches('`').trim_matches('"');
            documented.insert(key.to_owned(), default.to_owned());
        }
        let missing: Vec<_> = expected
            .keys()
            .filter(|k| !documented.contains_key(*k))
            .collect();
        assert!(missing.is_empty(), "undocumented keys: {missing:?}");
        for (key, default) in &documented {
            assert_eq!(
                Some(default),
                expected.get(key),
                "README default of `{key}`"
            );
        }
    }
}
