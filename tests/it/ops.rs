//! Operations: readiness, metrics, the watchdog, secrets in logs, and the
//! deployment files.

use std::time::Duration;

use bson::doc;
use esr_exporter::domain::Slot;
use tokio::io::AsyncReadExt;

use crate::commands::stuck_past_a_missed_slot;
use crate::helpers::{
    binary, binary_with, eventually, free_port, http_get, metric, output_text, primary_host_port,
    run_binary, spawn_app_with, unique_deanery, Watched,
};
use crate::support::proxy::WireProxy;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_mongodb_and_rabbitmq_going_away_and_coming_back() {
    // Arrange: this daemon reaches both services through proxies we control.
    let app = spawn_app_with(&[]).await;
    let mongo = WireProxy::start_opaque(&primary_host_port().await).await;
    let rabbit = WireProxy::start_opaque("127.0.0.1:5672").await;
    let mut settings = app.settings.clone();
    settings.mongodb.uri = esr_exporter::config::SecretUri::new(format!(
        "mongodb://{}/?directConnection=true&serverSelectionTimeoutMS=1000",
        mongo.addr
    ));
    settings.amqp.uri =
        esr_exporter::config::SecretUri::new(format!("amqp://guest:guest@{}/%2f", rabbit.addr));
    let daemon = app.spawn_daemon_with(settings).await;
    let ready = |expected: u16, needle: &'static str| {
        let addr = daemon.http;
        async move {
            let (status, body) = http_get(addr, "/readyz").await;
            status == expected && body.contains(needle)
        }
    };

    eventually("ready", WAIT, || ready(200, "\"ready\"")).await;
    assert_eq!(http_get(daemon.http, "/healthz").await.0, 200);

    // RabbitMQ away, then back.
    rabbit.set_enabled(false);
    eventually("503 naming RabbitMQ", WAIT, || {
        ready(503, "consumer not attached")
    })
    .await;
    assert_eq!(
        http_get(daemon.http, "/healthz").await.0,
        200,
        "still alive"
    );
    rabbit.set_enabled(true);
    eventually("ready again after RabbitMQ", WAIT, || {
        ready(200, "\"ready\"")
    })
    .await;

    // MongoDB away, then back.
    mongo.set_enabled(false);
    eventually("503 naming MongoDB", WAIT, || async {
        let (status, body) = http_get(daemon.http, "/readyz").await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        status == 503 && json["checks"]["mongodb"] != "ok" && json["checks"]["rabbitmq"] == "ok"
    })
    .await;
    mongo.set_enabled(true);
    eventually("ready again after MongoDB", WAIT, || {
        ready(200, "\"ready\"")
    })
    .await;

    app.stop_and_clean_up(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_runs_happen_including_write_conflicts() {
    let app = spawn_app_with(&[]).await;
    let code = unique_deanery();
    app.seed(&code, 30).await;
    let daemon = app.spawn_daemon().await;
    let exported = format!("esr_records_exported_total{{deanery=\"{code}\"}}");
    let conflicts = format!("esr_write_conflicts_total{{deanery=\"{code}\"}}");
    let runs = format!("esr_export_runs_total{{deanery=\"{code}\",outcome=\"completed\"}}");
    let (_, before) = http_get(daemon.http, "/metrics").await;
    assert_eq!(metric(&before, &exported), None, "nothing yet for {code}");

    // A WriteConflict on the claim transaction's first update.
    let guard = app.arm_write_conflicts("update", 1).await;
    app.publish_command(&code, Slot::Manual).await;
    eventually("exported", WAIT, || async {
        app.count(doc! {"deanery": &code, "status": "EXPORTED"})
            .await
            == 30
    })
    .await;
    app.disarm().await;
    drop(guard);

    eventually("metrics recorded", WAIT, || {
        let (addr, runs) = (daemon.http, runs.clone());
        async move { metric(&http_get(addr, "/metrics").await.1, &runs).is_some() }
    })
    .await;
    let text = http_get(daemon.http, "/metrics").await.1;
    assert_eq!(metric(&text, &runs), Some(1.0), "{text}");
    assert_eq!(metric(&text, &exported), Some(30.0));
    assert!(metric(&text, &conflicts).unwrap() >= 1.0, "{text}");
    assert!(metric(&text, "esr_commands_total{outcome=\"exported\"}").unwrap() >= 1.0);
    assert!(
        metric(
            &text,
            &format!("esr_last_successful_run_timestamp_seconds{{deanery=\"{code}\"}}")
        )
        .unwrap()
            > 1.7e9
    );
    app.stop_and_clean_up(daemon).await;
}

/// Runs `esr-exporter run` as a process until `until` holds (or a fixed
/// time), then SIGTERMs it; returns exit code, stdout+stderr.
async fn run_process(
    env: &std::collections::HashMap<String, String>,
    extra: &[(&str, String)],
    until: impl std::future::Future<Output = ()>,
) -> (Option<i32>, String) {
    let mut child = binary_with(env, &["run"], &[("RUST_LOG", "debug")])
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    let reading = async {
        let _ = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
    };
    let pid = child.id().unwrap().to_string();
    let driving = async {
        until.await;
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
    };
    let (_, _, status) = tokio::join!(reading, driving, async {
        tokio::time::timeout(Duration::from_secs(90), child.wait()).await
    });
    let status = status.expect("exits after SIGTERM").unwrap();
    (status.code(), format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_reports_stuck_records_and_its_catch_up_command_exports_them() {
    let (cron, app, code, ids) = stuck_past_a_missed_slot(25).await;
    let port = free_port();

    // Act
    let (status, logs) = run_process(
        &app.env,
        &[
            ("ESR_SCHEDULE__CRON", cron),
            ("ESR_WATCHDOG__ENABLED", "true".into()),
            ("ESR_WATCHDOG__PERIOD_SECONDS", "1".into()),
            ("ESR_WATCHDOG__GRACE_MINUTES", "0".into()),
            ("ESR_HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ],
        async {
            eventually("exported by the catch-up", WAIT, || async {
                app.count(doc! {"deanery": &code, "status": "EXPORTED"})
                    .await
                    == 25
            })
            .await;
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            eventually("stuck gauge back to zero", WAIT, || async {
                let (_, text) = http_get(addr, "/metrics").await;
                metric(&text, &format!("esr_stuck_records{{deanery=\"{code}\"}}")) == Some(0.0)
            })
            .await;
        },
    )
    .await;

    // Assert
    assert_eq!(status, Some(0));
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let stuck = lines
        .iter()
        .find(|l| l["level"] == "ERROR" && l["deanery"] == code.as_str())
        .unwrap_or_else(|| panic!("an ERROR line names the deanery: {logs}"));
    assert!(stuck["message"]
        .as_str()
        .unwrap()
        .starts_with("stuck records"));
    assert_eq!(stuck["count"], 25);
    assert!(stuck["oldest_age_seconds"].as_i64().unwrap() >= 3_600);
    assert!(lines.iter().any(
        |l| l["message"] == "catch-up command published for stuck records"
            && l["deanery"] == code.as_str()
    ));
    app.assert_exported_once(&code, &ids).await;
    app.delete_broker_topology().await;
}

/// The gauges the alerts are built on survive a restart: at start the
/// daemon reads from the run documents when each deanery last completed a
/// run and last failed an attempt, registers its counters at 0, and its
/// watchdog counts the dead letters and the records waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_gauges_are_set_at_start_from_the_runs_and_the_dead_letter_queue() {
    let app = spawn_app_with(&[]).await;
    let code = unique_deanery();
    let now = chrono::Utc::now().timestamp();
    let (completed, failed) = (now - 2 * 86_400, now - 86_400);
    let at = |secs: i64| bson::DateTime::from_millis(secs * 1000);
    let runs = app.runs();
    runs.insert_many([
        doc! {"_id": "old", "deanery": &code, "phase": "COMPLETED",
        "startedAt": at(completed - 60), "finishedAt": at(completed)},
        doc! {"_id": "open", "deanery": &code, "phase": "CLAIMING",
        "startedAt": at(failed - 60), "lastErrorAt": at(failed), "lastError": "boom"},
    ])
    .await
    .unwrap();
    app.publish_raw(b"not JSON").await;
    app.seed(&code, 3).await;
    let configured = code.clone();
    let port = free_port();

    let (status, logs) = run_process(
        &app.env,
        &[
            ("ESR_WATCHDOG__ENABLED", "true".into()),
            ("ESR_WATCHDOG__PERIOD_SECONDS", "1".into()),
            ("ESR_WATCHDOG__DUE_WITHIN_DAYS", "365".into()),
            ("ESR_SCHEDULE__DEANERIES", code.clone()),
            ("ESR_HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ],
        async {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            eventually("listening", WAIT, || async {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await;
            eventually("the gauges", WAIT, || async {
                let (_, text) = http_get(addr, "/metrics").await;
                let of = |name: &str| metric(&text, &format!("{name}{{deanery=\"{code}\"}}"));
                let zeroed =
                    format!("esr_export_runs_total{{deanery=\"{configured}\",outcome=\"failed\"}}");
                of("esr_last_successful_run_timestamp_seconds") == Some(completed as f64)
                    && of("esr_last_failed_run_timestamp_seconds") == Some(failed as f64)
                    && of("esr_records_waiting") == Some(3.0)
                    // The seeded placements start on 2026-12-12: within 365 days.
                    && of("esr_records_due_soon") == Some(3.0)
                    && metric(&text, "esr_dead_letter_queue_messages") == Some(1.0)
                    && metric(&text, &zeroed) == Some(0.0)
                    && metric(&text, "process_open_fds").is_some_and(|fds| fds > 0.0)
            })
            .await;
        },
    )
    .await;
    assert_eq!(status, Some(0), "{logs}");
    app.delete_broker_topology().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_from_the_configured_uris_appears_in_any_log_line() {
    let app = spawn_app_with(&[]).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // An unreachable MongoDB: the daemon logs its start-up wait over and
    // over; refused RabbitMQ credentials: `trigger` fails on them.
    let mongodb = "mongodb://esr:Mongo-Pa55-Secret@127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=200";
    let amqp = "amqp://guest:Amqp-Pa55-Secret@127.0.0.1:5672/%2f";
    let env = [
        ("ESR_MONGODB__URI", mongodb),
        ("ESR_AMQP__URI", amqp),
        ("ESR_HTTP__LISTEN", listen.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let daemon = Watched::spawn(binary(&app, &["run"], &env));
    let waited = "reaching MongoDB at start failed";
    eventually("the wait said over and over", WAIT, || async {
        daemon.said().matches(waited).count() >= 3
    })
    .await;
    let (status, mut logs) = daemon.terminate().await;
    assert_eq!(status.code(), Some(0), "{logs}");
    let trigger = run_binary(&app, &["trigger", "--deanery", "MER"], &env).await;
    assert_eq!(trigger.status.code(), Some(1), "refused credentials");
    logs.push_str(&output_text(&trigger));

    assert!(logs.contains("mongodb://esr:***@127.0.0.1:1/"), "{logs}");
    assert!(logs.contains("amqp://guest:***@127.0.0.1:5672"), "{logs}");
    for line in logs.lines() {
        assert!(
            !line.contains("Pa55-Secret"),
            "a password leaked into the logs: {line}"
        );
    }
}

fn yaml(path: &str) -> Vec<yaml_rust2::Yaml> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|err| panic!("{path}: {err}"));
    yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|err| panic!("{path}: {err}"))
}

#[test]
fn docker_compose_parses_and_starts_every_part_with_health_checks() {
    let docs = yaml("docker-compose.yml");
    let services = &docs[0]["services"];
    for name in ["mongo", "rabbitmq", "esr-exporter"] {
        assert!(
            !services[name]["healthcheck"]["test"].is_badvalue(),
            "{name} has a health check"
        );
    }
    assert!(services["mongo"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .any(|a| a.as_str() == Some("--replSet")));
    let depends = &services["esr-exporter"]["depends_on"];
    assert_eq!(
        depends["mongo"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(
        depends["rabbitmq"]["condition"].as_str(),
        Some("service_healthy")
    );
}

#[test]
fn the_kubernetes_manifests_parse_and_probe_the_http_endpoints() {
    let mut kinds = Vec::new();
    for file in ["deploy/kubernetes/esr-exporter.yaml"] {
        for doc in yaml(file) {
            let kind = doc["kind"].as_str().unwrap().to_owned();
            if kind == "Deployment" {
                let container = &doc["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(
                    container["livenessProbe"]["httpGet"]["path"].as_str(),
                    Some("/healthz")
                );
                assert_eq!(
                    container["readinessProbe"]["httpGet"]["path"].as_str(),
                    Some("/readyz")
                );
                assert_eq!(
                    doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
                    Some(true)
                );
            }
            kinds.push(kind);
        }
    }
    for kind in ["Deployment", "ConfigMap", "ServiceAccount"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    assert!(
        !kinds.iter().any(|k| k == "Secret"),
        "placeholder credentials are an example, never applied: {kinds:?}"
    );
}

/// The value the container's environment gives `key`.
fn env_value<'e>(env: &'e [yaml_rust2::Yaml], key: &str) -> &'e str {
    env.iter()
        .find(|e| e["name"].as_str() == Some(key))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("{key} in the Deployment"))
}

/// The pod spec of the Deployment in `deploy/kubernetes/esr-exporter.yaml`.
fn deployment_pod() -> yaml_rust2::Yaml {
    let manifests = yaml("deploy/kubernetes/esr-exporter.yaml");
    let deployment = manifests
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment");
    deployment["spec"]["template"]["spec"].clone()
}

/// The Secret the Deployment mounts is not applied with it; the example
/// beside the manifests has its name and the keys the URIs are read from.
#[test]
fn the_example_secret_has_the_name_and_keys_the_deployment_reads() {
    let pod = &deployment_pod();
    let mounted = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .expect("a Secret volume");
    let example = yaml("deploy/kubernetes/examples/secret.example.yaml");
    assert_eq!(example[0]["kind"].as_str(), Some("Secret"));
    assert_eq!(example[0]["metadata"]["name"].as_str(), Some(mounted));
    let env = pod["containers"][0]["env"].as_vec().unwrap();
    for key in ["ESR_MONGODB__URI_FILE", "ESR_AMQP__URI_FILE"] {
        let path = env_value(env, key);
        let file = path.rsplit('/').next().unwrap();
        assert!(
            !example[0]["stringData"][file].is_badvalue(),
            "{file} ({key}) in the example Secret"
        );
    }
}

/// What the manifests and the unit promise about secrets, read from the
/// files: no service links in the pod (`enableServiceLinks: false`), the
/// URIs read from files of the mounted Secret (whose mode lets no other
/// user write them), and under systemd from `LoadCredential=` files that
/// `ESR_*__URI_FILE=%d/<name>` names.
#[test]
fn secrets_reach_the_daemon_as_files_on_kubernetes_and_under_systemd() {
    let pod = &deployment_pod();
    assert_eq!(pod["enableServiceLinks"].as_bool(), Some(false));
    let container = &pod["containers"][0];
    let secret_volume = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| !v["secret"].is_badvalue())
        .expect("a Secret volume");
    let mode = secret_volume["secret"]["defaultMode"]
        .as_i64()
        .expect("a defaultMode");
    // Kubernetes reads YAML 1.1, where a leading 0 is octal (0440); this
    // parser reads YAML 1.2 and sees the digits as decimal.
    let mode = i64::from_str_radix(&mode.to_string(), 8).unwrap_or(mode);
    assert_eq!(
        mode & 0o022,
        0,
        "no other user writes the secret files: {mode:o}"
    );
    let name = secret_volume["name"].as_str().unwrap();
    let mount = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some(name))
        .and_then(|m| m["mountPath"].as_str())
        .expect("the Secret mounted");
    let env = container["env"].as_vec().unwrap();
    let unit = std::fs::read_to_string(format!(
        "{}/deploy/systemd/esr-exporter.service",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    for key in ["ESR_MONGODB__URI_FILE", "ESR_AMQP__URI_FILE"] {
        let path = env_value(env, key);
        assert!(
            path.starts_with(&format!("{mount}/")),
            "{key}={path} under {mount}"
        );
        let credential = unit
            .lines()
            .find_map(|l| l.strip_prefix(&format!("Environment={key}=%d/")))
            .unwrap_or_else(|| panic!("{key} from a credential in the unit"));
        assert!(
            unit.lines()
                .any(|l| l.starts_with(&format!("LoadCredential={credential}:"))),
            "the unit loads the credential {credential}"
        );
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(format!(
        "{}/deploy/systemd/esr-exporter.service",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    for required in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=esr-exporter esr-exporter/exports",
        "RestartPreventExitStatus=2",
    ] {
        assert!(unit.contains(required), "{required}");
    }
    // A ReadWritePaths= folder that nothing creates stops the first start
    // (226/NAMESPACE); StateDirectory= creates the export folder.
    assert!(!unit.contains("\nReadWritePaths="), "{unit}");
    // Verify a copy whose ExecStart points at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("esr-exporter.service");
    let unit = unit.replace("/usr/bin/esr-exporter", env!("CARGO_BIN_EXE_esr-exporter"));
    std::fs::write(&path, unit).unwrap();
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/check-deploy installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("esr-exporter.service:"),
        "warnings about the unit: {stderr}"
    );
}
