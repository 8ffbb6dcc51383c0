//! RabbitMQ helpers shared by the integration suite (`tests/it`) and the
//! fault harness (`tests/fault_harness.rs`).

use anyhow::{bail, Context};
use esr_exporter::config::AmqpSettings;

/// Forcibly closes the broker connections whose client properties carry
/// `name`, as an operator's `rabbitmqctl close_connection` (or a broker
/// restart) would. Returns how many were closed.
pub async fn close_connections(name: &str) -> anyhow::Result<usize> {
    let listing = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .await
        .context("rabbitmqctl")?;
    let mut closed = 0;
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        if !line.contains(name) {
            continue;
        }
        let pid = line.split_whitespace().next().unwrap_or_default();
        let status = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "forced close by a test"])
            .status()
            .await?;
        if !status.success() {
            bail!("rabbitmqctl close_connection {pid} failed: {status}");
        }
        closed += 1;
    }
    Ok(closed)
}

/// Ready messages in a queue of `amqp`'s topology (declared first, so the
/// queue exists).
pub async fn queue_len(amqp: &AmqpSettings, queue: &str) -> anyhow::Result<u32> {
    let (connection, channel) = esr_exporter::broker::open_declared(amqp, "test").await?;
    let declared = channel
        .queue_declare(
            queue,
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    let _ = connection.close(200, "done").await;
    Ok(declared.message_count())
}

/// Deletes the command queue, the dead-letter queue and exchange, and the
/// retry queue; best effort.
pub async fn delete_topology(amqp: &AmqpSettings) {
    let Ok(connection) = esr_exporter::broker::connect(amqp, "test").await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for queue in [
            amqp.queue.clone(),
            amqp.dead_letter_queue(),
            amqp.retry_queue(),
        ] {
            let _ = channel.queue_delete(&queue, Default::default()).await;
        }
        let _ = channel
            .exchange_delete(&amqp.dead_letter_exchange(), Default::default())
            .await;
    }
    let _ = connection.close(200, "done").await;
}
