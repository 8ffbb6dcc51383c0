//! The schedule as validated values: a six-field cron expression that
//! fires, and an IANA time zone.

use std::str::FromStr;

use chrono_tz::Tz;

/// Fields of the expression, with the values each allows.
const FIELDS: [(&str, u32, u32); 6] = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

/// Parses a six-field cron expression (sec min hour dom mon dow) that
/// fires at least once.
///
/// # Errors
/// A message saying what is wrong, naming the field.
pub(crate) fn parse_cron(expression: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != 6 {
        return Err("must have six fields: sec min hour day-of-month month day-of-week".to_owned());
    }
    let schedule = cron::Schedule::from_str(expression)
        .map_err(|err| out_of_range(&fields).unwrap_or_else(|| format!("`{expression}`: {err}")))?;
    if schedule.upcoming(chrono::Utc).next().is_none() {
        return Err(format!("`{expression}` never fires (no such date)"));
    }
    Ok(schedule)
}

/// The first value outside its field's range, said plainly (the cron
/// crate's own message for hour 25 is "Hours must be less than 23").
fn out_of_range(fields: &[&str]) -> Option<String> {
    for (field, (name, low, high)) in fields.iter().zip(FIELDS) {
        // Values are the numbers of a field, except a step's (after '/').
        for part in field.split(',') {
            let values = part.split('/').next().unwrap_or("");
            for number in values.split('-').filter_map(|n| n.parse::<u64>().ok()) {
                if number < u64::from(low) || number > u64::from(high) {
                    return Some(format!("{name} {number} is out of range {low}-{high}"));
                }
            }
        }
    }
    None
}

/// Parses an IANA time zone name.
///
/// # Errors
/// A message naming the zone.
pub(crate) fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("`{name}` is not an IANA time zone name (e.g. UTC, Europe/London)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_of_range_value_is_named_with_its_field_and_range() {
        let err = parse_cron("0 0 25 * * *").unwrap_err();
        assert_eq!(err, "hour 25 is out of range 0-23");
        let err = parse_cron("0 61 13 * * *").unwrap_err();
        assert_eq!(err, "minute 61 is out of range 0-59");
    }

    #[test]
    fn an_expression_that_never_fires_is_refused() {
        let err = parse_cron("0 0 13 30 2 *").unwrap_err();
        assert!(err.contains("never fires"), "{err}");
        assert!(parse_cron("0 0 13 * * *").is_ok());
        assert!(parse_cron("0 */15 8-18 * * MON-FRI").is_ok());
    }

    #[test]
    fn an_unknown_zone_is_named() {
        assert!(parse_timezone("Europe/London").is_ok());
        assert!(parse_timezone("Mars/Olympus")
            .unwrap_err()
            .contains("Mars/Olympus"));
    }
}
