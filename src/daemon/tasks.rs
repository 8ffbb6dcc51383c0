//! The daemon's long-lived tasks, supervised: each is spawned under a
//! name, and one that ends or panics before shutdown is reported (ERROR,
//! naming it) so the daemon stops and exits non-zero instead of running on
//! without it while `/healthz` stays 200.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};

/// The set of running tasks.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

/// A task that ended before shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskEnded {
    /// The task's name (`http`, `consumer`, `scheduler`, ...).
    pub(crate) name: &'static str,
    /// The panic's message, if it panicked.
    pub(crate) panic: Option<String>,
}

impl fmt::Display for TaskEnded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.panic {
            Some(message) => write!(f, "the {} task panicked: {message}", self.name),
            None => write!(f, "the {} task ended before shutdown", self.name),
        }
    }
}

impl std::error::Error for TaskEnded {}

impl Tasks {
    /// Spawns `task` under `name`.
    pub(crate) fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.set.spawn(fault::inject(name, task));
        self.names.insert(handle.id(), name);
    }

    /// Waits for the first task to end, and logs it at ERROR. Pends for
    /// ever when no task runs.
    pub(crate) async fn next_end(&mut self) -> TaskEnded {
        let Some(joined) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, panic) = match joined {
            Ok((id, ())) => (id, None),
            Err(err) => (err.id(), Some(panic_message(err))),
        };
        let ended = TaskEnded {
            name: self.names.remove(&id).unwrap_or("unnamed"),
            panic,
        };
        tracing::error!(
            task = ended.name,
            panic = ended.panic.as_deref(),
            "task ended before shutdown; the daemon stops"
        );
        ended
    }

    /// Waits for every task to finish, at most `grace`; true if they did.
    /// Tasks still running after it are left to the runtime.
    pub(crate) async fn drain(mut self, grace: Duration) -> bool {
        let all = async { while self.set.join_next().await.is_some() {} };
        let drained = tokio::time::timeout(grace, all).await.is_ok();
        self.set.detach_all();
        drained
    }
}

fn panic_message(err: JoinError) -> String {
    if !err.is_panic() {
        return err.to_string();
    }
    let payload = err.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// A test hook in debug builds only: `TEST_ESR_EXPORTER_FAIL_TASK=<name>`
/// makes the task of that name panic as it starts, and `<name>:end` makes
/// it return at once, so tests of the binary can check the supervision.
/// (Not `ESR_*`: those are settings.)
mod fault {
    use std::future::Future;

    #[cfg(debug_assertions)]
    pub(super) async fn inject<F: Future<Output = ()>>(name: &'static str, task: F) {
        let wanted = std::env::var("TEST_ESR_EXPORTER_FAIL_TASK").unwrap_or_default();
        if wanted == name {
            panic!("injected failure of the {name} task");
        }
        if wanted.strip_suffix(":end") == Some(name) {
            return;
        }
        task.await;
    }

    #[cfg(not(debug_assertions))]
    pub(super) async fn inject<F: Future<Output = ()>>(_name: &'static str, task: F) {
        task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_returns_early_is_reported_by_name() {
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("quitter", async {});
        let ended = tasks.next_end().await;
        assert_eq!(
            ended,
            TaskEnded {
                name: "quitter",
                panic: None
            }
        );
        assert_eq!(ended.to_string(), "the quitter task ended before shutdown");
    }

    #[tokio::test]
    async fn a_task_that_panics_is_reported_with_its_message() {
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("crasher", async { panic!("boom") });
        let ended = tasks.next_end().await;
        assert_eq!(ended.name, "crasher");
        assert_eq!(ended.panic.as_deref(), Some("boom"));
        assert_eq!(ended.to_string(), "the crasher task panicked: boom");
    }

    #[tokio::test(start_paused = true)]
    async fn draining_waits_for_the_tasks_within_the_grace_period() {
        let mut tasks = Tasks::default();
        tasks.spawn("quick", tokio::time::sleep(Duration::from_secs(1)));
        assert!(tasks.drain(Duration::from_secs(5)).await);
        let mut tasks = Tasks::default();
        tasks.spawn("slow", tokio::time::sleep(Duration::from_secs(60)));
        assert!(!tasks.drain(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn with_no_task_nothing_ends() {
        let mut tasks = Tasks::default();
        let waited = tokio::time::timeout(Duration::from_millis(50), tasks.next_end()).await;
        assert!(waited.is_err());
    }
}
