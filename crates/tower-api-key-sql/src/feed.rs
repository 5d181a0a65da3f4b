//! A store's change feeds: a [`Listener`], a change-log poll, or both
//! ([`ChangeFeed`]), started and stopped together ([`ChangeFeeds`]).

use std::time::Duration;

use tower_api_key::Invalidations;

use crate::{BackgroundTask, BoxError, ChangeLog, Listener, ListenerSettings, Subscription};

/// How often a store reads the change log by default: see [`ChangeFeed`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Which feeds bring a store the changes other replicas commit (revokes,
/// reissues, updates, credit and account-limit changes), so that its cache
/// drops what they changed; set with the store builder's `change_feed`.
///
/// | feed | a change reaches this store within | server connections |
/// |------|------------------------------------|--------------------|
/// | `Listen` | the NOTIFY delay (milliseconds) while listening; a lost notification waits for the positive TTL | pool + 1 |
/// | `Poll(every)` | `every` plus one query, through any pooler | pool |
/// | `ListenAndPoll(every)` (default, 250 ms) | the NOTIFY delay, and never more than `every` plus one query | pool + 1 |
///
/// LISTEN needs a session: through a transaction-mode pooler it hears
/// nothing (polling still carries every change), so point it at the
/// database or a session-mode pooler (PostgreSQL's `listen_config`), or
/// poll alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeFeed {
    /// LISTEN/NOTIFY alone: the store fails to connect when it cannot listen.
    Listen,
    /// The change log, read at this interval (1 ms at least); no LISTEN
    /// connection.
    Poll(Duration),
    /// Both: LISTEN for speed, the change log as the safety net. The store
    /// connects even when LISTEN fails, and keeps trying to listen.
    ListenAndPoll(Duration),
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self::ListenAndPoll(DEFAULT_POLL_INTERVAL)
    }
}

impl ChangeFeed {
    /// Whether the store listens.
    pub fn listens(self) -> bool {
        matches!(self, Self::Listen | Self::ListenAndPoll(_))
    }

    /// How often the store reads the change log, if it does.
    pub fn poll_interval(self) -> Option<Duration> {
        match self {
            Self::Listen => None,
            Self::Poll(every) | Self::ListenAndPoll(every) => {
                Some(every.max(Duration::from_millis(1)))
            }
        }
    }
}

/// A store's running feeds: its listener (or [`Listener::off`]) and the
/// tasks that listen and poll; they stop with [`stop`](Self::stop), or when
/// this is dropped.
#[derive(Debug)]
pub struct ChangeFeeds {
    listener: Listener,
    listening: Option<BackgroundTask>,
    polling: Option<BackgroundTask>,
}

impl ChangeFeeds {
    /// Starts `feed` on `bus`: listening through `subscription`, polling
    /// `log` (`name` names it in warnings). Waits until the listener listens,
    /// at most twice `settings.timeout`: without a poll to carry the changes
    /// meanwhile, a listener that does not listen by then is an error, and
    /// everything is stopped.
    pub async fn start<S: Subscription, L: ChangeLog>(
        feed: ChangeFeed,
        subscription: S,
        log: L,
        settings: ListenerSettings,
        bus: Invalidations,
        name: &'static str,
    ) -> Result<Self, BoxError> {
        let wait = settings.timeout.saturating_mul(2);
        let (listener, listening) = if feed.listens() {
            let (listener, task) = Listener::spawn(subscription, settings, bus.clone());
            (listener, Some(task))
        } else {
            (Listener::off(), None)
        };
        let polling = feed
            .poll_interval()
            .map(|every| BackgroundTask::poll_change_log(log, bus, every, name));
        let feeds = Self {
            listener,
            listening,
            polling,
        };
        if !feed.listens() || feeds.listener.listening_within(wait).await {
            return Ok(feeds);
        }
        if feeds.polling.is_some() {
            // The change log carries every change meanwhile; the listener keeps trying.
            tracing::warn!("tower-api-key: not listening yet; the change-log poll carries invalidations until it does");
            return Ok(feeds);
        }
        feeds.stop().await;
        Err("the LISTEN connection could not be established".into())
    }

    /// The listener's handle.
    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// Stops listening and polling, and waits for both.
    pub async fn stop(&self) {
        for task in [&self.listening, &self.polling].into_iter().flatten() {
            task.stop().await;
        }
    }
}
