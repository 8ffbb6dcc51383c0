//! Unit tests of loading, parsing, validating and printing the settings.

use super::*;
use std::collections::HashMap;
use std::path::PathBuf;

/// Why loading with `file` and the variables `vars` is refused, with its
/// causes.
fn refused(file: Option<&std::path::Path>, vars: &[(&str, &str)]) -> String {
    let err = Settings::load_with_env(file, env(vars)).unwrap_err();
    crate::error_chain::chain(&err)
}

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[test]
fn defaults_load_and_match_the_contract() {
    let s = Settings::load_with_env(None, env(&[])).expect("defaults are valid");
    assert_eq!(
        s.mongodb.uri.expose(),
        "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    );
    assert_eq!(s.mongodb.database, "esr");
    assert_eq!(s.mongodb.records_collection, "generatedAppRecords");
    assert_eq!(
        s.amqp.queue,
        "esr.queue.appfilegenerationcommand.create.dataexporter"
    );
    assert_eq!(s.export.output_dir, PathBuf::from("./exports"));
    assert_eq!(s.schedule.cron.to_string(), "0 0 13 * * *");
    assert_eq!(s.schedule.timezone, chrono_tz::Tz::UTC);
    assert_eq!(s.export.file_mode_bits(), 0o644);
    assert_eq!(s.amqp.queue_type, QueueType::Quorum);
    assert!(s.schedule.enabled);
    assert_eq!(s.http.listen, "127.0.0.1:8080");
    assert_eq!(s.log.format, LogFormat::Json);
}

#[test]
fn environment_overrides_nested_keys() {
    let s = Settings::load_with_env(
        None,
        env(&[
            ("ESR_EXPORT__CHUNK_SIZE", "250"),
            ("ESR_MONGODB__DATABASE", "other"),
            ("ESR_LOG__FORMAT", "pretty"),
        ]),
    )
    .unwrap();
    assert_eq!(s.export.chunk_size, 250);
    assert_eq!(s.mongodb.database, "other");
    assert_eq!(s.log.format, LogFormat::Pretty);
    let s = Settings::load_with_env(None, env(&[("ESR_SCHEDULE__DEANERIES", "MER,EOE")])).unwrap();
    let codes: Vec<&str> = s.schedule.deaneries.iter().map(|d| d.as_str()).collect();
    assert_eq!(codes, ["MER", "EOE"]);
}

#[test]
fn a_mistyped_out_of_range_or_unknown_value_names_its_key() {
    let cases = [
        ("ESR_EXPORT__CHUNK_SIZE", "lots", "chunk_size"),
        ("ESR_EXPORT__CHUNK_SIZE", "0", "export.chunk_size"),
        ("ESR_SCHEDULE__CRON", "0 0 25 * * *", "schedule.cron"),
        (
            "ESR_SCHEDULE__TIMEZONE",
            "Europe/Atlantis",
            "schedule.timezone",
        ),
    ];
    for (key, value, named) in cases {
        let err = refused(None, &[(key, value)]);
        assert!(err.contains(named), "{key}={value}: {err}");
    }
}

/// A settings file holding `text`, in a folder that lives as long as
/// the answer's first half.
fn settings_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn an_unknown_key_in_a_file_is_refused_by_name() {
    let (_dir, path) = settings_file("[export]\nchunk_sise = 10\n");
    let err = refused(Some(&path), &[]);
    assert!(err.contains("chunk_sise"), "{err}");
}

#[test]
fn a_file_layer_sits_under_the_environment() {
    let (_dir, path) = settings_file("[export]\nchunk_size = 10\nlease_seconds = 5\n");
    let lease = env(&[("ESR_EXPORT__LEASE_SECONDS", "7")]);
    let s = Settings::load_with_env(Some(&path), lease).unwrap();
    assert_eq!(s.export.chunk_size, 10);
    assert_eq!(s.export.lease_seconds, 7);
}

#[test]
fn passwords_are_redacted_everywhere_they_are_shown() {
    let uri = SecretUri::new("mongodb://esr:s3cr%40t@db1:27017,db2:27017/?replicaSet=rs0");
    assert_eq!(
        uri.redacted(),
        "mongodb://esr:***@db1:27017,db2:27017/?replicaSet=rs0"
    );
    assert!(!format!("{uri:?}").contains("s3cr"));
    assert!(!format!("{uri}").contains("s3cr"));
    let s = Settings::load_with_env(
        None,
        env(&[
            ("ESR_MONGODB__URI", "mongodb://u:hunter2@h/"),
            ("ESR_AMQP__URI", "amqp://guest:rabbitpw@h:5672/%2f"),
        ]),
    )
    .unwrap();
    let printed = s.to_redacted_toml();
    assert!(!printed.contains("hunter2") && !printed.contains("rabbitpw"));
    assert!(printed.contains("mongodb://u:***@h/"), "{printed}");
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn an_invalid_schedule_deanery_is_refused_by_key_not_skipped() {
    let err = refused(None, &[("ESR_SCHEDULE__DEANERIES", "MER,mer,EOE")]);
    assert!(err.contains("key `schedule.deaneries`"), "{err}");
    assert!(err.contains("\"mer\""), "{err}");
}

#[test]
fn a_bad_file_mode_is_refused_by_key() {
    for mode in ["0400", "0999", "rw-r--r--", "10644"] {
        let err = refused(None, &[("ESR_EXPORT__FILE_MODE", mode)]);
        assert!(err.contains("key `export.file_mode`"), "{mode}: {err}");
    }
    let s = Settings::load_with_env(None, env(&[("ESR_EXPORT__FILE_MODE", "0640")])).unwrap();
    assert_eq!(s.export.file_mode_bits(), 0o640);
}

/// `check-config` prints every key of `config/default.toml` with the value
/// it was given, parsed values included.
#[test]
fn the_printed_settings_are_the_configured_values() {
    let mut defaults: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
    defaults["amqp"]["uri"] = "amqp://guest:***@127.0.0.1:5672/%2f".into();
    let s = Settings::load_with_env(None, env(&[])).unwrap();
    let printed: toml::Table = toml::from_str(&s.to_redacted_toml()).unwrap();
    assert_eq!(printed, defaults);
    let s = Settings::load_with_env(
        None,
        env(&[
            ("ESR_SCHEDULE__DEANERIES", "MER,EOE"),
            ("ESR_SCHEDULE__CRON", "0 */15 8-18 * * MON-FRI"),
            ("ESR_SCHEDULE__TIMEZONE", "Europe/London"),
            ("ESR_EXPORT__FILE_MODE", "0600"),
        ]),
    )
    .unwrap();
    let printed = s.to_redacted_toml();
    for line in [
        "deaneries = [\n    \"MER\",\n    \"EOE\",\n]",
        "cron = \"0 */15 8-18 * * MON-FRI\"",
        "timezone = \"Europe/London\"",
        "file_mode = \"0600\"",
    ] {
        assert!(printed.contains(line), "{line} in {printed}");
    }
}

/// The book's configuration table (`docs/src/configuration.md`) lists
/// exactly the keys of `config/default.toml`, with the same defaults.
#[test]
fn the_configuration_reference_matches_the_defaults() {
    let defaults: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
    let mut expected = std::collections::BTreeMap::new();
    for (section, table) in &defaults {
        for (key, value) in table.as_table().unwrap() {
            let shown = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Array(a) if a.is_empty() => "[]".to_owned(),
                other => other.to_string(),
            };
            expected.insert(format!("{section}.{key}"), shown);
        }
    }
    let readme = include_str!("../../docs/src/configuration.md");
    let mut documented = std::collections::BTreeMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let key = cells[1].trim_matches('`');
        let looks_like_key = key.split('.').count() == 2
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
        if !looks_like_key {
            continue;
        }
        let default = cells[2].trim_matches('`').trim_matches('"');
        documented.insert(key.to_owned(), default.to_owned());
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
    for (key, default) in &documented {
        assert_eq!(
            Some(default),
            expected.get(key),
            "docs/src/configuration.md: the default of `{key}`"
        );
    }
}

#[test]
fn esr_variables_that_are_not_section_keys_are_left_alone() {
    // Kubernetes adds these to every pod of a Service named esr-exporter.
    let env = [
        ("ESR_EXPORTER_SERVICE_HOST", "10.0.0.7"),
        ("ESR_EXPORTER_PORT", "tcp://10.0.0.7:8080"),
        ("ESR_EXPORTER_PORT_8080_TCP_PROTO", "tcp"),
        ("ESR_EXPORT__CHUNK_SIZE", "250"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = Settings::load_with_env(None, Some(env)).expect("loads");
    assert_eq!(settings.export.chunk_size, 250);
}

#[test]
fn a_log_level_that_names_no_level_is_refused_naming_the_key() {
    for bad in ["warning", "esr_exporter", "info,lapin"] {
        let env = [("ESR_LOG__LEVEL".to_owned(), bad.to_owned())]
            .into_iter()
            .collect();
        let err = Settings::load_with_env(None, Some(env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.level"), "{bad}: {err}");
    }
    for good in [
        "warn",
        "INFO",
        "info,lapin=off",
        "warn,esr_exporter::export=debug",
    ] {
        let env = [("ESR_LOG__LEVEL".to_owned(), good.to_owned())]
            .into_iter()
            .collect();
        assert!(Settings::load_with_env(None, Some(env)).is_ok(), "{good}");
    }
}

#[test]
fn a_prefetch_over_one_is_refused_naming_the_key() {
    let err = refused(None, &[("ESR_AMQP__PREFETCH", "2")]);
    assert!(err.contains("amqp.prefetch"), "{err}");
}

#[test]
fn a_publish_bound_the_slot_lease_cannot_outlive_is_refused_naming_the_key() {
    let err = refused(
        None,
        &[
            ("ESR_AMQP__PUBLISH_TIMEOUT_MS", "70000"),
            ("ESR_SCHEDULE__SLOT_LEASE_SECONDS", "120"),
        ],
    );
    assert!(err.contains("amqp.publish_timeout_ms"), "{err}");
}
