//! Infrastructure faults under the real daemon: a RabbitMQ queue deleted
//! while connected, a lease's session kept out of the driver's pool, and a
//! SIGTERM in the middle of a run (a deploy), which is not an incident.

use std::time::Duration;

use bson::doc;
use esr_exporter::domain::{RunStatus, Slot};
use esr_exporter::store::Store;

use crate::helpers::{
    assert_detached_while_the_export_runs, binary, deanery, eventually, primary_host_port,
    spawn_app, spawn_app_with, unique_deanery, TestApp, Watched,
};
use crate::support::proxy::WireProxy;

const WAIT: Duration = Duration::from_secs(60);

/// Deletes these queues of the app's topology while it runs.
async fn delete_queues(app: &TestApp, queues: &[String]) {
    crate::support::broker::delete_queues(&app.settings.amqp, queues)
        .await
        .expect("queues deleted");
}

/// Publishing to a queue that is gone is returned by the broker (mandatory
/// publish), never counted as done: the delivery is requeued, the topology
/// declared again, and the command then lands where it was going. A bad
/// message reaches the dead-letter queue; a command whose lease is held
/// goes round the retry queue and is exported once the lease lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_routed_to_a_deleted_queue_are_kept_and_land_once_it_is_back() {
    let app = spawn_app_with(&[("ESR_AMQP__RETRY_DELAY_MS", "500")]).await;
    let daemon = app.spawn_daemon().await;
    let amqp = app.settings.amqp.clone();
    eventually("consuming", WAIT, || async {
        crate::helpers::http_get(daemon.http, "/readyz").await.0 == 200
    })
    .await;

    delete_queues(&app, &[amqp.dead_letter_queue(), amqp.retry_queue()]).await;
    app.publish_raw(b"not JSON").await;
    eventually("the dead letter in the re-declared queue", WAIT, || async {
        app.queue_len(&amqp.dead_letter_queue()).await == 1
    })
    .await;
    let letters = app.take_dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].1.starts_with("malformed command"), "{letters:?}");

    let code = unique_deanery();
    app.seed(&code, 5).await;
    let held_until = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 3_000);
    app.db
        .collection::<bson::Document>("exportLeases")
        .insert_one(doc! {"_id": &code, "owner": "another-replica", "expiresAt": held_until})
        .await
        .unwrap();
    delete_queues(&app, &[amqp.retry_queue()]).await;
    app.publish_command(&code, Slot::Manual).await;
    eventually(
        "the held command exported after its retry",
        WAIT,
        || async {
            app.files()
                .iter()
                .any(|f| f.starts_with(&format!("DE_{code}_")) && f.ends_with(".DAT"))
        },
    )
    .await;
    assert_eq!(app.queue_len(&amqp.dead_letter_queue()).await, 0);
    app.stop_and_clean_up(daemon).await;
}

/// The consumer's own queue deleted while an export runs: the broker
/// cancels the consumer (`basic.cancel`) and leaves the channel open.
/// `/readyz` and `esr_consumer_attached` say so while the export still
/// runs; once it ends, the daemon declares the queue again, consumes, and
/// a command published then is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_broker_cancels_is_detached_at_once() {
    let app = spawn_app().await;
    let daemon = app.spawn_daemon().await;
    daemon.until_ready("ready", WAIT).await;
    let first = unique_deanery();
    app.seed(&first, 3).await;
    // Every find of this app waits 4 s, so the export outlives the check.
    let slow = doc! {"failCommands": ["find"], "blockConnection": true, "blockTimeMS": 4_000};
    let guard = app.arm_failpoint(slow, 6).await;
    app.publish_command(&first, Slot::Manual).await;
    eventually("the export under way", WAIT, || async {
        app.runs()
            .count_documents(doc! {"deanery": &first})
            .await
            .unwrap()
            > 0
    })
    .await;
    delete_queues(&app, std::slice::from_ref(&app.settings.amqp.queue)).await;
    assert_detached_while_the_export_runs(&app, &daemon, guard).await;

    daemon.until_ready("attached again", WAIT).await;
    let second = unique_deanery();
    let ids = app.seed(&second, 3).await;
    app.publish_command(&second, Slot::Manual).await;
    // Marked, not only published: the file is in place before its
    // records are marked.
    eventually("the second deanery exported", WAIT, || async {
        app.count(doc! {"deanery": &second, "status": "EXPORTED"})
            .await
            == ids.len() as u64
    })
    .await;
    app.assert_exported_once(&second, &ids).await;
    app.stop_and_clean_up(daemon).await;
}

/// Runs one read in `session`, as a run would.
async fn used(store: &Store, session: &mut mongodb::ClientSession) {
    store
        .records()
        .find_one(doc! {})
        .session(session)
        .await
        .expect("a read in the session");
}

/// Takes sessions from `store`, holding each, until the one with id
/// `wanted` is handed out (the driver checks a dropped session back in
/// from a task of its own, so it may take a moment): every id taken
/// before it, and the sessions, to drop together.
async fn take_until(
    store: &Store,
    wanted: &bson::Document,
) -> (Vec<bson::Document>, Vec<mongodb::ClientSession>) {
    let (mut ids, mut held) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let session = store.start_session().await.unwrap();
        if session.id() == wanted {
            held.push(session);
            return (ids, held);
        }
        ids.push(session.id().clone());
        held.push(session);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session given back was never handed out again: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The driver pools sessions: one given back is handed to the next
/// caller. A session a lease still names is parked instead, so a later
/// takeover's `killSessions` can never end another run's session: after
/// it is parked, a session given back later comes out of the pool again,
/// and the parked one never does.
#[tokio::test]
async fn a_parked_session_is_never_handed_to_another_run() {
    let app = spawn_app().await;
    let store = Store::build(&app.settings).await.unwrap();

    let mut pooled = store.start_session().await.unwrap();
    let pooled_id = pooled.id().clone();
    used(&store, &mut pooled).await;
    drop(pooled);
    let (_, mut held) = take_until(&store, &pooled_id).await;
    let mut reused = held.pop().expect("the session given back");
    drop(held);
    used(&store, &mut reused).await;

    let mut later = store.start_session().await.unwrap();
    let later_id = later.id().clone();
    used(&store, &mut later).await;
    store.park_session(reused);
    drop(later);
    let (taken, held) = take_until(&store, &later_id).await;
    assert!(
        !taken.contains(&pooled_id),
        "a parked session is not reused: {taken:?}"
    );
    drop(held);
    store.shutdown().await;
}

/// A SIGTERM while a run claims (every deploy): the run stops at a safe
/// point, its command is requeued, and the logs carry a WARN, no ERROR;
/// the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_mid_run_is_an_interruption_not_a_failure() {
    let app = spawn_app_with(&[("ESR_EXPORT__CHUNK_SIZE", "50")]).await;
    let code = unique_deanery();
    app.seed(&code, 20_000).await;
    let daemon = Watched::spawn(binary(
        &app,
        &["run"],
        &[("ESR_HTTP__LISTEN", "127.0.0.1:0")],
    ));
    app.publish_command(&code, Slot::Manual).await;
    let runs = app.runs();
    eventually("the run claiming", WAIT, || async {
        runs.count_documents(doc! {"deanery": &code, "claimed": {"$gt": 0}})
            .await
            .unwrap()
            > 0
    })
    .await;
    let (status, stderr) = daemon.terminate().await;

    assert!(status.success(), "{status:?}\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .collect();
    assert!(errors.is_empty(), "no ERROR on a clean stop: {errors:#?}");
    assert!(
        stderr.contains("export run interrupted by shutdown at a safe point"),
        "{stderr}"
    );
    app.delete_broker_topology().await;
}

/// At exit the daemon shuts its MongoDB client down (`Client::shutdown`):
/// the server hears `endSessions` for the sessions it used, instead of
/// keeping them until they time out. Seen through a recording proxy, after
/// a run that used sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_exit_the_daemon_ends_its_server_sessions() {
    let app = spawn_app().await;
    let code = unique_deanery();
    app.seed(&code, 20).await;
    let proxy = WireProxy::start(&primary_host_port().await).await;
    proxy.record(|r| r.command == "endSessions");
    let uri = format!("{}&appName={}", proxy.uri(), app.app_name);
    let daemon = Watched::spawn(binary(&app, &["run"], &[("ESR_MONGODB__URI", &uri)]));
    app.publish_command(&code, Slot::Manual).await;
    eventually("exported", Duration::from_secs(60), || async {
        app.count(doc! {"deanery": &code, "status": "EXPORTED"})
            .await
            == 20
    })
    .await;
    assert!(
        proxy.recorded().is_empty(),
        "no session ended while running"
    );

    let (status, said) = daemon.terminate().await;
    assert!(status.success(), "{said}");
    let ended = proxy.recorded();
    assert_eq!(ended.len(), 1, "one endSessions at exit: {ended:?}");
    let ids = ended[0]
        .body
        .get_array("endSessions")
        .map(Vec::len)
        .unwrap_or(0);
    assert!(ids >= 1, "the sessions it used: {:?}", ended[0].body);
    app.delete_broker_topology().await;
}

/// A takeover of a lapsed lease ends the dead holder's session, and only
/// it: the holder's open transaction is aborted, while a transaction of
/// another run of the same process, on another session, still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_ends_the_dead_holders_session_and_no_other() {
    let app = spawn_app().await;
    let code = unique_deanery();
    app.seed(&code, 3).await;
    let holder = Store::build(&app.settings).await.unwrap();
    // Documents no run takes (not TO_EXPORT), written by the holder's client.
    let scratch = holder.records();
    let mut dead = holder.start_session().await.unwrap();
    let mut other = holder.start_session().await.unwrap();
    for (session, marker) in [(&mut dead, "dead"), (&mut other, "other")] {
        session.start_transaction().await.unwrap();
        scratch
            .insert_one(doc! {"marker": marker, "status": "SCRATCH"})
            .session(&mut *session)
            .await
            .unwrap();
    }
    // The holder's lease lapsed a minute ago, naming its session.
    let lapsed = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 60_000);
    app.db
        .collection::<bson::Document>("exportLeases")
        .insert_one(doc! {"_id": &code, "owner": "dead-holder", "expiresAt": lapsed, "sessionId": dead.id().clone()})
        .await
        .unwrap();

    let summary = app.exporter.run(&deanery(&code)).await;

    assert_eq!(summary.status(), RunStatus::Completed, "{summary:?}");
    assert!(
        dead.commit_transaction().await.is_err(),
        "the dead holder's transaction was ended"
    );
    other
        .commit_transaction()
        .await
        .expect("another run's transaction commits");
    for (marker, count) in [("dead", 0), ("other", 1)] {
        let found = scratch
            .count_documents(doc! {"marker": marker})
            .await
            .unwrap();
        assert_eq!(found, count, "{marker}");
    }
    holder.shutdown().await;
}
