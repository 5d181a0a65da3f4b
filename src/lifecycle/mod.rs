//! The key lifecycle task: warns before keys expire, announces expiries, and
//! (if asked) retires keys nobody uses.
//!
//! A [`Lifecycle`] runs over a [`LifecycleStore`] (the memory store and
//! the SQL stores) and hands each [`KeyEvent`] to one hook, the same hook
//! type as the secret-scanning receiver's `on_compromised`. Each run, on
//! the store's clock:
//!
//! - a key expiring within [`warn_before`](LifecycleBuilder::warn_before)
//!   (default 7 days) gets [`KeyEvent::ExpiringSoon`], once per expiry date
//!   (a changed expiry is warned about again);
//! - a key that expired gets [`KeyEvent::Expired`] once, if it expired at
//!   most [`CATCH_UP`] (or `warn_before`, if longer) ago: a task stopped
//!   longer than that does not announce the older expiries;
//! - with [`retire_unused_after`](LifecycleBuilder::retire_unused_after),
//!   a key unused (never used: since its creation) for that period less
//!   `warn_before` gets [`KeyEvent::UnusedWarning`] with the date it will
//!   stop working, at least `warn_before` ahead; on that date its
//!   `expires_at` is set (it stops everywhere within the cache bound, and
//!   `retired_unused_since` says why) and it gets [`KeyEvent::Retired`]
//!   instead of `Expired`. A use in between cancels the retirement. Keys
//!   created with `retire_when_unused: false` are never retired. No key is
//!   ever deleted.
//!
//! The store records every notice it sends, in one atomic step per key and
//! window, so an event is emitted at most once per key and window whatever
//! the number of runs, restarts and replicas; and a lease row in the store
//! lets one replica at a time do the work.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::event::KeyEvent;
//! use tower_api_key::lifecycle::Lifecycle;
//! use tower_api_key::store::NewKey;
//! use tower_api_key::{KeyStore, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let soon = std::time::SystemTime::now() + Duration::from_secs(3 * 86_400);
//! store.create(NewKey::new("sa-1").with_expires_at(soon)).await?;
//!
//! let lifecycle = Lifecycle::builder(store.clone())
//!     .warn_before(Duration::from_secs(7 * 86_400))
//!     .on_event(|event: KeyEvent| println!("key {}: {}", event.key().record.key_id, event.kind()))
//!     .build();
//! assert_eq!(lifecycle.run_once().await?.expiring_soon, 1);
//! assert_eq!(lifecycle.run_once().await?.expiring_soon, 0); // told once
//!
//! // In a server, a task does the runs (it stops when the handle is dropped):
//! let handle = Lifecycle::builder(store).on_event(|_| {}).spawn();
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! `docs/lifecycle.md` in the repository has the promises in full and an
//! example hook.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::event::{self, Hook, KeyEvent};
use crate::store::{latest_time, KeyInfo, LifecycleStore, NoticeKind, StoreError};

/// The `tracing` target of the task's events.
pub const LOG_TARGET: &str = "tower_api_key::lifecycle";

/// The name of the lease the task takes in the store each run.
pub const LEASE_NAME: &str = "tower_api_key_lifecycle";

/// How far back a run looks for expiries to announce, unless
/// [`warn_before`](LifecycleBuilder::warn_before) is longer: 7 days.
pub const CATCH_UP: Duration = Duration::from_secs(7 * 86_400);

/// The default warning period: 7 days.
pub const DEFAULT_WARN_BEFORE: Duration = Duration::from_secs(7 * 86_400);

/// The default time between runs of a spawned task: 1 minute.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);

/// The shortest time between runs; a shorter [`every`](LifecycleBuilder::every)
/// is taken as this.
pub const MIN_EVERY: Duration = Duration::from_millis(10);

/// The longest time between runs; a longer [`every`](LifecycleBuilder::every)
/// is taken as this (a timer cannot be set to any duration: tokio's
/// interval panics when a late tick pushes it past the end of time).
pub const MAX_EVERY: Duration = Duration::from_secs(86_400);

/// Keys read per store call.
const PAGE: usize = 500;

/// The lease lasts this many runs, so a replica that stops is replaced
/// after about that long, and a slow run does not lose it.
const LEASE_RUNS: u32 = 3;

/// The lifecycle task over one store: run it with
/// [`run_once`](Self::run_once) (tests, cron), or let
/// [`LifecycleBuilder::spawn`] run it every so often.
pub struct Lifecycle {
    store: Arc<dyn LifecycleStore>,
    holder: String,
    warn_before: Duration,
    retire_after: Option<Duration>,
    every: Duration,
    hook: Option<Hook>,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("holder", &self.holder)
            .field("warn_before", &self.warn_before)
            .field("retire_unused_after", &self.retire_after)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// What one [`Lifecycle::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// This instance held the store's lease and did the run; `false`:
    /// another replica holds it, and nothing was done.
    pub leased: bool,
    /// [`KeyEvent::ExpiringSoon`] events emitted.
    pub expiring_soon: usize,
    /// [`KeyEvent::Expired`] events emitted.
    pub expired: usize,
    /// [`KeyEvent::UnusedWarning`] events emitted.
    pub unused_warnings: usize,
    /// [`KeyEvent::Retired`] events emitted (keys retired).
    pub retired: usize,
    /// Store errors met and logged; the keys they concern are tried again
    /// next run.
    pub errors: usize,
}

impl RunReport {
    /// Every event emitted.
    pub fn events(&self) -> usize {
        self.expiring_soon + self.expired + self.unused_warnings + self.retired
    }
}

/// Settings of a [`Lifecycle`], made by [`Lifecycle::builder`].
#[must_use = "a LifecycleBuilder does nothing until `.build()` or `.spawn()`"]
pub struct LifecycleBuilder {
    store: Arc<dyn LifecycleStore>,
    warn_before: Duration,
    retire_after: Option<Duration>,
    every: Duration,
    hook: Option<Hook>,
}

impl fmt::Debug for LifecycleBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleBuilder")
            .field("warn_before", &self.warn_before)
            .field("retire_unused_after", &self.retire_after)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// A builder over `store`.
    pub fn builder(store: impl LifecycleStore) -> LifecycleBuilder {
        Self::builder_from_arc(Arc::new(store))
    }

    /// [`builder`](Self::builder) over a store already shared.
    pub fn builder_from_arc(store: Arc<dyn LifecycleStore>) -> LifecycleBuilder {
        LifecycleBuilder {
            store,
            warn_before: DEFAULT_WARN_BEFORE,
            retire_after: None,
            every: DEFAULT_EVERY,
            hook: None,
        }
    }
}

impl LifecycleBuilder {
    /// How long before a key's expiry it gets [`KeyEvent::ExpiringSoon`],
    /// and the least notice of a retirement (default 7 days).
    pub fn warn_before(mut self, period: Duration) -> Self {
        self.warn_before = period;
        self
    }

    /// Retires keys unused for `period` (never used: since their creation),
    /// announced `warn_before` ahead (off by default). Keys created with
    /// `retire_when_unused: false` are left alone.
    pub fn retire_unused_after(mut self, period: Duration) -> Self {
        self.retire_after = Some(period);
        self
    }

    /// How often the spawned task runs (default 1 minute, between
    /// [`MIN_EVERY`] and [`MAX_EVERY`]). The store lease lasts three times this, so it also
    /// bounds how long a stopped replica keeps the others waiting.
    pub fn every(mut self, interval: Duration) -> Self {
        self.every = interval.clamp(MIN_EVERY, MAX_EVERY);
        self
    }

    /// Called with each event, on the task (keep it short or spawn). The
    /// secret-scanning receiver's `on_compromised` takes the same hook. A
    /// panic in it is logged and does not stop the events after it (the
    /// event is not sent again).
    pub fn on_event(mut self, hook: impl Fn(KeyEvent) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The lifecycle, run by calling [`Lifecycle::run_once`].
    pub fn build(self) -> Lifecycle {
        Lifecycle {
            store: self.store,
            holder: holder_id(),
            warn_before: self.warn_before,
            retire_after: self.retire_after,
            every: self.every,
            hook: self.hook,
        }
    }

    /// Spawns the task on the current tokio runtime (panics outside one, as
    /// `tokio::spawn` does): a run at once, then one every
    /// [`every`](Self::every). It stops when the handle is dropped or
    /// [shut down](LifecycleHandle::shutdown), after the run under way.
    pub fn spawn(self) -> LifecycleHandle {
        let lifecycle = self.build();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(lifecycle.every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {}
                }
                // A panicking store must not end the task: the next run
                // tries again.
                match AssertUnwindSafe(lifecycle.run_once()).catch_unwind().await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(target: LOG_TARGET, error = %e, "key lifecycle run failed; will retry");
                    }
                    Err(_) => {
                        tracing::error!(target: LOG_TARGET, "key lifecycle run panicked; will retry");
                    }
                }
            }
        });
        LifecycleHandle { stop, task }
    }
}

/// The running task of [`LifecycleBuilder::spawn`]. Dropping it stops the
/// task after the run under way.
#[derive(Debug)]
#[must_use = "dropping a LifecycleHandle stops the task"]
pub struct LifecycleHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl LifecycleHandle {
    /// Stops the task and waits for the run under way to finish.
    pub async fn shutdown(self) {
        let LifecycleHandle { stop, task } = self;
        let _ = stop.send(());
        let _ = task.await;
    }
}

/// A random id for this instance's lease.
fn holder_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // It only needs to differ between instances: the process, the
        // time, and a count of the instances of this process.
        static MADE: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let made = MADE.fetch_add(1, Ordering::Relaxed);
        bytes =
            (nanos ^ (u64::from(std::process::id()) << 40) ^ made.rotate_left(20)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn before(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `t + d`, at most the latest time a store keeps.
fn after(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .unwrap_or_else(latest_time)
        .min(latest_time())
}

/// Whether the key was retired for disuse (its expiry is the retirement).
fn retired_for_disuse(key: &KeyInfo) -> bool {
    key.record.retired_unused_since.is_some()
}

impl Lifecycle {
    /// One run: takes the store's lease (a replica without it does nothing,
    /// [`RunReport::leased`] false), then sends the expiry warnings, the
    /// expiries, and the retirement warnings and retirements due, each at
    /// most once per key and window. Store errors on single keys are logged
    /// and counted in [`RunReport::errors`], and the run goes on; `Err` if
    /// the lease cannot be had.
    pub async fn run_once(&self) -> Result<RunReport, StoreError> {
        let mut report = RunReport::default();
        if !self.lease().await? {
            tracing::debug!(target: LOG_TARGET, "another replica holds the key lifecycle lease");
            return Ok(report);
        }
        report.leased = true;
        let now = self.store.now();
        self.expiring_soon(now, &mut report).await;
        self.expired(now, &mut report).await;
        if let Some(period) = self.retire_after {
            // A slow first part must not let another replica start too.
            match self.lease().await {
                Ok(true) => self.retire_unused(now, period, &mut report).await,
                Ok(false) => {}
                Err(e) => self.failed(&mut report, "lease", None, &e),
            }
        }
        if report.errors > 0 {
            tracing::warn!(target: LOG_TARGET, errors = report.errors, "key lifecycle run met store errors");
        }
        Ok(report)
    }

    async fn lease(&self) -> Result<bool, StoreError> {
        let ttl = self.every.saturating_mul(LEASE_RUNS);
        self.store.lease(LEASE_NAME, &self.holder, ttl).await
    }

    fn failed(
        &self,
        report: &mut RunReport,
        step: &'static str,
        key: Option<&KeyInfo>,
        error: &StoreError,
    ) {
        report.errors += 1;
        match key {
            Some(key) => {
                let key_id = key.record.key_id;
                tracing::warn!(target: LOG_TARGET, %key_id, step, %error, "key lifecycle step failed");
            }
            None => tracing::warn!(target: LOG_TARGET, step, %error, "key lifecycle step failed"),
        }
    }

    fn emit(&self, event: KeyEvent) {
        let key_id = event.key().record.key_id;
        let kind = event.kind();
        tracing::info!(target: LOG_TARGET, %key_id, kind, "key event");
        if !event::emit(self.hook.as_ref(), event) {
            tracing::error!(target: LOG_TARGET, %key_id, kind, "the key event hook panicked");
        }
    }

    /// Every key expiring in `from..until`, page by page; `None` after a
    /// failed read (logged and counted).
    async fn expiring_page(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<crate::key::KeyId>,
        report: &mut RunReport,
    ) -> Option<Vec<KeyInfo>> {
        match self.store.expiring(from, until, after, PAGE).await {
            Ok(page) if page.is_empty() => None,
            Ok(page) => Some(page),
            Err(e) => {
                self.failed(report, "expiring", None, &e);
                None
            }
        }
    }

    async fn expiring_soon(&self, now: SystemTime, report: &mut RunReport) {
        let until = after(now, self.warn_before);
        let mut cursor = None;
        while let Some(page) = self.expiring_page(now, until, cursor, report).await {
            cursor = page.last().map(|k| k.record.key_id);
            for key in page {
                let Some(expires_at) = key.record.expires_at else {
                    continue;
                };
                // Expiry is exclusive: a key expiring now has expired (the
                // next run announces it), and a retired key's expiry is
                // its retirement, announced as such.
                if key.record.is_expired_at(now) || retired_for_disuse(&key) {
                    continue;
                }
                let id = key.record.key_id;
                match self
                    .store
                    .record_notice(id, NoticeKind::ExpiringSoon, expires_at, Some(expires_at))
                    .await
                {
                    Ok(true) => {
                        report.expiring_soon += 1;
                        self.emit(KeyEvent::ExpiringSoon { key, expires_at });
                    }
                    Ok(false) => {}
                    Err(e) => self.failed(report, "expiring_soon", Some(&key), &e),
                }
            }
        }
    }

    async fn expired(&self, now: SystemTime, report: &mut RunReport) {
        let from = before(now, self.warn_before.max(CATCH_UP));
        let mut cursor = None;
        while let Some(page) = self.expiring_page(from, now, cursor, report).await {
            cursor = page.last().map(|k| k.record.key_id);
            for key in page {
                let Some(expires_at) = key.record.expires_at else {
                    continue;
                };
                self.announce_expiry(key, expires_at, report).await;
            }
        }
    }

    /// Records the key's expiry at `expires_at` and emits it once: as
    /// `Retired` for a key retired for disuse (the retirement step and this
    /// one share the notice, so a retirement is announced once even if the
    /// task stopped between the two), else as `Expired`.
    async fn announce_expiry(&self, key: KeyInfo, expires_at: SystemTime, report: &mut RunReport) {
        let id = key.record.key_id;
        match self
            .store
            .record_notice(id, NoticeKind::Expired, expires_at, None)
            .await
        {
            Ok(true) if retired_for_disuse(&key) => {
                report.retired += 1;
                self.emit(KeyEvent::Retired { key });
            }
            Ok(true) => {
                report.expired += 1;
                self.emit(KeyEvent::Expired { key });
            }
            Ok(false) => {}
            Err(e) => self.failed(report, "expired", Some(&key), &e),
        }
    }

    async fn retire_unused(&self, now: SystemTime, period: Duration, report: &mut RunReport) {
        let unused_before = before(now, period.saturating_sub(self.warn_before));
        let mut cursor = None;
        loop {
            let page = match self.store.unused(unused_before, cursor, PAGE).await {
                Ok(page) if page.is_empty() => return,
                Ok(page) => page,
                Err(e) => return self.failed(report, "unused", None, &e),
            };
            cursor = page.last().map(|k| k.record.key_id);
            for key in page {
                self.retire_one(now, period, key, report).await;
            }
        }
    }

    /// Warns about, or retires, one unused key.
    async fn retire_one(
        &self,
        now: SystemTime,
        period: Duration,
        key: KeyInfo,
        report: &mut RunReport,
    ) {
        if !key.record.retire_when_unused || retired_for_disuse(&key) {
            return;
        }
        let id = key.record.key_id;
        // The window: the last use the warning is about. A later use makes
        // a new window, and the old warning no longer retires anything.
        let basis = key.last_used_at.unwrap_or(key.record.created_at);
        let notice = match self
            .store
            .notice(id, NoticeKind::UnusedWarning, basis)
            .await
        {
            Ok(notice) => notice,
            Err(e) => return self.failed(report, "unused_warning", Some(&key), &e),
        };
        let Some(notice) = notice else {
            let retires_at = after(basis, period).max(after(now, self.warn_before));
            if key.record.expires_at.is_some_and(|e| e <= retires_at) {
                // It expires first anyway (or already has): the expiry
                // notices cover it, a retirement would change nothing.
                return;
            }
            match self
                .store
                .record_notice(id, NoticeKind::UnusedWarning, basis, Some(retires_at))
                .await
            {
                Ok(true) => {
                    report.unused_warnings += 1;
                    self.emit(KeyEvent::UnusedWarning { key, retires_at });
                }
                Ok(false) => {}
                Err(e) => self.failed(report, "unused_warning", Some(&key), &e),
            }
            return;
        };
        // A notice recorded without its date (another version's): the
        // period from the last use, at least the warning period after it.
        let at = notice
            .announced
            .unwrap_or_else(|| after(basis, period).max(after(notice.sent_at, self.warn_before)));
        if now < at {
            return;
        }
        // The retirement's notice is recorded before the write, as every
        // notice before its event: at most once per spell of disuse. Were
        // it recorded after, a failure in between followed by a revival
        // (a new expiry clears the retirement) would leave no trace, and
        // the next run would retire the revived key again. A spell already
        // retired (`false`) is not retired again until the key is used and
        // falls unused anew.
        match self
            .store
            .record_notice(id, NoticeKind::Expired, at, None)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return self.failed(report, "retire", Some(&key), &e),
        }
        match self
            .store
            .retire_unused(id, key.last_used_at, basis, at)
            .await
        {
            Ok(Some(retired)) => {
                let key_id = retired.record.key_id;
                tracing::info!(target: LOG_TARGET, %key_id, "api key retired for disuse");
                report.retired += 1;
                self.emit(KeyEvent::Retired { key: retired });
            }
            Ok(None) => {}
            Err(e) => self.failed(report, "retire", Some(&key), &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn every_is_kept_between_its_bounds() {
        let every = |d| {
            Lifecycle::builder(MemoryStore::new())
                .every(d)
                .build()
                .every
        };
        assert_eq!(every(Duration::ZERO), MIN_EVERY);
        assert_eq!(every(Duration::MAX), MAX_EVERY);
        assert_eq!(every(Duration::from_secs(90)), Duration::from_secs(90));
    }
}
