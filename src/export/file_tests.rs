//! Unit tests of the export file: format, staging, publishing.
use super::*;
use bson::doc;
use bson::oid::ObjectId;

fn row(last_name: &str) -> AppRow {
    let start = bson::DateTime::from_millis(1_764_547_200_000); // 2025-12-01
    AppRow::from_document(
        &doc! {
            "_id": ObjectId::new(), "deanery": "MER", "positionNumber": "P1", "firstName": "A",
            "lastName": last_name, "placementStartDate": start,
        },
        &Deanery::parse("MER").unwrap(),
    )
    .unwrap()
}

fn header(name: &str) -> FileHeader {
    FileHeader {
        deanery: Deanery::parse("MER").unwrap(),
        date: "20261128".into(),
        time: "130000".into(),
        seq: 1,
        run_id: "run-1".into(),
        file_name: name.into(),
        mode: 0o644,
    }
}

#[test]
fn a_finished_file_is_crlf_csv_with_header_trailer_and_a_matching_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    let mut file = ExportFile::create(dir.path(), header(name)).unwrap();
    file.write_rows(&[row("Smith"), row("O\"Neil, \"Jr\"")])
        .unwrap();
    let staged = file.stage().unwrap();
    assert!(
        !dir.path().join(name).exists(),
        "not visible before publishing"
    );
    assert_eq!(
        publish(dir.path(), &header(name), &staged).unwrap(),
        Published::Final
    );
    let manifest = Manifest {
        sha256: staged.sha256.clone(),
        record_count: staged.record_count,
        ..read_manifest_typed(dir.path(), name)
    };

    let bytes = std::fs::read(dir.path().join(name)).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert_eq!(lines[0], "HDR,APP,MER,20261128,130000,00001,run-1");
    assert!(
        lines[2].contains(",\"O\"\"Neil, \"\"Jr\"\"\","),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3], "TRL,2");
    assert_eq!(lines.len(), 4);
    assert!(!text.replace("\r\n", "").contains('\n'));
    assert_eq!(manifest.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(manifest.record_count, 2);
    let stored = read_manifest(dir.path(), name).unwrap();
    assert_eq!(stored["sha256"], manifest.sha256.as_str());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(TEMP_SUFFIX))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn read_manifest_typed(dir: &Path, name: &str) -> Manifest {
    let value = read_manifest(dir, name).unwrap();
    Manifest {
        run_id: value["runId"].as_str().unwrap().to_owned(),
        deanery: value["deanery"].as_str().unwrap().to_owned(),
        file_name: value["fileName"].as_str().unwrap().to_owned(),
        record_count: value["recordCount"].as_u64().unwrap(),
        sha256: value["sha256"].as_str().unwrap().to_owned(),
        created_at: value["createdAt"].as_str().unwrap().to_owned(),
    }
}

/// A file of one row staged in `dir` under `name`.
fn stage_one_row(dir: &Path, name: &str) -> Staged {
    let mut file = ExportFile::create(dir, header(name)).unwrap();
    file.write_rows(&[row("Smith")]).unwrap();
    file.stage().unwrap()
}

#[test]
fn publishing_again_after_a_crash_neither_rewrites_nor_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    let staged = stage_one_row(dir.path(), name);

    // Published, then the process died before recording it: again is a no-op.
    publish(dir.path(), &header(name), &staged).unwrap();
    let first = std::fs::metadata(dir.path().join(name))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        publish(dir.path(), &header(name), &staged).unwrap(),
        Published::Final
    );
    let again = std::fs::metadata(dir.path().join(name))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(first, again, "the final file was not rewritten");

    // The file is gone (a reader took it, or it was staged on another
    // host): never assumed delivered, the caller must stage it again.
    std::fs::remove_file(dir.path().join(name)).unwrap();
    assert_eq!(
        publish(dir.path(), &header(name), &staged).unwrap(),
        Published::NotStaged
    );
    assert!(!dir.path().join(name).exists());
}

#[test]
fn a_staged_file_with_other_bytes_is_staged_again_not_published() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    let staged = stage_one_row(dir.path(), name);
    std::fs::write(staging_path(dir.path(), name), b"torn").unwrap();
    assert_eq!(
        publish(dir.path(), &header(name), &staged).unwrap(),
        Published::NotStaged
    );
    assert_eq!(list(dir.path()), Vec::<String>::new());
}

#[test]
fn a_dangling_symlink_under_the_final_name_is_refused_not_taken_for_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join(name)).unwrap();
    let staged = stage_one_row(dir.path(), name);
    let err = publish(dir.path(), &header(name), &staged).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert!(
        staging_path(dir.path(), name).exists(),
        "the staged file is kept"
    );
}

#[test]
fn the_manifest_is_in_place_before_the_file_becomes_visible() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    let staged = stage_one_row(dir.path(), name);
    // A folder under the manifest's name makes writing it fail, as a
    // full disk would: the `.DAT` must not be visible without it.
    std::fs::create_dir(dir.path().join(format!("{name}.json"))).unwrap();
    assert!(publish(dir.path(), &header(name), &staged).is_err());
    assert!(!dir.path().join(name).exists());
    std::fs::remove_dir(dir.path().join(format!("{name}.json"))).unwrap();
    assert_eq!(
        publish(dir.path(), &header(name), &staged).unwrap(),
        Published::Final
    );
    assert!(read_manifest(dir.path(), name).is_ok());
}

#[test]
fn files_get_exactly_the_configured_mode_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    let mut wide = header(name);
    wide.mode = 0o666; // a umask of 022 would make this 0644
    let mut file = ExportFile::create(dir.path(), wide.clone()).unwrap();
    file.write_rows(&[row("Smith")]).unwrap();
    let staged = file.stage().unwrap();
    publish(dir.path(), &wide, &staged).unwrap();
    for path in [name.to_owned(), format!("{name}.json")] {
        let mode = std::fs::metadata(dir.path().join(path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666);
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn another_runs_file_under_the_name_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    std::fs::write(dir.path().join(name), b"someone else's bytes").unwrap();
    let staged = stage_one_row(dir.path(), name);
    let err = publish(dir.path(), &header(name), &staged).unwrap_err();
    assert!(err.to_string().contains("refusing"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join(name)).unwrap(),
        b"someone else's bytes"
    );
}

#[test]
fn an_abandoned_file_leaves_nothing_under_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = ExportFile::create(dir.path(), header("DE_MER_APP_20261128_00001.DAT")).unwrap();
    file.write_rows(&[row("Smith")]).unwrap();
    drop(file);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn stale_temporaries_of_one_deanery_are_removed_and_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        ".DE_MER_APP_20261128_00001.DAT.abc.tmp",
        ".DE_EOE_APP_20261128_00001.DAT.abc.tmp",
        "DE_MER_APP_20261127_00001.DAT",
    ] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let removed = remove_stale_temporaries(dir.path(), &Deanery::parse("MER").unwrap()).unwrap();
    assert_eq!(removed, 1);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}
