//! The operations kit against the daemon itself: every metric the alert
//! rules (`deploy/prometheus/alerts.yml`) and the dashboard
//! (`deploy/grafana/esr-exporter.json`) query is one the daemon exports,
//! as documented in `src/ops/metrics.rs` and as a real `/metrics` scrape
//! shows; `promtool check metrics` passes over that scrape; the dashboard's
//! queries are valid PromQL to `promtool`. The Dockerfile and the
//! Kubernetes manifest, read as a container runtime and Kubernetes read
//! them, give the binary's `check-config` the settings the container runs
//! with: the files are staged in the pod's emptyDir, and the image alone
//! uses its VOLUME and the HEALTHCHECK's port.
//!
//! `promtool` comes from Debian's `prometheus` package; `scripts/check-deploy`
//! (run by `scripts/test`) installs it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bson::doc;
use esr_exporter::domain::Slot;

use crate::helpers::{
    binary_with, eventually, http_get, metric, spawn_app_with, unique_deanery, valid_record,
};
use crate::support::env::pairs;

const WAIT: Duration = Duration::from_secs(60);

/// Metrics that come from Prometheus itself or a blackbox exporter, not
/// from the daemon; only the alert rules may use them.
const EXTERNAL: &[&str] = &["up", "probe_success", "kube_pod_status_ready"];

/// The placeholder base of every runbook_url (`scripts/render-alerts`
/// replaces it).
const RUNBOOK_BASE: &str = "https://runbooks.invalid/esr-exporter";

/// The alerts the book's "Alerts and what they mean" promises.
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
    "EsrPublicationInDoubt",
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

/// mdBook's (and GitHub's) anchor for a Markdown heading.
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

/// The anchors of a Markdown page: its headings' (outside code blocks)
/// and its `<a id="...">` ones.
fn page_anchors(page: &str) -> Vec<String> {
    let mut anchors = Vec::new();
    let mut in_code = false;
    for line in page.lines() {
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

/// The README and the book's pages, relative to the project.
fn documentation_pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_owned()];
    for dir in ["docs/src", "docs/src/runbooks"] {
        let listed = std::fs::read_dir(format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let names = listed
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok());
        pages.extend(
            names
                .filter(|n| n.ends_with(".md"))
                .map(|n| format!("{dir}/{n}")),
        );
    }
    pages
}

/// The relative link targets of a Markdown page, outside code blocks.
fn relative_links(page: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut in_code = false;
    for line in page.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        for (at, _) in line.match_indices("](").filter(|_| !in_code) {
            let target = &line[at + 2..];
            let target = &target[..target.find(')').unwrap_or(target.len())];
            if !target.contains("://") && !target.starts_with("mailto:") {
                links.push(target.to_owned());
            }
        }
    }
    links
}

/// Every relative link of the README and the book leads to a page that
/// exists, and to an anchor that page has.
#[test]
fn every_link_of_the_readme_and_the_book_has_its_page_and_anchor() {
    let mut links = 0;
    for page in documentation_pages() {
        let dir = std::path::Path::new(&page).parent().unwrap().to_path_buf();
        for target in relative_links(&read(&page)) {
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let file = match file {
                "" => page.clone(),
                file => dir.join(file).to_string_lossy().into_owned(),
            };
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&file);
            assert!(
                path.exists(),
                "{page} links to {target}: {file} does not exist"
            );
            if !fragment.is_empty() {
                let anchors = page_anchors(&std::fs::read_to_string(&path).unwrap());
                assert!(
                    anchors.iter().any(|a| a == fragment),
                    "{page} links to {target}: {file} has no #{fragment}"
                );
            }
            links += 1;
        }
    }
    assert!(links >= 50, "{links} links found");
}

#[test]
fn every_metric_the_alert_rules_and_the_dashboard_use_is_one_the_daemon_exports() {
    let documented = documented_metrics();

    let rules = alert_rules();
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
        let page = format!("runbooks/{}", name.to_lowercase());
        assert_eq!(
            runbook,
            format!("{RUNBOOK_BASE}/{page}.html"),
            "{name} points at its own page of the book"
        );
        let source = read(&format!("docs/src/{page}.md"));
        assert!(
            source.starts_with(&format!("# {name}\n")),
            "docs/src/{page}.md is {name}'s"
        );
        for section in ["## What it means", "## How to confirm", "## What to do"] {
            assert!(source.contains(section), "docs/src/{page}.md: {section}");
        }
        assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
        alerts.push(name.to_owned());
    }
    for expected in ALERTS {
        assert!(
            alerts.iter().any(|a| a == expected),
            "{expected} in {alerts:?}"
        );
    }
    let (overview, summary) = (read("docs/src/alerts.md"), read("docs/src/SUMMARY.md"));
    for alert in &alerts {
        let page = format!("runbooks/{}.md", alert.to_lowercase());
        assert!(
            overview.contains(&page),
            "docs/src/alerts.md links {alert}'s runbook"
        );
        assert!(
            summary.contains(&page),
            "docs/src/SUMMARY.md lists {alert}'s runbook"
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

/// The runtime stage of the Dockerfile (after its last `FROM`), as a
/// container runtime reads it.
#[derive(Default)]
struct Image {
    /// `ENV`, in order.
    env: Vec<(String, String)>,
    /// Files `COPY`'d from the build context: path in the image → path in
    /// the repository.
    files: BTreeMap<String, String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    volumes: Vec<String>,
    exposed: Vec<String>,
    healthcheck: String,
}

/// The Dockerfile's instructions: comment lines dropped, continuation
/// lines joined.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let text = std::mem::take(&mut current);
                let text = text.trim();
                if let Some((word, rest)) = text.split_once(char::is_whitespace) {
                    instructions.push((word.to_uppercase(), rest.trim().to_owned()));
                }
            }
        }
    }
    instructions
}

/// An exec-form (JSON array) `CMD`, `ENTRYPOINT` or `VOLUME`.
fn exec_form(what: &str, text: &str) -> Vec<String> {
    serde_json::from_str(text)
        .unwrap_or_else(|err| panic!("the Dockerfile's {what} is not a JSON array ({err}): {text}"))
}

fn image() -> Image {
    let mut image = Image::default();
    for (word, rest) in dockerfile_instructions() {
        match word.as_str() {
            "FROM" => image = Image::default(),
            "ENV" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if words[0].contains('=') {
                    for word in words {
                        let (key, value) = word.split_once('=').expect("ENV KEY=value");
                        image
                            .env
                            .push((key.to_owned(), value.trim_matches('"').to_owned()));
                    }
                } else {
                    image.env.push((words[0].to_owned(), words[1..].join(" ")));
                }
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if words.iter().any(|w| w.starts_with("--from=")) {
                    continue;
                }
                let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
                let [source, target] = paths[..] else {
                    panic!("COPY {rest}: one source and one target expected");
                };
                image.files.insert(target.to_owned(), source.to_owned());
            }
            "ENTRYPOINT" => image.entrypoint = exec_form("ENTRYPOINT", &rest),
            "CMD" => image.cmd = exec_form("CMD", &rest),
            "VOLUME" => image.volumes.extend(exec_form("VOLUME", &rest)),
            "EXPOSE" => image.exposed.extend(
                rest.split_whitespace()
                    .map(|p| p.trim_end_matches("/tcp").to_owned()),
            ),
            "HEALTHCHECK" => image.healthcheck = rest,
            _ => {}
        }
    }
    assert!(
        !image.entrypoint.is_empty(),
        "the Dockerfile has an ENTRYPOINT"
    );
    image
}

/// A dummy URI for a secret file named `key` (the key of a Secret or a
/// credential file's name).
fn dummy_secret(key: &str) -> &'static str {
    if key.contains("mongodb") {
        "mongodb://esr:not-a-password@mongo.invalid:27017/?replicaSet=rs0"
    } else if key.contains("amqp") {
        "amqp://esr:not-a-password@rabbitmq.invalid:5672/%2f"
    } else {
        panic!("no dummy value for the secret {key}")
    }
}

/// The files a container sees, stood in for by files in a temporary
/// folder: what volumes mount (a ConfigMap's keys, a Secret's keys with
/// dummy values, mode 0400) over what the image holds (files `COPY`'d from
/// the repository).
struct Filesystem {
    dir: tempfile::TempDir,
    /// mountPath → the volume (its entry under the pod's `volumes`).
    mounts: Vec<(String, yaml_rust2::Yaml)>,
    /// The manifests, for ConfigMaps.
    manifests: Vec<yaml_rust2::Yaml>,
    image_files: BTreeMap<String, String>,
}

impl Filesystem {
    /// The path of a local stand-in for `path` in the container, when
    /// `path` is a file a volume or the image provides.
    fn stand_in(&self, path: &str) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let mounted = self
            .mounts
            .iter()
            .filter_map(|(mount, volume)| {
                let key = path.strip_prefix(mount.as_str())?.strip_prefix('/')?;
                Some((key, volume))
            })
            .max_by_key(|(key, _)| std::cmp::Reverse(key.len()));
        let local = self
            .dir
            .path()
            .join(uuid::Uuid::new_v4().simple().to_string());
        if let Some((key, volume)) = mounted {
            if let Some(name) = volume["configMap"]["name"].as_str() {
                let map = self
                    .manifests
                    .iter()
                    .find(|d| {
                        d["kind"].as_str() == Some("ConfigMap")
                            && d["metadata"]["name"].as_str() == Some(name)
                    })
                    .unwrap_or_else(|| panic!("the ConfigMap {name} among the manifests"));
                let text = map["data"][key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{path}: the ConfigMap {name} has no key {key}"));
                std::fs::write(&local, text).unwrap();
            } else if !volume["secret"].is_badvalue() {
                std::fs::write(&local, dummy_secret(key)).unwrap();
                std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o400)).unwrap();
            } else {
                panic!("{path} is on a volume that holds no files: {volume:?}");
            }
        } else {
            let source = self.image_files.get(path)?;
            std::fs::copy(format!("{}/{source}", env!("CARGO_MANIFEST_DIR")), &local).unwrap();
        }
        Some(local.display().to_string())
    }
}

/// What `check-config` printed: the settings (TOML) and each key's source
/// (`#   export.output_dir = config file /etc/...`).
struct Shown {
    settings: toml::Table,
    sources: BTreeMap<String, String>,
}

impl Shown {
    fn value(&self, key: &str) -> String {
        let (section, name) = key.split_once('.').unwrap();
        let value = &self.settings[section][name];
        value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned)
    }
}

/// Runs `check-config` as the container would run its command: `argv` is
/// the container's (entrypoint and arguments, `run` among them), `env`
/// its environment, container paths already replaced by their stand-ins;
/// `extra` goes on top.
async fn check_config_as(
    argv: &[String],
    env: &[(String, String)],
    extra: &[(String, String)],
) -> Shown {
    assert!(
        argv[0].ends_with("/esr-exporter"),
        "the container runs the binary: {argv:?}"
    );
    let run = argv
        .iter()
        .position(|a| a == "run")
        .unwrap_or_else(|| panic!("the container runs the daemon: {argv:?}"));
    let mut args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    args[run - 1] = "check-config";
    let env: HashMap<String, String> = env.iter().cloned().collect();
    let output = binary_with(&env, &args, &pairs(extra))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "check-config {args:?} with {env:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sources = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("#   "))
        .filter_map(|line| line.split_once(" = "))
        .map(|(key, source)| (key.to_owned(), source.to_owned()))
        .collect();
    let settings = stdout
        .parse::<toml::Table>()
        .unwrap_or_else(|err| panic!("check-config printed TOML ({err}): {stdout}"));
    Shown { settings, sources }
}

/// A bucket on the test S3 server in place of the manifest's, so that
/// `check-config`'s probe of it passes; nothing here changes
/// `export.output_dir`.
async fn test_bucket_env() -> (crate::support::bucket::TestBucket, Vec<(String, String)>) {
    let bucket = crate::support::bucket::TestBucket::create().await;
    let env = crate::support::env::s3_env(
        &bucket.destination(),
        &crate::support::bucket::s3_endpoint(),
        "test-secret",
    );
    (bucket, env)
}

/// The variables that are settings (`ESR_<SECTION>__<KEY>`).
fn settings_in(env: &[(String, String)]) -> Vec<&str> {
    env.iter()
        .map(|(key, _)| key.as_str())
        .filter(|key| key.starts_with("ESR_") && key.contains("__"))
        .collect()
}

/// On Kubernetes the files are staged in the pod's emptyDir, whatever the
/// image sets: the settings the container's command ends up with (the
/// image's environment, then the container's; `--config` the ConfigMap
/// mounted over /etc/esr-exporter; the URIs from the Secret's files), as
/// `check-config` of the binary computes them, put `export.output_dir` at
/// the mountPath of an emptyDir volume, and `http.listen` on the port the
/// probes use.
/// The pod spec of the Deployment in `deploy/kubernetes/esr-exporter.yaml`.
fn deployment_pod() -> yaml_rust2::Yaml {
    let manifests =
        yaml_rust2::YamlLoader::load_from_str(&read("deploy/kubernetes/esr-exporter.yaml"))
            .expect("manifests parse");
    let deployment = manifests
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment");
    deployment["spec"]["template"]["spec"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kubernetes_files_are_staged_in_the_pods_empty_dir() {
    // Arrange: the image and the Deployment's container, as read from the
    // files.
    let image = image();
    let manifests =
        yaml_rust2::YamlLoader::load_from_str(&read("deploy/kubernetes/esr-exporter.yaml"))
            .expect("manifests parse");
    let pod = &deployment_pod();
    let container = &pod["containers"][0];
    let volumes = pod["volumes"].as_vec().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("the volume {name}"))
            .clone()
    };
    let mounts: Vec<(String, yaml_rust2::Yaml)> = container["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_owned(),
                volume(m["name"].as_str().unwrap()),
            )
        })
        .collect();
    let empty_dirs: Vec<&str> = mounts
        .iter()
        .filter(|(_, v)| !v["emptyDir"].is_badvalue())
        .map(|(path, _)| path.as_str())
        .collect();
    let files = Filesystem {
        dir: tempfile::tempdir().unwrap(),
        mounts: mounts.clone(),
        manifests: manifests.clone(),
        image_files: image.files.clone(),
    };
    // Kubernetes: `command` replaces the ENTRYPOINT, `args` the CMD (and a
    // `command` without `args` drops the CMD).
    let strings = |y: &yaml_rust2::Yaml| {
        y.as_vec().map(|v| {
            v.iter()
                .map(|s| s.as_str().expect("a string").to_owned())
                .collect::<Vec<_>>()
        })
    };
    let command = strings(&container["command"]);
    let args = strings(&container["args"]);
    let mut argv = command.clone().unwrap_or_else(|| image.entrypoint.clone());
    argv.extend(args.unwrap_or_else(|| {
        if command.is_some() {
            Vec::new()
        } else {
            image.cmd.clone()
        }
    }));
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| files.stand_in(&a).unwrap_or(a))
        .collect();
    let mut env = image.env.clone();
    for var in container["env"].as_vec().cloned().unwrap_or_default() {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = var["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: a value (valueFrom is not read here)"));
        let value = files.stand_in(value).unwrap_or_else(|| value.to_owned());
        env.retain(|(key, _)| *key != name);
        env.push((name, value));
    }
    let (_bucket, bucket_env) = test_bucket_env().await;

    // Act
    let shown = check_config_as(&argv, &env, &bucket_env).await;

    // Assert: the emptyDir, wherever the value came from...
    let output_dir = shown.value("export.output_dir");
    assert!(
        empty_dirs.contains(&output_dir.as_str()),
        "export.output_dir is {output_dir} ({}), not the mountPath of an emptyDir ({empty_dirs:?}): \
         files would be staged outside the pod's scratch volume",
        shown.sources["export.output_dir"]
    );
    // ...and from the ConfigMap, which an image's ESR_* variable would
    // override with no way back but another variable.
    assert!(
        shown.sources["export.output_dir"].starts_with("config file "),
        "export.output_dir from {}",
        shown.sources["export.output_dir"]
    );
    assert!(
        settings_in(&image.env).is_empty(),
        "the image sets {:?}, which override the settings of a ConfigMap",
        settings_in(&image.env)
    );
    for key in ["mongodb.uri", "amqp.uri"] {
        assert!(
            shown.sources[key].starts_with("secret file "),
            "{key} from {}",
            shown.sources[key]
        );
    }
    let listen = shown.value("http.listen");
    let port = container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .and_then(|p| p["containerPort"].as_i64())
        .expect("the container port http");
    assert_eq!(
        listen,
        format!("0.0.0.0:{port}"),
        "the probes reach http.listen"
    );
}

/// Run as it is (`docker run`, Compose), the image stages and publishes
/// files in its VOLUME and serves the HEALTHCHECK's port on every address,
/// from its own config file: the image sets no ESR_* variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_alone_uses_its_volume_and_the_healthcheck_port() {
    let image = image();
    assert!(
        settings_in(&image.env).is_empty(),
        "the image sets {:?}: environment variables layer over the config file, so a \
         ConfigMap or a mounted config file could not change them",
        settings_in(&image.env)
    );
    let files = Filesystem {
        dir: tempfile::tempdir().unwrap(),
        mounts: Vec::new(),
        manifests: Vec::new(),
        image_files: image.files.clone(),
    };
    let mut argv = image.entrypoint.clone();
    argv.extend(image.cmd.clone());
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| files.stand_in(&a).unwrap_or(a))
        .collect();
    assert!(
        argv.iter()
            .any(|a| a.starts_with(files.dir.path().to_str().unwrap())),
        "the image's command names its config file: {argv:?}"
    );
    // No destination in the image: a folder, checked without a bucket.
    let shown = check_config_as(&argv, &image.env, &[]).await;

    let output_dir = shown.value("export.output_dir");
    assert!(
        image.volumes.contains(&output_dir),
        "export.output_dir {output_dir} is a VOLUME ({:?})",
        image.volumes
    );
    let listen = shown.value("http.listen");
    let port = listen
        .strip_prefix("0.0.0.0:")
        .unwrap_or_else(|| panic!("http.listen {listen} is on every address, for port mappings"));
    assert!(image.exposed.iter().any(|p| p == port), "EXPOSE {port}");
    assert!(
        image
            .healthcheck
            .contains(&format!("127.0.0.1:{port}/healthz")),
        "the HEALTHCHECK asks {port}: {}",
        image.healthcheck
    );
}

/// `/readyz` checks MongoDB, the broker and the destination, each within
/// 2 s: a readiness probe that gives up sooner than 3 s fails a ready pod.
#[test]
fn the_readiness_probe_waits_longer_than_a_readyz_check() {
    for container in deployment_pod()["containers"].as_vec().unwrap() {
        let probe = &container["readinessProbe"];
        // Kubernetes' default is 1 s.
        let timeout = probe["timeoutSeconds"].as_i64().unwrap_or(1);
        assert!(
            timeout >= 3,
            "the readiness probe's timeoutSeconds is {timeout}: /readyz takes up to 2 s"
        );
    }
}
