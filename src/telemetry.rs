//! The tracing subscriber. Logs go to the sink given (stderr in the binary,
//! so that stdout carries only machine-readable results); JSON lines by
//! default, `log.format = "pretty"` for people, `RUST_LOG` overrides the
//! filter.
//!
//! Stable field names operators can alert on: `deanery`, `run_id`,
//! `attempt`, `error_code`, `delay_ms`, `op`, `exported`, `rejected`,
//! `file`, `attempts`, `duration_ms`, `error`.

use std::io::IsTerminal;

use json_subscriber::JsonLayer;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// True for an ERROR line of the AMQP client itself ("Channel closed",
/// "Connection error"): a broker restart, a consumer timeout or a clean
/// stop is not an incident, and the daemon's own WARN line already says
/// what happened and that it reconnects. Its lower levels pass as the
/// filter says.
fn lapin_error(metadata: &Metadata<'_>) -> bool {
    *metadata.level() == Level::ERROR && metadata.target().starts_with("lapin")
}

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
    let ours = filter_fn(|metadata| !lapin_error(metadata));
    let result = match settings.format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(json_lines(sink))
            .with(filter)
            .with(ours)
            .try_init(),
        // Colours only for a terminal: a journal or a file gets plain text.
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(sink)
            .with_target(true)
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(ours)
            .try_init(),
    };
    // Already installed: keep the existing one.
    drop(result);
}

/// One JSON object a line: `timestamp`, `level`, `target`, the fields of
/// every span the line is said in (an export run's `deanery` and `run_id`;
/// the innermost wins where two spans name the same field), then the
/// event's own fields and `message`, all at the top level.
pub(crate) fn json_lines<S, W>(sink: W) -> JsonLayer<S, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    let mut layer = JsonLayer::new(sink);
    layer.with_timer("timestamp", SystemTime);
    layer.with_level("level");
    layer.with_target("target");
    layer.with_top_level_flattened_span_list();
    layer.with_flattened_event();
    layer
}
