//! The status page, `GET /`, as a person sees it: a running daemon's page
//! loaded in headless Chromium (Debian `chromium`, installed by
//! `scripts/check-deploy`), its rendered text checked and a screenshot
//! taken; the page names deaneries, counts, files and run ids but never a
//! field of a record; `http.status_page = false` turns it off; a MongoDB
//! that does not answer gives a 503 page that says so, at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::delivery::ready_daemon;
use crate::helpers::{binary, deanery, eventually, free_port, http_get, spawn_app, unique_deanery};

/// Headless Chromium: the rendered DOM of `url`, and a screenshot to
/// `shot`.
fn chromium(url: &str, shot: &Path) -> String {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(["--window-size=1280,900", "--virtual-time-budget=2000"])
            .args(args)
            .arg(url)
            .output()
            .expect("chromium (Debian chromium; scripts/check-deploy installs it)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&[&format!("--screenshot={}", shot.display())]);
    run(&["--dump-dom"])
}

/// Where the screenshot goes (kept after the test: the README shows it).
fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png")
}

#[tokio::test]
async fn the_status_page_shows_deaneries_files_and_checks_in_a_browser_and_no_record_field() {
    let (app, code) = (spawn_app().await, unique_deanery());
    app.seed(&code, 30).await;
    let first = app.exporter.run(&deanery(&code)).await;
    let file = first.file.clone().expect("a file");
    app.seed(&code, 7).await;
    let env = [
        ("ESR_SCHEDULE__ENABLED", "true"),
        ("ESR_SCHEDULE__CRON", "0 0 13 1 1 *"),
        ("ESR_SCHEDULE__DEANERIES", code.as_str()),
        ("ESR_WATCHDOG__CATCH_UP", "false"),
        ("ESR_WATCHDOG__DUE_WITHIN_DAYS", "365"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let (mut daemon, addr) = ready_daemon(&app, &env).await;

    let (status, page) = http_get(addr, "/").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(r#"<meta http-equiv="refresh" content="30">"#),
        "{page}"
    );
    for shown in [
        code.as_str(),
        &file,
        first.run_id.as_deref().unwrap(),
        "Ready",
        "2027-01-01T13:00:00Z",
    ] {
        assert!(page.contains(shown), "the page shows {shown}: {page}");
    }
    let row = page.split(&format!("<td>{code}</td>")).nth(1).unwrap();
    assert!(
        row.trim_start().starts_with(r#"<td class="n">7</td>"#),
        "7 waiting: {row}"
    );
    for private in [
        "First1",
        "Last2",
        "QQ123456C",
        "@example.nhs.uk",
        "Smith",
        "POS/",
    ] {
        assert!(
            !page.contains(private),
            "the page shows a record's field ({private})"
        );
    }

    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    let dom = chromium(&format!("http://{addr}/"), &shot);
    assert!(dom.contains(&file) && dom.contains("Due soon"), "{dom}");
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("screenshot: {}", shot.display());
    daemon.kill().await.unwrap();
}

#[tokio::test]
async fn http_status_page_false_turns_the_page_off() {
    let app = spawn_app().await;
    let env = [("ESR_HTTP__STATUS_PAGE".to_owned(), "false".to_owned())];
    let (mut daemon, addr) = ready_daemon(&app, &env).await;
    let (status, _) = http_get(addr, "/").await;
    assert_eq!(status, 404);
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    daemon.kill().await.unwrap();
}

#[tokio::test]
async fn a_mongodb_that_does_not_answer_gives_a_503_page_that_says_so() {
    let app = spawn_app().await;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mongodb = "mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=200";
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("ESR_MONGODB__URI", mongodb),
        ("ESR_HTTP__LISTEN", listen.as_str()),
    ];
    let mut daemon = binary(&app, &["run"], &env).spawn().unwrap();
    eventually("listening", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let asked = Instant::now();
    let (status, page) = http_get(addr, "/").await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("MongoDB is unavailable"), "{page}");
    daemon.kill().await.unwrap();
}
