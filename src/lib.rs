//! esr-exporter: exports NHS ESR applicant ("APP") files from MongoDB, one
//! file per deanery, without losing or duplicating a record.
//!
//! Data flows one way:
//!
//! ```text
//! schedule (13:00 slot, watchdog catch-up) ─┐
//!                      cli `trigger` ───────┼─> RabbitMQ queue ─> broker consumer ─┐
//!                      cli `export` ────────┼──────────────────────────────────────┴─> export run
//!   export run: claim (MongoDB) ─> file (staged, published) ─> mark EXPORTED ─> run COMPLETED
//! ```
//!
//! Module map, bottom to top (a module imports only those above it in
//! this list, never one below):
//!
//! - [`identity`]: the build's version, commit and date.
//! - [`error_chain`]: an error and its causes said once (`Chain`).
//! - [`domain`]: validated types: [`domain::Deanery`] codes, APP detail rows
//!   built from record documents, commands, run summaries, where a
//!   published file is ([`domain::Location`]), cron and zones.
//! - [`config`]: layered settings (`config/default.toml` → `--config` →
//!   `ESR_*` environment), parsed once into typed values, secrets redacted.
//! - [`telemetry`]: the tracing subscriber (JSON lines or pretty).
//! - [`shutdown`]: the shutdown signal tasks stop on.
//! - [`store`]: MongoDB: the handle (and a run's own, [`store::Store::for_run`],
//!   labelled with its deanery and counting its work) and its errors, indexes, leases (one
//!   primitive for deanery leases and schedule slots), records (claim,
//!   reject, mark, cursors, stuck records), runs (typed transitions), the
//!   status queries, and the bounded retry policy with its transaction helper.
//! - [`destination`]: where a staged file is published, one file per kind
//!   (a folder, a bucket, an SFTP server) behind one interface: the probe
//!   at start, create only if absent, what a name holds, where it is,
//!   temporaries and probe leftovers.
//! - [`ops`]: metrics, HTTP health/readiness/metrics, the output folder's
//!   health, systemd notifications, how background work says failures.
//! - [`export`]: one export run per deanery as named steps on a run context
//!   (the run's own store handle, its lease, its progress): resume,
//!   rewrite, claim, verify, stage, publish (one path for every
//!   destination), mark, complete.
//! - [`broker`]: RabbitMQ topology, confirmed publishing
//!   (`publish_commands`), the consumer, which handles each delivery into
//!   one typed outcome, and the pure decision that settles it.
//! - [`schedule`]: daily slots (DST-aware), fired once across replicas,
//!   missed slots caught up on start; the stuck-record watchdog.
//! - [`status`]: the per-deanery status report.
//! - [`incident`]: the incident commands (`explain`, `files`, `redeliver`,
//!   which publishes through export's path) and their command-line glue.
//! - [`daemon`]: `run`: the HTTP endpoints, the consumer, the scheduler and
//!   the watchdog as supervised tasks, until shutdown.
//! - [`manual`]: the man page and shell completions, from the command line.
//! - [`cli`]: the command line (`run`, `export`, `trigger`, `status`,
//!   `dead-letters`, `check-config`, `ensure-indexes`) and exit codes.

#![forbid(unsafe_code)]
#![warn(
    unreachable_pub,
    missing_debug_implementations,
    missing_docs,
    clippy::await_holding_lock
)]

pub mod broker;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod destination;
pub mod domain;
pub mod error_chain;
pub mod export;
pub mod identity;
pub mod incident;
pub mod manual;
pub mod ops;
pub mod schedule;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod telemetry;
