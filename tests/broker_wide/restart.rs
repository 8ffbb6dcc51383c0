//! A broker restart under the real daemon: the consumer reconnects and
//! says so at WARN; the AMQP client's own lines never reach ERROR.

use std::time::Duration;

use esr_exporter::domain::Slot;

use crate::helpers::{binary, eventually, free_port, spawn_app, unique_deanery, Watched};
use crate::{log_lines, rabbitmqctl, readyz, Restore, NODE};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_the_daemon_is_a_warning_not_an_error() {
    let _node = NODE.lock().await;
    let app = spawn_app().await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = addr.to_string();
    let daemon = Watched::spawn(binary(
        &app,
        &["run"],
        &[("ESR_HTTP__LISTEN", listen.as_str())],
    ));
    let ready = || async { readyz(addr).await == 200 };
    eventually("ready", WAIT, ready).await;

    rabbitmqctl(&["stop_app"]);
    let restart = Restore(vec!["start_app"]);
    eventually("not ready while the broker is down", WAIT, || async {
        readyz(addr).await == 503
    })
    .await;
    drop(restart);
    eventually("ready again", WAIT, ready).await;
    let code = unique_deanery();
    app.seed(&code, 3).await;
    app.publish_command(&code, Slot::Manual).await;
    eventually("exported after the restart", WAIT, || async {
        app.files()
            .iter()
            .any(|f| f.starts_with(&format!("DE_{code}_")))
    })
    .await;
    let (status, stderr) = daemon.terminate().await;

    assert!(status.success(), "{status:?}\n{stderr}");
    let lines = log_lines(&stderr);
    let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(
        errors.is_empty(),
        "no ERROR for a broker restart: {errors:#?}"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "WARN"
            && l["message"] == "RabbitMQ connection unavailable; reconnecting"),
        "{stderr}"
    );
    app.delete_broker_topology().await;
}
