//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`); without the feature every function here is empty.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tower_api_key_requests_total` | counter | `outcome`: `accepted` or a [`Reason`] name |
//! | `tower_api_key_cache_total` | counter | `result`: `hit`, `miss`, `negative_hit` |
//! | `tower_api_key_verifier_calls_total` | counter | |
//! | `tower_api_key_verifier_errors_total` | counter | `kind`: `backend`, `timeout`, `panic` |
//! | `tower_api_key_verifier_duration_seconds` | histogram | |
//!
//! Labels never carry key material or key ids (ids would make the series
//! unbounded); key ids go to `tracing` events. Install any `metrics`
//! recorder (for example `metrics-exporter-prometheus`) and the counters
//! appear under these names:
//!
//! ```
//! use tower_api_key::telemetry::names;
//!
//! assert_eq!(names::REQUESTS, "tower_api_key_requests_total");
//! assert!(names::VERIFIER_DURATION.ends_with("_seconds"));
//! ```
//!
//! [`Reason`]: crate::auth::Reason

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use std::time::Duration;

/// Metric names, for dashboards and tests.
pub mod names {
    /// Authentication outcomes.
    pub const REQUESTS: &str = "tower_api_key_requests_total";
    /// Cache lookups.
    pub const CACHE: &str = "tower_api_key_cache_total";
    /// Verifier calls.
    pub const VERIFIER_CALLS: &str = "tower_api_key_verifier_calls_total";
    /// Verifier failures.
    pub const VERIFIER_ERRORS: &str = "tower_api_key_verifier_errors_total";
    /// Verifier latency.
    pub const VERIFIER_DURATION: &str = "tower_api_key_verifier_duration_seconds";
}

pub(crate) fn outcome(outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::REQUESTS, "outcome" => outcome).increment(1);
}

pub(crate) fn cache(result: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::CACHE, "result" => result).increment(1);
}

pub(crate) fn verifier_call(took: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(names::VERIFIER_CALLS).increment(1);
        metrics::histogram!(names::VERIFIER_DURATION).record(took.as_secs_f64());
    }
}

pub(crate) fn verifier_error(kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::VERIFIER_ERRORS, "kind" => kind).increment(1);
}
