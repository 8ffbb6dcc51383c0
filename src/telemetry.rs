//! The tracing subscriber. Logs go to the sink given (stderr in the binary,
//! so that stdout carries only machine-readable results); JSON lines by
//! default, `log.format = "pretty"` for people, `RUST_LOG` overrides the
//! filter.
//!
//! Stable field names operators can alert on: `deanery`, `run_id`,
//! `attempt`, `error_code`, `delay_ms`, `op`, `exported`, `rejected`,
//! `file`, `attempts`, `duration_ms`, `error`.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Does nothing if one is already installed
/// (tests install their own).
///
/// `short_lived` is for one-off commands: the AMQP client's own log lines
/// are left out there (unless `RUST_LOG` asks for them), because its I/O
/// thread can report the process's own exit as an error.
pub(crate) fn init<W>(settings: &LogSettings, sink: W, short_lived: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        if short_lived {
            EnvFilter::new(format!("{},lapin=off", settings.level))
        } else {
            EnvFilter::new(&settings.level)
        }
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_target(true);
    let result = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // Already installed: keep the existing one.
    drop(result);
}
