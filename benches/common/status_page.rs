//! The status page's response time: the release binary's daemon
//! (`esr-exporter run`, no schedule, no watchdog, its own queue) started
//! against a seeded database, `GET /` asked a few times once it is ready.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The slowest of `tries` answers of `GET /` (each a complete page, 200).
pub async fn time_status_page(uri: &str, db: &str, tries: u32) -> anyhow::Result<Duration> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let queue = format!("esr.bench.{}", uuid::Uuid::new_v4().simple());
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_esr-exporter"))
        .arg("run")
        .envs(crate::support::env::daemon_env("esr-bench-status", &queue))
        .env("ESR_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("ESR_MONGODB__URI", uri)
        .env("ESR_MONGODB__DATABASE", db)
        .env("ESR_LOG__LEVEL", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("esr-exporter run")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(port, "/readyz")
        .await
        .map(|(code, _)| code)
        .unwrap_or(0)
        != 200
    {
        if Instant::now() > deadline {
            bail!("the daemon was not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..tries {
        let started = Instant::now();
        let (code, page) = get(port, "/").await?;
        slowest = slowest.max(started.elapsed());
        if code != 200 || !page.contains("</html>") {
            bail!("GET / answered {code}: {page}");
        }
    }
    daemon.kill().await?;
    Ok(slowest)
}

/// One `GET path`: the status code and the body.
async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, response))
}
