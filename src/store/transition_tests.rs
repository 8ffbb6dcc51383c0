//! Transitions against the real server (`ESR_TEST_MONGODB_URI`, else the
//! local SecantusDB that `scripts/services` starts).

use std::collections::HashMap;

use bson::doc;

use super::*;
use crate::config::Settings;
use crate::domain::Deanery;

/// A store on a database of its own.
async fn store() -> Store {
    let uri = std::env::var("ESR_TEST_MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?replicaSet=secantus".to_owned());
    let database = format!(
        "esr_transition_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let env = HashMap::from([
        ("ESR_MONGODB__URI".to_owned(), uri),
        ("ESR_MONGODB__DATABASE".to_owned(), database),
    ]);
    let settings = Settings::load_with_env(None, Some(env)).expect("settings");
    Store::build(&settings).await.expect("store")
}

fn publication() -> Publication {
    Publication {
        host: "host-a".to_owned(),
        sha256: "ab".repeat(32),
        published_at: now(),
        location: crate::domain::Location::Folder {
            path: "/exports/DE_MER_APP_20261203_00001.DAT".to_owned(),
        },
    }
}

/// A run at `FINALIZING`, stored and as its holder sees it.
async fn finalizing_run(store: &Store, deanery: &Deanery) -> RunDoc {
    let mut run = RunDoc::new(deanery, None);
    store.insert_run(&run).await.unwrap();
    let staged = Transition::Staged {
        record_count: 3,
        sha256: "ab".repeat(32),
    };
    store.transition(&mut run, staged).await.unwrap();
    assert_eq!(run.phase, RunPhase::Finalizing);
    run
}

async fn stored(store: &Store, run: &RunDoc) -> bson::Document {
    store
        .runs
        .find_one(doc! {"_id": &run.id})
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_stale_holder_cannot_move_a_run_another_process_moved_on() {
    let (store, deanery) = (store().await, Deanery::parse("MER").unwrap());
    let mut stale = finalizing_run(&store, &deanery).await;
    // Another process resumed the run after this one's lease lapsed and
    // took it to the end.
    let mut taken_over = stale.clone();
    let published = Transition::Published(publication());
    store.transition(&mut taken_over, published).await.unwrap();
    let completed = Transition::completed(2, None, Some("command-b"));
    store.transition(&mut taken_over, completed).await.unwrap();
    let before = stored(&store, &stale).await;

    let late = Transition::Published(Publication {
        host: "host-stale".to_owned(),
        ..publication()
    });
    let refused = store.transition(&mut stale, late).await;

    match refused {
        Err(StoreError::StaleTransition {
            run_id,
            expected,
            found,
        }) => {
            assert_eq!(
                (run_id.as_str(), expected.as_str(), found.as_str()),
                (stale.id.as_str(), "FINALIZING", "COMPLETED")
            );
        }
        other => panic!("a stale publication must be refused, got {other:?}"),
    }
    assert!(refused_is_transient(&store, &stale).await);
    assert_eq!(
        stored(&store, &stale).await,
        before,
        "the stored run is unchanged"
    );
    assert_eq!(
        stale.phase,
        RunPhase::Finalizing,
        "the holder's copy is unchanged"
    );
    assert_eq!(taken_over.phase, RunPhase::Completed);
}

/// A refused completion is transient: the next attempt resumes from the
/// stored run.
async fn refused_is_transient(store: &Store, stale: &RunDoc) -> bool {
    let mut copy = stale.clone();
    let completed = Transition::completed(0, None, None);
    let err = store
        .transition(&mut copy, completed)
        .await
        .expect_err("a completion from FINALIZING is refused");
    err.is_transient()
}

#[tokio::test]
async fn a_transition_that_already_landed_counts_as_done() {
    let (store, deanery) = (store().await, Deanery::parse("EOE").unwrap());
    let mut run = finalizing_run(&store, &deanery).await;
    let published = Transition::Published(publication());
    let mut first = run.clone();
    store
        .transition(&mut first, published.clone())
        .await
        .unwrap();

    // The same write again, as after a reply that was lost.
    store.transition(&mut run, published).await.unwrap();

    assert_eq!(run.phase, RunPhase::Written);
    assert_eq!(run.publication, first.publication);
    let document = stored(&store, &run).await;
    assert_eq!(document.get_str("phase").unwrap(), "WRITTEN");
    assert_eq!(
        document
            .get_document("publication")
            .unwrap()
            .get_str("host")
            .unwrap(),
        "host-a"
    );
}

#[tokio::test]
async fn each_transition_leaves_the_copy_as_stored() {
    let (store, deanery) = (store().await, Deanery::parse("LDN").unwrap());
    let mut run = finalizing_run(&store, &deanery).await;
    for transition in [
        Transition::Published(publication()),
        Transition::completed(4, Some("2026-12-03T13:00Z"), Some("command-a")),
    ] {
        store.transition(&mut run, transition).await.unwrap();
        let stored = super::super::runs::decode_run(stored(&store, &run).await).unwrap();
        assert_eq!(
            bson::to_document(&stored).unwrap(),
            bson::to_document(&run).unwrap()
        );
    }
    assert_eq!(run.phase, RunPhase::Completed);
    let document = stored(&store, &run).await;
    assert_eq!(document.get_array("commands").unwrap().len(), 1);
    assert_eq!(document.get_array("slots").unwrap().len(), 1);
}
