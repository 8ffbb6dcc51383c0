//! A run's moves from one phase to the next. Each is fenced on the phases
//! it leaves, so a process that fell behind (its lease lapsed and another
//! moved the run on) changes nothing and is told so; and each is applied
//! alike to the stored document and to the caller's copy, from one
//! description of the change.

use bson::{doc, Bson, DateTime, Document};

use super::doubt::{CreateIntent, Doubt, Settlement};
use super::runs::{Publication, RunDoc, RunPhase};
use super::{now, Store, StoreError};

/// One move of a run to its next phase.
#[derive(Debug, Clone)]
pub(crate) enum Transition {
    /// The file is staged: its detail count and SHA-256 are recorded, and
    /// only the lease holder makes it final (`FINALIZING`). Also left from
    /// `FINALIZING`, when a file staged again replaces the recorded one.
    Staged {
        /// Detail lines in the file.
        record_count: u64,
        /// SHA-256 of the file's bytes.
        sha256: String,
    },
    /// The final create of the file is about to be tried (`FINALIZING`);
    /// a doubt settled before is closed (moved to `settledDoubts`).
    Intends {
        /// What is about to be created.
        intent: CreateIntent,
        /// The doubt this create settles, if any.
        closing: Option<Doubt>,
    },
    /// The final create was refused for certain (the name was not
    /// created): no doubt is left about it.
    Refused,
    /// A resume found nothing under the name after an intent: the run is
    /// held until settled.
    Doubted(DateTime),
    /// The doubt is settled.
    Settled(Settlement),
    /// Every record the run claimed turned out invalid: no file, and
    /// `recordCount` 0 (`WRITTEN`).
    NothingToWrite,
    /// The file exists under its final name, there (`WRITTEN`); its
    /// records are marked after this.
    Published(Publication),
    /// Every record is marked (`COMPLETED`), with the slot and command that
    /// triggered the run, so a duplicate of either is known to be done.
    Completed {
        /// Attempts to add to the run's count.
        add_transactions: i64,
        /// The scheduled slot, if a schedule triggered the run.
        slot: Option<String>,
        /// The command's id, if a command triggered the run.
        command_id: Option<String>,
        /// When the run completed.
        at: DateTime,
    },
}

impl Transition {
    /// The run completed now.
    pub(crate) fn completed(
        add_transactions: i64,
        slot: Option<&str>,
        command_id: Option<&str>,
    ) -> Self {
        Self::Completed {
            add_transactions,
            slot: slot.map(str::to_owned),
            command_id: command_id.map(str::to_owned),
            at: now(),
        }
    }

    /// The phases this transition may leave.
    pub(crate) fn leaves(&self) -> &'static [RunPhase] {
        match self {
            Self::Staged { .. } | Self::NothingToWrite => {
                &[RunPhase::Claiming, RunPhase::Finalizing]
            }
            Self::Published(_)
            | Self::Intends { .. }
            | Self::Refused
            | Self::Doubted(_)
            | Self::Settled(_) => &[RunPhase::Finalizing],
            Self::Completed { .. } => &[RunPhase::Written],
        }
    }

    /// The phase it enters.
    pub(crate) fn enters(&self) -> RunPhase {
        match self {
            Self::Staged { .. }
            | Self::Intends { .. }
            | Self::Refused
            | Self::Doubted(_)
            | Self::Settled(_) => RunPhase::Finalizing,
            Self::NothingToWrite | Self::Published(_) => RunPhase::Written,
            Self::Completed { .. } => RunPhase::Completed,
        }
    }

    /// The fields it sets, the phase among them.
    fn set(&self) -> Result<Document, StoreError> {
        let mut set = match self {
            Self::Staged {
                record_count,
                sha256,
            } => doc! {"recordCount": *record_count as i64, "sha256": sha256},
            Self::NothingToWrite => doc! {"recordCount": 0_i64},
            Self::Published(publication) => {
                doc! {"publication": stored("publication", publication)?}
            }
            Self::Intends { intent, .. } => doc! {"createIntent": stored("intent", intent)?},
            Self::Refused => doc! {"createIntent": Bson::Null},
            Self::Doubted(since) => doc! {"doubt.since": since},
            Self::Settled(settlement) => doc! {"doubt.settled": stored("settlement", settlement)?},
            Self::Completed { at, .. } => doc! {"finishedAt": at, "lastError": Bson::Null},
        };
        set.insert("phase", self.enters().as_str());
        Ok(set)
    }

    /// The whole update: the fields set, and for a completion the attempts
    /// added and the trigger recorded.
    fn update(&self, set: &Document) -> Document {
        let mut update = doc! {"$set": set.clone()};
        if let Self::Intends {
            closing: Some(doubt),
            ..
        } = self
        {
            update.insert("$unset", doc! {"doubt": ""});
            if let Ok(closed) = bson::to_bson(doubt) {
                update.insert("$push", doc! {"settledDoubts": closed});
            }
        }
        if let Self::Completed {
            add_transactions,
            slot,
            command_id,
            ..
        } = self
        {
            update.insert("$inc", doc! {"attempts": add_transactions});
            let mut add = Document::new();
            if let Some(slot) = slot {
                add.insert("slots", slot);
            }
            if let Some(command_id) = command_id {
                add.insert("commands", command_id);
            }
            if !add.is_empty() {
                update.insert("$addToSet", add);
            }
        }
        update
    }

    /// The same change on the caller's copy of the run.
    fn apply(self, run: &mut RunDoc) {
        run.phase = self.enters();
        match self {
            Self::Staged {
                record_count,
                sha256,
            } => {
                run.record_count = Some(record_count as i64);
                run.sha256 = Some(sha256);
            }
            Self::NothingToWrite => run.record_count = Some(0),
            Self::Published(publication) => run.publication = Some(publication),
            Self::Intends { intent, .. } => {
                run.create_intent = Some(intent);
                run.doubt = None;
            }
            Self::Refused => run.create_intent = None,
            Self::Doubted(since) => {
                run.doubt.get_or_insert(Doubt {
                    since,
                    settled: None,
                });
            }
            Self::Settled(settlement) => {
                let since = run.doubt.as_ref().map_or_else(super::now, |d| d.since);
                run.doubt = Some(Doubt {
                    since,
                    settled: Some(settlement),
                });
            }
            Self::Completed {
                add_transactions,
                at,
                ..
            } => {
                run.transactions += add_transactions;
                run.finished_at = Some(at);
                run.last_error = None;
            }
        }
    }

    /// The operation's name in logs.
    fn name(&self) -> &'static str {
        match self {
            Self::Staged { .. } => "record_staged",
            Self::NothingToWrite => "record_nothing_to_write",
            Self::Published(_) => "record_publication",
            Self::Intends { .. } => "record_create_intent",
            Self::Refused => "record_create_refused",
            Self::Doubted(_) => "record_doubt",
            Self::Settled(_) => "record_settlement",
            Self::Completed { .. } => "complete_run",
        }
    }
}

/// A value as BSON, or why it cannot be.
fn stored(what: &'static str, value: &impl serde::Serialize) -> Result<Bson, StoreError> {
    bson::to_bson(value).map_err(|err| StoreError::Malformed {
        what,
        reason: err.to_string(),
    })
}

/// The phases as stored, for a filter.
fn phase_names(phases: &[RunPhase]) -> Vec<&'static str> {
    phases.iter().map(|phase| phase.as_str()).collect()
}

impl Store {
    /// Moves `run` on by `transition`, in MongoDB and in `run`, but only
    /// from a phase the transition leaves. A write whose reply was lost and
    /// that did land counts as done.
    ///
    /// # Errors
    /// [`StoreError::StaleTransition`] when the stored run is in another
    /// phase (another process moved it on; nothing is changed), or MongoDB
    /// failing beyond the retry policy.
    pub(crate) async fn transition(
        &self,
        run: &mut RunDoc,
        transition: Transition,
    ) -> Result<(), StoreError> {
        let set = transition.set()?;
        let update = transition.update(&set);
        let mut applied = set;
        applied.insert("_id", run.id.as_str());
        let fence =
            doc! {"_id": run.id.as_str(), "phase": {"$in": phase_names(transition.leaves())}};
        let (runs, fence, update, applied) = (&self.runs, &fence, &update, &applied);
        let matched = self
            .retry
            .write(
                self.scope(transition.name()),
                &self.counters,
                || async move {
                    let result = runs.update_one(fence.clone(), update.clone()).await?;
                    Ok(result.matched_count)
                },
                || self.read_back(runs, applied, 1),
            )
            .await?;
        if matched == 0 {
            self.already_applied(run, &transition, applied).await?;
        }
        transition.apply(run);
        Ok(())
    }

    /// After a zero match: `Ok` when the run already holds the change (an
    /// earlier try of the same write landed), else the refusal, naming the
    /// phase found.
    async fn already_applied(
        &self,
        run: &RunDoc,
        transition: &Transition,
        applied: &Document,
    ) -> Result<(), StoreError> {
        let runs = &self.runs;
        let stored = self
            .retry
            .run(self.scope("read_run_back"), &self.counters, || async move {
                runs.find_one(doc! {"_id": run.id.as_str()})
                    .max_time(self.max_time)
                    .await
            })
            .await?;
        let holds = |stored: &Document| applied.iter().all(|(k, v)| stored.get(k) == Some(v));
        match stored {
            Some(stored) if holds(&stored) => Ok(()),
            stored => Err(StoreError::StaleTransition {
                run_id: run.id.clone(),
                expected: phase_names(transition.leaves()).join(" or "),
                found: stored
                    .as_ref()
                    .and_then(|d| d.get_str("phase").ok())
                    .unwrap_or("missing")
                    .to_owned(),
            }),
        }
    }
}

#[cfg(test)]
#[path = "transition_tests.rs"]
mod tests;
