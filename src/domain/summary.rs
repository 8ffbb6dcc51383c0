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

/// The JSON summary line printed per deanery by `export` (contract).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Deanery code.
    pub deanery: String,
    /// Export run id (null when skipped before a run was chosen).
    pub run_id: Option<String>,
    /// Outcome.
    pub status: RunStatus,
    /// Records written to the file and marked `EXPORTED`.
    pub exported: u64,
    /// Records marked `REJECTED` by this run.
    pub rejected: u64,
    /// File name, null when no file was written.
    pub file: Option<String>,
    /// Where the file went: its path on this host, or its URL
    /// (`s3://bucket/key`); null when no file was written.
    pub published_to: Option<String>,
    /// Transaction attempts in total, whole-transaction retries included.
    pub attempts: u32,
    /// Retries of any MongoDB operation, transaction or commit.
    pub retries: u32,
    /// WriteConflict (112) errors met, each followed by a retry or a failure.
    pub write_conflicts: u32,
    /// Wall time of this attempt.
    pub duration_ms: u64,
    /// True when this attempt finished a run an earlier attempt started.
    pub resumed: bool,
    /// What went wrong (failed) or why nothing was done (skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True when trying again later may succeed (skipped, transient
    /// failure, interrupted); false when completed or failed for good.
    #[serde(skip)]
    pub retryable: bool,
    /// True when shutdown stopped the attempt at a safe point (a deploy, a
    /// restart): not a failure of the export, counted apart
    /// (`outcome="interrupted"`) and logged at WARN.
    #[serde(skip)]
    pub interrupted: bool,
}
