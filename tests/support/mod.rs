//! What the test targets and the benchmarks share, mounted by each as
//! `support` (`#[path = ".../support/mod.rs"] mod support;`), so a helper
//! has the same name everywhere: `support::bucket` (a bucket of its own on
//! the S3-compatible server), `support::broker` (RabbitMQ), `support::env`
//! (the environment a spawned binary gets), `support::export_file` (an
//! export file read back and checked), `support::mongo`, `support::proxy`
//! (the MongoDB wire-protocol fault proxy), `support::s3proxy` (the S3 fault
//! proxy) and `support::sshd` (an OpenSSH server of its own).

#![allow(dead_code)] // each target uses its own part

pub mod broker;
pub mod bucket;
pub mod env;
pub mod export_file;
pub mod mongo;
pub mod proxy;
pub mod s3proxy;
pub mod sshd;
