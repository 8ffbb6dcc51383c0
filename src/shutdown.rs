//! Graceful shutdown: one signal, many listeners. Each long-lived task
//! holds a [`Shutdown`] and checks it at its safe points; the library
//! installs no signal handler (the binary does).

use tokio::sync::watch;

/// Listens for the shutdown signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Sends the shutdown signal.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    /// A connected trigger and listener.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// A listener that never fires (one-off CLI runs).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive for ever so `recv` pends instead of returning.
        std::mem::forget(tx);
        Shutdown { rx }
    }

    /// True once shutdown has been signalled.
    pub(crate) fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits for the signal (returns at once if it was already sent, or if
    /// the trigger is gone).
    pub(crate) async fn recv(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

impl ShutdownTrigger {
    /// Signals every listener.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[tokio::test]
    async fn every_listener_sees_the_signal() {
        let (trigger, first) = Shutdown::new();
        let mut second = first.clone();
        assert!(!first.is_shutdown());
        trigger.trigger();
        second.recv().await;
        assert!(first.is_shutdown() && second.is_shutdown());
    }
}
