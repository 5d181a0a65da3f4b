//! `last_used_at`, written behind the request path.
//!
//! A request that passes notes its key's use in memory: an atomic maximum on
//! the cached entry, and (once per key per flush) a push onto a short queue.
//! No lock is shared by all requests and nothing is allocated for a key
//! already noted. A background task writes the newest time per key to the
//! store in one batch every flush interval; stores move `last_used_at`
//! forward only. A failed write is kept and retried with the next batch, so
//! an outage delays the write and loses nothing; a request never waits on it.
//! Times are kept to the millisecond.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::MemoryStore;
//! use tower_api_key::usage::UsageRecorder;
//! use tower_api_key::Authenticator;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let usage = UsageRecorder::builder(store.clone())
//!     .flush_interval(Duration::from_secs(5))
//!     .build();
//! let auth = Authenticator::builder(store.clone())
//!     .usage_recorder(usage.clone())
//!     .build();
//! let flusher = usage.spawn_flusher();
//! // ... serve ...
//! flusher.shutdown().await; // one last flush
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cache::Caller;
use crate::key::KeyId;
use crate::store::{KeyStore, StoreError};

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Notes uses in memory and writes them to a store in batches. Cheap to
/// clone; clones share the queue.
#[derive(Clone)]
pub struct UsageRecorder {
    inner: Arc<Inner>,
    interval: Duration,
}

struct Inner {
    store: Arc<dyn KeyStore>,
    /// Cached callers (each holding its key's last use) used since the last flush.
    queue: Mutex<Vec<Caller>>,
    /// Uses whose write failed, retried with the next batch.
    unwritten: tokio::sync::Mutex<HashMap<KeyId, u64>>,
}

impl fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorder")
            .field("flush_interval", &self.interval)
            .field("queued", &self.lock_queue().len())
            .finish_non_exhaustive()
    }
}

impl UsageRecorder {
    /// A recorder writing to `store`, flushing every 5 seconds:
    /// [`UsageRecorder::builder`]`(store).build()`.
    pub fn new(store: impl KeyStore) -> Self {
        Self::builder(store).build()
    }

    /// [`UsageRecorder::new`] for a store that is already shared.
    pub fn from_arc(store: Arc<dyn KeyStore>) -> Self {
        UsageRecorderBuilder::new(store).build()
    }

    /// The settings of a recorder writing to `store`, to
    /// [build](UsageRecorderBuilder::build) once.
    pub fn builder(store: impl KeyStore) -> UsageRecorderBuilder {
        UsageRecorderBuilder::new(Arc::new(store))
    }

    /// The flush interval.
    pub fn flush_interval(&self) -> Duration {
        self.interval
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<Caller>> {
        self.inner.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a use of `entry` at `at`. Lock-free unless this is the key's
    /// first use since the last flush.
    pub(crate) fn note(&self, caller: &Caller, at: SystemTime) {
        if caller.note_use(millis(at)) {
            self.lock_queue().push(caller.clone());
        }
    }

    /// Writes every noted use now, in one [`KeyStore::record_usage`] call.
    /// Returns how many keys were written. On error the uses are kept for
    /// the next flush.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let mut unwritten = self.inner.unwritten.lock().await;
        let queued = std::mem::take(&mut *self.lock_queue());
        for caller in queued {
            let ms = caller.take_last_use();
            let newest = unwritten.entry(caller.key_id()).or_insert(0);
            *newest = (*newest).max(ms);
        }
        if unwritten.is_empty() {
            return Ok(0);
        }
        let batch: Vec<(KeyId, SystemTime)> = unwritten
            .iter()
            .map(|(id, ms)| (*id, UNIX_EPOCH + Duration::from_millis(*ms)))
            .collect();
        self.inner.store.record_usage(&batch).await?;
        unwritten.clear();
        Ok(batch.len())
    }

    /// Spawns the background flusher on the current tokio runtime.
    pub fn spawn_flusher(&self) -> UsageFlusher {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let recorder = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(recorder.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if let Err(e) = recorder.flush().await {
                            tracing::warn!(error = %e, "api key usage flush failed; will retry");
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            recorder.flush().await
        });
        UsageFlusher { stop, task }
    }
}

/// Settings of a [`UsageRecorder`], made by [`UsageRecorder::builder`].
#[must_use = "a UsageRecorderBuilder does nothing until `.build()`"]
pub struct UsageRecorderBuilder {
    store: Arc<dyn KeyStore>,
    interval: Duration,
}

impl fmt::Debug for UsageRecorderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorderBuilder")
            .field("flush_interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl UsageRecorderBuilder {
    fn new(store: Arc<dyn KeyStore>) -> Self {
        Self {
            store,
            interval: Duration::from_secs(5),
        }
    }

    /// How often the flusher started by [`UsageRecorder::spawn_flusher`]
    /// writes (default 5 s).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The recorder. Clones of it share its queue.
    pub fn build(self) -> UsageRecorder {
        UsageRecorder {
            inner: Arc::new(Inner {
                store: self.store,
                queue: Mutex::new(Vec::new()),
                unwritten: tokio::sync::Mutex::new(HashMap::new()),
            }),
            interval: self.interval,
        }
    }
}

/// The running flusher task.
#[derive(Debug)]
pub struct UsageFlusher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<usize, StoreError>>,
}

impl UsageFlusher {
    /// Stops the task after one final flush, and returns that flush's result.
    pub async fn shutdown(self) -> Result<usize, StoreError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(StoreError::backend(format!(
                "usage flusher task failed: {e}"
            ))),
        }
    }
}
