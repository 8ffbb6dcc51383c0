//! Unit tests of the export file: format, staging, temporaries.
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
fn a_staged_file_is_crlf_csv_with_header_trailer_and_a_matching_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    let mut file = ExportFile::create(dir.path(), header(name)).unwrap();
    file.write_rows(&[row("Smith"), row("O\"Neil, \"Jr\"")])
        .unwrap();
    let staged = file.stage().unwrap();
    assert!(!dir.path().join(name).exists(), "staged, not published");
    let path = staged_with_hash(dir.path(), name, &staged.sha256)
        .unwrap()
        .expect("the staged file holds the recorded bytes");
    let bytes = std::fs::read(path).unwrap();
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
    assert_eq!(staged.sha256, hex::encode(Sha256::digest(&bytes)));
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest_bytes(&header(name), &staged)).unwrap();
    assert_eq!(manifest["sha256"], staged.sha256.as_str());
    assert_eq!(manifest["recordCount"], 2);
    assert_eq!(manifest["fileName"], name);
    assert_eq!(manifest["runId"], "run-1");
}

/// A file of one row staged in `dir` under `name`.
fn stage_one_row(dir: &Path, name: &str) -> Staged {
    let mut file = ExportFile::create(dir, header(name)).unwrap();
    file.write_rows(&[row("Smith")]).unwrap();
    file.stage().unwrap()
}

#[test]
fn a_staged_file_with_other_bytes_is_removed_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    stage_one_row(dir.path(), name);
    let other = "00".repeat(32);
    assert_eq!(staged_with_hash(dir.path(), name, &other).unwrap(), None);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_staged_file_gets_exactly_the_configured_mode_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let name = "DE_MER_APP_20261128_00001.DAT";
    let mut wide = header(name);
    wide.mode = 0o666; // a umask of 022 would make this 0644
    let mut file = ExportFile::create(dir.path(), wide).unwrap();
    file.write_rows(&[row("Smith")]).unwrap();
    let staged = file.stage().unwrap();
    let path = staged_with_hash(dir.path(), name, &staged.sha256)
        .unwrap()
        .unwrap();
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666);
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
