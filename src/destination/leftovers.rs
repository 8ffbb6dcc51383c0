//! Probe objects a killed process left. A probe's name says which host and
//! process made it (`esr-exporter-probe-<host>-<pid>-<uuid>`), so the next
//! start on the same host removes those of processes that no longer run at
//! once; another host's are removed once older than [`STALE_AFTER`], far
//! longer than any probe takes, so a replica's probe under way is never
//! removed under it.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// What every probe's name starts with.
pub(crate) const PROBE_PREFIX: &str = "esr-exporter-probe-";

/// A probe of another host older than this was left by a killed process.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(3600);

/// A new probe name for this process.
pub(crate) fn probe_name() -> String {
    format!(
        "{PROBE_PREFIX}{}-{}-{}",
        host_label(&crate::domain::host_name()),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The host name as it can stand in a key or a file name: letters,
/// digits, `.` and `-`, anything else as `-`.
fn host_label(host: &str) -> String {
    host.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
            _ => '-',
        })
        .collect()
}

/// The host and pid a probe's file name (a leading `.` and any suffix
/// after the uuid allowed) says made it.
fn maker(name: &str) -> Option<(String, u32)> {
    let rest = name.trim_start_matches('.').strip_prefix(PROBE_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let _uuid = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    Some((parts.next()?.to_owned(), pid))
}

/// Whether the probe object or file `name`, last modified at `modified`,
/// was left by a process that no longer runs. Not a probe name: false.
pub(crate) fn is_left_over(
    name: &str,
    modified: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    if !name.trim_start_matches('.').starts_with(PROBE_PREFIX) {
        return false;
    }
    let here = host_label(&crate::domain::host_name());
    if let Some((host, pid)) = maker(name) {
        if host == here && pid != std::process::id() && !running(pid) {
            return true;
        }
    }
    let stale = chrono::Duration::from_std(STALE_AFTER).unwrap_or(chrono::Duration::MAX);
    modified.is_some_and(|at| now - at > stale)
}

/// Whether a process with this id runs on this host.
fn running(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_names_its_host_and_process_and_is_read_back() {
        let name = probe_name();
        let (host, pid) = maker(&name).expect("a probe name");
        assert_eq!(host, host_label(&crate::domain::host_name()));
        assert_eq!(pid, std::process::id());
        assert_eq!(maker(&format!(".{name}.copy")), Some((host.clone(), pid)));
        let temporary = format!(".{name}.0123abcd.tmp");
        assert_eq!(
            maker(&temporary),
            Some((host, pid)),
            "its upload's temporary"
        );
        assert_eq!(host_label("pod_1/a b"), "pod-1-a-b");
    }

    #[test]
    fn left_over_only_when_its_process_is_gone_or_it_is_old() {
        let now = Utc::now();
        let here = host_label(&crate::domain::host_name());
        let mine = probe_name();
        let dead = format!("{PROBE_PREFIX}{here}-{}-0123abcd", u32::MAX - 1);
        let elsewhere = format!("{PROBE_PREFIX}other-host-1-0123abcd");
        let old = Some(now - chrono::Duration::hours(2));
        let young = Some(now - chrono::Duration::minutes(1));
        assert!(
            !is_left_over(&mine, old.map(|_| now), now),
            "this process's own"
        );
        assert!(
            is_left_over(&dead, young, now),
            "a process of this host that is gone"
        );
        assert!(
            !is_left_over(&elsewhere, young, now),
            "another host's, maybe under way"
        );
        assert!(
            is_left_over(&elsewhere, old, now),
            "another host's, long left"
        );
        assert!(!is_left_over("DE_MER_APP_20261206_00001.DAT", old, now));
        let unnamed = format!("{PROBE_PREFIX}0123abcd");
        assert!(is_left_over(&unnamed, old, now) && !is_left_over(&unnamed, young, now));
    }
}
