//! esr-exporter: exports NHS ESR applicant ("APP") files from MongoDB, one
//! file per deanery, without losing or duplicating a record.
//!
//! Module map:
//!
//! - [`cli`]: the command line (`run`, `export`, `trigger`, `status`,
//!   `check-config`) and exit codes.
//! - [`daemon`]: `run`: the HTTP endpoints, the consumer, the scheduler and
//!   the watchdog, supervised, until shutdown.
//! - [`config`]: layered settings (`config/default.toml` → `--config` → `ESR_*`
//!   environment), validated once, secrets redacted.
//! - [`telemetry`]: the tracing subscriber (JSON lines or pretty).
//! - [`domain`]: validated types: [`domain::Deanery`] codes, APP detail rows
//!   built from record documents, run summaries.
//! - [`store`]: MongoDB: collections, indexes, the bounded retry policy and
//!   the retrying transaction, run documents, leases and sequence numbers.
//! - [`export`]: one export run per deanery: claim in chunks, write the file
//!   atomically, mark records exported, resume after a crash.
//! - [`broker`]: RabbitMQ topology, confirmed publishing, the command consumer.
//! - [`schedule`]: daily slots (DST-aware), fired once across replicas,
//!   missed slots caught up on start; the stuck-record watchdog.
//! - [`ops`]: metrics, HTTP health/readiness/metrics, the output folder's
//!   health, systemd notifications.
//! - [`shutdown`]: the shutdown signal tasks stop on.
//! - [`status`]: the per-deanery status report.
//!
//! Imports go one way, bottom to top: `domain`, `config`, `telemetry`,
//! `shutdown`; `store`; `ops`; `export`; `broker`; `schedule`; `status`;
//! `daemon` and `cli`.

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
pub mod domain;
pub mod export;
pub mod ops;
pub mod schedule;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod telemetry;
