//! Change-log polling: the loop both backends run, and the rule that turns
//! the rows of one read into invalidations. Each dialect keeps its own
//! position in the log (SQLite a sequence number, PostgreSQL a transaction
//! id) behind [`ChangeLog`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Mutex};
use tower_api_key::{Invalidation, Invalidations, KeyId};

use crate::BoxError;

/// Most change log rows one read takes: a read that finds more (far more
/// than writers keep) publishes [`Invalidation::All`] instead of a row each.
pub const MAX_ROWS_PER_READ: i64 = 10_000;

/// A change log read from where the previous read stopped.
#[async_trait]
pub trait ChangeLog: Send + 'static {
    /// What changed since the previous read. On error the position is kept,
    /// so the next read misses nothing (or invalidates everything).
    async fn read(&mut self) -> Result<Vec<Invalidation>, BoxError>;

    /// Releases what the log holds once polling stops (default: drops it).
    fn close(self)
    where
        Self: Sized,
    {
    }
}

/// A change log read both by its polling task and by explicit polls (a
/// store's `poll_changes`), one read at a time.
pub struct SharedChangeLog<L>(Arc<Mutex<L>>);

impl<L> Clone for SharedChangeLog<L> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<L: ChangeLog> SharedChangeLog<L> {
    /// `log`, shared.
    pub fn new(log: L) -> Self {
        Self(Arc::new(Mutex::new(log)))
    }

    /// Reads what changed since the last read and publishes it on `bus`.
    pub async fn poll(&self, bus: &Invalidations) -> Result<(), BoxError> {
        for what in &self.0.lock().await.read().await? {
            bus.publish(what);
        }
        Ok(())
    }
}

#[async_trait]
impl<L: ChangeLog> ChangeLog for SharedChangeLog<L> {
    async fn read(&mut self) -> Result<Vec<Invalidation>, BoxError> {
        self.0.lock().await.read().await
    }
}

/// The invalidations for the rows `(key id, service account id)` of one
/// read: one per key, or only [`Invalidation::All`] when `everything` (the
/// log was pruned past the reader, or one read would be too large) or when
/// a key id does not parse (a row this crate did not write).
pub fn invalidations(
    rows: impl IntoIterator<Item = (String, String)>,
    everything: bool,
) -> Vec<Invalidation> {
    if everything {
        return vec![Invalidation::All];
    }
    let mut changes = Vec::new();
    for (key_id, account) in rows {
        match KeyId::from_str(&key_id) {
            Ok(id) => changes.push(Invalidation::key_of(id, account)),
            Err(_) => return vec![Invalidation::All],
        }
    }
    changes
}

/// Reads `log` every `every` and publishes what changed on `bus`, until
/// `stop` says so or its sender is dropped; `name` names the log in the
/// warning logged when reads start failing and the note when they recover.
pub async fn poll_change_log<L: ChangeLog>(
    mut log: L,
    bus: Invalidations,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
) {
    // The first read one interval from now: the position was just taken.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        match log.read().await {
            Ok(changes) => {
                if failing {
                    tracing::info!(log = name, "tower-api-key: the change log reads again");
                    failing = false;
                }
                for what in &changes {
                    bus.publish(what);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(log = name, error = %e, "tower-api-key: cannot read the change log");
                    failing = true;
                }
            }
        }
    }
    log.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, account: &str) -> (String, String) {
        (id.to_owned(), account.to_owned())
    }

    #[test]
    fn each_row_invalidates_its_key_and_a_foreign_row_invalidates_everything() {
        let id = KeyId::random().unwrap();
        assert_eq!(
            invalidations([row(id.as_str(), "sa-1")], false),
            vec![Invalidation::key_of(id, "sa-1".to_owned())]
        );
        assert_eq!(
            invalidations(
                [row(id.as_str(), "sa-1"), row("not a key id", "sa-1")],
                false
            ),
            vec![Invalidation::All]
        );
        assert_eq!(
            invalidations([row(id.as_str(), "sa-1")], true),
            vec![Invalidation::All]
        );
        assert!(invalidations(Vec::new(), false).is_empty());
    }
}
