//! A store's background task (SQLite's change watcher, PostgreSQL's
//! listener) and its stop signal.

use std::fmt;
use std::sync::Mutex;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// A store's background task: told to stop by [`stop`](Self::stop), or
/// when this is dropped (with the last clone of its store).
pub struct BackgroundTask {
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for BackgroundTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundTask")
            .field("stopped", &*self.shutdown.borrow())
            .finish_non_exhaustive()
    }
}

impl BackgroundTask {
    /// The task `spawn` starts with the receiver of its stop signal (`true`
    /// once it is to stop; closed when this is dropped).
    pub fn start(spawn: impl FnOnce(watch::Receiver<bool>) -> JoinHandle<()>) -> Self {
        let (shutdown, stop) = watch::channel(false);
        Self {
            shutdown,
            task: Mutex::new(Some(spawn(stop))),
        }
    }

    /// The task that reads `log` every `every` and publishes what changed
    /// on `bus` ([`poll_change_log`](crate::poll_change_log); `name` names
    /// the log in its warnings), on the current runtime.
    pub fn poll_change_log<L: crate::ChangeLog>(
        log: L,
        bus: tower_api_key::Invalidations,
        every: std::time::Duration,
        name: &'static str,
    ) -> Self {
        Self::start(|stop| tokio::spawn(crate::poll_change_log(log, bus, every, stop, name)))
    }

    /// Tells the task to stop and waits for it.
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// A handle that says whether the task has finished, while it has not
    /// been waited for.
    pub fn abort_handle(&self) -> Option<AbortHandle> {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        task.as_ref().map(JoinHandle::abort_handle)
    }
}
