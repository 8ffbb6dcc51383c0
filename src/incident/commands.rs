//! The three commands as the command line runs them: connect (reads only,
//! no index is created), answer, print for people or as JSON.

use std::process::ExitCode;

use anyhow::Context;

use super::{explain, files, redeliver};
use crate::config::Settings;
use crate::domain::DestinationUrl;
use crate::store::Store;

async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect(settings)
        .await
        .map(Store::said_by_caller)
        .context("Failed to connect to MongoDB")
}

/// `explain RECORD_ID [--json]`: exit 0 when found, 1 when not.
///
/// # Errors
/// When MongoDB cannot be read.
pub async fn run_explain(settings: &Settings, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = connect(settings).await?;
    let found = explain::explain(&store, settings, id)
        .await
        .context("Failed to read the record")?;
    let Some(explanation) = found else {
        eprintln!("no record with _id {id}");
        return Ok(ExitCode::FAILURE);
    };
    print_as(&explanation, json, explain::render)?;
    Ok(ExitCode::SUCCESS)
}

/// `files [--deanery X] [--since DATE] [--limit N] [--json]`.
///
/// # Errors
/// When MongoDB cannot be read.
pub async fn run_files(
    settings: &Settings,
    deanery: Option<&str>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    limit: i64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = connect(settings).await?;
    let found = files::list(&store, deanery, since, limit)
        .await
        .context("Failed to read the published files")?;
    print_as(&found, json, |found| files::render(found))?;
    Ok(ExitCode::SUCCESS)
}

/// `redeliver FILE_NAME [--to DESTINATION] [--replace]`: exit 0 when
/// delivered, 1 when refused or failed.
///
/// # Errors
/// When MongoDB cannot be reached.
pub async fn run_redeliver(
    settings: &Settings,
    file_name: &str,
    to: Option<&DestinationUrl>,
    replace: bool,
) -> anyhow::Result<ExitCode> {
    let store = connect(settings).await?;
    match redeliver::redeliver(&store, settings, file_name, to, replace).await {
        Ok(done) => {
            println!(
                "redelivered {file_name} ({} records, sha256 {}) to {}",
                done.records, done.sha256, done.location
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: {}", crate::error_chain::Chain(&err));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints `value` on stdout: pretty JSON with `--json`, else as `render`
/// says it for people.
pub(crate) fn print_as<T: serde::Serialize + ?Sized>(
    value: &T,
    json: bool,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", render(value));
    }
    Ok(())
}
