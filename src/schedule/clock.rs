//! Slot arithmetic over the parsed schedule: pure, the clock passed in.
//!
//! The expression is read in local wall time of `schedule.timezone`, and
//! each local time becomes a UTC instant by the zone's rules:
//!
//! - a local time that does not exist (the hour skipped when clocks go
//!   forward) fires at the first instant after the gap, as cron daemons
//!   do: `0 30 1 * * *` in Europe/London fires at 01:00Z on the day
//!   clocks go forward (02:00 BST);
//! - a local time that happens twice (the hour repeated when clocks go
//!   back) fires once, at its first occurrence: 01:30 BST, 00:30Z.
//!
//! Local times are enumerated by the `cron` crate over a zone without
//! daylight saving (UTC standing for the naive wall clock), so it never
//! skips or repeats one itself; the mapping to instants never goes
//! backwards, and every slot returned is strictly after the instant asked
//! about: no caller can loop on a slot that is already past.
//! tokio-cron-scheduler was not used: it fixes a zone's offset when a job
//! is created, collapses missed ticks, and reads the wall clock itself.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::ScheduleSettings;

/// Longest a zone's offset changes by at once, with room to spare: local
/// times are enumerated from this far before the instant asked about.
const MAX_SHIFT: Duration = Duration::hours(26);

/// Longest gap a zone skips; a skipped local time is moved forward by at
/// most this to its first existing minute.
const MAX_GAP_MINUTES: i64 = 180;

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

    /// Slot instants from the local times at or after `from`'s wall
    /// clock less [`MAX_SHIFT`], in order, never decreasing.
    fn instants_from(&self, from: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let start = from.with_timezone(&self.timezone).naive_local() - MAX_SHIFT;
        self.schedule
            .after(&Utc.from_utc_datetime(&start))
            .filter_map(move |local| self.instant_of(local.naive_utc()))
    }

    /// The instant of a local wall time: its first occurrence, or the first
    /// instant after the gap it falls in.
    fn instant_of(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        (0..=MAX_GAP_MINUTES).find_map(|minutes| {
            match self
                .timezone
                .from_local_datetime(&(local + Duration::minutes(minutes)))
            {
                LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
                LocalResult::None => None,
            }
        })
    }

    /// The first slot strictly after `t`.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.instants_from(t).find(|slot| *slot > t)
    }

    /// The latest slot in `(now - window, now]`.
    pub(crate) fn latest_within(
        &self,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Option<DateTime<Utc>> {
        let start = now - window;
        self.instants_from(start)
            .skip_while(|slot| *slot <= start)
            .take_while(|slot| *slot <= now)
            .last()
    }

    /// The slot to fire after `fired`, at `now`: the latest missed one in
    /// `(fired, now]` within the catch-up window (fired at once, once), else
    /// the next one after `now`. Always strictly after `fired`.
    pub(crate) fn after_fired(
        &self,
        fired: DateTime<Utc>,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Option<DateTime<Utc>> {
        match self.latest_within(now, window) {
            Some(missed) if missed > fired => Some(missed),
            _ => self.next_after(now.max(fired)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{parse_cron, parse_timezone};

    fn clock(cron: &str, tz: &str) -> SlotClock {
        SlotClock {
            schedule: parse_cron(cron).unwrap(),
            timezone: parse_timezone(tz).unwrap(),
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    /// Asserts, for each `(after, next)`, that the first slot after
    /// `after` is `next`.
    fn assert_next(c: &SlotClock, cases: &[(DateTime<Utc>, DateTime<Utc>)]) {
        for (after, next) in cases {
            assert_eq!(c.next_after(*after), Some(*next), "after {after}");
        }
    }

    #[test]
    fn the_default_slot_is_13_00_utc_daily_and_a_local_zone_follows_daylight_saving() {
        assert_next(
            &clock("0 0 13 * * *", "UTC"),
            &[
                (utc(2026, 11, 28, 9, 0), utc(2026, 11, 28, 13, 0)),
                (utc(2026, 11, 28, 13, 0), utc(2026, 11, 29, 13, 0)),
            ],
        );
        assert_next(
            &clock("0 0 13 * * *", "Europe/London"),
            &[
                (utc(2026, 1, 10, 0, 0), utc(2026, 1, 10, 13, 0)),
                (utc(2026, 7, 10, 0, 0), utc(2026, 7, 10, 12, 0)),
            ],
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

    fn slots_between(c: &SlotClock, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut slots = Vec::new();
        let mut t = from;
        while let Some(slot) = c.next_after(t).filter(|s| *s < to) {
            assert!(slot > t, "{slot} is not after {t}");
            slots.push(slot);
            t = slot;
        }
        slots
    }

    /// The slots of an hourly schedule in `zone` from `from` to `to`.
    const LONDON: &str = "Europe/London";
    const SYDNEY: &str = "Australia/Sydney";

    fn hourly(zone: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        slots_between(&clock("0 0 * * * *", zone), from, to)
    }

    #[test]
    fn london_spring_forward_fires_a_skipped_time_at_the_end_of_the_gap() {
        let c = clock("0 30 1 * * *", LONDON);
        // 2027-03-28: 01:00 GMT becomes 02:00 BST; 01:30 does not exist.
        assert_next(
            &c,
            &[
                (utc(2027, 3, 27, 1, 30), utc(2027, 3, 28, 1, 0)),
                (utc(2027, 3, 28, 1, 0), utc(2027, 3, 29, 0, 30)),
            ],
        );
        let day = hourly(LONDON, utc(2027, 3, 27, 23, 59), utc(2027, 3, 28, 23, 0));
        assert_eq!(day.len(), 23, "a 23-hour day has 23 hourly slots: {day:?}");
        assert_eq!(day[1], utc(2027, 3, 28, 1, 0));
    }

    #[test]
    fn london_fall_back_fires_a_repeated_time_once_at_its_first_occurrence() {
        let c = clock("0 30 1 * * *", LONDON);
        // 2027-10-31: 02:00 BST becomes 01:00 GMT; 01:30 happens twice.
        assert_next(&c, &[(utc(2027, 10, 30, 0, 30), utc(2027, 10, 31, 0, 30))]);
        let started = utc(2027, 10, 31, 1, 29) + Duration::seconds(45);
        assert_eq!(
            c.next_after(started),
            Some(utc(2027, 11, 1, 1, 30)),
            "never in the past"
        );
        assert_eq!(
            c.latest_within(started, Duration::minutes(1)),
            None,
            "window honoured"
        );
        assert_eq!(
            c.latest_within(started, Duration::hours(24)),
            Some(utc(2027, 10, 31, 0, 30))
        );
        let day = hourly(LONDON, utc(2027, 10, 30, 22, 59), utc(2027, 10, 31, 23, 59));
        assert_eq!(
            day.len(),
            24,
            "each local hour of a 25-hour day once: {day:?}"
        );
        assert!(
            !day.contains(&utc(2027, 10, 31, 1, 0)),
            "01:00 GMT repeats 01:00 BST"
        );
    }

    #[test]
    fn sydney_transitions_follow_the_same_rules() {
        let c = clock("0 30 2 * * *", SYDNEY);
        assert_next(
            &c,
            &[
                // 2027-10-03: 02:00 AEST becomes 03:00 AEDT (16:00Z the day before).
                (utc(2027, 10, 2, 0, 0), utc(2027, 10, 2, 16, 0)),
                // 2027-04-04: 03:00 AEDT becomes 02:00 AEST; 02:30 AEDT is 15:30Z.
                (utc(2027, 4, 3, 0, 0), utc(2027, 4, 3, 15, 30)),
                (utc(2027, 4, 3, 15, 30), utc(2027, 4, 4, 16, 30)),
            ],
        );
        let spring = hourly(SYDNEY, utc(2027, 10, 2, 13, 59), utc(2027, 10, 3, 12, 59));
        assert_eq!(spring.len(), 23, "{spring:?}");
        let autumn = hourly(SYDNEY, utc(2027, 4, 3, 12, 59), utc(2027, 4, 4, 13, 59));
        assert_eq!(
            autumn.len(),
            25 - 1,
            "the repeated hour fires once: {autumn:?}"
        );
    }

    #[test]
    fn a_daily_slot_fires_once_every_local_day_of_a_year_in_both_hemispheres() {
        for (zone, cron) in [
            ("Europe/London", "0 30 1 * * *"),
            ("Australia/Sydney", "0 30 2 * * *"),
        ] {
            let c = clock(cron, zone);
            let slots = slots_between(&c, utc(2026, 12, 31, 12, 0), utc(2027, 12, 31, 12, 0));
            assert_eq!(slots.len(), 365, "{zone}");
            let tz = parse_timezone(zone).unwrap();
            let mut days: Vec<_> = slots
                .iter()
                .map(|s| s.with_timezone(&tz).date_naive())
                .collect();
            days.dedup();
            assert_eq!(days.len(), 365, "{zone}: one slot per local day");
        }
    }

    #[test]
    fn after_a_fired_slot_the_next_is_strictly_later_and_missed_ones_fire_once() {
        let c = clock("0 0 * * * *", LONDON);
        let window = Duration::hours(24);
        let fired = utc(2027, 10, 31, 0, 0);
        // Firing took hours: only the latest slot missed since is fired.
        let late = utc(2027, 10, 31, 4, 10);
        assert_eq!(
            c.after_fired(fired, late, window),
            Some(utc(2027, 10, 31, 4, 0))
        );
        let next = c
            .after_fired(utc(2027, 10, 31, 4, 0), late, window)
            .unwrap();
        assert!(next > late, "then the next one ahead: {next}");
        assert_eq!(
            c.after_fired(fired, fired, window),
            Some(utc(2027, 10, 31, 2, 0))
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_explained() {
        assert!(parse_cron("0 13 * * *").unwrap_err().contains("six fields"));
        assert!(parse_cron("0 0 25 * * *").is_err());
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
    }
}
