//! The status page, `GET /` on `http.listen` (unless `http.status_page =
//! false`): one HTML page rendered on the server from compile-time
//! templates (`templates/status.html`), refreshing itself every 30 s. Per
//! deanery the records waiting, claimed and due soon, the oldest wait, the
//! last run and the next slot; the last 20 published files; the readiness
//! checks and the build. Counts, file names and run ids only: no field of
//! a record is shown. It reads through the status report's queries (the
//! waiting records and recent runs only), bounded: a MongoDB that does not
//! answer gives a 503 page that says so.

use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::incident::files::{self, PublishedFile};
use crate::ops::http::{readiness_checks, router, HttpState};
use crate::schedule::SlotClock;
use crate::status::{DeaneryStatus, StatusReport};

/// How long the page waits for MongoDB before it says it cannot.
const PAGE_BOUND: Duration = Duration::from_secs(3);
/// Files listed.
const FILES_SHOWN: i64 = 20;

/// What the page's handler needs.
#[derive(Clone)]
struct PageState {
    http: HttpState,
    clock: SlotClock,
    scheduled: Vec<String>,
    watchdog: crate::config::WatchdogSettings,
}

/// The daemon's routes: the endpoints, and the status page unless
/// `http.status_page = false`.
pub(super) fn routes(http: HttpState, settings: &Settings) -> Router {
    if !settings.http.status_page {
        return router(http, None);
    }
    let page = PageState {
        http: http.clone(),
        clock: SlotClock::new(&settings.schedule),
        scheduled: match settings.schedule.enabled {
            true => settings
                .schedule
                .deaneries
                .iter()
                .map(|d| d.to_string())
                .collect(),
            false => Vec::new(),
        },
        watchdog: settings.watchdog.clone(),
    };
    let page = Router::new().route("/", get(status_page)).with_state(page);
    router(http, Some(page))
}

/// The page, or a 503 page when MongoDB does not answer in time.
async fn status_page(State(state): State<PageState>) -> Response {
    let now = Utc::now();
    let gathered = tokio::time::timeout(PAGE_BOUND, gather(&state, now)).await;
    let page = match gathered {
        Ok(Ok(page)) => page.render().map(|html| (StatusCode::OK, html)),
        Ok(Err(reason)) => unavailable(now, &reason),
        Err(_) => unavailable(now, "MongoDB did not answer within 3 s"),
    };
    match page {
        Ok((code, html)) => (code, Html(html)).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// The page's figures, read at once.
async fn gather(state: &PageState, now: DateTime<Utc>) -> Result<StatusPage, String> {
    let store = &state.http.store;
    let due_by = state.watchdog.due_by(now);
    let (report, files, checks) = tokio::join!(
        crate::status::report(store, due_by),
        files::list(store, None, None, FILES_SHOWN),
        readiness_checks(&state.http),
    );
    let report = report.map_err(|err| crate::error_chain::Chain(&err).to_string())?;
    let files = files.map_err(|err| crate::error_chain::Chain(&err).to_string())?;
    let checks: Vec<Check> = checks.into_iter().map(Check::from).collect();
    Ok(StatusPage {
        generated_at: rfc3339(now),
        build: crate::identity::LONG_VERSION.to_owned(),
        ready: checks.iter().all(|c| c.ok),
        deaneries: deanery_rows(&report, state, now),
        files: files.into_iter().map(FileRow::from).collect(),
        checks,
    })
}

fn deanery_rows(report: &StatusReport, state: &PageState, now: DateTime<Utc>) -> Vec<DeaneryRow> {
    let mut rows: Vec<DeaneryRow> = report.deaneries.iter().map(DeaneryRow::from).collect();
    for row in &mut rows {
        if state.scheduled.contains(&row.deanery) {
            row.next_slot = state
                .clock
                .next_after(now)
                .map_or_else(|| "-".into(), rfc3339);
        }
    }
    rows
}

fn unavailable(now: DateTime<Utc>, reason: &str) -> askama::Result<(StatusCode, String)> {
    let page = Unavailable {
        generated_at: rfc3339(now),
        build: crate::identity::LONG_VERSION.to_owned(),
        reason: reason.to_owned(),
    };
    page.render()
        .map(|html| (StatusCode::SERVICE_UNAVAILABLE, html))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The page as rendered.
#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    generated_at: String,
    build: String,
    ready: bool,
    checks: Vec<Check>,
    deaneries: Vec<DeaneryRow>,
    files: Vec<FileRow>,
}

/// The page when MongoDB cannot be read.
#[derive(Template)]
#[template(path = "unavailable.html")]
struct Unavailable {
    generated_at: String,
    build: String,
    reason: String,
}

/// One readiness check.
struct Check {
    name: &'static str,
    ok: bool,
    said: String,
}

impl From<(&'static str, Result<(), String>)> for Check {
    fn from((name, result): (&'static str, Result<(), String>)) -> Self {
        let ok = result.is_ok();
        let said = result.err().unwrap_or_else(|| "ok".to_owned());
        Self { name, ok, said }
    }
}

/// One deanery's line: counts and its last run, never a record's field.
struct DeaneryRow {
    deanery: String,
    waiting: i64,
    claimed: i64,
    due_soon: i64,
    oldest_wait: String,
    last_run: String,
    failed: bool,
    last_file: String,
    last_to: String,
    next_slot: String,
}

impl From<&DeaneryStatus> for DeaneryRow {
    fn from(d: &DeaneryStatus) -> Self {
        let count = |status: &str| d.counts.get(status).copied().unwrap_or(0);
        let run = d.last_run.as_ref();
        Self {
            deanery: d.deanery.clone(),
            waiting: count("TO_EXPORT"),
            claimed: count("EXPORTING"),
            due_soon: d.due_soon,
            oldest_wait: d
                .oldest_to_export_age_seconds
                .map_or_else(|| "-".to_owned(), crate::status::human_age),
            last_run: run.map_or_else(|| "never".to_owned(), |r| r.phase.clone()),
            failed: run.is_some_and(|r| r.failed()),
            last_file: run
                .and_then(|r| r.file.clone())
                .unwrap_or_else(|| "-".into()),
            last_to: run
                .and_then(|r| r.published_to.clone())
                .unwrap_or_else(|| "-".into()),
            next_slot: "not scheduled".to_owned(),
        }
    }
}

/// One published file.
struct FileRow {
    published_at: String,
    deanery: String,
    file: String,
    records: i64,
    run_id: String,
    published_to: String,
}

impl From<PublishedFile> for FileRow {
    fn from(f: PublishedFile) -> Self {
        Self {
            published_at: f.published_at,
            deanery: f.deanery,
            file: f.file,
            records: f.records,
            run_id: f.run_id,
            published_to: f.published_to,
        }
    }
}
