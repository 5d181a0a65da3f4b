//! What happens to a key that its owner should hear about: one event type,
//! [`KeyEvent`], for every hook the crate calls.
//!
//! The secret-scanning receiver's
//! `on_compromised` and the lifecycle task's
//! [`on_event`](crate::lifecycle::LifecycleBuilder::on_event) take the same
//! hook, `Fn(KeyEvent)`, so one function can page or mail a key's owner
//! whatever happened to the key:
//!
//! ```
//! use tower_api_key::event::KeyEvent;
//!
//! fn tell_the_owner(event: KeyEvent) {
//!     let key = event.key();
//!     let what = match &event {
//!         KeyEvent::Compromised(leak) => format!("was published at {}", leak.compromise.url),
//!         KeyEvent::ExpiringSoon { .. } => "expires soon".to_owned(),
//!         KeyEvent::Expired { .. } => "expired".to_owned(),
//!         KeyEvent::UnusedWarning { .. } => "is unused and will be retired".to_owned(),
//!         KeyEvent::Retired { .. } => "was retired for disuse".to_owned(),
//!         _ => event.kind().to_owned(),
//!     };
//!     println!("key {} of {} {what}", key.record.key_id, key.record.service_account_id);
//! }
//! # let _ = tell_the_owner;
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::SystemTime;

use crate::record::Compromise;
use crate::store::KeyInfo;
use crate::telemetry;

/// A key was reported leaked and the store acted on the report (the
/// secret-scanning receiver's event).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CompromiseEvent {
    /// The key as it was after the report was recorded (for
    /// [`LeakAction::Revoke`](crate::store::LeakAction::Revoke), just before
    /// it was revoked).
    pub key: KeyInfo,
    /// The report as recorded on the key.
    pub compromise: Compromise,
    /// The reporter's name (`github`).
    pub reporter: &'static str,
    /// The reported token's type (`tower_api_key`, say).
    pub token_type: String,
}

/// Something that happened to a key, handed to the application's hook.
///
/// Never holds secret material: a [`KeyInfo`] carries the record and a
/// masked hint only.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum KeyEvent {
    /// The key was reported leaked and the store acted on it.
    Compromised(CompromiseEvent),
    /// The key expires within the lifecycle task's warning period.
    #[non_exhaustive]
    ExpiringSoon {
        /// The key.
        key: KeyInfo,
        /// When it expires.
        expires_at: SystemTime,
    },
    /// The key expired.
    #[non_exhaustive]
    Expired {
        /// The key, as it was when it expired.
        key: KeyInfo,
    },
    /// The key went unused for the retirement period (less the warning
    /// period) and stops working at `retires_at` unless it is used first.
    #[non_exhaustive]
    UnusedWarning {
        /// The key.
        key: KeyInfo,
        /// When it will stop working.
        retires_at: SystemTime,
    },
    /// The key was retired for disuse: its `expires_at` is set and its
    /// `retired_unused_since` says why. It is not deleted.
    #[non_exhaustive]
    Retired {
        /// The key as retired.
        key: KeyInfo,
    },
}

impl KeyEvent {
    /// The key the event is about.
    pub fn key(&self) -> &KeyInfo {
        match self {
            KeyEvent::Compromised(event) => &event.key,
            KeyEvent::ExpiringSoon { key, .. }
            | KeyEvent::Expired { key }
            | KeyEvent::UnusedWarning { key, .. }
            | KeyEvent::Retired { key } => key,
        }
    }

    /// The event's stable name, as in metrics and logs: `compromised`,
    /// `expiring_soon`, `expired`, `unused_warning` or `retired`.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyEvent::Compromised(_) => "compromised",
            KeyEvent::ExpiringSoon { .. } => "expiring_soon",
            KeyEvent::Expired { .. } => "expired",
            KeyEvent::UnusedWarning { .. } => "unused_warning",
            KeyEvent::Retired { .. } => "retired",
        }
    }
}

/// The hook as stored: `on_compromised`'s and `on_event`'s.
pub(crate) type Hook = Arc<dyn Fn(KeyEvent) + Send + Sync>;

/// Counts `event` under its kind and hands it to `hook`, if any. A panic in
/// the hook is caught, so a faulty hook never stops the events after it:
/// `false` if it panicked (the caller logs it under its own target).
pub(crate) fn emit(hook: Option<&Hook>, event: KeyEvent) -> bool {
    telemetry::key_event(event.kind());
    let Some(hook) = hook else {
        return true;
    };
    // The hook owns the event; nothing of ours is left half-updated if it
    // panics, so unwind safety holds.
    catch_unwind(AssertUnwindSafe(|| hook(event))).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyId;
    use crate::record::KeyRecord;

    fn info() -> KeyInfo {
        let id: KeyId = "0123456789abcdef".parse().unwrap();
        KeyInfo::new(KeyRecord::new(id, "sa"), None, "tak_…abcd")
    }

    #[test]
    fn kinds_are_distinct_snake_case_names() {
        let now = SystemTime::UNIX_EPOCH;
        let events = [
            KeyEvent::ExpiringSoon {
                key: info(),
                expires_at: now,
            },
            KeyEvent::Expired { key: info() },
            KeyEvent::UnusedWarning {
                key: info(),
                retires_at: now,
            },
            KeyEvent::Retired { key: info() },
        ];
        let kinds: std::collections::BTreeSet<_> = events.iter().map(KeyEvent::kind).collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["expired", "expiring_soon", "retired", "unused_warning"]
        );
        for event in &events {
            assert_eq!(event.key().record.service_account_id.as_ref(), "sa");
        }
    }

    #[test]
    fn a_panicking_hook_is_contained() {
        let hook: Hook = Arc::new(|_| panic!("hook failed"));
        assert!(!emit(Some(&hook), KeyEvent::Expired { key: info() }));
        assert!(emit(None, KeyEvent::Expired { key: info() }));
    }
}
