//! Slot arithmetic over the parsed schedule: pure, the clock passed in.
//!
//! Slots are computed with the `cron` crate over `chrono-tz` time zones, so
//! daylight saving is followed (13:00 Europe/London is 13:00Z in winter and
//! 12:00Z in summer). tokio-cron-scheduler, built on the same `cron` crate,
//! was not used: it fixes a zone's offset when a job is created, collapses
//! missed ticks, and reads the wall clock itself, so neither daylight
//! saving, catch-up nor a test clock could be had from it.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::config::ScheduleSettings;

/// Slot arithmetic: pure, clock passed in.
#[derive(Debug, Clone)]
pub(crate) struct SlotClock {
    schedule: cron::Schedule,
    timezone: Tz,
}

impl SlotClock {
    /// The clock of the configured schedule (parsed at load).
    pub(crate) fn new(settings: &ScheduleSettings) -> Self {
        Self {
            schedule: settings.cron.clone(),
            timezone: settings.timezone,
        }
    }

    /// The first slot strictly after `t`.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&t.with_timezone(&self.timezone))
            .next()
            .map(|slot| slot.with_timezone(&Utc))
    }

    /// The latest slot in `(now - window, now]`.
    pub(crate) fn latest_within(
        &self,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Option<DateTime<Utc>> {
        let start = (now - window).with_timezone(&self.timezone);
        self.schedule
            .after(&start)
            .map(|slot| slot.with_timezone(&Utc))
            .take_while(|slot| *slot <= now)
            .last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{parse_cron, parse_timezone};
    use chrono::TimeZone;

    fn clock(cron: &str, tz: &str) -> SlotClock {
        SlotClock {
            schedule: parse_cron(cron).unwrap(),
            timezone: parse_timezone(tz).unwrap(),
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn the_default_slot_is_13_00_utc_daily() {
        let c = clock("0 0 13 * * *", "UTC");
        assert_eq!(
            c.next_after(utc(2026, 11, 28, 9, 0)),
            Some(utc(2026, 11, 28, 13, 0))
        );
        assert_eq!(
            c.next_after(utc(2026, 11, 28, 13, 0)),
            Some(utc(2026, 11, 29, 13, 0))
        );
    }

    #[test]
    fn a_local_time_zone_follows_daylight_saving() {
        let c = clock("0 0 13 * * *", "Europe/London");
        assert_eq!(
            c.next_after(utc(2026, 1, 10, 0, 0)),
            Some(utc(2026, 1, 10, 13, 0))
        );
        assert_eq!(
            c.next_after(utc(2026, 7, 10, 0, 0)),
            Some(utc(2026, 7, 10, 12, 0))
        );
    }

    #[test]
    fn catch_up_finds_the_latest_missed_slot_within_the_window_only() {
        let c = clock("0 0 13 * * *", "UTC");
        let now = utc(2026, 11, 28, 15, 30);
        assert_eq!(
            c.latest_within(now, chrono::Duration::hours(24)),
            Some(utc(2026, 11, 28, 13, 0))
        );
        assert_eq!(c.latest_within(now, chrono::Duration::hours(1)), None);
        assert_eq!(
            c.latest_within(utc(2026, 11, 28, 13, 0), chrono::Duration::minutes(1)),
            Some(utc(2026, 11, 28, 13, 0)),
            "a slot exactly now counts"
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_explained() {
        assert!(parse_cron("0 13 * * *").unwrap_err().contains("six fields"));
        assert!(parse_cron("0 0 25 * * *").is_err());
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
    }
}
