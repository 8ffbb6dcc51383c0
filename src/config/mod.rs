//! Settings: `config/default.toml` (compiled in) → `--config FILE` →
//! `ESR_<SECTION>__<KEY>` environment variables, deserialised into typed
//! [`Settings`] and validated once at start. Every error names its key.
//!
//! - [`sections`](self#structs): one typed struct per section;
//! - `raw`: the sections as written, parsed into the typed ones;
//! - `load`: the layers; `validate`: the checks types alone cannot make;
//! - `secret`: URIs that print redacted.

mod load;
mod raw;
mod secret;
mod sections;
mod serialise;
mod sftp;
mod sources;
mod validate;
mod warnings;

use serde::Serialize;

pub use secret::SecretUri;
pub use sources::{Source, Sources};

pub use sections::AmqpSettings;
pub use sections::DaemonSettings;
pub use sections::ExportSettings;
pub use sections::HttpSettings;
pub use sections::InDoubt;
pub use sections::LogFormat;
pub use sections::LogSettings;
pub use sections::MongoSettings;
pub use sections::RetrySettings;
pub use sections::S3Settings;
pub use sections::ScheduleSettings;
pub use sections::WatchdogSettings;
pub(crate) use sections::{QueueType, ReadConcernLevel, WriteConcernLevel};
pub use sftp::{SecretText, SftpSettings};

/// The defaults, exactly as shipped in `config/default.toml`.
pub(crate) const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Why the settings could not be loaded. The message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type or an unknown key.
    #[error("invalid configuration")]
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
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// MongoDB connection and collection names.
    pub mongodb: MongoSettings,
    /// RabbitMQ connection and queue.
    pub amqp: AmqpSettings,
    /// Export files and runs.
    pub export: ExportSettings,
    /// How a bucket destination is talked to.
    pub s3: S3Settings,
    /// How an SFTP destination is reached.
    pub sftp: SftpSettings,
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
    /// Where each value came from (`check-config` shows it).
    #[serde(skip)]
    pub sources: Sources,
}

impl Settings {
    /// The settings as TOML, secrets redacted, and where each value came
    /// from (for `check-config`).
    pub(crate) fn to_redacted_toml(&self) -> String {
        let toml =
            toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"));
        toml + &sources::render(&self.sources)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
