//! The binary killed with SIGKILL at each step of a publication to an SFTP
//! server, and the server killed mid-upload: during the manifest's upload
//! (the server's SFTP subsystem holds that request:
//! `tests/support/sftp_hold.py`), during the `.DAT`'s upload
//! (the manifest published, the temporary file half written), and after
//! the `.DAT`'s rename (its publication not yet recorded: MongoDB is held
//! by a proxy at that write). The next run, on another staging folder
//! (another host), delivers every record exactly once and leaves no
//! temporary file behind. A kill during the `.DAT`'s rename itself leaves
//! it in doubt (`in_doubt.rs`).

use std::time::{Duration, Instant};

use bson::oid::ObjectId;

use crate::delivery::assert_delivered_once;
use crate::delivery::pairs;
use crate::delivery::stderr;
use crate::helpers::{
    assert_refused_over, binary, primary_host_port, run_binary, spawn_app, TestApp,
};
use crate::support::proxy::{Fault, WireProxy};
use crate::support::sshd::TestSshd;

/// Records enough for an upload that lasts a while.
const BIG: usize = 45_000;

pub(crate) fn env_of(sshd: &TestSshd) -> Vec<(String, String)> {
    let mut env = sshd.env();
    env.push(("ESR_EXPORT__LEASE_SECONDS".to_owned(), "2".to_owned()));
    env.push(("ESR_EXPORT__CHUNK_SIZE".to_owned(), "5000".to_owned()));
    env
}

/// Waits until `ready` holds (or panics after two minutes).
async fn until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// True once the `.DAT`'s temporary file holds some bytes.
fn uploading(sshd: &TestSshd) -> bool {
    sshd.temporaries().iter().any(|name| {
        name.ends_with(".tmp")
            && name.contains(".DAT.")
            && !name.contains(".DAT.json.")
            && std::fs::metadata(sshd.inbox.join(crate::support::sshd::TEMP_DIR).join(name))
                .is_ok_and(|m| m.len() > 0)
    })
}

/// The next run, directly and from another folder, after the lease lapses.
async fn finish_elsewhere(app: &TestApp, sshd: &TestSshd, ids: &[ObjectId]) {
    app.until_leases_lapse().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let mut env = env_of(sshd);
    env.push((
        "ESR_EXPORT__OUTPUT_DIR".to_owned(),
        elsewhere.path().display().to_string(),
    ));
    let output = run_binary(app, &["export", "--deanery", "MER"], &pairs(&env)).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_delivered_once(app, sshd, ids).await;
}

async fn killed_during_the_upload_the_next_run_removes_the_temporary_and_delivers_once(
    sshd: TestSshd,
) {
    let app = spawn_app().await;
    let ids = app.seed("MER", BIG).await;
    let env = env_of(&sshd);
    let mut child = binary(&app, &["export", "--deanery", "MER"], &pairs(&env))
        .spawn()
        .unwrap();
    until("the .DAT being uploaded", || uploading(&sshd)).await;
    child.kill().await.unwrap();
    assert!(
        !sshd.files().iter().any(|n| n.ends_with(".DAT")),
        "{:?}",
        sshd.files()
    );
    assert!(
        sshd.files().iter().any(|n| n.ends_with(".DAT.json")),
        "the manifest goes first"
    );
    finish_elsewhere(&app, &sshd, &ids).await;
}

on_both_sftp_servers!(
    killed_during_the_upload_the_next_run_removes_the_temporary_and_delivers_once
);

/// Runs `export` until the `.DAT` is renamed into place and the write of
/// its publication is held (MongoDB black-holed at that write), then
/// SIGKILLs it; the `.DAT`'s name.
pub(crate) async fn killed_after_the_rename(app: &TestApp, sshd: &TestSshd) -> String {
    let proxy = WireProxy::start(&primary_host_port().await).await;
    proxy.arm(Fault::BlackHole, |r| {
        r.is("update", "exportRuns", "publication")
    });
    let mut env = env_of(sshd);
    env.push((
        "ESR_MONGODB__URI".to_owned(),
        format!("{}&appName={}", proxy.uri(), app.app_name),
    ));
    let mut child = binary(app, &["export", "--deanery", "MER"], &pairs(&env))
        .spawn()
        .unwrap();
    until("the publication's write held", || proxy.fired().is_some()).await;
    child.kill().await.unwrap();
    let dat: Vec<String> = sshd
        .files()
        .into_iter()
        .filter(|n| n.ends_with(".DAT"))
        .collect();
    assert_eq!(dat.len(), 1, "renamed before the write: {:?}", sshd.files());
    dat[0].clone()
}

async fn killed_after_the_rename_before_the_publication_is_recorded_the_file_is_kept(
    sshd: TestSshd,
) {
    let app = spawn_app().await;
    let ids = app.seed("MER", 500).await;
    let dat = killed_after_the_rename(&app, &sshd).await;
    let before = std::fs::metadata(sshd.inbox.join(&dat))
        .unwrap()
        .modified()
        .unwrap();
    finish_elsewhere(&app, &sshd, &ids).await;
    let after = std::fs::metadata(sshd.inbox.join(&dat))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        before, after,
        "the file with the recorded hash is kept, not sent again"
    );
}

on_both_sftp_servers!(killed_after_the_rename_before_the_publication_is_recorded_the_file_is_kept);

#[tokio::test]
async fn sshd_killed_mid_upload_and_restarted_the_run_reconnects_and_delivers_once() {
    let (app, mut sshd) = (spawn_app().await, TestSshd::start().await);
    let ids = app.seed("MER", BIG).await;
    let env = env_of(&sshd);
    let child = binary(&app, &["export", "--deanery", "MER"], &pairs(&env))
        .spawn()
        .unwrap();
    until("the .DAT being uploaded", || uploading(&sshd)).await;
    sshd.kill();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    sshd.restart().await;
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the export ends")
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("retrying"),
        "the lost connection is retried, logged: {}",
        stderr(&output)
    );
    assert_delivered_once(&app, &sshd, &ids).await;
}

/// Killed after the rename, before the publication was recorded; then
/// the file under its name is replaced by other bytes: the next run finds
/// what it did not publish and refuses, naming the file at ERROR, and
/// marks nothing. The file stays as the other writer left it.
async fn killed_after_the_rename_then_other_bytes_under_its_name_the_resume_refuses(
    sshd: TestSshd,
) {
    let app = spawn_app().await;
    app.seed("MER", 500).await;
    let name = killed_after_the_rename(&app, &sshd).await;
    std::fs::write(sshd.inbox.join(&name), b"someone else's bytes").unwrap();

    app.until_leases_lapse().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let mut env = env_of(&sshd);
    let folder = elsewhere.path().display().to_string();
    env.push(("ESR_EXPORT__OUTPUT_DIR".to_owned(), folder));
    let output = run_binary(&app, &["export", "--deanery", "MER"], &pairs(&env)).await;
    assert_refused_over(&app, &output, &name).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let kept = std::fs::read(sshd.inbox.join(&name)).unwrap();
    assert_eq!(kept, b"someone else's bytes", "never written over");
}

on_both_sftp_servers!(killed_after_the_rename_then_other_bytes_under_its_name_the_resume_refuses);

/// Runs `export` against `sshd` until its subsystem holds the request it
/// waits for, then SIGKILLs it.
pub(crate) async fn killed_when_held(app: &TestApp, sshd: &TestSshd) {
    let env = env_of(sshd);
    let mut child = binary(app, &["export", "--deanery", "MER"], &pairs(&env))
        .spawn()
        .unwrap();
    until("the request held", || sshd.held()).await;
    child.kill().await.unwrap();
}

/// Killed during the manifest's upload (its temporary file open, its first
/// write held): nothing is published yet; the next run, from another
/// folder, removes the temporary and delivers once.
#[tokio::test]
async fn killed_during_the_manifest_upload_the_next_run_delivers_once() {
    let (app, sshd) = (
        spawn_app().await,
        TestSshd::start_holding("write-after-open", ".DAT.json.").await,
    );
    let ids = app.seed("MER", 500).await;
    killed_when_held(&app, &sshd).await;
    assert!(
        sshd.files().is_empty(),
        "nothing published: {:?}",
        sshd.files()
    );
    let temporaries = sshd.temporaries();
    assert!(
        temporaries.iter().any(|t| t.contains(".DAT.json.")),
        "the manifest's temporary: {temporaries:?}"
    );
    finish_elsewhere(&app, &sshd, &ids).await;
}
