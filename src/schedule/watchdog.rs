//! The stuck-record watchdog. Every `watchdog.period_seconds` it looks for
//! records still `TO_EXPORT` (or `EXPORTING`) that the latest schedule slot
//! should have exported: created before that slot, with the slot more than
//! `watchdog.grace_minutes` ago. For each such deanery it logs an ERROR
//! (`stuck records`, with `deanery`, `count`, `oldest_age_seconds`, `slot`),
//! sets the `esr_stuck_records` gauge, and, when `watchdog.catch_up` is on,
//! publishes a catch-up command: at most once per deanery per period across
//! all replicas (a claim document in the slots collection decides).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;

use super::SlotClock;
use crate::broker::{publish_commands, BrokerError};
use crate::config::{AmqpSettings, ScheduleSettings, WatchdogSettings};
use crate::domain::{Deanery, Slot};
use crate::ops::failing::{say_failure, say_recovery, FailureStreak};
use crate::ops::metrics;
use crate::shutdown::Shutdown;
use crate::store::{StatusQuery, Store, StoreError, StuckRecords};

/// Looks for stuck records; one per replica.
#[derive(Debug, Clone)]
pub(crate) struct Watchdog {
    settings: WatchdogSettings,
    amqp: AmqpSettings,
    clock: SlotClock,
    store: Store,
    /// The configured deaneries, whose waiting count is 0 when none waits.
    deaneries: Vec<Deanery>,
    /// Deaneries the previous check found stuck, so their gauges can be
    /// reset when they recover.
    previous: Arc<Mutex<Vec<(String, u64)>>>,
    /// Deaneries the previous count found waiting, so their gauges drop
    /// to 0 once they drain.
    counted: Arc<Mutex<Vec<String>>>,
    /// Deaneries the previous count found held in doubt.
    doubted: Arc<Mutex<Vec<String>>>,
    /// Deaneries the previous count found with records due soon.
    due_soon: Arc<Mutex<Vec<String>>>,
}

/// One check's findings.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Report {
    /// The slot that should have exported the records.
    pub slot: Option<String>,
    /// `(deanery, count)` of each stuck deanery.
    pub stuck: Vec<(String, u64)>,
    /// Deaneries a catch-up command was published for.
    pub(crate) caught_up: Vec<String>,
}

impl Watchdog {
    /// A watchdog for the (parsed, validated) settings.
    pub(crate) fn new(
        settings: WatchdogSettings,
        schedule: &ScheduleSettings,
        amqp: AmqpSettings,
        store: Store,
    ) -> Self {
        Self {
            settings,
            amqp,
            clock: SlotClock::new(schedule),
            store,
            deaneries: schedule.deaneries.clone(),
            previous: Arc::default(),
            counted: Arc::default(),
            doubted: Arc::default(),
            due_soon: Arc::default(),
        }
    }

    /// Checks every period until shutdown. A failed check is a WARN, and
    /// one ERROR once checks have kept failing for longer than a period
    /// (at least a minute): the waiting count and the dead letters are
    /// WARNs only, as the check's ERROR covers their cause.
    pub(crate) async fn run(self, mut shutdown: Shutdown) {
        let period = Duration::from_secs(self.settings.period_seconds);
        let mut checks = FailureStreak::new(period);
        let what = "stuck-record check";
        loop {
            match self.check().await {
                Ok(_) => say_recovery(&mut checks, what),
                Err(err) => {
                    let error = crate::error_chain::chain(&err);
                    say_failure(&mut checks, what, &error, "trying again next period");
                }
            }
            self.count_dead_letters().await;
            self.count_waiting().await;
            self.count_in_doubt().await;
            self.count_due_soon().await;
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.recv() => return,
            }
        }
    }

    /// Sets `esr_records_waiting` for every deanery with records waiting,
    /// and 0 for the configured ones without and for those that had some
    /// at the last count; MongoDB away leaves them.
    async fn count_waiting(&self) {
        let counts = match self.store.status_rows(StatusQuery::counts()).await {
            Ok(counts) => counts,
            Err(err) => {
                tracing::warn!(error = %crate::error_chain::Chain(&err), "cannot count the waiting records; trying again next period");
                return;
            }
        };
        let waiting = crate::domain::RecordStatus::ToExport.as_str();
        let seen = counts
            .iter()
            .filter(|r| r.status.as_str() == Some(waiting))
            .filter_map(|row| Some((row.deanery.as_str()?.to_owned(), row.count)))
            .collect();
        self.refresh(&self.counted, seen, metrics::set_records_waiting);
    }

    /// Sets `esr_publications_in_doubt` to 1 for every deanery whose run
    /// is held in doubt and 0 for the others (a `resolve` run elsewhere
    /// settles it); MongoDB away leaves them.
    async fn count_in_doubt(&self) {
        let held = match self.store.runs_in_doubt().await {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(error = %crate::error_chain::Chain(&err), "cannot count the publications in doubt; trying again next period");
                return;
            }
        };
        let seen = held.into_iter().map(|run| (run.deanery, 1)).collect();
        self.refresh(&self.doubted, seen, |deanery, held| {
            metrics::set_publication_in_doubt(deanery, held > 0);
        });
    }

    /// Sets `esr_records_due_soon` for every deanery with waiting records
    /// whose placement starts within `watchdog.due_within_days`, and 0 for
    /// the others; MongoDB away leaves them.
    async fn count_due_soon(&self) {
        let query = StatusQuery::due_soon(self.settings.due_by(Utc::now()));
        let rows = match self.store.status_rows(query).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %crate::error_chain::Chain(&err), "cannot count the records due soon; trying again next period");
                return;
            }
        };
        let seen = rows
            .into_iter()
            .filter_map(|row| Some((row.deanery.as_str()?.to_owned(), row.count)))
            .collect();
        self.refresh(&self.due_soon, seen, metrics::set_records_due_soon);
    }

    /// Sets a per-deanery gauge to what was `seen`, and to 0 for the
    /// configured deaneries and those `last` saw that are not seen now.
    fn refresh(
        &self,
        last: &Mutex<Vec<String>>,
        seen: Vec<(String, i64)>,
        set: impl Fn(&str, i64),
    ) {
        for (deanery, value) in &seen {
            set(deanery, *value);
        }
        let configured = self.deaneries.iter().map(|d| d.as_str().to_owned());
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        for gone in configured.chain(last.drain(..)) {
            if !seen.iter().any(|(deanery, _)| *deanery == gone) {
                set(&gone, 0);
            }
        }
        *last = seen.into_iter().map(|(deanery, _)| deanery).collect();
    }

    /// Sets `esr_dead_letter_queue_messages` from the dead-letter queue;
    /// RabbitMQ away leaves the gauge as it was (WARN).
    async fn count_dead_letters(&self) {
        match crate::broker::dead_letters_waiting(&self.amqp).await {
            Ok(waiting) => metrics::set_dead_letters_waiting(waiting),
            Err(err) => {
                tracing::warn!(error = %crate::error_chain::Chain(&err), "cannot count the dead letters; trying again next period")
            }
        }
    }

    /// One check (see the module docs).
    ///
    /// # Errors
    /// When MongoDB fails; publishing failures are logged and retried next period.
    pub(crate) async fn check(&self) -> Result<Report, StoreError> {
        let now = Utc::now();
        let Some(slot) = self.due_slot(now) else {
            return Ok(Report::default());
        };
        let slot_id = Slot::Scheduled(slot).id();
        let stuck = self
            .store
            .stuck_records(bson::DateTime::from_chrono(slot))
            .await?;
        let mut report = Report {
            slot: Some(slot_id.clone()),
            ..Report::default()
        };
        let bucket = now.timestamp() / self.settings.period_seconds.max(1) as i64;
        for found in &stuck {
            let code = report_stuck(found, now, &slot_id);
            report.stuck.push((code.clone(), found.count));
            let Ok(deanery) = Deanery::parse(&code) else {
                continue;
            };
            if self.catch_up(&deanery, bucket).await? {
                report.caught_up.push(deanery.to_string());
            }
        }
        // Deaneries no longer stuck go back to zero.
        for (code, _) in self.previously_stuck(&report) {
            metrics::set_stuck(&code, 0, 0);
        }
        Ok(report)
    }

    /// The latest slot whose grace period is over.
    fn due_slot(&self, now: chrono::DateTime<Utc>) -> Option<chrono::DateTime<Utc>> {
        let grace = chrono::Duration::minutes(self.settings.grace_minutes as i64);
        self.clock
            .latest_within(now - grace, chrono::Duration::days(35))
    }

    /// Publishes a catch-up command for `deanery` if catch-up is on and no
    /// replica has this period (`bucket`). True when published.
    async fn catch_up(&self, deanery: &Deanery, bucket: i64) -> Result<bool, StoreError> {
        if !self.settings.catch_up {
            return Ok(false);
        }
        let key = format!("watchdog/{deanery}/{bucket}");
        if !self.store.claim_once(&key).await? {
            return Ok(false);
        }
        match self.publish_catch_up(deanery).await {
            Ok(command_id) => {
                metrics::record_catch_up(deanery.as_str());
                tracing::warn!(deanery = %deanery, command_id = %command_id, period = bucket, "catch-up command published for stuck records");
                Ok(true)
            }
            Err(err) => {
                tracing::error!(deanery = %deanery, error = %crate::error_chain::Chain(&err), "failed to publish a catch-up command");
                Ok(false)
            }
        }
    }

    fn previously_stuck(&self, report: &Report) -> Vec<(String, u64)> {
        let mut known = self.previous.lock().unwrap_or_else(|e| e.into_inner());
        let gone = known
            .iter()
            .filter(|(code, _)| !report.stuck.iter().any(|(c, _)| c == code))
            .cloned()
            .collect();
        known.clone_from(&report.stuck);
        gone
    }

    async fn publish_catch_up(&self, deanery: &Deanery) -> Result<String, BrokerError> {
        let deaneries = std::slice::from_ref(deanery);
        let published =
            publish_commands(&self.amqp, "watchdog", deaneries, Slot::Manual, |_| {}).await?;
        Ok(published
            .first()
            .map(|command| command.command_id.to_string())
            .unwrap_or_default())
    }
}

/// Logs one deanery's stuck records at ERROR and sets its gauges; returns
/// its code as it can be shown.
fn report_stuck(found: &StuckRecords, now: chrono::DateTime<Utc>, slot_id: &str) -> String {
    let code = match &found.deanery {
        bson::Bson::String(code) => crate::domain::printable(code, 64),
        other => crate::domain::printable(&other.to_string(), 64),
    };
    let oldest_age = found
        .oldest
        .map(|t| (now - t.to_chrono()).num_seconds().max(0))
        .unwrap_or(0);
    metrics::set_stuck(&code, found.count, oldest_age);
    tracing::error!(
        deanery = %code,
        count = found.count,
        oldest_age_seconds = oldest_age,
        slot = %slot_id,
        "stuck records: still waiting after the slot that should have exported them"
    );
    code
}
