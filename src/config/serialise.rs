//! How the parsed values print in `check-config`: exactly as they are
//! configured (the cron expression as written, the zone's name, deanery
//! codes, the file mode as octal digits).

use std::fmt::Display;

use serde::Serializer;

use crate::domain::Deanery;

/// A value by its `Display` form.
pub(super) fn display<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Deanery codes as a list of strings.
pub(super) fn deaneries<S: Serializer>(codes: &[Deanery], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(codes.iter().map(Deanery::as_str))
}

/// Permission bits as four octal digits, e.g. `"0644"`.
pub(super) fn octal<S: Serializer>(bits: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{bits:04o}"))
}
