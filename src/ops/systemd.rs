//! systemd notifications (`Type=notify`): READY=1 as soon as the HTTP
//! endpoints serve (before start-up waits for MongoDB's indexes and the
//! destination's probe, which may take as long as an index build: `/readyz`
//! and STATUS= say what it waits for meanwhile, so `TimeoutStartSec` bounds
//! only binding the port), WATCHDOG=1 at half the unit's `WatchdogSec`
//! while the runtime is responsive, STOPPING=1 on shutdown. Without `NOTIFY_SOCKET` (not under systemd),
//! all of this does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::shutdown::Shutdown;

/// Tells systemd the daemon is ready.
pub fn ready() {
    if let Err(err) = sd_notify::notify(false, &[NotifyState::Ready]) {
        tracing::warn!(error = %crate::error_chain::Chain(&err), "cannot notify systemd (READY=1)");
    }
}

/// Tells systemd what the daemon is doing (`systemctl status` shows it).
pub(crate) fn status(text: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(text)]);
}

/// Tells systemd the daemon is stopping.
pub(crate) fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// How often to ping systemd's watchdog (half the unit's `WatchdogSec`),
/// if the unit asks for pings.
pub(crate) fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// Pings systemd's watchdog every `period` until shutdown.
pub(crate) async fn run_watchdog_pings(period: Duration, mut shutdown: Shutdown) {
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    loop {
        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.recv() => return,
        }
    }
}
