//! Replicas that must agree: on the time, and on the schedule.
//!
//! - **Clock.** Every [`CHECK_PERIOD`] the replica compares its clock with
//!   MongoDB's (`hello`'s `localTime`, halfway through the round trip) and
//!   sets `esr_clock_skew_seconds` (this replica minus the server); beyond
//!   [`CLOCK_SKEW_WARN`] it logs a WARN. A slow replica still takes the
//!   commands of slots the slot collection records as fired.
//! - **Schedule.** A scheduling replica records its settings (cron, zone,
//!   deaneries) in the slots collection, refreshed every period and at
//!   each slot it fires. Settings that differ from another live replica's
//!   are logged at ERROR naming the replica and the difference, and set
//!   `esr_schedule_settings_differ` to 1. Until they are fixed, nothing is
//!   dropped: each replica fires its own schedule's slots (slot ids are
//!   instants, so both sets fire, each once), and a slot commands the
//!   deaneries that any replica seen in the last [`LIVE`] lists.

use std::time::Duration;

use bson::{doc, Document};
use chrono::{DateTime, Utc};

use crate::config::ScheduleSettings;
use crate::domain::Deanery;
use crate::ops::metrics;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};

/// How often the clock and the settings are compared.
pub(crate) const CHECK_PERIOD: Duration = Duration::from_secs(300);

/// A clock further than this from MongoDB's is logged at WARN.
pub(crate) const CLOCK_SKEW_WARN: f64 = 30.0;

/// A replica whose settings were refreshed this recently is live.
pub(crate) const LIVE: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// A replica's schedule settings, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScheduleRecord {
    cron: String,
    timezone: String,
    deaneries: Vec<String>,
}

impl ScheduleRecord {
    pub(crate) fn of(settings: &ScheduleSettings) -> Self {
        let mut deaneries: Vec<String> =
            settings.deaneries.iter().map(ToString::to_string).collect();
        deaneries.sort();
        Self {
            cron: settings.cron.to_string(),
            timezone: settings.timezone.to_string(),
            deaneries,
        }
    }

    pub(crate) fn to_document(&self) -> Document {
        doc! {"cron": &self.cron, "timezone": &self.timezone, "deaneries": &self.deaneries}
    }

    fn from_document(document: &Document) -> Option<Self> {
        let deaneries = document.get_array("deaneries").ok()?;
        Some(Self {
            cron: document.get_str("cron").ok()?.to_owned(),
            timezone: document.get_str("timezone").ok()?.to_owned(),
            deaneries: deaneries
                .iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect(),
        })
    }

    /// What differs, said as `key: here X, there Y`.
    pub(crate) fn differences(&self, other: &Self) -> Vec<String> {
        let mut found = Vec::new();
        let mut compare = |key: &str, here: String, there: String| {
            if here != there {
                found.push(format!("{key}: here {here}, there {there}"));
            }
        };
        compare("schedule.cron", self.cron.clone(), other.cron.clone());
        compare(
            "schedule.timezone",
            self.timezone.clone(),
            other.timezone.clone(),
        );
        compare(
            "schedule.deaneries",
            format!("{:?}", self.deaneries),
            format!("{:?}", other.deaneries),
        );
        found
    }
}

/// This replica's clock minus the server's, in seconds: the server's time
/// is taken as read halfway between sending and receiving.
pub(crate) fn skew_seconds(
    sent: DateTime<Utc>,
    server: DateTime<Utc>,
    received: DateTime<Utc>,
) -> f64 {
    let halfway = sent + (received - sent) / 2;
    (halfway - server).num_milliseconds() as f64 / 1000.0
}

/// The checks of one replica.
#[derive(Debug, Clone)]
pub(crate) struct Agreement {
    store: Store,
    own: ScheduleRecord,
    replica: String,
    scheduling: bool,
}

impl Agreement {
    pub(crate) fn new(store: Store, settings: &ScheduleSettings) -> Self {
        Self {
            store,
            own: ScheduleRecord::of(settings),
            replica: crate::domain::host_name(),
            scheduling: settings.enabled,
        }
    }

    /// This replica's settings, to record on a slot it fires.
    pub(crate) fn own(&self) -> &ScheduleRecord {
        &self.own
    }

    /// Records this replica's settings, compares them with the other live
    /// replicas' (ERROR and the metric on a difference), and returns the
    /// deaneries any live replica lists.
    ///
    /// # Errors
    /// When MongoDB fails beyond the retry policy.
    pub(crate) async fn refresh(&self) -> Result<Vec<Deanery>, StoreError> {
        self.store
            .register_schedule(&self.replica, self.own.to_document())
            .await?;
        let since = bson::DateTime::from_chrono(Utc::now() - LIVE);
        let live = self.store.live_schedules(since).await?;
        let mut differ = false;
        let mut deaneries: Vec<String> = self.own.deaneries.clone();
        for (replica, document) in live.iter().filter(|(r, _)| *r != self.replica) {
            let Some(theirs) = ScheduleRecord::from_document(document) else {
                continue;
            };
            let differences = self.own.differences(&theirs);
            if !differences.is_empty() {
                differ = true;
                tracing::error!(replica = %replica, differences = %differences.join("; "), "schedule settings differ between replicas; each fires its own slots, and slots command the deaneries either lists");
            }
            deaneries.extend(theirs.deaneries);
        }
        metrics::set_schedule_settings_differ(differ);
        Ok(deaneries
            .iter()
            .filter_map(|code| Deanery::parse(code).ok())
            .collect())
    }

    /// Measures this replica's clock against MongoDB's; sets the metric
    /// and logs a WARN beyond [`CLOCK_SKEW_WARN`]. The skew, when the
    /// server reports its time.
    ///
    /// # Errors
    /// When MongoDB does not answer.
    pub(crate) async fn check_clock(&self) -> Result<Option<f64>, StoreError> {
        let sent = Utc::now();
        let Some(server) = self.store.server_time().await? else {
            return Ok(None);
        };
        let skew = skew_seconds(sent, server.to_chrono(), Utc::now());
        metrics::set_clock_skew(skew);
        if skew.abs() > CLOCK_SKEW_WARN {
            tracing::warn!(skew_seconds = skew, server_time = %server, "this replica's clock differs from MongoDB's; slots and leases are computed from it (fix NTP)");
        }
        Ok(Some(skew))
    }

    /// Checks every [`CHECK_PERIOD`] until shutdown.
    pub(crate) async fn run(self, mut shutdown: Shutdown) {
        loop {
            if let Err(err) = self.check_clock().await {
                tracing::debug!(error = %crate::error_chain::Chain(&err), "clock check failed; trying again next period");
            }
            if self.scheduling {
                if let Err(err) = self.refresh().await {
                    tracing::debug!(error = %crate::error_chain::Chain(&err), "schedule settings check failed; trying again next period");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_PERIOD) => {}
                _ = shutdown.recv() => break,
            }
        }
        self.withdraw().await;
    }

    /// At a clean stop, a scheduling replica removes its settings record:
    /// after a rollout that changes `[schedule]`, the new replicas see no
    /// difference with the old ones that stopped. A replica killed leaves
    /// its record until it is no longer live ([`LIVE`]).
    async fn withdraw(&self) {
        if !self.scheduling {
            return;
        }
        if let Err(err) = self.store.withdraw_schedule(&self.replica).await {
            tracing::debug!(error = %crate::error_chain::Chain(&err), "cannot withdraw this replica's schedule record; it stops being live on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cron: &str, zone: &str, deaneries: &[&str]) -> ScheduleRecord {
        ScheduleRecord {
            cron: cron.to_owned(),
            timezone: zone.to_owned(),
            deaneries: deaneries.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    #[test]
    fn differences_name_each_key_with_both_values() {
        let a = record("0 0 13 * * *", "UTC", &["MER"]);
        let b = record("0 0 13 * * *", "Europe/London", &["EOE", "MER"]);
        let found = a.differences(&b);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0], "schedule.timezone: here UTC, there Europe/London");
        assert!(
            found[1].starts_with("schedule.deaneries: here [\"MER\"]"),
            "{found:?}"
        );
        assert!(a.differences(&a.clone()).is_empty());
        assert_eq!(ScheduleRecord::from_document(&b.to_document()), Some(b));
    }

    #[test]
    fn the_skew_is_taken_halfway_through_the_round_trip() {
        let sent = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .to_utc();
        let received = sent + chrono::TimeDelta::milliseconds(200);
        let server = sent - chrono::TimeDelta::minutes(10);
        assert!((skew_seconds(sent, server, received) - 600.1).abs() < 1e-9);
        assert!(
            (skew_seconds(sent, sent + chrono::TimeDelta::milliseconds(100), received)).abs()
                < 1e-9
        );
    }
}
