//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`, on by default); without the feature every function here is
//! empty. They go to whatever recorder the application installs.
//!
//! | metric | kind | labels | moves when |
//! |---|---|---|---|
//! | `tower_api_key_requests_total` | counter | `outcome`: `accepted` or a [`Reason`] name (`missing`, `duplicate_credentials`, `wrong_scheme`, `malformed`, `unknown`, `expired`, `insufficient_scope`, `scoped_key_on_unscoped_route`, `too_many_attempts`, `unavailable`, `verifier_panicked`) | once per request that reaches a layer |
//! | `tower_api_key_cache_total` | counter | `result`: `hit`, `miss`, `negative_hit` | once per cache lookup of a well-formed key (not for missing or malformed ones, refused before the cache) |
//! | `tower_api_key_verifier_calls_total` | counter | | once per verifier call (one per miss, however many requests wait for it) |
//! | `tower_api_key_verifier_errors_total` | counter | `kind`: `backend`, `timeout`, `panic` | a verifier call failed (answered 503 or 500, never cached) |
//! | `tower_api_key_verifier_duration_seconds` | histogram | | the latency of each verifier call |
//!
//! The Prometheus exporter renders the histogram as a summary (quantiles)
//! unless you configure buckets (`PrometheusBuilder::set_buckets`).
//!
//! Every authentication outcome is also a `tracing` event (target
//! `tower_api_key::auth`): accepted keys at `TRACE`,
//! rejections at `DEBUG` with the `reason` and, when the key was
//! well-formed, its `key_id`; a failing verifier is a `WARN`. No event ever
//! carries a secret.
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
//! [`Reason`]: crate::Reason

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
