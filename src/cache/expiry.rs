//! The cache's expiry policy: how long each answer, valid key or not, stays cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::Caller;
use crate::clock::Clock;
use crate::key::KeyDigest;

/// Positive entries expire at the earlier of the TTL and the key's expiry;
/// a key that has already expired is kept for the negative TTL, refused on
/// every hit, so using it does not reach the verifier each time.
pub(super) struct PositiveExpiry {
    pub(super) ttl: Duration,
    pub(super) expired_ttl: Duration,
    pub(super) clock: Arc<dyn Clock>,
}

impl Expiry<KeyDigest, Caller> for PositiveExpiry {
    fn expire_after_create(
        &self,
        _key: &KeyDigest,
        caller: &Caller,
        _created_at: Instant,
    ) -> Option<Duration> {
        let Some(expires_at) = caller.expires_at() else {
            return Some(self.ttl);
        };
        match expires_at.duration_since(self.clock.now()) {
            Ok(left) if !left.is_zero() => Some(left.min(self.ttl)),
            _ => Some(self.expired_ttl.min(self.ttl)),
        }
    }
}
