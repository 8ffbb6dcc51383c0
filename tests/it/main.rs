//! Integration tests against a real MongoDB-wire server (SecantusDB in CI;
//! `ESR_TEST_MONGODB_URI` points elsewhere, e.g. a `mongod` replica set)
//! and a real RabbitMQ on 127.0.0.1:5672.

/// Makes the test `async fn NAME(sshd: TestSshd)` two tests, `NAME::openssh`
/// and `NAME::proftpd`: the same body against OpenSSH's `sshd` and against
/// ProFTPD's `mod_sftp`.
macro_rules! on_both_sftp_servers {
    ($name:ident) => {
        mod $name {
            use crate::support::sshd::{Server, TestSshd};

            #[tokio::test]
            async fn openssh() {
                super::$name(TestSshd::start_server(Server::OpenSsh).await).await;
            }

            #[tokio::test]
            async fn proftpd() {
                super::$name(TestSshd::start_server(Server::Proftpd).await).await;
            }
        }
    };
}

mod blips;
mod bucket;
mod bucket_daemon;
mod bucket_kills;
mod cli;
mod clocks;
mod commands;
mod crash;
mod delivery;
mod deploy;
mod due_soon;
mod export;
mod faults;
mod helpers;
mod history;
mod hostile;
mod in_doubt;
mod incident;
mod infra;
mod logs;
mod named_deaneries;
mod ops;
mod privilege;
mod readme_layout;
mod readme_metrics;
mod replicas;
mod sftp;
mod sftp_daemon;
mod sftp_kills;
mod stalls;
mod status_page;
mod supervision;
#[path = "../support/mod.rs"]
mod support;
mod tls;
