//! RabbitMQ helpers shared by the integration suite (`tests/it`) and the
//! fault harness (`tests/fault_harness.rs`).

use anyhow::{bail, Context};
use esr_exporter::config::AmqpSettings;

/// The broker's connections whose client properties carry `name`: one
/// line each, `columns` of `rabbitmqctl list_connections` then the client
/// properties (which carry the connection's name).
pub async fn connections(name: &str, columns: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut args = vec!["list_connections", "-q", "--no-table-headers"];
    args.extend_from_slice(columns);
    args.push("client_properties");
    let listing = rabbitmqctl(&args).await?;
    Ok(listing
        .lines()
        .filter(|line| line.contains(name))
        .map(str::to_owned)
        .collect())
}

/// Forcibly closes the broker connections whose client properties carry
/// `name`, as an operator's `rabbitmqctl close_connection` (or a broker
/// restart) would. Returns how many were closed.
pub async fn close_connections(name: &str) -> anyhow::Result<usize> {
    let listed = connections(name, &["pid"]).await?;
    for line in &listed {
        let pid = line.split_whitespace().next().unwrap_or_default();
        rabbitmqctl(&["close_connection", pid, "forced close by a test"]).await?;
    }
    Ok(listed.len())
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

/// Deletes these queues, as an operator (or a broker policy) might while
/// the daemon runs.
pub async fn delete_queues(amqp: &AmqpSettings, queues: &[String]) -> anyhow::Result<()> {
    let connection = esr_exporter::broker::connect(amqp, "test").await?;
    let channel = connection.create_channel().await?;
    for queue in queues {
        channel.queue_delete(queue, Default::default()).await?;
    }
    let _ = connection.close(200, "done").await;
    Ok(())
}

/// A RabbitMQ memory alarm (a watermark no node stays under): every
/// publishing connection is blocked until the guard is dropped. (The fault
/// harness and the node-wide tests raise it; the integration suite, whose
/// tests run side by side, never does.)
#[allow(dead_code)]
pub struct MemoryAlarm;

#[allow(dead_code)]
impl MemoryAlarm {
    /// Raises the alarm and waits until the node reports it.
    pub async fn raise() -> anyhow::Result<Self> {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]).await?;
        let alarm = Self;
        for _ in 0..100 {
            let alarms = rabbitmqctl(&["eval", "rabbit_alarm:get_alarms()."]).await?;
            if alarms.contains("memory") {
                return Ok(alarm);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        bail!("the memory alarm did not go off")
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .context("rabbitmqctl")?;
    if !output.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
