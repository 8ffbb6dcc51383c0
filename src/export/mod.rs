//! One export run per deanery.
//!
//! A run takes the deanery's lease, then:
//! 1. **claims** `TO_EXPORT` records in chunks, one short transaction per
//!    chunk (valid ones become `EXPORTING` with the run id, invalid ones
//!    `REJECTED` with a reason), appending each claimed chunk to a temporary
//!    file as it goes: memory holds one chunk, never the backlog;
//! 2. **writes** the file atomically (trailer, fsync, rename, manifest);
//! 3. **marks** the claimed records `EXPORTED` with the file name, again one
//!    short transaction per chunk;
//! 4. **completes** the run document.
//!
//! Every step is recorded in the run document before the next starts, so an
//! attempt that dies anywhere is finished by the next attempt for the same
//! deanery: same records, same file name, never a second file.

pub mod file;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bson::doc;
use bson::oid::ObjectId;
use futures_util::TryStreamExt;
use tracing::Instrument;

use crate::config::ExportSettings;
use crate::domain::{AppRow, Deanery, RunStatus, RunSummary};
use crate::shutdown::Shutdown;
use crate::store::{Attempts, LeaseOutcome, RunDoc, RunPhase, Store, StoreError};
use file::{ExportFile, FileHeader};

/// Why an export attempt stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// MongoDB failed (after retries, if transient), or the lease was lost.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The export file could not be written.
    #[error("failed to write export file in {dir}: {source}")]
    File {
        /// Output folder.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Shutdown was signalled or the processing deadline passed: the
    /// attempt stopped at a safe point and the run resumes later.
    #[error("export run stopped at a safe point ({0}); the next attempt resumes it")]
    Interrupted(&'static str),
    /// MongoDB holds a different number of records claimed by the run than
    /// its file: nothing is published, and the next attempt rewrites the
    /// file from the claimed records.
    #[error(
        "export run {run_id} has {claimed} records claimed in MongoDB but {written} in its file; \
         nothing was published and the next attempt rewrites the file from the claimed records"
    )]
    ClaimMismatch {
        /// Run id.
        run_id: String,
        /// Records `EXPORTING` under the run.
        claimed: u64,
        /// Detail lines in the temporary file.
        written: u64,
    },
    /// The run document contradicts itself.
    #[error("export run {run_id} is inconsistent: {reason}")]
    Inconsistent {
        /// Run id.
        run_id: String,
        /// What is wrong.
        reason: String,
    },
}

impl ExportError {
    /// True when trying again later may succeed without anyone fixing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(err) => err.is_transient(),
            // A full disk, a read-only mount, too many open files: the
            // folder may be fixed while the command waits to be retried.
            Self::Interrupted(_) | Self::ClaimMismatch { .. } | Self::File { .. } => true,
            Self::Inconsistent { .. } => false,
        }
    }
}

/// Runs exports against a [`Store`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    store: Store,
    settings: ExportSettings,
}

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

impl RunOptions {
    fn interruption(&self) -> Option<&'static str> {
        if self.shutdown.as_ref().is_some_and(Shutdown::is_shutdown) {
            Some("shutdown")
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some("processing deadline")
        } else {
            None
        }
    }

    fn check(&self) -> Result<(), ExportError> {
        match self.interruption() {
            Some(why) => Err(ExportError::Interrupted(why)),
            None => Ok(()),
        }
    }
}

/// What an attempt got done, for its summary (also when it fails).
#[derive(Debug, Default)]
struct Progress {
    /// The run being worked on (a failure is recorded on it).
    run_id: Option<String>,
    /// The run a completed attempt reports: the last one that wrote a file,
    /// else the last one.
    completed_run_id: Option<String>,
    resumed: bool,
    exported: u64,
    rejected: u64,
    file: Option<String>,
}

impl Exporter {
    /// An exporter writing into `settings.output_dir`.
    pub fn new(store: Store, settings: ExportSettings) -> Self {
        Self { store, settings }
    }

    /// The store this exporter uses.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs (or resumes) the deanery's export and summarises the attempt.
    /// Never panics on a failure: a failed attempt is a summary with
    /// `status: failed`, logged at ERROR, and its run is left to resume.
    pub async fn run(&self, deanery: &Deanery) -> RunSummary {
        self.run_with(deanery, &RunOptions::default()).await
    }

    /// Like [`Exporter::run`], for a command, stopping at a safe point
    /// (between chunks) on shutdown or after a deadline.
    pub async fn run_with(&self, deanery: &Deanery, options: &RunOptions) -> RunSummary {
        let span = tracing::info_span!("export_run", deanery = %deanery);
        self.run_inner(deanery, options).instrument(span).await
    }

    async fn run_inner(&self, deanery: &Deanery, options: &RunOptions) -> RunSummary {
        let started = Instant::now();
        let owner = uuid::Uuid::new_v4().to_string();
        let mut attempts = Attempts::default();
        let mut progress = Progress::default();

        let outcome = match self.lease(deanery, &owner, &mut attempts).await {
            Ok(Ok(mut session)) => {
                let result = self
                    .try_run(
                        &mut session,
                        deanery,
                        &owner,
                        options,
                        &mut attempts,
                        &mut progress,
                    )
                    .await;
                if let Err(err) = self
                    .store
                    .release_lease(deanery, &owner, &mut attempts)
                    .await
                {
                    tracing::warn!(deanery = %deanery, error = %err, "failed to release lease; it lapses on its own");
                }
                result.map(|()| None)
            }
            Ok(Err(held)) => Ok(Some(held)),
            Err(err) => Err(ExportError::from(err)),
        };

        let status = match &outcome {
            Ok(None) => RunStatus::Completed,
            Ok(Some(_)) => RunStatus::Skipped,
            Err(_) => RunStatus::Failed,
        };
        let error = match &outcome {
            Ok(reason) => reason.clone(),
            Err(err) => Some(err.to_string()),
        };
        let summary = RunSummary {
            deanery: deanery.to_string(),
            run_id: match &outcome {
                Ok(None) => progress
                    .completed_run_id
                    .clone()
                    .or_else(|| progress.run_id.clone()),
                _ => progress.run_id.clone(),
            },
            status,
            exported: progress.exported,
            rejected: progress.rejected,
            file: progress.file.clone(),
            attempts: attempts.transactions,
            retries: attempts.retries,
            write_conflicts: attempts.write_conflicts,
            duration_ms: started.elapsed().as_millis() as u64,
            resumed: progress.resumed,
            error,
            retryable: match &outcome {
                Ok(None) => false,
                Ok(Some(_)) => true,
                Err(err) => err.is_transient(),
            },
        };
        crate::ops::metrics::record_run(&summary);
        match &outcome {
            Ok(None) => tracing::info!(
                deanery = %deanery,
                run_id = summary.run_id.as_deref().unwrap_or(""),
                exported = summary.exported,
                rejected = summary.rejected,
                file = summary.file.as_deref().unwrap_or(""),
                attempts = summary.attempts,
                retries = summary.retries,
                write_conflicts = summary.write_conflicts,
                duration_ms = summary.duration_ms,
                resumed = summary.resumed,
                "export run completed"
            ),
            Ok(Some(reason)) => {
                tracing::warn!(deanery = %deanery, reason = %reason, "export run skipped")
            }
            Err(err) => {
                if let ExportError::File { dir, source } = err {
                    crate::ops::output_folder::record_failure(dir, source);
                    tracing::error!(
                        deanery = %deanery,
                        path = %dir.display(),
                        errno = %crate::ops::output_folder::errno_name(source),
                        error = %source,
                        "the output folder cannot be written; the command is retried"
                    );
                }
                tracing::error!(
                    deanery = %deanery,
                    run_id = summary.run_id.as_deref().unwrap_or(""),
                    attempts = summary.attempts,
                    duration_ms = summary.duration_ms,
                    transient = err.is_transient(),
                    error = %err,
                    "export run failed; the next attempt resumes it"
                );
                if let Some(run_id) = &progress.run_id {
                    let mut ignored = Attempts::default();
                    let _ = self
                        .store
                        .update_run(
                            run_id,
                            deanery,
                            doc! {"lastError": err.to_string(), "lastErrorAt": crate::store::now()},
                            i64::from(attempts.transactions),
                            &mut ignored,
                        )
                        .await;
                }
            }
        }
        summary
    }

    /// Starts this attempt's session and takes the deanery's lease with it.
    /// A lease taken over from a dead holder ends that holder's session, so
    /// its open transaction stops holding records (otherwise the server
    /// keeps it for up to `transactionLifetimeLimitSeconds`, 60 s).
    async fn lease(
        &self,
        deanery: &Deanery,
        owner: &str,
        attempts: &mut Attempts,
    ) -> Result<Result<mongodb::ClientSession, String>, StoreError> {
        let session = self.store.start_session(attempts).await?;
        let outcome = self
            .store
            .acquire_lease(
                deanery,
                owner,
                session.id(),
                self.settings.lease(),
                attempts,
            )
            .await?;
        match outcome {
            LeaseOutcome::Acquired { lapsed_session } => {
                if lapsed_session.is_some() {
                    tracing::warn!(deanery = %deanery, "took over a lapsed lease; ended the previous holder's session");
                }
                Ok(Ok(session))
            }
            LeaseOutcome::Held { owner, expires_at } => Ok(Err(format!(
                "deanery {deanery} is being exported by another process (lease {owner} until {})",
                expires_at.map_or_else(|| "unknown".to_owned(), |t| t.to_string())
            ))),
        }
    }

    async fn try_run(
        &self,
        session: &mut mongodb::ClientSession,
        deanery: &Deanery,
        owner: &str,
        options: &RunOptions,
        attempts: &mut Attempts,
        progress: &mut Progress,
    ) -> Result<(), ExportError> {
        // An unfinished run is finished first. It only claims up to the
        // newest record of its own start, so a fresh run follows it for
        // what came since; the trigger is recorded on that last run.
        loop {
            let (mut run, resumed) = match self.store.find_open_run(deanery, attempts).await? {
                Some(run) => {
                    tracing::info!(deanery = %deanery, run_id = %run.id, phase = run.phase.as_str(), "resuming interrupted export run");
                    progress.resumed = true;
                    (run, true)
                }
                None => {
                    progress.rejected += self.reject_unexportable(deanery, attempts).await?;
                    let up_to = self.store.max_to_export_id(deanery, attempts).await?;
                    let run = RunDoc::new(deanery, up_to);
                    self.store.insert_run(&run, deanery, attempts).await?;
                    tracing::info!(deanery = %deanery, run_id = %run.id, "export run started");
                    (run, false)
                }
            };
            progress.run_id = Some(run.id.clone());

            let mut boundaries = None;
            if run.phase == RunPhase::Claiming {
                boundaries = self
                    .claim_and_write(session, &mut run, deanery, owner, options, attempts)
                    .await?;
            }
            if run.phase == RunPhase::Finalizing {
                self.publish(session, &mut run, deanery, owner, attempts)
                    .await?;
            }
            if run.phase == RunPhase::Written {
                self.mark_exported(session, &run, deanery, owner, boundaries, options, attempts)
                    .await?;
            }
            let exported = run.record_count.unwrap_or(0).max(0) as u64;
            let attempts_so_far = i64::from(attempts.transactions);
            let (slot, command_id) = if resumed {
                (None, None)
            } else {
                (options.slot.as_deref(), options.command_id.as_deref())
            };
            self.store
                .complete_run(
                    &run.id,
                    deanery,
                    attempts_so_far,
                    slot,
                    command_id,
                    attempts,
                )
                .await?;
            progress.exported += exported;
            progress.rejected += run.rejected.max(0) as u64;
            if exported > 0 {
                progress.file = run.file_name.clone();
                progress.completed_run_id = Some(run.id.clone());
            } else if progress.file.is_none() {
                progress.completed_run_id = Some(run.id.clone());
            }
            if !resumed {
                return Ok(());
            }
            tracing::info!(deanery = %deanery, run_id = %run.id, exported, "resumed run completed; starting a run for records that came since");
        }
    }

    /// Rejects the deanery's waiting records no run can claim (an `_id`
    /// that is not an ObjectId), each logged with its reason.
    async fn reject_unexportable(
        &self,
        deanery: &Deanery,
        attempts: &mut Attempts,
    ) -> Result<u64, ExportError> {
        let rejected = self
            .store
            .reject_unexportable_ids(deanery, attempts)
            .await?;
        for (id, reason) in &rejected {
            tracing::warn!(deanery = %deanery, record_id = %id, reason = %reason, "record rejected");
        }
        Ok(rejected.len() as u64)
    }

    /// Phase 1 and 2: claim everything, write the file, record it.
    async fn claim_and_write(
        &self,
        session: &mut mongodb::ClientSession,
        run: &mut RunDoc,
        deanery: &Deanery,
        owner: &str,
        options: &RunOptions,
        attempts: &mut Attempts,
    ) -> Result<Option<Vec<ObjectId>>, ExportError> {
        let chunk_size = self.settings.chunk_size;
        self.remove_stale_temporaries(deanery).await?;
        // Records an earlier attempt claimed: its temporary file died with
        // it, so they are written again, in order, before claiming more.
        let (mut writer, mut boundaries) = self
            .rewrite_claimed(session, run, deanery, owner, attempts)
            .await?;
        let (mut claim_time, mut write_time) = (Duration::ZERO, Duration::ZERO);
        if let Some(up_to) = run.claim_up_to {
            let mut waiting = self
                .store
                .waiting_ids(deanery, run.last_claimed_id, up_to, chunk_size, attempts)
                .await?;
            let mut pending: VecDeque<ObjectId> = VecDeque::new();
            let mut drained = false;
            loop {
                options.check()?;
                while !drained && pending.len() < chunk_size as usize {
                    match waiting
                        .try_next()
                        .await
                        .map_err(|err| StoreError::Mongo(stream_error(err)))?
                    {
                        Some(document) => pending.extend(document.get_object_id("_id").ok()),
                        None => drained = true,
                    }
                }
                if pending.is_empty() {
                    break;
                }
                let ids: Vec<ObjectId> =
                    pending.iter().take(chunk_size as usize).copied().collect();
                let claiming = Instant::now();
                let chunk = self
                    .store
                    .claim_chunk(
                        session,
                        run,
                        deanery,
                        owner,
                        self.settings.lease(),
                        &ids,
                        attempts,
                    )
                    .await?;
                claim_time += claiming.elapsed();
                pending.drain(..chunk.covered);
                run.last_claimed_id = chunk.last_id;
                run.claimed += chunk.rows.len() as i64;
                run.rejected += chunk.rejections.len() as i64;
                for (id, reason) in &chunk.rejections {
                    tracing::warn!(deanery = %deanery, run_id = %run.id, record_id = %id, reason = %reason, "record rejected");
                }
                if let Some((seq, name)) = chunk.assigned_file {
                    run.seq = Some(seq);
                    run.file_name = Some(name);
                }
                if !chunk.rows.is_empty() {
                    if writer.is_none() {
                        writer = Some(self.open_file(run, deanery).await?);
                    }
                    boundaries.extend(chunk.rows.last().map(|row| row.id));
                    let writing = Instant::now();
                    writer = Some(self.write(writer, chunk.rows).await?);
                    write_time += writing.elapsed();
                }
            }
        }

        // The file must hold exactly the records the run has claimed: a
        // claim whose outcome was lost, or another writer's change, shows
        // here rather than as a record marked with a file it is not in.
        let written = writer.as_ref().map_or(0, ExportFile::count);
        self.verify_claimed(run, deanery, written, attempts).await?;
        let Some(writer) = writer.filter(|w| w.count() > 0) else {
            // Nothing valid to write: no file (dropping a writer removes
            // its temporary file).
            self.record_nothing_to_write(run, deanery, attempts).await?;
            return Ok(Some(boundaries));
        };
        let finishing = Instant::now();
        let staged = self.stage(writer, run, deanery, owner, attempts).await?;
        write_time += finishing.elapsed();
        tracing::info!(
            deanery = %deanery,
            run_id = %run.id,
            file = run.file_name.as_deref().unwrap_or(""),
            records = staged.record_count,
            sha256 = %staged.sha256,
            claim_ms = claim_time.as_millis() as u64,
            write_ms = write_time.as_millis() as u64,
            "export file written"
        );
        Ok(Some(boundaries))
    }

    /// Removes the deanery's temporary files an interrupted attempt left
    /// in this folder (only ever called while holding its lease).
    async fn remove_stale_temporaries(&self, deanery: &Deanery) -> Result<(), ExportError> {
        let (dir, code) = (self.settings.output_dir.clone(), deanery.clone());
        let removed = blocking(&self.settings.output_dir, move || {
            file::remove_stale_temporaries(&dir, &code)
        })
        .await?;
        if removed > 0 {
            tracing::info!(deanery = %deanery, removed, "removed temporary files of an interrupted run");
        }
        Ok(())
    }

    /// Writes the records the run has claimed so far into a new temporary
    /// file, in `_id` order, rejecting those that turned invalid since.
    /// Returns the file (none when nothing is claimed) and the mark
    /// boundaries: the last `_id` of each batch written, so the mark phase
    /// marks the records between consecutive boundaries, one transaction each.
    async fn rewrite_claimed(
        &self,
        session: &mut mongodb::ClientSession,
        run: &mut RunDoc,
        deanery: &Deanery,
        owner: &str,
        attempts: &mut Attempts,
    ) -> Result<(Option<ExportFile>, Vec<ObjectId>), ExportError> {
        let chunk_size = self.settings.chunk_size;
        let mut boundaries = Vec::new();
        if run.claimed <= 0 {
            return Ok((None, boundaries));
        }
        let mut writer = Some(self.open_file(run, deanery).await?);
        let mut cursor = self
            .store
            .claimed_records(&run.id, deanery, self.settings.cursor_batch_size, attempts)
            .await?;
        let mut batch = Vec::with_capacity(chunk_size as usize);
        let mut rejections = Vec::new();
        let mut renewed = Instant::now();
        while let Some(document) = cursor
            .try_next()
            .await
            .map_err(|err| StoreError::Mongo(stream_error(err)))?
        {
            match AppRow::from_document(&document, deanery) {
                Ok(row) => batch.push(row),
                Err(reason) => {
                    if let Ok(id) = document.get_object_id("_id") {
                        rejections.push((id, reason));
                    }
                }
            }
            if batch.len() >= chunk_size as usize {
                // A long rewrite must not let the lease lapse under it.
                if renewed.elapsed() >= self.settings.lease() / 3 {
                    self.store
                        .renew_lease(deanery, owner, self.settings.lease(), attempts)
                        .await?;
                    renewed = Instant::now();
                }
                boundaries.extend(batch.last().map(|row: &AppRow| row.id));
                writer = Some(self.write(writer, std::mem::take(&mut batch)).await?);
            }
        }
        if !batch.is_empty() {
            boundaries.extend(batch.last().map(|row| row.id));
            writer = Some(self.write(writer, batch).await?);
        }
        self.reject_changed(session, run, deanery, &rejections, attempts)
            .await?;
        Ok((writer, boundaries))
    }

    /// Rejects claimed records that turned invalid after their claim.
    async fn reject_changed(
        &self,
        session: &mut mongodb::ClientSession,
        run: &mut RunDoc,
        deanery: &Deanery,
        rejections: &[(ObjectId, String)],
        attempts: &mut Attempts,
    ) -> Result<(), ExportError> {
        if rejections.is_empty() {
            return Ok(());
        }
        let batch = self.settings.chunk_size as usize;
        let rejected = self
            .store
            .reject_claimed(session, &run.id, deanery, rejections, batch, attempts)
            .await?;
        for (id, reason) in &rejected {
            tracing::warn!(deanery = %deanery, run_id = %run.id, record_id = %id, reason = %reason, "record rejected: it changed after it was claimed");
        }
        run.claimed -= rejected.len() as i64;
        run.rejected += rejected.len() as i64;
        Ok(())
    }

    /// The file must hold exactly the records the run has claimed: a claim
    /// whose outcome was lost, or another writer's change, shows here
    /// rather than as a record marked with a file it is not in.
    async fn verify_claimed(
        &self,
        run: &RunDoc,
        deanery: &Deanery,
        written: u64,
        attempts: &mut Attempts,
    ) -> Result<(), ExportError> {
        let claimed = self.store.count_claimed(&run.id, deanery, attempts).await?;
        if claimed != written {
            return Err(ExportError::ClaimMismatch {
                run_id: run.id.clone(),
                claimed,
                written,
            });
        }
        Ok(())
    }

    /// A run whose claimed records all turned out invalid writes no file.
    async fn record_nothing_to_write(
        &self,
        run: &mut RunDoc,
        deanery: &Deanery,
        attempts: &mut Attempts,
    ) -> Result<(), ExportError> {
        let set = doc! {"phase": RunPhase::Written.as_str(), "recordCount": 0_i64};
        self.store
            .update_run(&run.id, deanery, set, 0, attempts)
            .await?;
        run.phase = RunPhase::Written;
        run.record_count = Some(0);
        Ok(())
    }

    /// Phase 2a: trailer, fsync and the staging name; then, as lease
    /// holder, record the file's hash and count (`FINALIZING`).
    async fn stage(
        &self,
        writer: ExportFile,
        run: &mut RunDoc,
        deanery: &Deanery,
        owner: &str,
        attempts: &mut Attempts,
    ) -> Result<file::Staged, ExportError> {
        let staged = blocking(&self.settings.output_dir, move || writer.stage()).await?;
        // Only the lease holder may make the file final: renew (and stop
        // if another process took over) before recording it.
        self.store
            .renew_lease(deanery, owner, self.settings.lease(), attempts)
            .await?;
        let set = doc! {
            "phase": RunPhase::Finalizing.as_str(),
            "recordCount": staged.record_count as i64,
            "sha256": &staged.sha256,
        };
        self.store
            .update_run(&run.id, deanery, set, 0, attempts)
            .await?;
        run.phase = RunPhase::Finalizing;
        run.record_count = Some(staged.record_count as i64);
        run.sha256 = Some(staged.sha256.clone());
        Ok(staged)
    }

    /// Phase 2b: make the staged file final (manifest first, then the
    /// `.DAT` under its final name) and record where it was published;
    /// only then are records marked. When this folder holds neither the
    /// final file nor the staged one (it was staged on another host, or a
    /// reader took it before its publication was recorded), the file is
    /// staged again from the claimed records and published again under
    /// the same name: nothing is ever assumed delivered.
    async fn publish(
        &self,
        session: &mut mongodb::ClientSession,
        run: &mut RunDoc,
        deanery: &Deanery,
        owner: &str,
        attempts: &mut Attempts,
    ) -> Result<(), ExportError> {
        let (Some(sha256), Some(count)) = (run.sha256.clone(), run.record_count) else {
            return Err(ExportError::Inconsistent {
                run_id: run.id.clone(),
                reason: "finalizing without a recorded hash and count".to_owned(),
            });
        };
        let mut staged = file::Staged {
            sha256,
            record_count: count.max(0) as u64,
        };
        if self.publish_staged(run, deanery, &staged).await? == file::Published::NotStaged {
            tracing::warn!(
                deanery = %deanery,
                run_id = %run.id,
                file = run.file_name.as_deref().unwrap_or(""),
                folder = %self.settings.output_dir.display(),
                "the run's staged file is not in this folder and its publication was never recorded; \
                 staging it again from the claimed records"
            );
            let Some(again) = self.restage(session, run, deanery, owner, attempts).await? else {
                return self.record_nothing_to_write(run, deanery, attempts).await;
            };
            staged = again;
            if self.publish_staged(run, deanery, &staged).await? != file::Published::Final {
                return Err(ExportError::Inconsistent {
                    run_id: run.id.clone(),
                    reason: "the file staged again vanished before it could be published"
                        .to_owned(),
                });
            }
        }
        self.record_publication(run, deanery, &staged, attempts)
            .await
    }

    async fn publish_staged(
        &self,
        run: &RunDoc,
        deanery: &Deanery,
        staged: &file::Staged,
    ) -> Result<file::Published, ExportError> {
        let header = self.header(run, deanery)?;
        let (dir, staged) = (self.settings.output_dir.clone(), staged.clone());
        blocking(&self.settings.output_dir, move || {
            file::publish(&dir, &header, &staged)
        })
        .await
    }

    /// Writes the claimed records into a new staged file. Unchanged
    /// records give the same bytes as before; if another writer changed a
    /// claimed record since, the new hash and count are recorded.
    async fn restage(
        &self,
        session: &mut mongodb::ClientSession,
        run: &mut RunDoc,
        deanery: &Deanery,
        owner: &str,
        attempts: &mut Attempts,
    ) -> Result<Option<file::Staged>, ExportError> {
        self.remove_stale_temporaries(deanery).await?;
        let recorded = run.sha256.clone();
        let (writer, _) = self
            .rewrite_claimed(session, run, deanery, owner, attempts)
            .await?;
        let written = writer.as_ref().map_or(0, ExportFile::count);
        self.verify_claimed(run, deanery, written, attempts).await?;
        let Some(writer) = writer.filter(|w| w.count() > 0) else {
            return Ok(None);
        };
        let staged = self.stage(writer, run, deanery, owner, attempts).await?;
        if recorded.as_deref() != Some(staged.sha256.as_str()) {
            tracing::warn!(
                deanery = %deanery,
                run_id = %run.id,
                sha256 = %staged.sha256,
                records = staged.record_count,
                "the file staged again differs from the first (claimed records changed since); publishing the new bytes"
            );
        }
        Ok(Some(staged))
    }

    /// Records where the file now exists under its final name (`WRITTEN`).
    async fn record_publication(
        &self,
        run: &mut RunDoc,
        deanery: &Deanery,
        staged: &file::Staged,
        attempts: &mut Attempts,
    ) -> Result<(), ExportError> {
        let file_name = run.file_name.clone().unwrap_or_default();
        let path = self.settings.output_dir.join(&file_name);
        let path = std::path::absolute(&path).unwrap_or(path);
        let publication = crate::store::Publication {
            host: crate::domain::host_name(),
            path: path.display().to_string(),
            sha256: staged.sha256.clone(),
            published_at: crate::store::now(),
        };
        crate::ops::output_folder::record_success(&self.settings.output_dir);
        self.store
            .record_publication(&run.id, deanery, &publication, attempts)
            .await?;
        tracing::info!(
            deanery = %deanery,
            run_id = %run.id,
            host = %publication.host,
            path = %publication.path,
            sha256 = %publication.sha256,
            "export file published"
        );
        run.phase = RunPhase::Written;
        run.publication = Some(publication);
        Ok(())
    }

    /// The mark boundaries of a run resumed after its file was written:
    /// every `chunk_size`-th claimed `_id`, from one cursor.
    async fn boundaries_of(
        &self,
        run: &RunDoc,
        deanery: &Deanery,
        attempts: &mut Attempts,
    ) -> Result<Vec<ObjectId>, ExportError> {
        let chunk = self.settings.chunk_size as usize;
        let mut cursor = self
            .store
            .claimed_ids(&run.id, deanery, self.settings.cursor_batch_size, attempts)
            .await?;
        let mut boundaries = Vec::new();
        let mut seen = 0usize;
        while let Some(document) = cursor
            .try_next()
            .await
            .map_err(|err| StoreError::Mongo(stream_error(err)))?
        {
            seen += 1;
            if seen.is_multiple_of(chunk) {
                boundaries.extend(document.get_object_id("_id").ok());
            }
        }
        Ok(boundaries)
    }

    /// Phase 3: mark the run's claimed records `EXPORTED`, one transaction
    /// per chunk (between consecutive boundaries), then any rest.
    #[allow(clippy::too_many_arguments)]
    async fn mark_exported(
        &self,
        session: &mut mongodb::ClientSession,
        run: &RunDoc,
        deanery: &Deanery,
        owner: &str,
        boundaries: Option<Vec<ObjectId>>,
        options: &RunOptions,
        attempts: &mut Attempts,
    ) -> Result<(), ExportError> {
        let Some(file_name) = run
            .file_name
            .as_deref()
            .filter(|_| run.record_count > Some(0))
        else {
            return Ok(());
        };
        let boundaries = match boundaries {
            Some(known) => known,
            None => self.boundaries_of(run, deanery, attempts).await?,
        };
        let renew_every = self.settings.lease() / 3;
        let mut renewed = Instant::now();
        let marking = Instant::now();
        let mut after = None;
        for up_to in boundaries.into_iter().map(Some).chain([None]) {
            options.check()?;
            if renewed.elapsed() >= renew_every {
                self.store
                    .renew_lease(deanery, owner, self.settings.lease(), attempts)
                    .await?;
                renewed = Instant::now();
            }
            self.store
                .mark_exported(session, &run.id, deanery, file_name, after, up_to, attempts)
                .await?;
            after = up_to;
        }
        tracing::info!(
            deanery = %deanery,
            run_id = %run.id,
            mark_ms = marking.elapsed().as_millis() as u64,
            "records marked exported"
        );
        Ok(())
    }

    fn header(&self, run: &RunDoc, deanery: &Deanery) -> Result<FileHeader, ExportError> {
        let (Some(file_name), Some(seq)) = (run.file_name.clone(), run.seq) else {
            return Err(ExportError::Inconsistent {
                run_id: run.id.clone(),
                reason: "records are claimed but no file name is allocated".to_owned(),
            });
        };
        Ok(FileHeader {
            deanery: deanery.clone(),
            date: run.file_date(),
            time: run.file_time(),
            seq,
            run_id: run.id.clone(),
            file_name,
            mode: self.settings.file_mode_bits(),
        })
    }

    async fn open_file(&self, run: &RunDoc, deanery: &Deanery) -> Result<ExportFile, ExportError> {
        let header = self.header(run, deanery)?;
        let dir = self.settings.output_dir.clone();
        blocking(&self.settings.output_dir, move || {
            ExportFile::create(&dir, header)
        })
        .await
    }

    async fn write(
        &self,
        writer: Option<ExportFile>,
        rows: Vec<AppRow>,
    ) -> Result<ExportFile, ExportError> {
        let mut writer = writer.expect("a file is open before rows are written");
        blocking(&self.settings.output_dir, move || {
            writer.write_rows(&rows).map(|()| writer)
        })
        .await
    }
}

/// Runs blocking file work off the async worker threads.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ExportError> {
    let file_error = |source| ExportError::File {
        dir: dir.to_owned(),
        source,
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join| file_error(std::io::Error::other(join.to_string())))?
        .map_err(file_error)
}

fn stream_error(err: mongodb::error::Error) -> crate::store::RetryError {
    use crate::store::retry;
    // A cursor cannot be resumed mid-stream; a transient failure ends this
    // attempt and the next attempt streams again from the start.
    match retry::classify(&err, false) {
        retry::Transience::Permanent => retry::permanent("read_cursor", err),
        _ => crate::store::RetryError::Exhausted {
            op: "read_cursor",
            attempts: 1,
            elapsed_ms: 0,
            code: retry::error_code(&err),
            source: err,
        },
    }
}

/// Lists the deaneries `export --all` should run: every valid code with
/// records waiting or a run unfinished. Waiting records whose deanery is
/// not a valid code are marked `REJECTED` with the reason and reported at
/// ERROR, so they are never silently left behind.
///
/// # Errors
/// When MongoDB fails beyond the retry policy.
pub async fn deaneries_to_export(store: &Store) -> Result<Vec<Deanery>, StoreError> {
    let mut attempts = Attempts::default();
    let mut deaneries = Vec::new();
    for value in store.deaneries_with_work(&mut attempts).await? {
        match value.as_str().map(Deanery::parse) {
            Some(Ok(deanery)) => deaneries.push(deanery),
            other => {
                let reason = match other {
                    Some(Err(err)) => err.to_string(),
                    _ => format!("invalid deanery value {value}: expected a string code"),
                };
                let count = store
                    .reject_invalid_deanery(&value, &reason, &mut attempts)
                    .await?;
                if count > 0 {
                    tracing::error!(deanery = %crate::domain::printable(&value.to_string(), 64), count, reason = %reason, "records with an invalid deanery code rejected");
                }
            }
        }
    }
    deaneries.sort();
    Ok(deaneries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_folder_errors_are_transient_and_inconsistencies_are_not() {
        for errno in [28, 30, 24, 5] {
            let err = ExportError::File {
                dir: PathBuf::from("/exports"),
                source: std::io::Error::from_raw_os_error(errno),
            };
            assert!(err.is_transient(), "errno {errno}");
        }
        let err = ExportError::Inconsistent {
            run_id: "r".to_owned(),
            reason: "x".to_owned(),
        };
        assert!(!err.is_transient());
    }
}
