//! Faults of the whole RabbitMQ node: a memory alarm that blocks every
//! publisher, a broker restart under the daemon, a low acknowledgement
//! timeout. They change the node for every client, so they live in their
//! own target, one at a time, and `scripts/test` runs it after the
//! integration suite.

#[path = "../it/helpers.rs"]
#[allow(dead_code)]
mod helpers;

#[path = "../support/mod.rs"]
mod support;

mod alarm;
mod restart;
mod timeout;

/// One node-wide change at a time.
pub static NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `rabbitmqctl <args>`; its standard output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `rabbitmqctl <args>` when dropped: puts the node back even after
/// a failed assertion.
pub struct Restore(pub Vec<&'static str>);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(&self.0)
            .output();
    }
}

/// `/readyz`'s status of a daemon in another process; 0 while nothing
/// listens on its port yet.
pub async fn readyz(addr: std::net::SocketAddr) -> u16 {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => helpers::http_get(addr, "/readyz").await.0,
        Err(_) => 0,
    }
}

/// The log lines of a daemon's standard error, parsed.
pub fn log_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
