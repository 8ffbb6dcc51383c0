//! The operations kit against the daemon itself: every metric the alert
//! rules (`deploy/prometheus/alerts.yml`) and the dashboard
//! (`deploy/grafana/esr-exporter.json`) query is one the daemon exports,
//! as documented in `src/ops/metrics.rs` and as a real `/metrics` scrape
//! shows; `promtool check metrics` passes over that scrape; the dashboard's
//! queries are valid PromQL to `promtool`.
//!
//! `promtool` comes from Debian's `prometheus` package; `scripts/check-deploy`
//! (run by `scripts/test`) installs it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bson::doc;
use esr_exporter::domain::Slot;

use crate::helpers::{eventually, http_get, metric, spawn_app_with, unique_deanery, valid_record};

const WAIT: Duration = Duration::from_secs(60);

/// Metrics that come from Prometheus itself or a blackbox exporter, not
/// from the daemon; only the alert rules may use them.
const EXTERNAL: &[&str] = &["up", "probe_success", "kube_pod_status_ready"];

/// The placeholder base of every runbook_url (`scripts/render-alerts`
/// replaces it).
const RUNBOOK_BASE: &str = "https://runbooks.invalid/esr-exporter/README.md";

/// The alerts README.md's "Alerts and what they mean" promises.
const ALERTS: &[&str] = &[
    "EsrStuckRecords",
    "EsrCommandsDeadLettered",
    "EsrExportRunsFailing",
    "EsrNoSuccessfulRun",
    "EsrConsumerDetached",
    "EsrNotReady",
    "EsrPodNotReady",
    "EsrDeadLettersWaiting",
    "EsrOutputFolderNotWritable",
    "EsrExporterDown",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// The metrics table in `src/ops/metrics.rs`'s doc comment: name → type.
fn documented_metrics() -> BTreeMap<String, String> {
    let documented: BTreeMap<String, String> = read("src/ops/metrics.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//! | `"))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('`')?;
            let kind = rest
                .trim_start_matches([' ', '|'])
                .split('|')
                .next()?
                .trim();
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect();
    assert!(
        documented.len() >= 10,
        "the metrics table of src/ops/metrics.rs: {documented:?}"
    );
    for (name, kind) in &documented {
        assert!(
            ["counter", "gauge", "histogram", "summary"].contains(&kind.as_str()),
            "{name}: type {kind:?}"
        );
    }
    documented
}

/// PromQL keywords a label list follows.
const LABEL_LIST_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// PromQL functions and keywords: identifiers that are not metric names
/// (with [`LABEL_LIST_WORDS`]).
const PROMQL_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "atan2",
    "inf",
    "nan",
    // Aggregation operators, also written `sum by (x) (...)`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// A metric name used in a PromQL expression, and whether it is the
/// argument of `rate`, `irate` or `increase` (so must be a counter).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    name: String,
    as_counter: bool,
}

/// The metric names a PromQL expression selects. Label matchers, ranges,
/// strings, grouping label lists and Grafana variables are skipped.
fn metric_names(expr: &str) -> BTreeSet<Use> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = BTreeSet::new();
    let mut counter_function_pending = false;
    let mut i = 0;
    let skip_to = |from: usize, close: char| {
        let mut j = from;
        while j < chars.len() && chars[j] != close {
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_to(i + 1, '}'),
            '[' => i = skip_to(i + 1, ']'),
            '"' | '\'' | '`' => i = skip_to(i + 1, c),
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations (26, 3600, 1h, 1e9).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_WORDS.contains(&lower.as_str()) {
                    // A label list follows.
                    if next < chars.len() && chars[next] == '(' {
                        i = skip_to(next + 1, ')');
                    }
                } else if PROMQL_WORDS.contains(&lower.as_str()) {
                } else if next < chars.len() && chars[next] == '(' {
                    // A function call.
                    counter_function_pending =
                        ["rate", "irate", "increase"].contains(&lower.as_str());
                } else {
                    found.insert(Use {
                        name: word,
                        as_counter: counter_function_pending,
                    });
                    counter_function_pending = false;
                }
            }
            _ => i += 1,
        }
    }
    found
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |expr| {
        metric_names(expr)
            .into_iter()
            .map(|u| (u.name, u.as_counter))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            r#"sum by (deanery) ((increase(a_total{x="y"}[1h]) > 0) or (a_total unless a_total offset 1h)) > 0"#
        ),
        [("a_total".to_owned(), false), ("a_total".to_owned(), true)]
    );
    assert_eq!(
        names(r#"time() - max by (deanery) (g{deanery=~"$deanery"}) > 26 * 3600"#),
        [("g".to_owned(), false)]
    );
    assert_eq!(
        names(r#"up{job="x"} == 0 or absent(up{job="x"})"#),
        [("up".to_owned(), false)]
    );
    assert_eq!(
        names("count(max by (d) (s) > 0) or vector(0)"),
        [("s".to_owned(), false)]
    );
}

fn alert_rules() -> Vec<yaml_rust2::Yaml> {
    let docs = yaml_rust2::YamlLoader::load_from_str(&read("deploy/prometheus/alerts.yml"))
        .expect("alerts.yml parses");
    docs[0]["groups"]
        .as_vec()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_vec().expect("rules").clone())
        .collect()
}

/// Every expression of the dashboard (panel targets), and the metrics its
/// variables read (`label_values(metric, label)`).
fn dashboard() -> (Vec<String>, Vec<String>) {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/esr-exporter.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {} has queries", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL target");
            exprs.push(expr.to_owned());
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
    }
    let mut variable_metrics = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.split(',').next())
                .unwrap_or_else(|| panic!("variable query {query}"));
            variable_metrics.push(inner.trim().to_owned());
        }
    }
    (exprs, variable_metrics)
}

/// Each use is a documented metric (or, for rules, an external one), and
/// `rate`/`increase` only read counters.
fn check_uses(what: &str, expr: &str, external: &[&str], documented: &BTreeMap<String, String>) {
    let uses = metric_names(expr);
    assert!(!uses.is_empty(), "{what}: no metric in {expr}");
    for one in uses {
        match documented.get(&one.name) {
            Some(kind) => assert!(
                !one.as_counter || kind == "counter",
                "{what}: rate/increase over the {kind} {} in {expr}",
                one.name
            ),
            None => assert!(
                external.contains(&one.name.as_str()),
                "{what}: {} is not a metric the daemon exports (src/ops/metrics.rs), in {expr}",
                one.name
            ),
        }
    }
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of README.md: its headings' (as GitHub makes them, outside
/// code blocks) and its `<a id="...">` ones.
fn readme_anchors(readme: &str) -> Vec<String> {
    let mut anchors = Vec::new();
    let mut in_code = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if let Some(heading) = line.strip_prefix('#').filter(|_| !in_code) {
            anchors.push(anchor(heading.trim_start_matches('#')));
        }
        for (at, _) in line.match_indices("<a id=\"") {
            let id = &line[at + 7..];
            anchors.push(id[..id.find('"').unwrap_or(id.len())].to_owned());
        }
    }
    anchors
}

/// Every `](#anchor)` link of README.md leads somewhere in it.
#[test]
fn every_link_inside_the_readme_has_its_anchor() {
    let readme = read("README.md");
    let anchors = readme_anchors(&readme);
    let mut links = 0;
    for (at, _) in readme.match_indices("](#") {
        let target = &readme[at + 3..];
        let target = &target[..target.find(')').expect("a closed link")];
        assert!(
            anchors.iter().any(|a| a == target),
            "README.md links to #{target}, which it does not have"
        );
        links += 1;
    }
    assert!(links >= 5, "{links} links found");
}

#[test]
fn every_metric_the_alert_rules_and_the_dashboard_use_is_one_the_daemon_exports() {
    let documented = documented_metrics();

    let rules = alert_rules();
    let readme_anchors = readme_anchors(&read("README.md"));
    let mut alerts = Vec::new();
    for rule in &rules {
        let name = rule["alert"].as_str().expect("alerting rules only");
        let expr = rule["expr"].as_str().expect("expr");
        check_uses(name, expr, EXTERNAL, &documented);
        assert!(rule["for"].as_str().is_some(), "{name} has a for: duration");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        let runbook = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has a runbook_url"));
        let section = runbook
            .strip_prefix(RUNBOOK_BASE)
            .and_then(|rest| rest.strip_prefix('#'))
            .unwrap_or_else(|| panic!("{name}: runbook {runbook} is {RUNBOOK_BASE}#<anchor>"));
        assert_eq!(section, name.to_lowercase(), "{name} has its own anchor");
        assert!(
            readme_anchors.iter().any(|a| a == section),
            "{name}: README.md has no anchor #{section}"
        );
        assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
        alerts.push(name.to_owned());
    }
    for expected in ALERTS {
        assert!(
            alerts.iter().any(|a| a == expected),
            "{expected} in {alerts:?}"
        );
    }
    let readme = read("README.md");
    for alert in &alerts {
        assert!(
            readme.contains(&format!("`{alert}`")),
            "README.md explains {alert}"
        );
    }

    let (exprs, variable_metrics) = dashboard();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        check_uses("dashboard", expr, &[], &documented);
    }
    for name in variable_metrics {
        assert!(
            documented.contains_key(&name),
            "dashboard variable reads {name}, which the daemon does not export"
        );
    }
}

/// `promtool`, or a failure that says how to install it.
fn promtool() -> Command {
    match Command::new("promtool").arg("--version").output() {
        Ok(output) if output.status.success() => Command::new("promtool"),
        _ => panic!(
            "promtool is not installed: run scripts/check-deploy (it installs Debian's \
             prometheus package, which provides promtool)"
        ),
    }
}

#[test]
fn the_dashboard_queries_are_valid_promql() {
    // Grafana's variables replaced by values, each query a recording rule:
    // `promtool check rules` parses every one.
    let (exprs, _) = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$deanery", ".*");
        rules.push_str(&format!(
            "      - record: dashboard_query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.yml");
    std::fs::write(&path, rules).unwrap();
    let output = promtool()
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check rules over the dashboard's queries:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `# TYPE` lines of a scrape: family → type.
fn scraped_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_passes_over_a_real_scrape_of_the_daemon() {
    // Arrange: a daemon that has exported a deanery (one record rejected)
    // and dead-lettered a malformed command, so that its metrics move.
    let mut promtool = promtool();
    let app = spawn_app_with(&[]).await;
    let code = unique_deanery();
    app.seed(&code, 5).await;
    let mut invalid = valid_record(&code, 99);
    invalid.remove("positionNumber");
    app.insert(vec![invalid]).await;
    let daemon = app.spawn_daemon().await;

    // Act
    app.publish_command(&code, Slot::Manual).await;
    app.publish_raw(b"this is not a generation command").await;
    let runs = format!("esr_export_runs_total{{deanery=\"{code}\",outcome=\"completed\"}}");
    eventually(
        "the export and the dead letter show in /metrics",
        WAIT,
        || {
            let (addr, runs) = (daemon.http, runs.clone());
            async move {
                let text = http_get(addr, "/metrics").await.1;
                metric(&text, &runs).is_some()
                    && metric(&text, "esr_commands_dead_lettered_total").is_some()
            }
        },
    )
    .await;
    let (status, scrape) = http_get(daemon.http, "/metrics").await;
    app.stop_and_clean_up(daemon).await;

    // Assert: Prometheus's own lint passes over the scrape...
    assert_eq!(status, 200);
    let build = format!(
        "esr_build_info{{version=\"{}\",commit=\"{}\",built=\"{}\"}} 1",
        esr_exporter::identity::VERSION,
        esr_exporter::identity::COMMIT,
        esr_exporter::identity::BUILD_DATE
    );
    assert!(scrape.contains(&build), "{build} in:\n{scrape}");
    let mut child = promtool
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics over a real /metrics scrape reported:\n{report}\n--- scrape:\n{scrape}"
    );

    // ...every family has HELP and TYPE, and is documented with that type...
    let documented = documented_metrics();
    let types = scraped_types(&scrape);
    for (family, kind) in &types {
        if !family.starts_with("esr_") {
            continue;
        }
        assert_eq!(
            documented.get(family),
            Some(kind),
            "{family} ({kind}) in the scrape is documented with its type in src/ops/metrics.rs"
        );
        assert!(
            scrape.contains(&format!("# HELP {family} ")),
            "{family} has HELP"
        );
    }
    // ...and what this test made move is there.
    for family in [
        "esr_export_runs_total",
        "esr_records_exported_total",
        "esr_records_rejected_total",
        "esr_transaction_attempts_total",
        "esr_write_conflicts_total",
        "esr_retries_total",
        "esr_last_successful_run_timestamp_seconds",
        "esr_commands_total",
        "esr_commands_dead_lettered_total",
        "esr_consumer_attached",
    ] {
        assert!(
            types.contains_key(family),
            "{family} in the scrape:\n{scrape}"
        );
    }
    assert_eq!(
        metric(
            &scrape,
            &format!("esr_records_exported_total{{deanery=\"{code}\"}}")
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &scrape,
            &format!("esr_records_rejected_total{{deanery=\"{code}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        app.count(doc! {"deanery": &code, "status": "EXPORTED"})
            .await,
        5
    );
}

#[test]
fn the_kubernetes_replicas_are_spread_limited_and_covered_by_a_disruption_budget() {
    let docs = yaml_rust2::YamlLoader::load_from_str(&read("deploy/kubernetes/esr-exporter.yaml"))
        .expect("manifests parse");
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("a {kind}"))
    };
    let deployment = find("Deployment");
    let app = deployment["spec"]["selector"]["matchLabels"]["app"]
        .as_str()
        .unwrap();
    assert!(deployment["spec"]["replicas"].as_i64().unwrap() >= 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let spread = pod["topologySpreadConstraints"].as_vec().expect("spread");
    assert!(
        spread.iter().any(|c| {
            c["topologyKey"].as_str() == Some("kubernetes.io/hostname")
                && c["whenUnsatisfiable"].as_str() == Some("DoNotSchedule")
                && c["labelSelector"]["matchLabels"]["app"].as_str() == Some(app)
        }),
        "one replica per node"
    );
    for container in pod["containers"].as_vec().unwrap() {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"]["limits"][resource].is_badvalue(),
                "a {resource} limit"
            );
            assert!(
                !container["resources"]["requests"][resource].is_badvalue(),
                "a {resource} request"
            );
        }
    }
    let budget = find("PodDisruptionBudget");
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"]["app"].as_str(),
        Some(app)
    );
    assert!(budget["spec"]["minAvailable"].as_i64().unwrap() >= 1);
}
