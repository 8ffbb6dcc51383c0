//! The SFTP destination against OpenSSH's `sshd` (and, where a test says
//! `on_both_sftp_servers!`, ProFTPD's `mod_sftp` too): the probe, files
//! delivered once (also by two replicas on one server), the publication
//! recorded, the
//! host key pinned (unknown and changed keys refused, naming the host and
//! the fingerprint; `known_hosts` read as OpenSSH reads it: several keys,
//! an RSA-only pin, `@revoked`), a refused login, a foreign file under the name, a
//! read-only folder, a full disk and a black-holed server.

use std::time::{Duration, Instant};

use bson::doc;

use crate::delivery::{
    assert_delivered_once, export, export_by_two_replicas, export_ok, export_once_the_lease_lapses,
    pairs, stderr,
};
use crate::helpers::{assert_published, assert_refused_over, run_binary, spawn_app};
use crate::support::proxy::WireProxy;
use crate::support::sshd::TestSshd;

fn summary(output: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().next().unwrap_or("null")).unwrap()
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
}

async fn a_run_publishes_manifest_and_file_to_the_server_and_records_where(sshd: TestSshd) {
    let app = spawn_app().await;
    let ids = app.seed("MER", 40).await;
    let output = export(&app, &sshd.env(), "MER").await;
    assert!(
        output.status.success(),
        "{}\n{}",
        stderr(&output),
        sshd.log()
    );
    assert_delivered_once(&app, &sshd, &ids).await;
    let file = summary(&output)["file"].as_str().unwrap().to_owned();
    assert_eq!(
        summary(&output)["publishedTo"],
        format!("{}/{file}", sshd.destination())
    );
    let run = app.run_doc(doc! {}).await.unwrap();
    let key = format!("{}/{file}", sshd.inbox.display());
    let publication = assert_published(&app, &run, &sshd.destination(), &key);
    assert_eq!(publication.get_str("sha256").unwrap(), sshd.sha256(&file));
}

on_both_sftp_servers!(a_run_publishes_manifest_and_file_to_the_server_and_records_where);

/// The probe's second create of a name is refused by both servers (OpenSSH
/// with its generic failure, ProFTPD with status 11, "file already
/// exists"): the probe passes and leaves nothing behind.
async fn check_config_proves_the_server_refuses_a_second_create(sshd: TestSshd) {
    let app = spawn_app().await;
    let output = run_binary(&app, &["check-config"], &pairs(&sshd.env())).await;
    let said = stderr(&output);
    assert!(output.status.success(), "{said}\n{}", sshd.log());
    assert!(
        said.contains("refuses a second create of a name (probe passed)"),
        "{said}"
    );
    assert!(sshd.temporaries().is_empty(), "{:?}", sshd.temporaries());
    assert!(sshd.files().is_empty(), "{:?}", sshd.files());
}

on_both_sftp_servers!(check_config_proves_the_server_refuses_a_second_create);

#[tokio::test]
async fn check_config_proves_the_server_and_never_prints_the_passphrase() {
    let (app, sshd) = (spawn_app().await, TestSshd::start().await);
    // The same key, now protected by a passphrase given in a 0400 file.
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "never-printed-passphrase", "-f"])
        .arg(&sshd.key)
        .status()
        .unwrap();
    assert!(status.success());
    let secret = sshd.dir.path().join("passphrase");
    std::fs::write(&secret, "never-printed-passphrase\n").unwrap();
    let read_only = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o400);
    std::fs::set_permissions(&secret, read_only).unwrap();
    let mut env = sshd.env();
    set(
        &mut env,
        "ESR_SFTP__PRIVATE_KEY_PASSPHRASE_FILE",
        &secret.display().to_string(),
    );
    let output = run_binary(&app, &["check-config"], &pairs(&env)).await;
    let everything = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(output.status.success(), "{everything}\n{}", sshd.log());
    assert!(
        everything.contains("probe passed") && everything.contains(&sshd.destination()),
        "{everything}"
    );
    assert!(
        !everything.contains("never-printed-passphrase"),
        "{everything}"
    );
    assert!(
        sshd.temporaries().is_empty(),
        "the probe removes its file: {:?}",
        sshd.temporaries()
    );
    let ids = app.seed("MER", 5).await;
    export_ok(&app, &env, "MER").await;
    assert_delivered_once(&app, &sshd, &ids).await;

    // A wrong passphrase, or none for the encrypted key: refused naming
    // the setting to fix (the key library says only "cryptographic error").
    env.retain(|(key, _)| key != "ESR_SFTP__PRIVATE_KEY_PASSPHRASE_FILE");
    set(&mut env, "ESR_SFTP__PRIVATE_KEY_PASSPHRASE", "wrong");
    let wrong = run_binary(&app, &["check-config"], &pairs(&env)).await;
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
    let said = stderr(&wrong);
    assert!(
        said.contains("is sftp.private_key_passphrase the passphrase of this key?"),
        "{said}"
    );
    assert!(
        !said.contains("never-printed-passphrase") && !said.contains("wrong\""),
        "{said}"
    );
    env.retain(|(key, _)| !key.starts_with("ESR_SFTP__PRIVATE_KEY_PASSPHRASE"));
    let none = run_binary(&app, &["check-config"], &pairs(&env)).await;
    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
    assert!(
        stderr(&none)
            .contains("the key is encrypted: give its passphrase in sftp.private_key_passphrase"),
        "{}",
        stderr(&none)
    );
}

#[tokio::test]
async fn an_unknown_or_changed_host_key_is_refused_naming_host_and_fingerprint() {
    let (app, sshd) = (spawn_app().await, TestSshd::start().await);
    app.seed("MER", 5).await;
    let fingerprint = |pub_key: &std::path::Path| {
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(pub_key)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let offered = fingerprint(&sshd.dir.path().join("host_key.pub"));
    let other_key = another_key();
    let host = format!("[127.0.0.1]:{}", sshd.port);
    let cases = [
        ("unknown", format!("[127.0.0.1]:1 {other_key}")),
        ("CHANGED", format!("{host} {other_key}")),
    ];
    for (what, listed) in cases {
        std::fs::write(&sshd.known_hosts, listed).unwrap();
        let output = export(&app, &sshd.env(), "MER").await;
        let log = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{what}: {log}");
        assert!(log.contains("\"level\":\"ERROR\""), "{log}");
        assert!(
            log.contains(&host) && log.contains(&offered),
            "{what}: names host and fingerprint: {log}"
        );
        assert!(log.contains(what) || what == "unknown", "{log}");
    }
    assert!(
        sshd.files().is_empty() && sshd.temporaries().is_empty(),
        "nothing sent"
    );
    assert_eq!(
        app.count(doc! {"status": "TO_EXPORT"}).await,
        5,
        "nothing claimed"
    );
}

/// A new ed25519 public key, as its `.pub` file holds it: a key no server
/// has.
fn another_key() -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success(), "ssh-keygen");
    std::fs::read_to_string(key.with_extension("pub")).unwrap()
}

/// The server's key of `kind` as a `known_hosts` line for its port.
fn pinned(sshd: &TestSshd, key_line: &str) -> String {
    let key: Vec<&str> = key_line.split_whitespace().take(2).collect();
    format!("[127.0.0.1]:{} {}\n", sshd.port, key.join(" "))
}

#[tokio::test]
async fn the_known_hosts_file_is_read_as_openssh_reads_it() {
    let (app, mut sshd) = (spawn_app().await, TestSshd::start().await);
    let ed25519 = std::fs::read_to_string(sshd.dir.path().join("host_key.pub")).unwrap();
    let rsa = sshd.add_host_key("rsa").await;
    let other_key = another_key();
    let cases = [
        // Several keys of one type for the host: any of them is the host.
        (
            "two ed25519 keys",
            pinned(&sshd, &other_key) + &pinned(&sshd, &ed25519),
        ),
        // Only the RSA key pinned: the client offers only RSA, as
        // OpenSSH's `sftp` does, though the server prefers ed25519.
        ("the RSA key alone", pinned(&sshd, &rsa)),
    ];
    let mut ids = Vec::new();
    for (what, listed) in cases {
        std::fs::write(&sshd.known_hosts, listed).unwrap();
        ids.extend(app.seed("MER", 3).await);
        let output = export(&app, &sshd.env(), "MER").await;
        assert_eq!(output.status.code(), Some(0), "{what}: {}", stderr(&output));
        assert_delivered_once(&app, &sshd, &ids).await;
    }
    // Revoked: refused though it is also pinned.
    let revoked = pinned(&sshd, &rsa) + &format!("@revoked * {rsa}");
    std::fs::write(&sshd.known_hosts, revoked).unwrap();
    app.seed("MER", 3).await;
    let output = export(&app, &sshd.env(), "MER").await;
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{log}");
    assert!(log.contains("REVOKED") && log.contains("line 2"), "{log}");
    assert_eq!(
        app.count(doc! {"status": "TO_EXPORT"}).await,
        3,
        "nothing claimed"
    );
}

#[tokio::test]
async fn a_refused_login_is_permanent_and_a_read_only_folder_is_named_as_such() {
    let (app, mut sshd) = (spawn_app().await, TestSshd::start().await);
    app.seed("MER", 5).await;
    std::fs::write(sshd.dir.path().join("authorized_keys"), "").unwrap();
    let output = export(&app, &sshd.env(), "MER").await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("refused key authentication as root")
            && stderr(&output).contains(&sshd.destination()),
        "{}",
        stderr(&output)
    );
    assert!(
        !stderr(&output).contains("could not remove the probe"),
        "no probe file was created: {}",
        stderr(&output)
    );

    std::fs::copy(
        sshd.dir.path().join("id_ed25519.pub"),
        sshd.dir.path().join("authorized_keys"),
    )
    .unwrap();
    sshd.read_only();
    let mut env = sshd.env();
    set(&mut env, "ESR_SFTP__MAX_ELAPSED_MS", "500");
    let output = export(&app, &env, "MER").await;
    assert!(!output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(
        log.contains(&sshd.destination()) && log.contains("read-only file system"),
        "{log}"
    );
    assert_eq!(
        app.count(doc! {"status": "TO_EXPORT"}).await,
        5,
        "nothing claimed"
    );
}

async fn a_file_someone_else_put_under_the_name_is_refused_and_nothing_is_marked(sshd: TestSshd) {
    let app = spawn_app().await;
    let ids = app.seed("MER", 10).await;
    let today = chrono::Utc::now().format("%Y%m%d");
    let name = format!("DE_MER_APP_{today}_00001.DAT");
    std::fs::write(sshd.inbox.join(&name), b"someone else's file\r\n").unwrap();
    let mut env = sshd.env();
    set(&mut env, "ESR_EXPORT__LEASE_SECONDS", "2");
    let output = export(&app, &env, "MER").await;
    assert_refused_over(&app, &output, &name).await;
    assert_eq!(
        std::fs::read(sshd.inbox.join(&name)).unwrap(),
        b"someone else's file\r\n"
    );
    assert!(sshd.temporaries().is_empty(), "{:?}", sshd.temporaries());
    // Moved away: the next attempt publishes the run's own file.
    std::fs::remove_file(sshd.inbox.join(&name)).unwrap();
    let _ = std::fs::remove_file(sshd.inbox.join(format!("{name}.json")));
    export_once_the_lease_lapses(&app, &env, &sshd, &ids).await;
}

on_both_sftp_servers!(a_file_someone_else_put_under_the_name_is_refused_and_nothing_is_marked);

#[tokio::test]
async fn a_full_disk_fails_the_attempt_transiently_and_the_next_one_delivers() {
    let (app, sshd) = (
        spawn_app().await,
        TestSshd::start_on_tmpfs(256 * 1024).await,
    );
    let ids = app.seed("MER", 3_000).await;
    let mut env = sshd.env();
    set(&mut env, "ESR_SFTP__MAX_ELAPSED_MS", "1000");
    set(&mut env, "ESR_EXPORT__LEASE_SECONDS", "2");
    let output = export(&app, &env, "MER").await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let error = summary(&output)["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains(&sshd.destination()) && error.contains("disk is full"),
        "{error}\n{}",
        stderr(&output)
    );
    assert_eq!(
        app.count(doc! {"status": "EXPORTED"}).await,
        0,
        "nothing marked"
    );
    assert!(!sshd.files().iter().any(|n| n.ends_with(".DAT")));
    // The disk grows: the next attempt removes the partial upload and delivers.
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&sshd.inbox)
        .status()
        .unwrap();
    assert!(status.success());
    export_once_the_lease_lapses(&app, &env, &sshd, &ids).await;
}

#[tokio::test]
async fn a_black_holed_server_fails_the_attempt_within_the_bound_naming_the_destination() {
    let (app, sshd) = (spawn_app().await, TestSshd::start().await);
    app.seed("MER", 20_000).await;
    let proxy = WireProxy::start_opaque(&format!("127.0.0.1:{}", sshd.port)).await;
    let mut env = sshd.env();
    let through = sshd.destination().replace(
        &format!(":{}/", sshd.port),
        &format!(":{}/", proxy.addr.port()),
    );
    set(&mut env, "ESR_EXPORT__DESTINATION", &through);
    let listed = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    std::fs::write(
        &sshd.known_hosts,
        listed.replace(
            &format!(":{} ", sshd.port),
            &format!(":{} ", proxy.addr.port()),
        ),
    )
    .unwrap();
    set(&mut env, "ESR_SFTP__REQUEST_TIMEOUT_MS", "1500");
    let mut child = crate::helpers::binary(&app, &["export", "--deanery", "MER"], &pairs(&env))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sshd.temporaries().iter().any(|t| t.starts_with(".DE_MER")) {
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.black_hole();
    let started = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(60), async {
        let status = child.wait().await.unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut out)
            .await
            .unwrap();
        (status, out)
    })
    .await
    .expect("the export ends");
    let took = started.elapsed();
    assert_eq!(output.0.code(), Some(1), "{}", output.1);
    assert!(took < Duration::from_secs(15), "bounded: {took:?}");
    let summary: serde_json::Value =
        serde_json::from_str(output.1.lines().next().unwrap()).unwrap();
    let error = summary["error"].as_str().unwrap();
    assert!(
        error.contains(&through) && error.contains("no answer within 1500 ms"),
        "{error}"
    );
    assert_eq!(app.count(doc! {"status": "EXPORTED"}).await, 0);
}

async fn two_replicas_with_their_own_staging_folders_deliver_each_file_once(sshd: TestSshd) {
    let app = spawn_app().await;
    let other_dir = tempfile::tempdir().unwrap();
    let mut env = sshd.env();
    set(&mut env, "ESR_EXPORT__LEASE_SECONDS", "2");
    let mut env_b = env.clone();
    set(
        &mut env_b,
        "ESR_EXPORT__OUTPUT_DIR",
        &other_dir.path().display().to_string(),
    );
    let ids = export_by_two_replicas(&app, &env, &env_b, 3).await;
    assert_delivered_once(&app, &sshd, &ids).await;
}

on_both_sftp_servers!(two_replicas_with_their_own_staging_folders_deliver_each_file_once);

/// Probe files a killed process left in the server's temporary folder: the
/// next probe on this host removes those of processes that no longer run,
/// and keeps another host's that are young enough to be under way.
async fn the_probe_files_of_killed_processes_are_removed_by_the_next_probe(sshd: TestSshd) {
    let app = spawn_app().await;
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let temp = sshd.inbox.join(crate::support::sshd::TEMP_DIR);
    std::fs::create_dir_all(&temp).unwrap();
    let gone = format!("esr-exporter-probe-{host}-{}-0123abcd", u32::MAX - 1);
    let uploading = format!(".{gone}.4567.tmp");
    let elsewhere = "esr-exporter-probe-other-host-7-0123abcd".to_owned();
    for name in [&gone, &uploading, &elsewhere] {
        std::fs::write(temp.join(name), b"left").unwrap();
    }

    let output = export(&app, &sshd.env(), "MER").await;

    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(sshd.temporaries(), [elsewhere], "{}", stderr(&output));
}

on_both_sftp_servers!(the_probe_files_of_killed_processes_are_removed_by_the_next_probe);

/// A folder for temporaries that cannot be made (a file holds its name) is
/// said as such, naming it, not as a full disk or a quota.
#[tokio::test]
async fn a_folder_for_temporaries_that_cannot_be_made_is_named() {
    let (app, sshd) = (spawn_app().await, TestSshd::start().await);
    std::fs::write(sshd.inbox.join(crate::support::sshd::TEMP_DIR), b"a file").unwrap();
    let output = run_binary(&app, &["check-config"], &pairs(&sshd.env())).await;
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    let folder = format!(
        "cannot create the folder {}/{}",
        sshd.inbox.display(),
        crate::support::sshd::TEMP_DIR
    );
    assert!(said.contains(&folder), "{said}");
    assert!(!said.contains("full disk"), "{said}");
}

/// A server whose SFTP subsystem does not start a session (here one that
/// exits at once, as a server restarting meanwhile would drop it) is a
/// transient failure, tried again and said as such: `export` exits 1, not
/// 2, which a systemd unit would never restart.
#[tokio::test]
async fn an_sftp_session_that_does_not_start_is_transient() {
    let app = spawn_app().await;
    let sshd = TestSshd::start_with_subsystem("/bin/false".to_owned(), false).await;
    app.seed("MER", 3).await;
    let mut env = sshd.env();
    set(&mut env, "ESR_SFTP__MAX_ELAPSED_MS", "500");
    let output = export(&app, &env, "MER").await;
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("the SFTP session did not start"), "{said}");
    assert_eq!(app.count(doc! {"status": "TO_EXPORT"}).await, 3);
}
