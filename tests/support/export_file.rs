//! An export file as its reader sees it (the contract's file format):
//! `HDR,APP,<deanery>,<YYYYMMDD>,<HHMMSS>,<seq>,<runId>`, one `APP` detail
//! line per record in `_id` order, `TRL,<detail count>`, CRLF line ends;
//! and beside it `<name>.json`, whose hash and count match the bytes.
#![allow(dead_code)] // each test binary uses its own part

use sha2::{Digest, Sha256};

/// The header line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub deanery: String,
    pub date: String,
    pub time: String,
    pub seq: String,
    pub run_id: String,
}

/// One detail line: a record, its fields named as in the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    pub record_id: String,
    pub position_number: String,
    pub gmc_number: String,
    pub title: String,
    pub last_name: String,
    pub first_name: String,
    pub date_of_birth: String,
    pub gender: String,
    pub ni_number: String,
    pub email_address: String,
    pub placement_start_date: String,
    pub placement_end_date: String,
    pub grade_abbreviation: String,
    pub specialty: String,
    pub wte: String,
}

/// A whole file, checked against the format.
#[derive(Debug, Clone)]
pub struct ParsedFile {
    pub header: Header,
    pub details: Vec<Detail>,
}

impl ParsedFile {
    /// The records' ids, in file order.
    pub fn ids(&self) -> Vec<String> {
        self.details.iter().map(|d| d.record_id.clone()).collect()
    }
}

/// Parses `bytes` as an export file; what breaks the format, otherwise.
pub fn parse(bytes: &[u8]) -> Result<ParsedFile, String> {
    if !bytes.ends_with(b"\r\n") {
        return Err("lines do not end in CRLF".to_owned());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut lines = Vec::new();
    for line in reader.records() {
        let line = line.map_err(|err| format!("not CSV: {err}"))?;
        lines.push(line.iter().map(str::to_owned).collect::<Vec<_>>());
    }
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
        return Err("empty file".to_owned());
    };
    let header = header(first)?;
    let details = lines[1..lines.len() - 1]
        .iter()
        .map(|line| detail(line))
        .collect::<Result<Vec<_>, _>>()?;
    if last.len() != 2 || last[0] != "TRL" || last[1] != details.len().to_string() {
        return Err(format!(
            "trailer {last:?} does not count {} details",
            details.len()
        ));
    }
    let ids: Vec<&String> = details.iter().map(|d| &d.record_id).collect();
    if !ids.windows(2).all(|pair| pair[0] < pair[1]) {
        return Err("details are not in _id order".to_owned());
    }
    Ok(ParsedFile { header, details })
}

fn header(line: &[String]) -> Result<Header, String> {
    match line {
        [hdr, app, deanery, date, time, seq, run_id] if hdr == "HDR" && app == "APP" => {
            Ok(Header {
                deanery: deanery.clone(),
                date: date.clone(),
                time: time.clone(),
                seq: seq.clone(),
                run_id: run_id.clone(),
            })
        }
        other => Err(format!("not a header line: {other:?}")),
    }
}

fn detail(line: &[String]) -> Result<Detail, String> {
    let [app, fields @ ..] = line else {
        return Err("an empty line".to_owned());
    };
    let Ok(
        [record_id, position_number, gmc_number, title, last_name, first_name, date_of_birth, gender, ni_number, email_address, placement_start_date, placement_end_date, grade_abbreviation, specialty, wte],
    ) = <[String; 15]>::try_from(fields.to_vec())
    else {
        return Err(format!("a detail line of {} fields: {line:?}", line.len()));
    };
    if app != "APP" {
        return Err(format!("not a detail line: {line:?}"));
    }
    Ok(Detail {
        record_id,
        position_number,
        gmc_number,
        title,
        last_name,
        first_name,
        date_of_birth,
        gender,
        ni_number,
        email_address,
        placement_start_date,
        placement_end_date,
        grade_abbreviation,
        specialty,
        wte,
    })
}

/// What in the manifest `manifest` of the file `name` of `bytes` with
/// `count` details does not match it.
pub fn manifest_mismatches(
    name: &str,
    bytes: &[u8],
    count: usize,
    manifest: &serde_json::Value,
) -> Vec<String> {
    let mut wrong = Vec::new();
    if manifest["sha256"] != hex::encode(Sha256::digest(bytes)) {
        wrong.push(format!("{name}: manifest hash does not match the bytes"));
    }
    if manifest["recordCount"] != count {
        wrong.push(format!("{name}: manifest count is not {count}"));
    }
    if manifest["fileName"] != name {
        wrong.push(format!("{name}: manifest names {}", manifest["fileName"]));
    }
    wrong
}
