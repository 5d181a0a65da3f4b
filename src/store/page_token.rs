//! Page tokens of key listings, shared by the stores: opaque to clients,
//! and the same text for every store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::key::KeyId;
use crate::record::KeyRecord;

/// The page token of the position after `record` in the listing order:
/// `<created_at as signed nanoseconds from the Unix epoch>.<key id>`, the
/// same text for every store.
pub fn page_token(record: &KeyRecord) -> String {
    let nanos = match record.created_at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    format!("{nanos}.{}", record.key_id)
}

/// The position a [`page_token`] names (creation time and key id); `None`
/// for any other text.
pub fn parse_page_token(token: &str) -> Option<(SystemTime, KeyId)> {
    let (nanos, id) = token.split_once('.')?;
    let nanos: i128 = nanos.parse().ok()?;
    // Years 1 to 9999: any time a store can hold, and no arithmetic on the
    // client's number can overflow.
    const MIN: i128 = -62_135_596_800 * 1_000_000_000;
    const MAX: i128 = 253_402_300_799 * 1_000_000_000;
    if !(MIN..=MAX).contains(&nanos) {
        return None;
    }
    let magnitude = nanos.unsigned_abs();
    let magnitude = Duration::new(
        u64::try_from(magnitude / 1_000_000_000).ok()?,
        (magnitude % 1_000_000_000) as u32,
    );
    let at = if nanos < 0 {
        UNIX_EPOCH.checked_sub(magnitude)?
    } else {
        UNIX_EPOCH.checked_add(magnitude)?
    };
    Some((at, id.parse().ok()?))
}
