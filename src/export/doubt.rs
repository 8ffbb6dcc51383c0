//! A publication in doubt: the run's intent to create its file was
//! recorded, and a resume finds nothing under the name. The file was never
//! created, or was created and already taken by the receiver: the run is
//! held (ERROR, `esr_publications_in_doubt`) until it is settled. A
//! settlement recorded by `esr-exporter resolve`, a versioned bucket's
//! delete marker under the name, or `export.in_doubt = "publish"` lets it
//! go on. Bytes published under a name are only ever the intended ones.

use super::context::RunContext;
use super::{ExportError, Exporter};
use crate::config::InDoubt;
use crate::destination::Found;
use crate::ops::metrics;
use crate::store::{CreateIntent, RunDoc, Settlement, Transition};

/// What a resume that finds nothing under the name does.
pub(super) enum Weighed {
    /// Nothing was in doubt, or it was settled as never delivered:
    /// publish the recorded bytes.
    Publish,
    /// The receiver had the file: record it as published, send nothing.
    Delivered(Found),
}

impl Exporter {
    /// Weighs a resume that found nothing under `name`: whether a create
    /// may have happened, and if so how it is settled, or held.
    ///
    /// # Errors
    /// [`ExportError::InDoubt`] when the run is held.
    pub(super) async fn weigh_absence(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        name: &str,
    ) -> Result<Weighed, ExportError> {
        let Some(intent) = run.create_intent.clone() else {
            return Ok(Weighed::Publish);
        };
        match run.doubt.as_ref().and_then(|doubt| doubt.settled) {
            Some(Settlement::Delivered) => {
                tracing::warn!(file = name, "settled as delivered: the file is recorded as published, nothing is sent, and its records are marked");
                // A file the receiver has and this process never looked at.
                return Ok(Weighed::Delivered(Found::default()));
            }
            Some(Settlement::NotDelivered) => {
                tracing::warn!(file = name, sha256 = %intent.sha256, "settled as not delivered: publishing the recorded bytes");
                return Ok(Weighed::Publish);
            }
            None => {}
        }
        if let Some(found) = self.destination.taken(name).await {
            tracing::warn!(file = name, key = %self.destination.key(name), "a delete marker is the newest version under the name: the file was created and taken; recorded as delivered");
            ctx.store
                .transition(run, Transition::Settled(Settlement::Delivered))
                .await?;
            return Ok(Weighed::Delivered(found));
        }
        if self.settings.in_doubt == InDoubt::Publish {
            tracing::warn!(file = name, sha256 = %intent.sha256, "publishing again a file whose create was interrupted: it may have been delivered and taken already (export.in_doubt = \"publish\")");
            return Ok(Weighed::Publish);
        }
        Err(self.hold(ctx, run, &intent).await)
    }

    /// Records the run as held in doubt and says so.
    async fn hold(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        intent: &CreateIntent,
    ) -> ExportError {
        metrics::set_publication_in_doubt(ctx.deanery.as_str(), true);
        if run.doubt.is_none() {
            let doubted = Transition::Doubted(crate::store::now());
            if let Err(err) = ctx.store.transition(run, doubted).await {
                return err.into();
            }
        }
        ExportError::InDoubt {
            file: intent.name.clone(),
            deanery: ctx.deanery.to_string(),
            host: intent.host.clone(),
            at: intent.at.to_chrono().to_rfc3339(),
        }
    }

    /// Records the intent to create the file with `sha256` now, refusing
    /// bytes other than those an earlier intent named. A doubt settled
    /// before is closed (kept in `settledDoubts`): were this create
    /// interrupted too, it is weighed afresh.
    ///
    /// # Errors
    /// [`ExportError::Inconsistent`] when the bytes differ from the
    /// intended ones; MongoDB failing.
    pub(super) async fn record_intent(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        name: &str,
        sha256: &str,
    ) -> Result<(), ExportError> {
        if let Some(earlier) = run.create_intent.as_ref().filter(|e| e.sha256 != sha256) {
            let reason = format!(
                "{name} was about to be created with sha256 {} and may have been delivered; the \
                 bytes staged now have sha256 {sha256} (claimed records changed since): refusing \
                 to publish other bytes under the name",
                earlier.sha256
            );
            return Err(ExportError::inconsistent(&run.id, &reason));
        }
        let intent = Transition::Intends {
            intent: CreateIntent::now(name, sha256),
            closing: run.doubt.clone(),
        };
        Ok(ctx.store.transition(run, intent).await?)
    }
}
