//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`, on by default); without the feature every function here is
//! empty. They go to whatever recorder the application installs.
//!
//! | metric | kind | labels | moves when |
//! |---|---|---|---|
//! | `tower_api_key_requests_total` | counter | `outcome`: `accepted` or a [`Reason`] name (`missing`, `duplicate_credentials`, `wrong_scheme`, `malformed`, `unknown`, `expired`, `insufficient_scope`, `scoped_key_on_unscoped_route`, `too_many_attempts`, `rate_limited`, `quota_exhausted`, `unavailable`, `verifier_panicked`, `no_credit_ledger`, `key_compromised`, `network_not_allowed`) | once per request that reaches a layer |
//! | `tower_api_key_limits_total` | counter | `kind`: `rate` or `quota`; `result`: `admitted` or `refused` | once per request of a key with rate limits (`rate`) or credits (`quota`), after authentication and scope |
//! | `tower_api_key_cache_total` | counter | `result`: `hit`, `miss`, `negative_hit` | once per cache lookup of a well-formed key (not for missing or malformed ones, refused before the cache) |
//! | `tower_api_key_verifier_calls_total` | counter | | once per verifier call (one per miss, however many requests wait for it) |
//! | `tower_api_key_verifier_errors_total` | counter | `kind`: `backend`, `timeout`, `panic` | a verifier call failed (answered 503 or 500, never cached) |
//! | `tower_api_key_verifier_duration_seconds` | histogram | | the latency of each verifier call |
//! | `tower_api_key_leak_reports_total` | counter | `label`: `true_positive`, `false_positive` | once per token of a secret-scanning report (feature `secret-scanning`) |
//! | `tower_api_key_key_events_total` | counter | `kind`: `compromised`, `expiring_soon`, `expired`, `unused_warning`, `retired` (a [`KeyEvent::kind`]) | once per event emitted: a key the secret-scanning receiver acted on (`compromised`), and each notice of the [lifecycle task](crate::lifecycle), counted whether or not a hook is set |
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
//! The counters of the cache-hit path (`accepted`, `hit`, admitted by a
//! rate limit or credits) are registered with the recorder once per
//! authenticator, at its first request, rather than looked up in the
//! recorder's registry on every increment: install the recorder before
//! serving (as every exporter's guide says), or those counters go to the
//! recorder that was current then.
//!
//! [`Reason`]: crate::Reason
//! [`KeyEvent::kind`]: crate::event::KeyEvent::kind

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
    /// Rate-limit and credit decisions.
    pub const LIMITS: &str = "tower_api_key_limits_total";
    /// Tokens in leak reports, by the label answered.
    pub const LEAK_REPORTS: &str = "tower_api_key_leak_reports_total";
    /// Key events (leaks acted on, lifecycle notices), by kind.
    pub const KEY_EVENTS: &str = "tower_api_key_key_events_total";
}

/// Increments the counter `$name` with label `$label` = `$value`. Each value
/// of the known set gets a key built at compile time (hashed once, no
/// allocation), so an increment with a real recorder costs its lookup only;
/// `metrics::counter!` with a label value that is not a literal allocates
/// the label list and hashes the key on every call. Other values still
/// count, the slow way.
#[cfg(feature = "metrics")]
macro_rules! count_labelled {
    ($name:literal, $label:literal, $value:expr, [$($known:literal),+ $(,)?]) => {
        match $value {
            $($known => metrics::counter!($name, $label => $known).increment(1),)+
            other => metrics::counter!($name, $label => other).increment(1),
        }
    };
}

/// The counters of the cache-hit path, each registered once (on first use)
/// instead of looked up on every increment. One per cache, shared by every
/// route of its authenticator.
#[derive(Default)]
pub(crate) struct HotCounters {
    #[cfg(feature = "metrics")]
    handles: std::sync::OnceLock<HotHandles>,
}

#[cfg(feature = "metrics")]
struct HotHandles {
    accepted: metrics::Counter,
    cache_hit: metrics::Counter,
    rate_admitted: metrics::Counter,
    quota_admitted: metrics::Counter,
}

impl HotCounters {
    #[cfg(feature = "metrics")]
    fn handles(&self) -> &HotHandles {
        self.handles.get_or_init(|| HotHandles {
            accepted: metrics::counter!("tower_api_key_requests_total", "outcome" => "accepted"),
            cache_hit: metrics::counter!("tower_api_key_cache_total", "result" => "hit"),
            rate_admitted: metrics::counter!("tower_api_key_limits_total", "kind" => "rate", "result" => "admitted"),
            quota_admitted: metrics::counter!("tower_api_key_limits_total", "kind" => "quota", "result" => "admitted"),
        })
    }

    /// [`outcome`]`("accepted")`.
    pub(crate) fn accepted(&self) {
        #[cfg(feature = "metrics")]
        self.handles().accepted.increment(1);
    }

    /// [`cache`]`("hit")`.
    pub(crate) fn cache_hit(&self) {
        #[cfg(feature = "metrics")]
        self.handles().cache_hit.increment(1);
    }

    /// [`limit`]`("rate", "admitted")`.
    pub(crate) fn rate_admitted(&self) {
        #[cfg(feature = "metrics")]
        self.handles().rate_admitted.increment(1);
    }

    /// [`limit`]`("quota", "admitted")`.
    pub(crate) fn quota_admitted(&self) {
        #[cfg(feature = "metrics")]
        self.handles().quota_admitted.increment(1);
    }
}

pub(crate) fn outcome(outcome: &'static str) {
    // The names are literals here (a `names` constant would make every key
    // dynamic); `names_match_the_literals` keeps them equal.
    #[cfg(feature = "metrics")]
    count_labelled!(
        "tower_api_key_requests_total",
        "outcome",
        outcome,
        [
            "accepted",
            "missing",
            "duplicate_credentials",
            "wrong_scheme",
            "malformed",
            "unknown",
            "expired",
            "insufficient_scope",
            "scoped_key_on_unscoped_route",
            "too_many_attempts",
            "rate_limited",
            "quota_exhausted",
            "unavailable",
            "verifier_panicked",
            "no_credit_ledger",
            "key_compromised",
            "network_not_allowed",
        ]
    );
}

pub(crate) fn cache(result: &'static str) {
    #[cfg(feature = "metrics")]
    count_labelled!(
        "tower_api_key_cache_total",
        "result",
        result,
        ["hit", "miss", "negative_hit"]
    );
}

pub(crate) fn limit(kind: &'static str, result: &'static str) {
    #[cfg(feature = "metrics")]
    match (kind, result) {
        ("rate", "admitted") => {
            metrics::counter!("tower_api_key_limits_total", "kind" => "rate", "result" => "admitted")
                .increment(1)
        }
        ("rate", _) => {
            metrics::counter!("tower_api_key_limits_total", "kind" => "rate", "result" => "refused")
                .increment(1)
        }
        ("quota", "admitted") => {
            metrics::counter!("tower_api_key_limits_total", "kind" => "quota", "result" => "admitted")
                .increment(1)
        }
        _ => metrics::counter!("tower_api_key_limits_total", "kind" => "quota", "result" => "refused")
            .increment(1),
    }
}

pub(crate) fn verifier_call(took: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("tower_api_key_verifier_calls_total").increment(1);
        metrics::histogram!("tower_api_key_verifier_duration_seconds").record(took.as_secs_f64());
    }
}

/// One token of a secret-scanning report, answered with `label`
/// (`true_positive` or `false_positive`).
#[cfg_attr(not(feature = "secret-scanning"), allow(dead_code))]
pub(crate) fn leak_report(label: &'static str) {
    #[cfg(feature = "metrics")]
    count_labelled!(
        "tower_api_key_leak_reports_total",
        "label",
        label,
        ["true_positive", "false_positive"]
    );
}

/// One [`KeyEvent`](crate::event::KeyEvent) emitted, by its kind.
pub(crate) fn key_event(kind: &'static str) {
    #[cfg(feature = "metrics")]
    count_labelled!(
        "tower_api_key_key_events_total",
        "kind",
        kind,
        [
            "compromised",
            "expiring_soon",
            "expired",
            "unused_warning",
            "retired"
        ]
    );
}

pub(crate) fn verifier_error(kind: &'static str) {
    #[cfg(feature = "metrics")]
    count_labelled!(
        "tower_api_key_verifier_errors_total",
        "kind",
        kind,
        ["backend", "timeout", "panic"]
    );
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    /// A metric's name, its labels and its value.
    type Recorded = (String, Vec<(String, String)>, DebugValue);

    /// Every metric, recorded once through a debugging recorder.
    fn recorded() -> Vec<Recorded> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            outcome("accepted");
            outcome("missing");
            outcome("a_reason_added_later");
            cache("hit");
            verifier_call(Duration::from_millis(3));
            verifier_error("timeout");
            limit("rate", "refused");
            leak_report("true_positive");
            key_event("expiring_soon");
        });
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (key.name().to_owned(), labels, value)
            })
            .collect()
    }

    /// The hit path's registered counters are the same series the
    /// functions count, and count once per call.
    #[test]
    fn hot_counters_count_the_same_series_as_the_functions() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let hot = HotCounters::default();
            for _ in 0..3 {
                hot.accepted();
                hot.cache_hit();
                hot.rate_admitted();
                hot.quota_admitted();
            }
            outcome("accepted");
            cache("hit");
            limit("rate", "admitted");
            limit("quota", "admitted");
        });
        let counts: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
            .collect();
        assert_eq!(counts.len(), 4, "{counts:?}");
        for (name, value) in counts {
            assert!(matches!(value, DebugValue::Counter(4)), "{name}: {value:?}");
        }
    }

    #[test]
    fn names_match_the_literals() {
        let names: std::collections::BTreeSet<String> =
            recorded().into_iter().map(|(name, _, _)| name).collect();
        let expected: std::collections::BTreeSet<String> = [
            names::REQUESTS,
            names::CACHE,
            names::VERIFIER_CALLS,
            names::VERIFIER_ERRORS,
            names::VERIFIER_DURATION,
            names::LIMITS,
            names::LEAK_REPORTS,
            names::KEY_EVENTS,
        ]
        .iter()
        .map(|n| n.to_string())
        .collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn known_and_unknown_label_values_are_both_counted() {
        let requests: Vec<_> = recorded()
            .into_iter()
            .filter(|(name, _, _)| name == names::REQUESTS)
            .collect();
        for value in ["accepted", "missing", "a_reason_added_later"] {
            let found = requests
                .iter()
                .find(|(_, labels, _)| labels == &vec![("outcome".to_owned(), value.to_owned())]);
            assert!(
                matches!(found, Some((_, _, DebugValue::Counter(1)))),
                "{value}: {found:?}"
            );
        }
    }
}
