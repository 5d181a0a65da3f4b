//! Wall-clock time, behind a trait so tests can move it by hand: a test
//! hook, public with the `test-util` feature only.
//!
//! Key expiry is a wall-clock fact (`expires_at` is a calendar time), so it is
//! checked against a [`Clock`] on every request rather than against the time
//! the record was fetched.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use tower_api_key::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
//! clock.advance(Duration::from_secs(5));
//! assert_eq!(clock.now(), SystemTime::UNIX_EPOCH + Duration::from_secs(5));
//! ```

use std::time::SystemTime;
#[cfg(feature = "test-util")]
use std::{fmt, sync::Mutex, time::Duration};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock. The default everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; for tests.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}
