//! What one export attempt carries from step to step: the deanery, the
//! MongoDB session its transactions run in, the attempt counters, the
//! lease and when it was last renewed, and what got done so far.

use std::time::{Duration, Instant};

use mongodb::ClientSession;

use super::ExportError;
use crate::domain::Deanery;
use crate::shutdown::Shutdown;
use crate::store::{RunDoc, Store, StoreError, Transition};

/// What triggered a run and when it must stop.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The command's slot id (`manual` or an RFC 3339 instant), recorded
    /// on the completed run so a duplicate command is a no-op.
    pub slot: Option<String>,
    /// The command's id, recorded likewise.
    pub command_id: Option<String>,
    /// Stop at the next safe point once this fires.
    pub shutdown: Option<Shutdown>,
    /// Stop at the next safe point after this instant.
    pub deadline: Option<Instant>,
}

/// Why an attempt stopped at a safe point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interruption {
    /// Shutdown was signalled (a deploy, a restart).
    Shutdown,
    /// The command's processing deadline passed.
    Deadline,
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shutdown => "shutdown",
            Self::Deadline => "processing deadline",
        })
    }
}

impl RunOptions {
    fn interruption(&self) -> Option<Interruption> {
        if self.shutdown.as_ref().is_some_and(Shutdown::is_shutdown) {
            Some(Interruption::Shutdown)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Interruption::Deadline)
        } else {
            None
        }
    }

    /// Stops the attempt at this safe point if shutdown or the deadline came.
    pub(super) fn check(&self) -> Result<(), ExportError> {
        match self.interruption() {
            Some(why) => Err(ExportError::Interrupted(why)),
            None => Ok(()),
        }
    }
}

/// What an attempt got done, for its summary (also when it fails).
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The run being worked on (a failure is recorded on it).
    pub(super) run_id: Option<String>,
    /// The run a completed attempt reports: the last one that wrote a file,
    /// else the last one.
    pub(super) completed_run_id: Option<String>,
    pub(super) resumed: bool,
    pub(super) exported: u64,
    pub(super) rejected: u64,
    pub(super) file: Option<String>,
    pub(super) published_to: Option<String>,
}

/// The deanery's lease as this attempt holds it. Renewal happens here
/// only, so a long step cannot let it lapse under it by forgetting.
#[derive(Debug)]
pub(super) struct LeaseKeeper {
    pub(super) owner: String,
    pub(super) ttl: Duration,
    renewed: Instant,
}

impl LeaseKeeper {
    pub(super) fn new(owner: String, ttl: Duration) -> Self {
        Self {
            owner,
            ttl,
            renewed: Instant::now(),
        }
    }
}

/// One attempt's state, handed to every step.
#[derive(Debug)]
pub(super) struct RunContext<'a> {
    pub(super) deanery: &'a Deanery,
    pub(super) options: &'a RunOptions,
    pub(super) session: ClientSession,
    /// The store as this run uses it: labelled with its deanery, counted
    /// apart.
    pub(super) store: Store,
    pub(super) lease: LeaseKeeper,
    pub(super) progress: Progress,
}

impl RunContext<'_> {
    /// Makes `run` the attempt's current run: the summary reports it, and
    /// every line logged from here on carries its id (the `run_id` of the
    /// `export_run` span the attempt runs in).
    pub(super) fn track(&mut self, run: &RunDoc) {
        self.progress.run_id = Some(run.id.clone());
        tracing::Span::current().record("run_id", run.id.as_str());
    }

    /// A run whose claimed records all turned out invalid writes no file.
    pub(super) async fn record_nothing_to_write(&self, run: &mut RunDoc) -> Result<(), StoreError> {
        self.store.transition(run, Transition::NothingToWrite).await
    }

    /// Extends the lease now; fails with [`StoreError::LeaseLost`] when
    /// another process took it over (this attempt must then stop).
    pub(super) async fn renew_lease(&mut self) -> Result<(), StoreError> {
        let (owner, ttl) = (&self.lease.owner, self.lease.ttl);
        self.store.renew_lease(self.deanery, owner, ttl).await?;
        self.lease.renewed = Instant::now();
        Ok(())
    }

    /// Extends the lease once a third of its lifetime has passed.
    pub(super) async fn renew_lease_if_due(&mut self) -> Result<(), StoreError> {
        if self.lease.renewed.elapsed() >= self.lease.ttl / 3 {
            self.renew_lease().await?;
        }
        Ok(())
    }
}
