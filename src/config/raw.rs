//! The settings as the layers give them, before the values that need
//! parsing are parsed: [`RawSettings::parse`] turns them into the typed
//! [`Settings`], naming the key of the first value it refuses.

use std::path::PathBuf;

use serde::Deserialize;

use super::sections::{
    AmqpSettings, DaemonSettings, ExportSettings, HttpSettings, InDoubt, LogSettings,
    MongoSettings, RetrySettings, S3Settings, ScheduleSettings, WatchdogSettings,
};
use super::sftp::SftpSettings;
use super::{ConfigError, Settings};
use crate::domain::{parse_cron, parse_timezone, Deanery, DestinationUrl};

/// [`Settings`] with the schedule and export sections as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    mongodb: MongoSettings,
    amqp: AmqpSettings,
    export: RawExportSettings,
    s3: S3Settings,
    sftp: SftpSettings,
    retry: RetrySettings,
    schedule: RawScheduleSettings,
    watchdog: WatchdogSettings,
    daemon: DaemonSettings,
    http: HttpSettings,
    log: LogSettings,
}

/// `[export]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExportSettings {
    output_dir: PathBuf,
    destination: String,
    file_mode: String,
    chunk_size: u32,
    mark_batch_size: u32,
    cursor_batch_size: u32,
    lease_seconds: u64,
    parallel_runs: u32,
    in_doubt: String,
}

/// `[schedule]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduleSettings {
    enabled: bool,
    cron: String,
    timezone: String,
    deaneries: Vec<String>,
    catch_up_window_minutes: u64,
    slot_lease_seconds: u64,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl RawSettings {
    /// Parses the values that need it.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key refused.
    pub(super) fn parse(self) -> Result<Settings, ConfigError> {
        Ok(Settings {
            export: self.export.parse()?,
            schedule: self.schedule.parse()?,
            s3: self.s3,
            sftp: self.sftp,
            mongodb: self.mongodb,
            amqp: self.amqp,
            retry: self.retry,
            watchdog: self.watchdog,
            daemon: self.daemon,
            http: self.http,
            log: self.log,
            sources: super::Sources::new(),
        })
    }
}

impl RawExportSettings {
    fn parse(self) -> Result<ExportSettings, ConfigError> {
        let destination = DestinationUrl::parse(&self.destination)
            .map_err(|err| invalid("export.destination", err))?;
        // A file:// destination is the folder files are written in.
        let output_dir = match &destination {
            DestinationUrl::Folder(Some(path)) => path.clone(),
            _ => self.output_dir,
        };
        Ok(ExportSettings {
            file_mode: parse_file_mode(&self.file_mode)?,
            output_dir,
            destination,
            chunk_size: self.chunk_size,
            mark_batch_size: self.mark_batch_size,
            cursor_batch_size: self.cursor_batch_size,
            lease_seconds: self.lease_seconds,
            parallel_runs: self.parallel_runs,
            in_doubt: InDoubt::parse(&self.in_doubt)
                .map_err(|err| invalid("export.in_doubt", err))?,
        })
    }
}

/// Octal permissions that leave the file readable and writable by its owner.
fn parse_file_mode(mode: &str) -> Result<u32, ConfigError> {
    match u32::from_str_radix(mode, 8) {
        Ok(bits) if bits <= 0o777 && bits & 0o600 == 0o600 => Ok(bits),
        _ => Err(invalid(
            "export.file_mode",
            "must be octal permissions such as \"0644\", readable and writable by the owner",
        )),
    }
}

impl RawScheduleSettings {
    fn parse(self) -> Result<ScheduleSettings, ConfigError> {
        Ok(ScheduleSettings {
            enabled: self.enabled,
            cron: parse_cron(&self.cron).map_err(|err| invalid("schedule.cron", err))?,
            timezone: parse_timezone(&self.timezone)
                .map_err(|err| invalid("schedule.timezone", err))?,
            deaneries: parse_deaneries(&self.deaneries)?,
            catch_up_window_minutes: self.catch_up_window_minutes,
            slot_lease_seconds: self.slot_lease_seconds,
        })
    }
}

/// Every code, in the order given; one invalid code refuses the list.
fn parse_deaneries(codes: &[String]) -> Result<Vec<Deanery>, ConfigError> {
    codes
        .iter()
        .map(|code| {
            Deanery::parse(code).map_err(|err| invalid("schedule.deaneries", err.to_string()))
        })
        .collect()
}
