//! The binary's contract: exit codes, stdout, stderr.

use std::time::Duration;

use bson::doc;

use crate::helpers::{check_config, run_binary as run, spawn_app};

#[tokio::test]
async fn an_invalid_deanery_is_refused_before_any_path_is_built() {
    let app = spawn_app().await;
    app.seed("MER", 2).await;

    let output = run(&app, &["export", "--deanery", "../../etc"], &[]).await;

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid deanery code"), "{stderr}");
    assert!(!app.export_dir().exists(), "nothing was written");
    assert_eq!(app.count(doc! {"status": "TO_EXPORT"}).await, 2);
}

#[tokio::test]
async fn export_all_prints_one_json_summary_per_deanery_and_status_shows_them() {
    let app = spawn_app().await;
    app.seed("MER", 3).await;
    app.seed("EOE", 2).await;

    let output = run(&app, &["export", "--all"], &[]).await;

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summaries: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(summaries.len(), 2);
    for (summary, (code, n)) in summaries.iter().zip([("EOE", 2), ("MER", 3)]) {
        assert_eq!(summary["deanery"], code);
        assert_eq!(summary["status"], "completed");
        assert_eq!(summary["exported"], n);
        assert_eq!(summary["rejected"], 0);
        for key in ["runId", "file", "attempts", "durationMs"] {
            assert!(!summary[key].is_null(), "{key} in {summary}");
        }
    }
    // Logs went to stderr as JSON lines with stable fields.
    let stderr = String::from_utf8(output.stderr).unwrap();
    let completed: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log line"))
        .filter(|l| l["message"] == "export run completed")
        .collect();
    assert_eq!(completed.len(), 2, "{stderr}");
    // Deaneries run two at a time: the log lines may come in either order.
    let mut logged: Vec<&str> = completed
        .iter()
        .map(|l| {
            assert_eq!(l["level"], "INFO");
            assert!(l["run_id"].is_string() && l["duration_ms"].is_u64(), "{l}");
            l["deanery"].as_str().unwrap()
        })
        .collect();
    logged.sort_unstable();
    assert_eq!(logged, ["EOE", "MER"]);

    let status = run(&app, &["status", "--json"], &[]).await;
    assert_eq!(status.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let mer = report["deaneries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deanery"] == "MER")
        .unwrap();
    assert_eq!(mer["counts"]["EXPORTED"], 3);
    for zero in ["TO_EXPORT", "EXPORTING", "REJECTED"] {
        assert_eq!(mer["counts"][zero], 0, "zero counts are given: {mer}");
    }
    assert_eq!(mer["lastRun"]["phase"], "COMPLETED");
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_key_and_secrets_stay_hidden() {
    let app = spawn_app().await;

    let bad = check_config(&app, &[("ESR_EXPORT__CHUNK_SIZE", "0")]).await;
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("export.chunk_size"), "{stderr}");

    let good = check_config(
        &app,
        &[("ESR_AMQP__URI", "amqp://esr:pa55word@broker:5672/%2f")],
    )
    .await;
    assert_eq!(good.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(
        stdout.contains("amqp://esr:***@broker:5672/%2f"),
        "{stdout}"
    );
    assert!(!stdout.contains("pa55word"));
}

#[tokio::test]
async fn an_unreachable_database_fails_the_export_with_exit_1() {
    let app = spawn_app().await;

    let output = run(
        &app,
        &["export", "--deanery", "MER"],
        &[
            (
                "ESR_MONGODB__URI",
                "mongodb://127.0.0.1:1/?directConnection=true",
            ),
            ("ESR_MONGODB__SERVER_SELECTION_TIMEOUT_MS", "200"),
            ("ESR_RETRY__MAX_ELAPSED_MS", "500"),
        ],
    )
    .await;

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Failed to connect to MongoDB"), "{stderr}");
}

/// `status`, `explain`, `files` and `redeliver` say their own failure:
/// one line naming each server tried, within the selection timeout.
#[tokio::test]
async fn status_against_an_unreachable_database_says_so_once_and_fast() {
    let app = spawn_app().await;
    let dead = [
        ("ESR_MONGODB__URI", "mongodb://127.0.0.1:1/"),
        ("ESR_MONGODB__SERVER_SELECTION_TIMEOUT_MS", "1000"),
    ];
    for args in [
        &["status"][..],
        &["explain", "0123456789abcdef01234567"][..],
    ] {
        let started = std::time::Instant::now();
        let output = run(&app, args, &dead).await;
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
        assert!(
            lines[0].contains("command failed") && lines[0].contains("Servers tried: 127.0.0.1:1"),
            "{args:?}: {stderr}"
        );
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
    }
}

#[tokio::test]
async fn check_config_warns_when_the_uri_pins_one_host() {
    let app = spawn_app().await;
    let pinned = [(
        "ESR_MONGODB__URI",
        "mongodb://127.0.0.1:27017/?directConnection=true",
    )];
    let output = check_config(&app, &pinned).await;
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("directConnection=true"), "{stderr}");

    let discovered = [(
        "ESR_MONGODB__URI",
        "mongodb://127.0.0.1:27017/?replicaSet=secantus",
    )];
    let said = String::from_utf8(check_config(&app, &discovered).await.stderr).unwrap();
    let said: Vec<&str> = said.lines().collect();
    assert_eq!(said.len(), 1, "only the probe's line, no warning: {said:?}");
    assert!(
        said[0].ends_with("refuses a second create of a name (probe passed)"),
        "{said:?}"
    );
}

#[tokio::test]
async fn esr_config_names_the_settings_file() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[export]\nchunk_size = 777\n").unwrap();
    let path = file.display().to_string();
    let output = check_config(&app, &[("ESR_CONFIG", path.as_str())]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("chunk_size = 777"), "{stdout}");
    assert!(
        stdout.contains(&format!("export.chunk_size = config file {path}")),
        "{stdout}"
    );

    let missing = check_config(&app, &[("ESR_CONFIG", "/no/such/config.toml")]).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/config.toml"));
}

#[tokio::test]
async fn version_names_the_commit_and_the_build_date() {
    let app = spawn_app().await;
    let output = run(&app, &["--version"], &[]).await;
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let commit = esr_exporter::identity::COMMIT;
    assert!(
        commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );
    let expected = format!(
        "esr-exporter {} (commit {commit}, built {})",
        env!("CARGO_PKG_VERSION"),
        esr_exporter::identity::BUILD_DATE
    );
    assert_eq!(stdout.trim(), expected);
}

#[tokio::test]
async fn completions_and_the_man_page_need_no_settings() {
    let app = spawn_app().await;
    let broken = [("ESR_EXPORT__CHUNK_SIZE", "0")];
    let bash = run(&app, &["completions", "bash"], &broken).await;
    assert_eq!(bash.status.code(), Some(0));
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("dead-letters") && script.contains("--dry-run"),
        "{script}"
    );
    let man = run(&app, &["man"], &broken).await;
    assert_eq!(man.status.code(), Some(0));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        page.lines().any(|l| l.starts_with(".TH")),
        "{}",
        &page[..page.len().min(200)]
    );
    assert!(
        page.contains("esr\\-exporter") || page.contains("esr-exporter"),
        "names itself"
    );
    // One page: every command described on it, none sent to a page that
    // is not built, and the exit codes.
    assert!(!page.contains("(1)"), "no other page named: {page}");
    assert!(
        page.contains(".SH COMMANDS") && page.contains("dead\\-letters"),
        "{page}"
    );
    let status = page
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .expect("EXIT STATUS");
    for code in ["0", "1", "2"] {
        assert!(status.contains(&format!(".TP\n{code}\n")), "{status}");
    }
}

/// A usage error is one line on stderr, exit 2 (README, DESIGN.md), not
/// clap's usage block and tips.
#[tokio::test]
async fn a_usage_error_is_one_line_on_stderr_and_exit_2() {
    let app = spawn_app().await;
    for args in [&["export", "--no-such-flag"][..], &["no-such-command"], &[]] {
        let output = run(&app, args, &[]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--help"),
            "says where to read more: {stderr}"
        );
    }
    let help = run(&app, &["--help"], &[]).await;
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage:"));
}
