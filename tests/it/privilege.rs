//! Secrets from files and least privilege, against the real services: the
//! URIs read from 0400 files (the passwords never in any output); every
//! command with a RabbitMQ user limited to its own queues (the README's
//! regexes); a user denied configure stopped with exit 1 naming the
//! permission; the daemon against SecantusDB with `--auth` and a user
//! holding only `readWrite` on its database.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bson::doc;

use crate::helpers::{eventually, output_text as text, spawn_app, TestApp};

/// A RabbitMQ user that exists for one test.
struct RabbitUser {
    name: String,
    password: String,
}

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

/// The README's permissions for `queue`: configure, write, read.
fn permissions(queue: &str) -> [String; 3] {
    let own = format!("^{}(\\..*)?$", queue.replace('.', "\\."));
    let write = format!("^({}(\\..*)?|amq\\.default)$", queue.replace('.', "\\."));
    [own.clone(), write, own]
}

impl RabbitUser {
    fn create(configure: &str, write: &str, read: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let user = Self {
            name: format!("esr_{}", &id[..10]),
            password: format!("pw-{}", &id[10..26]),
        };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &user.name,
            configure,
            write,
            read,
        ]);
        user
    }

    fn uri(&self) -> String {
        format!("amqp://{}:{}@127.0.0.1:5672/%2f", self.name, self.password)
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// A 0400 file holding `value`.
fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    path
}

/// The app's environment with both URIs given as files instead.
fn with_uri_files(app: &TestApp, mongodb: &Path, amqp: &Path) -> HashMap<String, String> {
    let mut env = app.env.clone();
    env.remove("ESR_MONGODB__URI");
    env.remove("ESR_AMQP__URI");
    env.insert(
        "ESR_MONGODB__URI_FILE".into(),
        mongodb.display().to_string(),
    );
    env.insert("ESR_AMQP__URI_FILE".into(), amqp.display().to_string());
    env
}

fn command(env: &HashMap<String, String>, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_esr-exporter"));
    command
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn esr(env: &HashMap<String, String>, args: &[&str]) -> Output {
    command(env, args).output().await.unwrap()
}

#[tokio::test]
async fn a_user_limited_to_its_own_queues_runs_every_command_with_uris_from_files() {
    let app = spawn_app().await;
    let [configure, write, read] = permissions(&app.settings.amqp.queue);
    let user = RabbitUser::create(&configure, &write, &read);
    let dir = tempfile::tempdir().unwrap();
    let mongodb_uri = app.env["ESR_MONGODB__URI"].clone();
    let env = with_uri_files(
        &app,
        &secret_file(dir.path(), "mongodb-uri", &mongodb_uri),
        &secret_file(dir.path(), "amqp-uri", &user.uri()),
    );
    let mut outputs = Vec::new();
    let checked = esr(&env, &["check-config"]).await;
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(
        text(&checked).contains("amqp.uri = secret file"),
        "{}",
        text(&checked)
    );
    outputs.push(checked);

    app.seed("MER", 5).await;
    app.seed("EOE", 3).await;
    let mut daemon = command(&env, &["run"]).spawn().unwrap();
    let triggered = esr(&env, &["trigger", "--deanery", "MER"]).await;
    assert!(triggered.status.success(), "{}", text(&triggered));
    eventually(
        "MER exported by the daemon",
        Duration::from_secs(30),
        || async {
            app.count(doc! {"deanery": "MER", "status": "EXPORTED"})
                .await
                == 5
        },
    )
    .await;
    app.publish_raw(b"not a command").await;
    let dlq = app.settings.amqp.dead_letter_queue();
    eventually("dead-lettered", Duration::from_secs(30), || async {
        app.queue_len(&dlq).await == 1
    })
    .await;
    daemon.kill().await.unwrap();
    let daemon_log = daemon.wait_with_output().await.unwrap();
    outputs.extend([triggered, daemon_log]);

    for args in [
        &["export", "--deanery", "EOE"][..],
        &["status"][..],
        &["dead-letters"][..],
        &["dead-letters", "--replay"][..],
    ] {
        let output = esr(&env, args).await;
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        outputs.push(output);
    }
    assert_eq!(app.count(doc! {"status": "EXPORTED"}).await, 8);
    assert_eq!(app.queue_len(&app.settings.amqp.queue).await, 1, "replayed");
    for output in &outputs {
        assert!(
            !text(output).contains(&user.password),
            "password printed: {}",
            text(output)
        );
    }
    app.delete_broker_topology().await;
}

#[tokio::test]
async fn a_user_denied_configure_stops_the_daemon_with_exit_1_naming_the_permission() {
    let app = spawn_app().await;
    let [_, write, read] = permissions(&app.settings.amqp.queue);
    let user = RabbitUser::create("^$", &write, &read);
    let mut env = app.env.clone();
    env.insert("ESR_AMQP__URI".into(), user.uri());
    let output = tokio::time::timeout(Duration::from_secs(30), esr(&env, &["run"]))
        .await
        .expect("the daemon stops on its own");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let log = text(&output);
    assert!(
        log.contains("ACCESS_REFUSED") && log.contains("docs/src/configuration.md, Permissions"),
        "{log}"
    );
    let refusals = log.matches("RabbitMQ refused this user").count();
    assert_eq!(refusals, 1, "stopped at the first refusal, no loop: {log}");
    assert!(!log.contains(&user.password));
    for args in [&["trigger", "--deanery", "MER"][..], &["dead-letters"][..]] {
        let output = esr(&env, args).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let shown = text(&output);
        assert!(
            shown.contains("ACCESS_REFUSED") || shown.contains("ACCESS-REFUSED"),
            "{shown}"
        );
        assert_eq!(
            shown.matches("ACCESS_REFUSED - ").count(),
            1,
            "said once: {shown}"
        );
        assert!(!shown.contains(&user.password));
    }
}

#[tokio::test]
async fn a_uri_given_twice_or_in_a_file_others_can_write_is_refused_with_exit_2() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = "mongodb://esr:never-shown-7a1@127.0.0.1:27017/?replicaSet=secantus";
    let file = secret_file(dir.path(), "mongodb-uri", secret);
    let mut both = app.env.clone();
    both.insert("ESR_MONGODB__URI_FILE".into(), file.display().to_string());
    let output = esr(&both, &["check-config"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("both `mongodb.uri`"),
        "{}",
        text(&output)
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
    let mut env = app.env.clone();
    env.remove("ESR_MONGODB__URI");
    env.insert("ESR_MONGODB__URI_FILE".into(), file.display().to_string());
    for args in [
        &["check-config"][..],
        &["run"][..],
        &["export", "--all"][..],
    ] {
        let output = esr(&env, args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let shown = text(&output);
        assert!(
            shown.contains(&file.display().to_string()) && shown.contains("0620"),
            "{shown}"
        );
        assert!(!shown.contains("never-shown-7a1"), "{shown}");
    }
}

/// A SecantusDB of its own with `--auth`, on a free port.
struct AuthServer {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn auth_server() -> AuthServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let binary = std::env::var("HOME").map_or_else(
        |_| PathBuf::from("secantusd-rs"),
        |home| PathBuf::from(home).join(".cargo/bin/secantusd-rs"),
    );
    let child = std::process::Command::new(binary)
        .args(["--port", &port.to_string(), "--auth", "--storage-path"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("secantusd-rs (scripts/services installs it)");
    eventually(
        "SecantusDB with --auth",
        Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
    AuthServer {
        port,
        child,
        _dir: dir,
    }
}

#[tokio::test]
async fn the_exporter_works_with_a_user_holding_only_readwrite_on_its_database() {
    let server = auth_server().await;
    let base = format!(
        "127.0.0.1:{}/?replicaSet=secantus&authSource=admin",
        server.port
    );
    // The localhost exception lets the first user be created.
    let open = mongodb::Client::with_uri_str(format!("mongodb://{base}"))
        .await
        .unwrap();
    let admin = open.database("admin");
    admin
        .run_command(doc! {"createUser": "root", "pwd": "root-pw", "roles": ["root"]})
        .await
        .unwrap();
    let root = mongodb::Client::with_uri_str(format!("mongodb://root:root-pw@{base}"))
        .await
        .unwrap();
    root.database("admin")
        .run_command(doc! {"createUser": "esr", "pwd": "esr-pw-51c", "roles": [{"role": "readWrite", "db": "esr_auth"}]})
        .await
        .unwrap();
    let records = root
        .database("esr_auth")
        .collection::<bson::Document>("generatedAppRecords");
    let docs: Vec<bson::Document> = (0..20)
        .map(|i| crate::helpers::valid_record("MER", i))
        .collect();
    records.insert_many(docs).await.unwrap();

    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = app.env.clone();
    env.remove("ESR_MONGODB__URI");
    env.insert("ESR_MONGODB__DATABASE".into(), "esr_auth".into());
    let uri = format!("mongodb://esr:esr-pw-51c@{base}");
    env.insert(
        "ESR_MONGODB__URI_FILE".into(),
        secret_file(dir.path(), "uri", &uri).display().to_string(),
    );
    let exported = esr(&env, &["export", "--deanery", "MER"]).await;
    assert!(exported.status.success(), "{}", text(&exported));
    let done = records
        .count_documents(doc! {"status": "EXPORTED"})
        .await
        .unwrap();
    assert_eq!(done, 20);
    let status = esr(&env, &["status"]).await;
    assert!(status.status.success(), "{}", text(&status));

    // The same user on another database is refused; a wrong password too.
    let mut elsewhere = env.clone();
    elsewhere.insert("ESR_MONGODB__DATABASE".into(), "esr_other".into());
    let refused = esr(&elsewhere, &["export", "--deanery", "MER"]).await;
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("not authorized") || text(&refused).contains("Unauthorized"),
        "{}",
        text(&refused)
    );
    let wrong = format!("mongodb://esr:wrong-pw-9d2@{base}");
    env.insert(
        "ESR_MONGODB__URI_FILE".into(),
        secret_file(dir.path(), "wrong", &wrong)
            .display()
            .to_string(),
    );
    let failed = esr(&env, &["status"]).await;
    assert!(!failed.status.success());
    for output in [&exported, &status, &refused, &failed] {
        let shown = text(output);
        assert!(
            !shown.contains("esr-pw-51c") && !shown.contains("wrong-pw-9d2"),
            "{shown}"
        );
    }
}

/// An empty secret file (a Secret key left blank, a credential not yet
/// written) is refused at start naming the key and the file, never taken
/// as an empty URI.
#[tokio::test]
async fn an_empty_secret_file_is_refused_naming_the_key() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let empty = secret_file(dir.path(), "amqp-uri", "");
    let mut env = app.env.clone();
    env.remove("ESR_AMQP__URI");
    env.insert("ESR_AMQP__URI_FILE".into(), empty.display().to_string());
    for args in [&["check-config"][..], &["run"][..], &["trigger"][..]] {
        let output = esr(&env, args).await;
        let shown = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {shown}");
        let expected = format!("key `amqp.uri_file`: {} is empty", empty.display());
        assert!(shown.contains(&expected), "{args:?}: {shown}");
    }
}

/// Kubernetes puts `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT` and the like
/// into every pod of a namespace with a Service named `esr-exporter`
/// (unless `enableServiceLinks: false`): through the binary, they are not
/// taken for settings (`ESR_EXPORTER_PORT` is no `ESR_<SECTION>__<KEY>`).
#[tokio::test]
async fn kubernetes_service_link_variables_are_not_settings() {
    let app = spawn_app().await;
    let mut env = app.env.clone();
    for (key, value) in [
        ("ESR_EXPORTER_SERVICE_HOST", "10.0.0.7"),
        ("ESR_EXPORTER_SERVICE_PORT", "8080"),
        ("ESR_EXPORTER_PORT", "tcp://10.0.0.7:8080"),
        ("ESR_EXPORTER_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
        ("ESR_EXPORTER_PORT_8080_TCP_ADDR", "10.0.0.7"),
        ("ESR_EXPORTER_PORT_8080_TCP_PROTO", "tcp"),
    ] {
        env.insert(key.into(), value.into());
    }
    let output = esr(&env, &["check-config"]).await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(0), "{shown}");
    assert!(
        !shown.contains("10.0.0.7"),
        "no setting took a link's value: {shown}"
    );
    assert!(
        shown.contains("http.listen = "),
        "the settings were shown: {shown}"
    );
}
