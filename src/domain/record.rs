use bson::oid::ObjectId;
use bson::{Bson, Document};

use super::Deanery;

/// Lifecycle of a GeneratedAppRecord (contract):
/// `TO_EXPORT` → `EXPORTING` (claimed by a run) → `EXPORTED`, or `REJECTED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordStatus {
    /// Waiting to be exported.
    ToExport,
    /// Claimed by an export run (`exportRunId`), not yet confirmed in a file.
    Exporting,
    /// In a file (`exportFileName`).
    Exported,
    /// Cannot be exported (`rejectionReason`).
    Rejected,
}

impl RecordStatus {
    /// The value stored in the `status` field.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::ToExport => "TO_EXPORT",
            Self::Exporting => "EXPORTING",
            Self::Exported => "EXPORTED",
            Self::Rejected => "REJECTED",
        }
    }
}

/// One validated APP detail line, ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AppRow {
    /// Record `_id`.
    pub id: ObjectId,
    /// The 16 CSV fields of the detail line, `APP` first.
    fields: [String; 16],
}

impl AppRow {
    /// The projection of a query whose records become detail lines: the
    /// fields [`AppRow::from_document`] reads and nothing else, so a large
    /// field the file does not use never crosses the wire or fills a
    /// transaction.
    pub(crate) fn projection() -> Document {
        let mut projection = bson::doc! {"_id": 1, "deanery": 1};
        for (name, _) in DETAIL_FIELDS {
            projection.insert(name, 1);
        }
        projection
    }

    /// Builds the detail line of a record document of `deanery`'s run, or
    /// explains every reason it cannot be written. Unknown fields are
    /// ignored.
    ///
    /// # Errors
    /// The rejection reason, all problems joined by `"; "`.
    pub(crate) fn from_document(doc: &Document, deanery: &Deanery) -> Result<Self, String> {
        let mut problems = Vec::new();
        problems.extend(deanery_field(doc, deanery).err());
        let id = id_field(doc).map_err(|problem| problems.push(problem)).ok();
        let values = DETAIL_FIELDS.map(|(name, kind)| {
            field_value(doc, name, kind).unwrap_or_else(|problem| {
                problems.push(problem);
                String::new()
            })
        });
        match id {
            Some(id) if problems.is_empty() => Ok(Self::detail_line(id, values)),
            _ => Err(problems.join("; ")),
        }
    }

    /// `APP`, the record id, then the detail fields in contract order.
    fn detail_line(id: ObjectId, values: [String; 14]) -> Self {
        let mut fields: [String; 16] = Default::default();
        fields[0] = "APP".to_owned();
        fields[1] = id.to_hex();
        for (slot, value) in fields[2..].iter_mut().zip(values) {
            *slot = value;
        }
        Self { id, fields }
    }

    /// The CSV fields of the detail line.
    pub(crate) fn fields(&self) -> &[String; 16] {
        &self.fields
    }
}

/// How a detail field is read.
#[derive(Debug, Clone, Copy)]
enum FieldKind {
    /// A string; `true` when required.
    Text(bool),
    /// A date, written `YYYY-MM-DD`; `true` when required.
    Date(bool),
    /// The whole-time equivalent.
    Wte,
}

/// The detail line's fields after the record id, in contract order.
const DETAIL_FIELDS: [(&str, FieldKind); 14] = [
    ("positionNumber", FieldKind::Text(true)),
    ("gmcNumber", FieldKind::Text(false)),
    ("title", FieldKind::Text(false)),
    ("lastName", FieldKind::Text(true)),
    ("firstName", FieldKind::Text(true)),
    ("dateOfBirth", FieldKind::Date(false)),
    ("gender", FieldKind::Text(false)),
    ("niNumber", FieldKind::Text(false)),
    ("emailAddress", FieldKind::Text(false)),
    ("placementStartDate", FieldKind::Date(true)),
    ("placementEndDate", FieldKind::Date(false)),
    ("gradeAbbreviation", FieldKind::Text(false)),
    ("specialty", FieldKind::Text(false)),
    ("wte", FieldKind::Wte),
];

fn field_value(doc: &Document, name: &str, kind: FieldKind) -> Result<String, String> {
    match kind {
        FieldKind::Text(required) => string_field(doc, name, required),
        FieldKind::Date(required) => date_field(doc, name, required),
        FieldKind::Wte => wte_field(doc),
    }
}

fn id_field(doc: &Document) -> Result<ObjectId, String> {
    match doc.get("_id") {
        Some(Bson::ObjectId(id)) => Ok(*id),
        Some(other) => Err(format!(
            "_id: expected objectId, found {}",
            type_name(other)
        )),
        None => Err("missing required field _id".to_owned()),
    }
}

/// The BSON type of a value, by the name MongoDB's `$type` uses.
pub(crate) fn type_name(value: &Bson) -> &'static str {
    match value {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Array(_) => "array",
        Bson::Document(_) => "object",
        Bson::Boolean(_) => "bool",
        Bson::Null => "null",
        Bson::Int32(_) => "int",
        Bson::Int64(_) => "long",
        Bson::DateTime(_) => "date",
        Bson::ObjectId(_) => "objectId",
        Bson::Decimal128(_) => "decimal",
        Bson::Timestamp(_) => "timestamp",
        Bson::Binary(_) => "binData",
        _ => "an unsupported type",
    }
}

/// Absent and `null` are the same for an optional field.
fn present<'a>(doc: &'a Document, name: &str) -> Option<&'a Bson> {
    match doc.get(name) {
        None | Some(Bson::Null) => None,
        Some(value) => Some(value),
    }
}

fn string_field(doc: &Document, name: &str, required: bool) -> Result<String, String> {
    match present(doc, name) {
        None if required => Err(format!("missing required field {name}")),
        None => Ok(String::new()),
        Some(Bson::String(s)) => {
            if s.chars().any(char::is_control) {
                Err(format!("{name}: contains a control character"))
            } else if required && s.trim().is_empty() {
                Err(format!("{name}: is empty"))
            } else {
                Ok(s.clone())
            }
        }
        Some(other) => Err(format!(
            "{name}: expected string, found {}",
            type_name(other)
        )),
    }
}

fn date_field(doc: &Document, name: &str, required: bool) -> Result<String, String> {
    match present(doc, name) {
        None if required => Err(format!("missing required field {name}")),
        None => Ok(String::new()),
        Some(Bson::DateTime(dt)) => {
            let date = dt.to_chrono().date_naive();
            let year = chrono::Datelike::year(&date);
            if (1..=9999).contains(&year) {
                Ok(date.format("%Y-%m-%d").to_string())
            } else {
                Err(format!("{name}: year {year} is out of range"))
            }
        }
        Some(other) => Err(format!("{name}: expected date, found {}", type_name(other))),
    }
}

/// The record's `deanery` must be exactly the run's code: a query for
/// `{deanery: "EOE"}` also matches the array `["MER", "EOE"]`.
fn deanery_field(doc: &Document, deanery: &Deanery) -> Result<(), String> {
    match doc.get("deanery") {
        Some(Bson::String(code)) if code == deanery.as_str() => Ok(()),
        Some(Bson::String(_)) => Err(format!("deanery: expected {deanery}")),
        Some(other) => Err(format!(
            "deanery: expected the string {deanery}, found {}",
            type_name(other)
        )),
        None => Err("missing required field deanery".to_owned()),
    }
}

/// Largest `wte` accepted: a whole-time equivalent is a small fraction;
/// anything beyond this is a data error, not a contract.
const MAX_WTE: f64 = 10.0;

/// `wte` as written: at most six decimal places, no `-0`, no exponent.
fn format_wte(value: f64) -> String {
    let rounded = (value * 1e6).round() / 1e6;
    let text = format!("{:.6}", rounded + 0.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

fn wte_field(doc: &Document) -> Result<String, String> {
    let value = match present(doc, "wte") {
        None => return Ok(String::new()),
        Some(Bson::Double(v)) => *v,
        Some(Bson::Int32(v)) => f64::from(*v),
        Some(Bson::Int64(v)) => *v as f64,
        Some(other) => return Err(format!("wte: expected double, found {}", type_name(other))),
    };
    if value.is_finite() && (0.0..=MAX_WTE).contains(&value) {
        Ok(format_wte(value))
    } else {
        Err(format!(
            "wte: {value:e} is not a number between 0 and {MAX_WTE}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, DateTime};

    fn date(y: i32, m: u32, d: u32) -> Bson {
        let dt = chrono::NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        Bson::DateTime(DateTime::from_chrono(dt))
    }

    fn valid() -> Document {
        doc! {
            "_id": ObjectId::parse_str("65f000000000000000000001").unwrap(),
            "deanery": "MER",
            "status": "TO_EXPORT",
            "positionNumber": "MER/RTH01/IMT/001",
            "gmcNumber": "7012345",
            "title": "Dr",
            "firstName": "Ada",
            "lastName": "O'Brien, Jr",
            "dateOfBirth": date(1994, 3, 9),
            "gender": "F",
            "niNumber": "QQ123456C",
            "emailAddress": "ada@example.nhs.uk",
            "placementStartDate": date(2026, 12, 2),
            "placementEndDate": Bson::Null,
            "gradeAbbreviation": "CT1",
            "specialty": "Internal Medicine",
            "wte": 0.8,
            "someFutureField": {"x": 1},
        }
    }

    /// `doc` as the server returns it under `projection` (inclusion only).
    fn projected(doc: &Document, projection: &Document) -> Document {
        doc.iter()
            .filter(|(key, _)| projection.contains_key(key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    #[test]
    fn the_claims_projection_keeps_every_field_a_detail_line_reads() {
        let mut big = valid();
        big.insert("attachment", "x".repeat(1 << 20));
        let slim = projected(&big, &AppRow::projection());
        assert!(!slim.contains_key("attachment"));
        assert_eq!(
            AppRow::from_document(&slim, &mer()),
            AppRow::from_document(&big, &mer())
        );
        let mut invalid = valid();
        invalid.remove("lastName");
        invalid.insert("wte", "full");
        assert_eq!(
            AppRow::from_document(&projected(&invalid, &AppRow::projection()), &mer()),
            AppRow::from_document(&invalid, &mer()),
            "the same reasons for a record rejected"
        );
    }

    #[test]
    fn a_complete_record_becomes_a_detail_line_in_contract_order() {
        let row = AppRow::from_document(&valid(), &mer()).unwrap();
        assert_eq!(
            row.fields().to_vec(),
            vec![
                "APP",
                "65f000000000000000000001",
                "MER/RTH01/IMT/001",
                "7012345",
                "Dr",
                "O'Brien, Jr",
                "Ada",
                "1994-03-09",
                "F",
                "QQ123456C",
                "ada@example.nhs.uk",
                "2026-12-02",
                "",
                "CT1",
                "Internal Medicine",
                "0.8"
            ]
        );
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let d = doc! {
            "_id": ObjectId::new(), "deanery": "MER", "positionNumber": "P1", "firstName": "A",
            "lastName": "B", "placementStartDate": date(2026, 1, 1),
        };
        let row = AppRow::from_document(&d, &mer()).unwrap();
        assert_eq!(row.fields()[15], "");
        assert_eq!(row.fields()[7], "");
    }

    #[test]
    fn every_problem_of_a_bad_record_is_named() {
        let mut d = valid();
        d.remove("positionNumber");
        d.insert("firstName", 42);
        d.insert("placementStartDate", "2026-12-02");
        d.insert("wte", f64::NAN);
        for why in [
            "missing required field positionNumber",
            "firstName: expected string, found int",
            "placementStartDate: expected date, found string",
            "wte:",
        ] {
            assert_rejected(&d, why);
        }
    }

    fn mer() -> Deanery {
        Deanery::parse("MER").unwrap()
    }

    /// Asserts `d` is rejected with a reason that says `why`.
    fn assert_rejected(d: &Document, why: &str) {
        let reason = AppRow::from_document(d, &mer()).unwrap_err();
        assert!(reason.contains(why), "{reason}");
    }

    #[test]
    fn a_deanery_that_is_not_exactly_the_runs_code_is_rejected() {
        let mut d = valid();
        d.insert("deanery", vec!["EOE", "MER"]);
        assert_rejected(&d, "deanery: expected the string MER, found array");
        d.remove("deanery");
        assert_rejected(&d, "missing required field deanery");
    }

    #[test]
    fn wte_is_written_plainly_and_absurd_values_are_rejected() {
        let cases = [
            (-0.0, "0"),
            (0.5, "0.5"),
            (1.0, "1"),
            (0.1 + 0.2, "0.3"),
            (1e-300, "0"),
        ];
        for (value, expected) in cases {
            let mut d = valid();
            d.insert("wte", value);
            let row = AppRow::from_document(&d, &mer()).unwrap();
            assert_eq!(row.fields()[15], expected, "{value:e}");
        }
        for value in [1e300, -0.5, f64::INFINITY] {
            let mut d = valid();
            d.insert("wte", value);
            assert_rejected(&d, "is not a number between 0 and 10");
        }
    }

    #[test]
    fn an_id_that_is_not_an_object_id_is_named() {
        for id in [
            Bson::String("abc".into()),
            Bson::Boolean(true),
            Bson::Int32(7),
        ] {
            let mut d = valid();
            d.insert("_id", id);
            assert_rejected(&d, "_id: expected objectId");
        }
    }

    #[test]
    fn blank_required_text_and_control_characters_are_rejected() {
        let mut d = valid();
        d.insert("lastName", "   ");
        d.insert("title", "Dr\r\nAPP,forged");
        assert_rejected(&d, "lastName: is empty");
        assert_rejected(&d, "title: contains a control character");
    }
}
