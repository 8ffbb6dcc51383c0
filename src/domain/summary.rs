use serde::Serialize;

/// How one export attempt for a deanery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every claimed record is in the file (or rejected) and marked.
    Completed,
    /// The attempt stopped on an error; the run is left for a later resume.
    Failed,
    /// Another process holds the deanery's lease; nothing was done.
    Skipped,
}

/// How one export attempt ended: what the summary line says (`status`,
/// and `error` unless it completed) and what the consumer settles its
/// command by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status")]
pub enum RunEnd {
    /// Every claimed record is in the file (or rejected) and marked.
    #[serde(rename = "completed")]
    Completed,
    /// Another process holds the deanery's lease; nothing was done. Its
    /// run may be long, so a command waiting on it does not use up a try.
    #[serde(rename = "skipped")]
    Skipped {
        /// Who holds the lease, and until when.
        #[serde(rename = "error")]
        reason: String,
    },
    /// Shutdown stopped the attempt at a safe point (a deploy, a restart):
    /// not a failure of the export; another replica or the next start
    /// resumes the run.
    #[serde(rename = "failed")]
    Interrupted {
        /// What stopped it.
        error: String,
    },
    /// The attempt failed, and trying again later may succeed without
    /// anyone fixing anything (the run is left for a later resume).
    #[serde(rename = "failed")]
    Transient {
        /// What went wrong, with its causes.
        error: String,
    },
    /// The attempt failed, and trying again cannot help until someone
    /// fixes something.
    #[serde(rename = "failed")]
    Permanent {
        /// What went wrong, with its causes.
        error: String,
    },
}

impl RunEnd {
    /// The `status` of the summary line.
    pub fn status(&self) -> RunStatus {
        match self {
            Self::Completed => RunStatus::Completed,
            Self::Skipped { .. } => RunStatus::Skipped,
            Self::Interrupted { .. } | Self::Transient { .. } | Self::Permanent { .. } => {
                RunStatus::Failed
            }
        }
    }

    /// What went wrong (failed) or why nothing was done (skipped).
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Completed => None,
            Self::Skipped { reason } => Some(reason),
            Self::Interrupted { error } | Self::Transient { error } | Self::Permanent { error } => {
                Some(error)
            }
        }
    }

    /// True when trying again later may succeed: skipped, interrupted or
    /// failed transiently.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Completed | Self::Permanent { .. })
    }
}

/// The JSON summary line printed per deanery by `export` (contract).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Deanery code.
    pub deanery: String,
    /// Export run id (null when skipped before a run was chosen).
    pub run_id: Option<String>,
    /// How the attempt ended: `status`, and `error` unless it completed.
    #[serde(flatten)]
    pub end: RunEnd,
    /// Records written to the file and marked `EXPORTED`.
    pub exported: u64,
    /// Records marked `REJECTED` by this run.
    pub rejected: u64,
    /// File name, null when no file was written.
    pub file: Option<String>,
    /// Where the file went: its path on this host, or its URL
    /// (`s3://bucket/key`); null when no file was written.
    pub published_to: Option<String>,
    /// Transactions tried in total, whole-transaction retries included
    /// (`attempts` in the summary line).
    #[serde(rename = "attempts")]
    pub transactions: u32,
    /// Retries of any MongoDB operation, transaction or commit.
    pub retries: u32,
    /// WriteConflict (112) errors met, each followed by a retry or a failure.
    pub write_conflicts: u32,
    /// Wall time of this attempt.
    pub duration_ms: u64,
    /// True when this attempt finished a run an earlier attempt started.
    pub resumed: bool,
}

impl RunSummary {
    /// The `status` of the summary line.
    pub fn status(&self) -> RunStatus {
        self.end.status()
    }

    /// What went wrong (failed) or why nothing was done (skipped).
    pub fn error(&self) -> Option<&str> {
        self.end.error()
    }
}
