//! The command line (contract): `run`, `export`, `trigger`, `status`,
//! `check-config`; and for operators `dead-letters`, `ensure-indexes`,
//! `explain`, `files` and `redeliver`.
//!
//! Exit codes: 0 success; 1 a run failed or a dependency is unreachable;
//! 2 usage or configuration error, with one line on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;

use crate::config::Settings;
use crate::destination::{Destination, DestinationError};
use crate::domain::{Deanery, DestinationUrl, RunStatus};
use crate::export::{self, Exporter};
use crate::incident::commands as incident;
use crate::store::Store;

/// Exports NHS ESR applicant (APP) files from MongoDB, one per deanery.
#[derive(Debug, Parser)]
#[command(name = "esr-exporter", version = crate::identity::LONG_VERSION, about)]
pub struct Cli {
    /// Settings file layered over the defaults (environment variables
    /// ESR_<SECTION>__<KEY> layer over both); without it,
    /// /etc/esr-exporter/config.toml when that file exists.
    #[arg(long, global = true, value_name = "FILE", env = "ESR_CONFIG")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: scheduler and command consumer, until SIGTERM/SIGINT.
    Run,
    /// Publish generation commands now and wait for the broker's confirms;
    /// prints each command id. Without --deanery: every deanery with
    /// records to export.
    Trigger {
        /// Deanery code (repeatable).
        #[arg(long = "deanery", value_name = "CODE", value_parser = parse_deanery)]
        deaneries: Vec<Deanery>,
    },
    /// Run one export per deanery now, directly against MongoDB; prints one
    /// JSON summary line per deanery.
    Export(ExportArgs),
    /// Show per-deanery record counts, the oldest waiting record and the last run.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the dead-letter queue (one JSON line per message), or move its
    /// messages back to the command queue.
    DeadLetters {
        /// Move every message back to the command queue with a fresh attempt count.
        #[arg(long)]
        replay: bool,
        /// At most this many messages, oldest first.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// With --replay: list what would move, and move nothing.
        #[arg(long, requires = "replay")]
        dry_run: bool,
    },
    /// Where a record is and why: its status, run, file and destination;
    /// for a waiting record, why it waits. Exit 1 when there is no such record.
    Explain {
        /// The record's `_id` (24 hex digits for an ObjectId).
        record_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The published files, newest first.
    Files {
        /// Only this deanery's.
        #[arg(long, value_name = "CODE", value_parser = parse_deanery)]
        deanery: Option<Deanery>,
        /// Only those published since (YYYY-MM-DD, UTC, or RFC 3339).
        #[arg(long, value_name = "DATE", value_parser = crate::incident::files::parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a published file from its records, check it against the
    /// recorded SHA-256 and publish it again (records do not change).
    Redeliver {
        /// The file's name, e.g. DE_MER_APP_20261202_00001.DAT.
        file_name: String,
        /// Where to: file:///ABS/PATH or s3://BUCKET/PREFIX (default: where
        /// it was published).
        #[arg(long, value_name = "DESTINATION", value_parser = parse_destination)]
        to: Option<DestinationUrl>,
        /// Remove what holds the name there first (else refused).
        #[arg(long)]
        replace: bool,
    },
    /// Settle a publication in doubt (its create was interrupted and
    /// nothing is under its name: it may have been delivered and taken),
    /// then finish the deanery's run.
    #[command(group(clap::ArgGroup::new("settlement").required(true).args(["delivered", "not_delivered"])))]
    Resolve {
        /// The file's name, e.g. DE_MER_APP_20261202_00001.DAT.
        file_name: String,
        /// The receiver has the file: mark its records, send nothing.
        #[arg(long)]
        delivered: bool,
        /// The receiver never had it: publish the recorded bytes, then mark.
        #[arg(long)]
        not_delivered: bool,
    },
    /// Load and validate the settings and print them with secrets redacted.
    CheckConfig,
    /// Print the completion script for a shell (needs no settings).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page, roff (needs no settings).
    Man,
    /// Create the indexes the daemon and `status` need (the daemon also
    /// creates them at start); a no-op when they exist.
    EnsureIndexes,
}

/// Which deaneries to export.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ExportArgs {
    /// Deanery code (repeatable), e.g. --deanery MER --deanery EOE.
    #[arg(long = "deanery", value_name = "CODE", value_parser = parse_deanery)]
    pub deaneries: Vec<Deanery>,
    /// Every deanery with records waiting or a run unfinished.
    #[arg(long)]
    pub all: bool,
}

/// Parses the command line. A usage error is said in one line on stderr
/// and exits 2; `--help` and `--version` print as usual and exit 0.
pub fn parse_args() -> Cli {
    Cli::try_parse().unwrap_or_else(|err| {
        if !err.use_stderr() {
            err.exit();
        }
        eprintln!("{}", usage_error_line(&err));
        std::process::exit(2)
    })
}

/// clap's message without its usage block and tips: its first line, and
/// where to read more.
fn usage_error_line(err: &clap::Error) -> String {
    use clap::error::ErrorKind;
    let first = if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        "error: a command is required".to_owned()
    } else {
        let rendered = err.render().to_string();
        let line = rendered.lines().find(|l| !l.trim().is_empty());
        line.unwrap_or("error: invalid usage").trim_end().to_owned()
    };
    format!("{first} (esr-exporter --help lists the commands and options)")
}

fn parse_deanery(code: &str) -> Result<Deanery, String> {
    Deanery::parse(code).map_err(|err| err.to_string())
}

fn parse_destination(value: &str) -> Result<DestinationUrl, String> {
    match DestinationUrl::parse(value)? {
        DestinationUrl::Folder(None) => Err(
            "must be file:///ABS/PATH, s3://BUCKET/PREFIX or sftp://USER@HOST:PORT/ABS/PATH"
                .to_owned(),
        ),
        url => Ok(url),
    }
}

/// The settings file an installed exporter reads when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/esr-exporter/config.toml";

/// `--config` (or `ESR_CONFIG`), else [`DEFAULT_CONFIG`] when it exists, so
/// `sudo -u esr esr-exporter status` reads the service's settings.
fn config_file(named: Option<PathBuf>) -> Option<PathBuf> {
    named.or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|path| path.is_file()))
}

/// Runs the parsed command and returns the process exit code.
pub async fn execute(cli: Cli) -> ExitCode {
    if let Some(code) = write_docs(&cli.command) {
        return code;
    }
    let settings = match Settings::load(config_file(cli.config.clone()).as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {}", crate::error_chain::Chain(&err));
            return ExitCode::from(2);
        }
    };
    let short_lived = !matches!(cli.command, Command::Run);
    crate::telemetry::init(&settings.log, std::io::stderr, short_lived);
    let result = match cli.command {
        Command::CheckConfig => check_config(&settings).await,
        // Written before the settings were loaded.
        Command::Completions { .. } | Command::Man => Ok(ExitCode::SUCCESS),
        Command::Export(args) => run_export(&settings, args).await,
        Command::Run => crate::daemon::run(settings, shutdown_signal())
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Trigger { deaneries } => run_trigger(&settings, deaneries).await,
        Command::DeadLetters {
            replay,
            limit,
            dry_run,
        } => run_dead_letters(&settings, replay, dry_run, limit).await,
        Command::Status { json } => run_status(&settings, json).await,
        Command::EnsureIndexes => run_ensure_indexes(&settings).await,
        Command::Explain { record_id, json } => {
            incident::run_explain(&settings, &record_id, json).await
        }
        Command::Files {
            deanery,
            since,
            limit,
            json,
        } => {
            let deanery = deanery.as_ref().map(Deanery::as_str);
            incident::run_files(&settings, deanery, since, limit, json).await
        }
        Command::Redeliver {
            file_name,
            to,
            replace,
        } => incident::run_redeliver(&settings, &file_name, to.as_ref(), replace).await,
        Command::Resolve {
            file_name,
            delivered,
            ..
        } => crate::incident::resolve::run_resolve(&settings, &file_name, delivered).await,
    };
    result.unwrap_or_else(|err| {
        report_failure(&err);
        exit_code_of(&err)
    })
}

/// The completions or the man page, on stdout, when asked for: they need
/// no settings.
fn write_docs(command: &Command) -> Option<ExitCode> {
    use clap::CommandFactory;
    let mut out = std::io::stdout().lock();
    match command {
        Command::Completions { shell } => {
            crate::manual::completions(Cli::command(), *shell, &mut out);
            Some(ExitCode::SUCCESS)
        }
        Command::Man => Some(match crate::manual::man_page(Cli::command(), &mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: cannot write the man page: {err}");
                ExitCode::from(1)
            }
        }),
        _ => None,
    }
}

/// Says once why the command failed, with its causes: an ERROR line in the
/// configured log format, or a plain `error:` line on stderr when the log
/// filter drops errors.
fn report_failure(err: &anyhow::Error) {
    let said = crate::error_chain::chain(err.as_ref());
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(error = %said, "command failed");
    } else {
        eprintln!("error: {said}");
    }
}

/// 2 for a destination refused for good (a store that accepts a second
/// create, a missing bucket, bad credentials): restarting cannot help.
fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    let refused = err
        .chain()
        .filter_map(|cause| cause.downcast_ref::<DestinationError>())
        .any(|err| !err.is_transient());
    if refused {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Prints the settings (redacted) and proves the destination refuses a
/// second create of a name; exit 2 when it does not or cannot be reached.
async fn check_config(settings: &Settings) -> anyhow::Result<ExitCode> {
    for warning in settings.warnings() {
        eprintln!("warning: {warning}");
    }
    print!("{}", settings.to_redacted_toml());
    match Destination::proven(settings).await {
        Ok(destination) => {
            eprintln!(
                "destination {}: refuses a second create of a name (probe passed)",
                destination.url()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: {}", crate::error_chain::Chain(&err));
            Ok(ExitCode::from(2))
        }
    }
}

async fn run_export(settings: &Settings, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let store = Store::build(settings)
        .await
        .context("Failed to connect to MongoDB and prepare its indexes")?;
    let deaneries = if args.all {
        export::deaneries_to_export(&store)
            .await
            .context("Failed to list the deaneries with records to export")?
    } else {
        each_once(args.deaneries)
    };
    let closing = store.clone();
    let destination = Destination::proven(settings).await?;
    let exporter = Exporter::new(store, settings.export.clone(), destination);
    let mut any_failed = false;
    // Deaneries are independent (one lease each): run a few at once, and
    // print the summaries in deanery order as they finish.
    let mut summaries = futures_util::stream::iter(deaneries.iter().map(|deanery| {
        let exporter = exporter.clone();
        async move { exporter.run(deanery).await }
    }))
    .buffered(settings.export.parallel_runs as usize);
    while let Some(summary) = summaries.next().await {
        any_failed |= summary.status() == RunStatus::Failed;
        let line = serde_json::to_string(&summary).context("Failed to encode a run summary")?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").context("Failed to write to stdout")?;
        stdout.flush().context("Failed to write to stdout")?;
    }
    drop(summaries);
    closing.shutdown().await;
    Ok(if any_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut terminate = match tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::terminate(),
    ) {
        Ok(stream) => stream,
        Err(err) => {
            tracing::error!(error = %crate::error_chain::Chain(&err), "cannot listen for SIGTERM; only SIGINT stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "signal received"),
    }
}

async fn run_trigger(settings: &Settings, deaneries: Vec<Deanery>) -> anyhow::Result<ExitCode> {
    let deaneries = if deaneries.is_empty() {
        let store = Store::build(settings)
            .await
            .context("Failed to connect to MongoDB to list the deaneries with records to export")?;
        export::deaneries_to_export(&store)
            .await
            .context("Failed to list the deaneries with records to export")?
    } else {
        each_once(deaneries)
    };
    let print_id = |command: &crate::domain::GenerationCommand| println!("{}", command.command_id);
    crate::broker::publish_commands(
        &settings.amqp,
        "trigger",
        &deaneries,
        crate::domain::Slot::Manual,
        print_id,
    )
    .await
    .context("Failed to publish the generation commands to RabbitMQ")?;
    if deaneries.is_empty() {
        eprintln!("no deanery has records to export; nothing published");
    }
    Ok(ExitCode::SUCCESS)
}

/// The deaneries named, each once, in the order first named.
fn each_once(named: Vec<Deanery>) -> Vec<Deanery> {
    let mut seen = std::collections::HashSet::new();
    named
        .into_iter()
        .filter(|deanery| seen.insert(deanery.clone()))
        .collect()
}

/// Lists the dead letters (at most `limit`), or with `replay` moves them
/// back; `--replay --dry-run` lists what would move.
async fn run_dead_letters(
    settings: &Settings,
    replay: bool,
    dry_run: bool,
    limit: Option<u32>,
) -> anyhow::Result<ExitCode> {
    if replay && !dry_run {
        let moved = crate::broker::replay_dead_letters(&settings.amqp, limit)
            .await
            .context("Failed to replay the dead-letter queue")?;
        println!("{moved}");
        eprintln!(
            "moved {moved} message(s) from {} back to {}",
            settings.amqp.dead_letter_queue(),
            settings.amqp.queue
        );
    } else {
        let letters = crate::broker::list_dead_letters(&settings.amqp, limit)
            .await
            .context("Failed to read the dead-letter queue")?;
        for letter in &letters {
            println!(
                "{}",
                serde_json::to_string(letter).context("Failed to encode a dead letter")?
            );
        }
        if dry_run {
            eprintln!(
                "would move {} message(s) from {} back to {} (dry run: nothing moved)",
                letters.len(),
                settings.amqp.dead_letter_queue(),
                settings.amqp.queue
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_ensure_indexes(settings: &Settings) -> anyhow::Result<ExitCode> {
    Store::build(settings)
        .await
        .context("Failed to create the indexes")?;
    println!("indexes in place");
    Ok(ExitCode::SUCCESS)
}

/// Reads only; never creates indexes (on a large collection that is an
/// operation to choose a time for): `report` says when they are missing.
async fn run_status(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::connect(settings)
        .await
        .context("Failed to connect to MongoDB")?
        .said_by_caller();
    let due_by = settings.watchdog.due_by(chrono::Utc::now());
    let report = crate::status::report(&store, due_by)
        .await
        .context("Failed to read the status from MongoDB")?;
    crate::incident::commands::print_as(&report, json, crate::status::render_table)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deanery_named_twice_is_taken_once_in_the_order_first_named() {
        let named = Deanery::all(&["MER", "EOE", "MER", "LDN", "EOE"]);
        assert_eq!(each_once(named), Deanery::all(&["MER", "EOE", "LDN"]));
    }
}
