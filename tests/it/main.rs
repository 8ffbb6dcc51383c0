//! Integration tests against a real MongoDB-wire server (SecantusDB in CI;
//! `ESR_TEST_MONGODB_URI` points elsewhere, e.g. a `mongod` replica set)
//! and a real RabbitMQ on 127.0.0.1:5672.

mod blips;
mod bucket;
mod bucket_daemon;
mod bucket_kills;
#[path = "../support/bucket.rs"]
mod bucket_store;
mod bucket_support;
mod cli;
mod clocks;
mod commands;
mod crash;
mod deploy;
#[path = "../support/env.rs"]
mod env_support;
mod export;
#[path = "../support/export_file.rs"]
mod export_file;
mod faults;
mod helpers;
mod history;
mod hostile;
mod incident;
mod infra;
mod logs;
#[path = "../support/mongo.rs"]
mod mongo_support;
mod named_deaneries;
mod ops;
mod privilege;
#[path = "../support/proxy.rs"]
mod proxy;
mod readme_layout;
mod readme_metrics;
mod replicas;
#[path = "../support/s3proxy.rs"]
mod s3proxy;
mod sftp;
mod sftp_daemon;
mod sftp_kills;
#[path = "../support/sshd.rs"]
mod sshd;
mod stalls;
mod supervision;
#[path = "../support/broker.rs"]
mod support;
mod tls;
