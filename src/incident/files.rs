//! `esr-exporter files [--deanery MER] [--since DATE]`: the published
//! files, newest first, from the run documents (through the
//! `publication.publishedAt` indexes).

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::store::{RunDoc, Store, StoreError};

/// One published file.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedFile {
    /// File name.
    pub file: String,
    /// Deanery code.
    pub deanery: String,
    /// Detail lines.
    pub records: i64,
    /// SHA-256 of the bytes.
    pub sha256: String,
    /// Where it went: a path on `host`, or a URL.
    pub published_to: String,
    /// The destination (`s3://bucket/prefix`); null for a folder.
    pub destination: Option<String>,
    /// The host that published it.
    pub host: String,
    /// When it was published.
    pub published_at: String,
    /// Its run.
    pub run_id: String,
    /// Times it was delivered again.
    pub redeliveries: usize,
}

fn published(run: RunDoc) -> Option<PublishedFile> {
    let publication = run.publication?;
    Some(PublishedFile {
        file: run.file_name.unwrap_or_default(),
        deanery: run.deanery,
        records: run.record_count.unwrap_or(0),
        sha256: publication.sha256,
        published_to: publication.location.address(),
        destination: publication.location.destination_url().map(str::to_owned),
        host: publication.host,
        published_at: publication
            .published_at
            .to_chrono()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        run_id: run.id,
        redeliveries: run.redeliveries.len(),
    })
}

/// `--since`: a date (`2026-12-01`, midnight UTC) or an RFC 3339 instant.
///
/// # Errors
/// A message saying what is expected.
pub fn parse_since(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(instant) = DateTime::parse_from_rfc3339(value) {
        return Ok(instant.to_utc());
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map(|day| day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        .map_err(|_| format!("`{value}` is not a date (YYYY-MM-DD) or an RFC 3339 instant"))
}

/// The published files, newest first, at most `limit`.
///
/// # Errors
/// When MongoDB fails beyond the retry policy.
pub async fn list(
    store: &Store,
    deanery: Option<&str>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<PublishedFile>, StoreError> {
    let since = since.map(bson::DateTime::from_chrono);
    let runs = store.published_runs(deanery, since, limit).await?;
    Ok(runs.into_iter().filter_map(published).collect())
}

/// A table for people.
pub fn render(files: &[PublishedFile]) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<30} {:>8}  {:<16} {:<36}  {}\n",
        "published", "deanery", "file", "records", "sha256", "run", "to"
    );
    for f in files {
        out.push_str(&format!(
            "{:<20} {:<8} {:<30} {:>8}  {:<16} {:<36}  {}{}\n",
            f.published_at,
            f.deanery,
            f.file,
            f.records,
            &f.sha256[..f.sha256.len().min(16)],
            f.run_id,
            f.published_to,
            if f.redeliveries > 0 {
                format!(" (redelivered {}x)", f.redeliveries)
            } else {
                String::new()
            }
        ));
    }
    if files.is_empty() {
        out.push_str("(no published files)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_an_instant() {
        assert_eq!(
            parse_since("2026-12-01").unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-12-01T13:00:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-12-01T12:00:00+00:00"
        );
        assert!(parse_since("yesterday").unwrap_err().contains("YYYY-MM-DD"));
    }
}
