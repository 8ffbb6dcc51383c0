//! `esr-exporter resolve FILE --delivered|--not-delivered`: settles a
//! publication in doubt (its create was interrupted and nothing is under
//! its name) and finishes the deanery's run at once: `--delivered` marks
//! its records with nothing sent, `--not-delivered` publishes the recorded
//! bytes and then marks them. Any other run is refused.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::destination::Destination;
use crate::domain::{Deanery, RunStatus};
use crate::export::Exporter;
use crate::store::{RunDoc, RunPhase, Settlement, Store, Transition};

/// Settles `file_name` and runs its deanery's export: exit 0 when
/// settled (and finished, or left to the process holding the deanery's
/// lease), 1 when refused or when the run then failed.
///
/// # Errors
/// When MongoDB cannot be reached or the destination cannot be proven.
pub async fn run_resolve(
    settings: &Settings,
    file_name: &str,
    delivered: bool,
) -> anyhow::Result<ExitCode> {
    let settlement = match delivered {
        true => Settlement::Delivered,
        false => Settlement::NotDelivered,
    };
    let store = Store::build(settings)
        .await
        .context("Failed to connect to MongoDB and prepare its indexes")?;
    let found = store
        .run_by_file(file_name)
        .await
        .context("Failed to read the file's run")?;
    let mut run = match found.ok_or_else(|| format!("no run has a file named {file_name}")) {
        Ok(run) => run,
        Err(refusal) => return Ok(refuse(&refusal)),
    };
    if let Err(refusal) = settleable(&run, settlement) {
        return Ok(refuse(&refusal));
    }
    store
        .transition(&mut run, Transition::Settled(settlement))
        .await
        .context("Failed to record the settlement")?;
    tracing::warn!(
        file = file_name,
        settlement = settlement.as_str(),
        "publication in doubt settled"
    );
    let deanery = Deanery::parse(&run.deanery).context("The run's deanery")?;
    let destination = Destination::proven(settings).await?;
    let exporter = Exporter::new(store.clone(), settings.export.clone(), destination);
    let summary = exporter.run(&deanery).await;
    println!(
        "{}",
        serde_json::to_string(&summary).context("Failed to encode the summary")?
    );
    store.shutdown().await;
    Ok(match summary.status() {
        RunStatus::Failed => ExitCode::FAILURE,
        RunStatus::Completed => ExitCode::SUCCESS,
        RunStatus::Skipped => {
            eprintln!(
                "settled; the run was not finished now: another process holds deanery {}'s \
                 lease and applies the settlement on its next attempt (its retried command)",
                run.deanery
            );
            ExitCode::SUCCESS
        }
    })
}

/// Whether `run` is held in doubt and may be settled as `settlement`.
fn settleable(run: &RunDoc, settlement: Settlement) -> Result<(), String> {
    let file = run.file_name.as_deref().unwrap_or_default();
    if run.phase != RunPhase::Finalizing {
        return Err(format!(
            "{file} is not in doubt: its run is {} (nothing to settle)",
            run.phase.as_str()
        ));
    }
    let Some(doubt) = &run.doubt else {
        return Err(format!(
            "{file} is not in doubt: no attempt has found its name empty after an interrupted \
             create (`esr-exporter export --deanery {}` resumes its run)",
            run.deanery
        ));
    };
    match doubt.settled {
        Some(earlier) if earlier != settlement => Err(format!(
            "{file} was already settled as {}; its run finishes with the next attempt",
            earlier.as_str()
        )),
        _ => Ok(()),
    }
}

fn refuse(refusal: &str) -> ExitCode {
    eprintln!("error: {refusal}");
    ExitCode::FAILURE
}
