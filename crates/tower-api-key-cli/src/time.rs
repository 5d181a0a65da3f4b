//! RFC 3339 times as the CLI reads and writes them: the library's one
//! parser and printer ([`tower_api_key::time`], shared with the management
//! API), written with microseconds (what the stores keep).

use std::time::SystemTime;

/// `at` as RFC 3339 in UTC with six fractional digits, clamped to
/// 1970..=9999 as the management API clamps it.
pub fn format(at: SystemTime) -> String {
    tower_api_key::time::format_rfc3339_micros(at)
}

/// Parses an RFC 3339 time (`Z` or `±HH:MM`; a leap second is the last
/// instant of its minute).
pub fn parse(text: &str) -> Result<SystemTime, String> {
    tower_api_key::time::parse_rfc3339(text).map_err(|e| e.to_string())
}
