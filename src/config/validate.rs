//! The checks the types alone cannot make, each naming its key. The first
//! bad key is reported.

use std::net::SocketAddr;

use super::secret::scheme_only;
use super::{ConfigError, Settings};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// `Err` naming `key` unless `ok`.
fn require(ok: bool, key: &'static str, reason: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(invalid(key, reason))
    }
}

/// Every directive names a level: `warn`, or `target=warn`. A bare word
/// such as `warning` would be taken for a target and silence every line.
fn levels_named(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .all(|directive| {
            let level = directive
                .rsplit_once('=')
                .map_or(directive, |(_, level)| level);
            LEVELS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(level.trim()))
        })
}

impl Settings {
    /// Checks values the types alone cannot.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first bad key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_schemes()?;
        self.validate_uris()?;
        self.validate_names()?;
        self.validate_bounds()?;
        self.validate_export()?;
        self.validate_delays()?;
        self.validate_s3()?;
        self.sftp.validate(&self.export.destination)?;
        self.validate_listen_and_log()
    }

    /// Each URI names a scheme its client speaks.
    fn validate_schemes(&self) -> Result<(), ConfigError> {
        let uris = [
            (
                "mongodb.uri",
                self.mongodb.uri.expose(),
                "mongodb",
                "mongodb+srv",
            ),
            ("amqp.uri", self.amqp.uri.expose(), "amqp", "amqps"),
        ];
        for (key, uri, plain, secure) in uris {
            let scheme = uri.split_once("://").map(|(scheme, _)| scheme);
            let reason = format!("must start with {plain}:// or {secure}://");
            require(
                scheme == Some(plain) || scheme == Some(secure),
                key,
                &reason,
            )?;
        }
        Ok(())
    }

    /// Both URIs parse as their clients will read them. A URI that does
    /// not is reported by its scheme alone: the rest may hold a password
    /// that was not percent-encoded, and a parser's message would echo it.
    fn validate_uris(&self) -> Result<(), ConfigError> {
        let unparsable = |key: &'static str, uri: &str, what: &str| {
            invalid(
                key,
                format!(
                    "{} cannot be parsed as {what}: an unsupported option, or special \
                     characters in the user name or password that are not percent-encoded \
                     (? as %3F, @ as %40, / as %2F)",
                    scheme_only(uri)
                ),
            )
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

    /// Database, collection, queue and connection names.
    fn validate_names(&self) -> Result<(), ConfigError> {
        let m = &self.mongodb;
        let names = [
            ("mongodb.database", &m.database),
            ("mongodb.records_collection", &m.records_collection),
            ("mongodb.runs_collection", &m.runs_collection),
            ("mongodb.leases_collection", &m.leases_collection),
            ("mongodb.sequences_collection", &m.sequences_collection),
            ("mongodb.slots_collection", &m.slots_collection),
            ("amqp.connection_name", &self.amqp.connection_name),
            ("amqp.queue", &self.amqp.queue),
        ];
        for (key, value) in names {
            let usable = !(value.trim().is_empty() || value.contains('\0') || value.contains('$'));
            require(usable, key, "must be a non-empty name without '$' or NUL")?;
        }
        require(
            !m.database.contains(['/', '\\', '.', ' ', '"']),
            "mongodb.database",
            "must not contain '/', '\\', '.', ' ' or '\"'",
        )
    }

    /// Every duration, count and window within a range that no arithmetic
    /// on it can overflow and no operator means to exceed.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        for (key, value, low, high) in self.bounds() {
            if !(low..=high).contains(&value) {
                return Err(invalid(
                    key,
                    format!("{value} is out of range: must be between {low} and {high}"),
                ));
            }
        }
        Ok(())
    }

    /// `(key, value, lowest, highest)` of each bounded number.
    fn bounds(&self) -> [(&'static str, u64, u64, u64); 23] {
        let (m, r, a, s) = (&self.mongodb, &self.retry, &self.amqp, &self.schedule);
        let (w, d, e) = (&self.watchdog, &self.daemon, &self.export);
        [
            (
                "mongodb.server_selection_timeout_ms",
                m.server_selection_timeout_ms,
                1,
                600_000,
            ),
            (
                "mongodb.operation_timeout_ms",
                m.operation_timeout_ms,
                100,
                HOUR_MS,
            ),
            ("retry.min_delay_ms", r.min_delay_ms, 1, HOUR_MS),
            ("retry.max_delay_ms", r.max_delay_ms, 1, HOUR_MS),
            ("retry.max_elapsed_ms", r.max_elapsed_ms, 0, DAY_MS),
            ("retry.max_attempts", u64::from(r.max_attempts), 1, 1_000),
            ("amqp.delivery_limit", u64::from(a.delivery_limit), 1, 1_000),
            ("amqp.max_attempts", u64::from(a.max_attempts), 1, 1_000),
            (
                "amqp.reconnect_min_delay_ms",
                a.reconnect_min_delay_ms,
                1,
                HOUR_MS,
            ),
            (
                "amqp.reconnect_max_delay_ms",
                a.reconnect_max_delay_ms,
                1,
                HOUR_MS,
            ),
            (
                "amqp.publish_timeout_ms",
                a.publish_timeout_ms,
                100,
                HOUR_MS,
            ),
            (
                "schedule.catch_up_window_minutes",
                s.catch_up_window_minutes,
                0,
                43_200,
            ),
            (
                "schedule.slot_lease_seconds",
                s.slot_lease_seconds,
                1,
                86_400,
            ),
            ("watchdog.period_seconds", w.period_seconds, 1, 86_400),
            ("watchdog.grace_minutes", w.grace_minutes, 0, 43_200),
            ("watchdog.due_within_days", w.due_within_days, 0, 365),
            (
                "daemon.shutdown_grace_seconds",
                d.shutdown_grace_seconds,
                0,
                3_600,
            ),
            ("amqp.retry_delay_ms", a.retry_delay_ms, 1, DAY_MS),
            ("export.lease_seconds", e.lease_seconds, 1, 86_400),
            ("export.chunk_size", e.chunk_size.into(), 1, 100_000),
            (
                "export.mark_batch_size",
                e.mark_batch_size.into(),
                1,
                1_000_000,
            ),
            (
                "export.cursor_batch_size",
                e.cursor_batch_size.into(),
                1,
                100_000,
            ),
            ("export.parallel_runs", e.parallel_runs.into(), 1, 64),
        ]
    }

    /// The output folder.
    fn validate_export(&self) -> Result<(), ConfigError> {
        let e = &self.export;
        let dir = e.output_dir.as_os_str();
        let blank = dir.to_string_lossy().trim().is_empty() || dir.as_encoded_bytes().contains(&0);
        require(
            !blank,
            "export.output_dir",
            "must be a folder path, not blank",
        )
    }

    /// Delays that must be ordered, the queue name's length, prefetch and
    /// the processing deadline.
    fn validate_delays(&self) -> Result<(), ConfigError> {
        let a = &self.amqp;
        require(
            self.retry.max_delay_ms >= self.retry.min_delay_ms,
            "retry.max_delay_ms",
            "must not be less than retry.min_delay_ms",
        )?;
        require(
            a.queue.len() <= 240,
            "amqp.queue",
            "must be at most 240 bytes",
        )?;
        require(
            a.prefetch == 1,
            "amqp.prefetch",
            "must be 1: commands are exported one at a time, and a prefetched delivery's \
             acknowledgement timeout would run during the export before it (run more replicas \
             to export more deaneries at once)",
        )?;
        require(
            a.publish_timeout_ms.saturating_mul(2) <= self.schedule.slot_lease_seconds * 1_000,
            "amqp.publish_timeout_ms",
            "must be at most half of schedule.slot_lease_seconds: the slot's lease must outlive \
             a publish that waits out the bound",
        )?;
        require(
            (1..=1_500).contains(&a.processing_timeout_seconds),
            "amqp.processing_timeout_seconds",
            "must be between 1 and 1500 (RabbitMQ's acknowledgement timeout is 30 minutes)",
        )?;
        require(
            a.reconnect_min_delay_ms > 0 && a.reconnect_max_delay_ms >= a.reconnect_min_delay_ms,
            "amqp.reconnect_max_delay_ms",
            "delays must be positive and max must not be less than min",
        )
    }

    /// The bucket destination's bounds and sizes.
    fn validate_s3(&self) -> Result<(), ConfigError> {
        let s = &self.s3;
        require(
            (100..=HOUR_MS).contains(&s.request_timeout_ms),
            "s3.request_timeout_ms",
            "must be between 100 and 3600000",
        )?;
        require(
            (100..=HOUR_MS).contains(&s.connect_timeout_ms),
            "s3.connect_timeout_ms",
            "must be between 100 and 3600000",
        )?;
        require(
            (5 << 20..=1 << 30).contains(&s.part_size_bytes),
            "s3.part_size_bytes",
            "must be between 5 MiB (S3's smallest part) and 1 GiB",
        )?;
        require(
            s.multipart_threshold_bytes >= s.part_size_bytes
                && s.multipart_threshold_bytes <= 5 << 30,
            "s3.multipart_threshold_bytes",
            "must be at least s3.part_size_bytes and at most 5 GiB (S3's largest single upload)",
        )?;
        require(
            (1..=100).contains(&s.max_attempts),
            "s3.max_attempts",
            "must be between 1 and 100",
        )?;
        require(
            s.min_delay_ms > 0 && s.max_delay_ms >= s.min_delay_ms && s.max_elapsed_ms <= DAY_MS,
            "s3.max_delay_ms",
            "delays must be positive, max not less than min, and s3.max_elapsed_ms at most a day",
        )
    }

    /// The HTTP address and the log filter.
    fn validate_listen_and_log(&self) -> Result<(), ConfigError> {
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!("`{}` is not a host:port address", self.http.listen),
            ));
        }
        let level = &self.log.level;
        if tracing_subscriber::EnvFilter::try_new(level).is_err() || !levels_named(level) {
            return Err(invalid(
                "log.level",
                format!(
                    "`{level}` is not a log filter: a level (trace, debug, info, warn, error, \
                     off) or target=level directives, comma-separated"
                ),
            ));
        }
        Ok(())
    }
}
