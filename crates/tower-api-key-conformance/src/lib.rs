//! The conformance suite: what every [`KeyStore`] must do, written once and
//! run against each store (memory, PostgreSQL, and any store added later).
//!
//! # Running it for a store
//!
//! 1. Implement [`KeyStore`] (and its supertraits [`Verifier`](tower_api_key::Verifier)
//!    and [`CreditLedger`](tower_api_key::CreditLedger)).
//! 2. Write a factory: a type implementing [`StoreFactory`] that opens a
//!    fresh, empty store of its own for every call of
//!    [`StoreFactory::store`], built with the [`StoreSettings`] given (manual
//!    clock, hasher, key format, per-account key limit). A file-backed store
//!    puts each store in a new file of a temporary directory the factory owns:
//!
//!    ```ignore
//!    struct SqliteFactory(tempfile::TempDir, AtomicUsize);
//!
//!    impl StoreFactory for SqliteFactory {
//!        type Store = SqliteKeyStore;
//!        async fn open(_test: &'static str) -> Option<Self> {
//!            Some(Self(tempfile::tempdir().unwrap(), AtomicUsize::new(0)))
//!        }
//!        async fn store(&self, s: StoreSettings) -> SqliteKeyStore {
//!            let n = self.1.fetch_add(1, Ordering::Relaxed);
//!            SqliteKeyStore::builder(self.0.path().join(format!("{n}.db")))
//!                .format(s.format)
//!                .hasher(s.hasher)
//!                .clock(s.clock)
//!                .max_keys_per_account(s.max_keys_per_account)
//!                .open()
//!                .await
//!                .unwrap()
//!        }
//!    }
//!    ```
//!
//!    `open` returns `None` to skip every test (after saying so), as the
//!    PostgreSQL factory does when it has no server; `finish` cleans up.
//! 3. In the store's test file (`tests/sqlite.rs`, say), with this crate
//!    as a dev-dependency: the factory, then
//!    `tower_api_key_conformance::store_conformance!(SqliteFactory);` for the
//!    whole suite, and for moves between stores of two kinds
//!    `transfer_conformance!(memory_to_sqlite: MemoryFactory => SqliteFactory);`
//!    (and the other way; [`MemoryFactory`] is here). The macros make plain
//!    `#[test]` functions, each running on a runtime of its own: the test
//!    file needs no tokio macro for them.
//!
//! `cargo test --all-features --test memory_store conformance` runs the
//! suite on the memory store from the root crate, `-p tower-api-key-sqlite`
//! and `-p tower-api-key-postgres` on the SQL stores (PostgreSQL uses
//! `DATABASE_URL`, or starts a throwaway server when PostgreSQL is
//! installed), and
//! `cargo test -p tower-api-key-conformance` runs it on an outside store
//! written with public items only (`tests/outside_store.rs`, keys in a
//! `BTreeMap` behind a mutex).
//!
//! Every test is a generic function in [`contract`], [`limits`],
//! [`transfer`], [`versions`], [`compromise`], [`networks`] or
//! [`lifecycle`]; the macros make one test of each. A store that is also a
//! [`LifecycleStore`](tower_api_key::store::LifecycleStore) runs the
//! lifecycle suite with `lifecycle_conformance!(Factory);` besides.
//!
//! Times: the settings' clock starts on a whole second and tests move it by
//! whole seconds unless the test is about sub-microsecond times, because
//! PostgreSQL keeps microseconds.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod compromise;
pub mod contract;
pub mod lifecycle;
pub mod limits;
pub mod lock;
pub mod networks;
pub mod rate_sync;
pub mod revocation;
pub mod transfer;
pub mod versions;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tower_api_key::cache::{CacheConfig, CachedVerifier, Source};
use tower_api_key::clock::ManualClock;
use tower_api_key::hash::{KeyHasher, Pepper};
use tower_api_key::limits::{Credits, RateLimit, MAX_RATE_LIMITS};
use tower_api_key::store::{
    ConflictKind, KeyInfo, KeyPage, ListRequest, NewKey, StoreError, StoredKey,
    DEFAULT_MAX_KEYS_PER_ACCOUNT, MAX_EXPORT_PAGE, MAX_PAGE_SIZE,
};
use tower_api_key::{GeneratedKey, PresentedKey};
use tower_api_key::{Invalidation, InvalidationListener, KeyFormat, KeyId, KeyStore, MemoryStore};

/// Where the settings' clock starts: a whole second.
pub fn start_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// How the suite wants a store built.
#[derive(Clone)]
#[non_exhaustive]
pub struct StoreSettings {
    /// The store's only clock: creation times, expiry checks, grace deadlines.
    pub clock: Arc<ManualClock>,
    /// How keys are hashed.
    pub hasher: KeyHasher,
    /// The format of the keys the store issues.
    pub format: KeyFormat,
    /// The most keys one service account may hold.
    pub max_keys_per_account: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreSettings {
    /// A clock at [`start_time`], plain SHA-256, the default format and limit.
    pub fn new() -> Self {
        Self {
            clock: Arc::new(ManualClock::new(start_time())),
            hasher: KeyHasher::default(),
            format: KeyFormat::default(),
            max_keys_per_account: DEFAULT_MAX_KEYS_PER_ACCOUNT,
        }
    }

    /// A fresh manual clock at `start`.
    #[must_use]
    pub fn with_clock_at(mut self, start: SystemTime) -> Self {
        self.clock = Arc::new(ManualClock::new(start));
        self
    }

    /// Keys hashed by `hasher`.
    #[must_use]
    pub fn with_hasher(mut self, hasher: KeyHasher) -> Self {
        self.hasher = hasher;
        self
    }

    /// Keys issued in `format`.
    #[must_use]
    pub fn with_format(mut self, format: KeyFormat) -> Self {
        self.format = format;
        self
    }

    /// At most `limit` keys per service account.
    #[must_use]
    pub fn with_max_keys_per_account(mut self, limit: usize) -> Self {
        self.max_keys_per_account = limit;
        self
    }
}

/// Makes the stores of one test. See the module documentation.
#[allow(async_fn_in_trait)]
pub trait StoreFactory: Sized {
    type Store: KeyStore + Clone + fmt::Debug + 'static;

    /// The factory of one test named `test`, or `None` (after saying so on
    /// stderr) when this store cannot run here: every test then passes.
    async fn open(test: &'static str) -> Option<Self>;

    /// A fresh, empty store, isolated from every other store made so far,
    /// built with `settings`.
    async fn store(&self, settings: StoreSettings) -> Self::Store;

    /// Releases what the test's stores hold (connections, schemas, files).
    async fn finish(self) {}
}

/// The memory store's factory: also the other kind of store in the
/// cross-store transfer tests.
pub struct MemoryFactory;

impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;

    async fn open(_test: &'static str) -> Option<Self> {
        Some(Self)
    }

    async fn store(&self, settings: StoreSettings) -> MemoryStore {
        MemoryStore::builder()
            .clock(settings.clock)
            .hasher(settings.hasher)
            .format(settings.format)
            .max_keys_per_account(settings.max_keys_per_account)
            .build()
    }
}

// What the macros' expansions name, so that a store's test file needs only
// this crate: its tokio, and the runtimes the tests run on.
#[doc(hidden)]
pub use tokio as __tokio;

/// Runs `test` on a runtime of two worker threads, as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` would.
#[doc(hidden)]
pub fn __run_multi_thread<F: std::future::Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime")
        .block_on(test)
}

/// Runs `test` on a runtime on this thread only, as
/// `#[tokio::test(flavor = "current_thread")]` would.
#[doc(hidden)]
pub fn __run_current_thread<F: std::future::Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime")
        .block_on(test)
}

/// One test running a suite function with a factory.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    (multi_thread, $module:ident :: $name:ident, $factory:ty) => {
        #[test]
        fn $name() {
            $crate::__run_multi_thread(async {
                $crate::__conformance_test!(@body $module::$name, $factory);
            });
        }
    };
    // The hashing work is counted per thread: everything on this one.
    (current_thread, $module:ident :: $name:ident, $factory:ty) => {
        #[test]
        fn $name() {
            $crate::__run_current_thread(async {
                $crate::__conformance_test!(@body $module::$name, $factory);
            });
        }
    };
    (@body $module:ident :: $name:ident, $factory:ty) => {
        use $crate::StoreFactory as _;
        let Some(factory) = <$factory>::open(stringify!($name)).await else {
            return;
        };
        $crate::$module::$name(&factory).await;
        factory.finish().await;
    };
}

/// One test of each suite function listed, with `$factory`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($factory:ty, $flavor:ident: $($module:ident :: $name:ident),* $(,)?) => {
        $( $crate::__conformance_test!($flavor, $module::$name, $factory); )*
    };
}

/// The hashing-work test, or nothing for `without_hashing_work`.
#[doc(hidden)]
#[macro_export]
macro_rules! __hashing_work_test {
    (with_hashing_work, $factory:ty) => {
        $crate::__conformance_tests!($factory, current_thread:
            contract::verify_does_the_same_hashing_work_whether_or_not_the_id_exists,
        );
    };
    (without_hashing_work, $factory:ty) => {};
}

/// One test of each transfer function listed, from `$source` to `$target`.
#[doc(hidden)]
#[macro_export]
macro_rules! __transfer_tests {
    ($source:ty => $target:ty: $($test:ident),* $(,)?) => {$(
        #[test]
        fn $test() {
            $crate::__run_multi_thread(async {
                use $crate::StoreFactory as _;
                let Some(source) = <$source>::open(stringify!($test)).await else {
                    return;
                };
                let Some(target) = <$target>::open(stringify!($test)).await else {
                    return;
                };
                $crate::transfer::$test(&source, &target).await;
                source.finish().await;
                target.finish().await;
            });
        }
    )*};
}

/// The whole suite for the store `$factory` makes (a type in scope that
/// implements [`StoreFactory`]), in a module `conformance_suite`.
///
/// `store_conformance!(Factory, without_hashing_work)` leaves out
/// [`contract::verify_does_the_same_hashing_work_whether_or_not_the_id_exists`]:
/// for a store that does not hide which key ids exist from the time a
/// `verify` takes (the test counts the hashing work of the
/// [`KeyHasher`]). Every other test runs.
#[macro_export]
macro_rules! store_conformance {
    ($factory:ident) => {
        $crate::__store_conformance!($factory, with_hashing_work);
    };
    ($factory:ident, without_hashing_work) => {
        $crate::__store_conformance!($factory, without_hashing_work);
    };
}

/// The body of [`store_conformance!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance {
    ($factory:ident, $hashing:ident) => {
        mod conformance_suite {
            use super::$factory as Factory;

            $crate::__conformance_tests!(Factory, multi_thread:
                contract::create_returns_a_working_secret_and_a_record_with_every_field_set,
                contract::create_returns_the_secret_only_once,
                contract::create_rejects_an_expiry_in_the_past_or_now_and_creates_nothing,
                contract::create_rejects_an_expiry_after_the_year_9999,
                contract::create_rejects_an_empty_service_account,
                contract::create_uses_the_configured_format_and_hasher,
                contract::verify_knows_only_the_exact_key,
                contract::get_returns_the_key_info_or_none,
                contract::list_pages_through_an_accounts_keys_oldest_first,
                contract::list_orders_keys_created_at_the_same_instant_stably,
                contract::list_orders_keys_of_one_instant_by_id_around_the_epoch,
                contract::list_uses_the_default_page_size_when_none_is_given,
                contract::list_pages_by_count_however_large_the_keys,
                contract::list_accepts_page_sizes_from_one_to_two_hundred,
                contract::list_rejects_page_sizes_outside_one_to_the_maximum,
                contract::list_rejects_page_tokens_it_did_not_issue,
                contract::list_continues_after_the_last_key_of_a_page_is_revoked,
                contract::list_continues_after_the_last_key_of_a_page_is_revoked_when_all_share_a_creation_time,
                contract::list_pages_through_keys_created_before_and_after_the_unix_epoch,
                contract::list_unused_for_keeps_keys_never_used_or_last_used_before_the_cutoff,
                contract::create_refuses_a_key_past_the_accounts_limit_until_one_is_deleted,
                contract::concurrent_creates_for_one_account_never_pass_the_limit,
                contract::accounts_hold_at_most_a_thousand_keys_by_default,
                contract::update_changes_each_field_alone,
                contract::update_rejects_an_expiry_in_the_past_and_changes_nothing,
                contract::update_rejects_an_expiry_after_the_year_9999,
                contract::update_of_an_unknown_key_returns_none,
                contract::revoke_returns_true_then_false_and_the_key_is_gone,
                contract::reissue_keeps_the_id_and_record_and_changes_the_secret,
                contract::reissue_with_grace_keeps_the_old_secret_until_the_deadline,
                contract::reissue_with_a_grace_past_the_year_9999_keeps_the_old_secret_until_then,
                contract::reissue_of_an_unknown_key_returns_none,
                contract::record_usage_only_moves_last_used_at_forward,
                contract::the_hint_shows_the_prefix_and_the_last_four_characters_only,
                contract::every_management_operation_in_sequence,
                contract::rotated_pepper_keys_verify_under_the_scheme_that_made_them,
                contract::revoke_reissue_and_update_announce_the_key_before_returning,
                transfer::export_pages_in_key_id_order_and_ends_with_an_empty_page,
                transfer::export_refuses_page_sizes_outside_one_to_the_maximum,
                transfer::export_holds_hashes_and_graced_previous_hashes_never_secrets,
                transfer::import_refuses_an_id_held_with_another_hash_or_account_naming_it,
                transfer::import_never_brings_back_a_key_this_store_revoked,
                revocation::revokes_and_imports_racing_on_one_store_never_bring_a_key_back,
                transfer::import_refuses_records_a_store_cannot_hold_naming_the_key,
                transfer::import_applies_the_per_account_key_limit,
                transfer::import_of_peppered_keys_verifies_only_with_that_pepper,
                transfer::import_applies_the_rules_of_create_naming_the_key_and_the_field,
                transfer::export_revoked_pages_through_the_revoked_ids_in_order,
                transfer::import_revoked_revokes_a_held_key_and_refuses_it_from_then_on,
                limits::limits_and_credits_round_trip_through_every_read,
                limits::update_replaces_and_removes_limits_and_credits,
                limits::invalid_limits_are_refused_with_the_rule_and_change_nothing,
                limits::reissue_keeps_limits_and_credits,
                limits::account_limits_are_set_read_removed_and_in_every_record_of_the_account,
                limits::account_limits_reach_cached_records_through_the_announcements,
                limits::leases_shrink_to_one_and_never_exceed_what_remains,
                limits::concurrent_leases_grant_exactly_the_credits,
                limits::returns_add_back_only_within_the_generation,
                limits::credits_refill_at_midnight_utc_once_per_due_time,
                limits::add_credits_adds_up_to_the_maximum_and_keeps_the_generation,
                limits::a_revoked_keys_credits_go_with_it,
                versions::a_key_starts_at_the_first_version_and_each_change_moves_it_by_one,
                versions::a_write_on_a_superseded_version_is_refused_and_writes_nothing,
                versions::a_check_on_what_was_read_holds_for_what_the_write_replaces,
                versions::concurrent_writes_on_one_version_let_exactly_one_through,
                versions::a_key_imported_at_the_highest_version_stays_writable_and_readable,
                compromise::a_report_is_recorded_once_announced_and_a_replay_changes_nothing,
                compromise::a_quarantine_binds_to_the_reported_secret_only,
                compromise::revoke_revokes_the_key_and_a_replay_is_already_revoked,
                compromise::a_wrong_secret_or_an_unknown_id_is_unknown_and_changes_nothing,
                compromise::concurrent_reports_of_one_secret_act_once,
                compromise::an_export_carries_the_compromise_and_its_binding,
                networks::networks_and_metadata_round_trip_through_every_read,
                networks::update_sets_replaces_and_removes_networks_and_metadata,
                networks::the_largest_networks_and_metadata_are_kept_whole,
                networks::export_and_import_carry_networks_and_metadata,
                lock::operator_locked_round_trips_and_is_off_by_default,
                lock::update_sets_and_clears_operator_locked,
                lock::add_credits_unless_locked_refuses_a_locked_key_and_writes_nothing,
                lock::export_and_import_carry_operator_locked,
                lifecycle::retire_when_unused_defaults_to_on_and_round_trips_through_every_read,
                lifecycle::export_and_import_carry_the_lifecycle_fields,
            );
            $crate::__hashing_work_test!($hashing, Factory);
        }
        $crate::transfer_conformance!(conformance_transfer_same_kind: $factory => $factory);
    };
}

/// The [`lifecycle`] suite for the store `$factory` makes (a type in scope
/// that implements [`StoreFactory`] for a store that is also a
/// [`LifecycleStore`](tower_api_key::store::LifecycleStore)), in a module
/// `lifecycle_suite`: a separate entry point, as a store may run the key
/// store suite without the lifecycle task.
#[macro_export]
macro_rules! lifecycle_conformance {
    ($factory:ident) => {
        mod lifecycle_suite {
            use super::$factory as Factory;

            $crate::__conformance_tests!(Factory, multi_thread:
                lifecycle::now_reads_the_stores_clock,
                lifecycle::expiring_pages_through_keys_expiring_in_the_window_in_id_order,
                lifecycle::unused_returns_keys_idle_before_the_cutoff_never_opted_out_or_retired,
                lifecycle::record_notice_is_true_once_per_key_kind_and_window,
                lifecycle::record_notice_refuses_times_a_store_cannot_keep,
                lifecycle::concurrent_record_notice_sends_once,
                lifecycle::a_lease_has_one_holder_until_it_runs_out,
                lifecycle::concurrent_leases_hold_once,
                lifecycle::retire_unused_expires_the_key_and_shows_why,
                lifecycle::retire_unused_leaves_keys_that_no_longer_qualify,
                lifecycle::an_opted_out_key_is_never_unused_nor_retired,
                lifecycle::a_new_expiry_revives_a_retired_key,
                lifecycle::retire_unused_racing_a_use_is_one_or_the_other,
            );
        }
    };
}

/// The transfer tests from a store `$source` makes into one `$target` makes
/// (types in scope that implement [`StoreFactory`]), in a module `$name`.
#[macro_export]
macro_rules! transfer_conformance {
    ($name:ident : $source:ident => $target:ident) => {
        mod $name {
            use super::{$source as Source, $target as Target};

            $crate::__transfer_tests!(Source => Target:
                import_keeps_every_field_and_every_secret_verifies,
                import_is_idempotent_and_moves_last_used_at_forward_only,
                import_keeps_times_at_microsecond_precision,
                import_carries_a_keys_limits_and_credits_not_its_accounts,
                revocations_travel_with_an_export,
            );
        }
    };
}

// ---------------------------------------------------------------------------
// Helpers of the suite (some also used by store-specific tests)
// ---------------------------------------------------------------------------

/// A store made with `settings`, and its clock.
pub(crate) async fn store_and_clock<F: StoreFactory>(
    factory: &F,
    settings: StoreSettings,
) -> (F::Store, Arc<ManualClock>) {
    let clock = settings.clock.clone();
    (factory.store(settings).await, clock)
}

/// `key` as the store that issued it parses it.
pub fn parse(store: &dyn KeyStore, key: &GeneratedKey) -> PresentedKey {
    store
        .key_format()
        .expect("a store has a key format")
        .parse(key.expose_secret())
        .unwrap()
}

/// The text of a [`StoreError::InvalidField`] (it names the field, and
/// the key of an import); any other answer fails.
#[track_caller]
pub(crate) fn assert_invalid<T: fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(e @ StoreError::InvalidField { .. }) => e.to_string(),
        other => panic!("expected StoreError::InvalidField, got {other:?}"),
    }
}

/// A [`StoreError::InvalidPageSize`] naming `max`.
#[track_caller]
pub(crate) fn assert_invalid_page_size<T: fmt::Debug>(result: Result<T, StoreError>, max: usize) {
    match result {
        Err(StoreError::InvalidPageSize { max: named, .. }) if named == max => {}
        other => panic!("expected StoreError::InvalidPageSize {{ max: {max} }}, got {other:?}"),
    }
}

/// A [`StoreError::InvalidPageToken`].
#[track_caller]
pub(crate) fn assert_invalid_page_token<T: fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::InvalidPageToken) => {}
        other => panic!("expected StoreError::InvalidPageToken, got {other:?}"),
    }
}

/// A [`StoreError::Conflict`] of key `id` of `kind`; its text.
#[track_caller]
pub(crate) fn assert_conflict<T: fmt::Debug>(
    result: Result<T, StoreError>,
    id: KeyId,
    kind: ConflictKind,
) -> String {
    match result {
        Err(StoreError::Conflict {
            id: named,
            kind: found,
            ..
        }) if named == id && found == kind => StoreError::conflict(named, found).to_string(),
        other => panic!("expected StoreError::Conflict {{ {id}, {kind:?} }}, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn assert_limit_reached<T: fmt::Debug>(result: Result<T, StoreError>, limit: usize) {
    match result {
        Err(StoreError::KeyLimitReached { limit: got, .. }) => assert_eq!(got, limit),
        other => panic!("expected KeyLimitReached, got {other:?}"),
    }
}

/// `t` truncated to the microsecond (toward the past), as PostgreSQL keeps
/// it: times compared across stores are compared at this precision.
pub(crate) fn micros(t: SystemTime) -> SystemTime {
    let nanos = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    let micros = nanos.div_euclid(1000);
    let whole = Duration::from_nanos((micros.unsigned_abs() * 1000) as u64);
    if micros >= 0 {
        SystemTime::UNIX_EPOCH + whole
    } else {
        SystemTime::UNIX_EPOCH - whole
    }
}

/// `info` with every time truncated to the microsecond.
pub(crate) fn at_micros(info: &KeyInfo) -> KeyInfo {
    let mut info = info.clone();
    info.record.created_at = micros(info.record.created_at);
    info.record.expires_at = info.record.expires_at.map(micros);
    info.last_used_at = info.last_used_at.map(micros);
    info.record.retired_unused_since = info.record.retired_unused_since.map(micros);
    info
}

/// The largest scope set a key may hold: 100 distinct scopes of 256 bytes.
pub fn largest_scopes() -> tower_api_key::ScopeSet {
    tower_api_key::ScopeSet::new((0..100).map(|i| format!("s{i:03}.{}", "x".repeat(251)))).unwrap()
}

/// The most rate limits a key or an account may carry, each with the
/// longest text there is (40 bytes).
pub fn largest_rate_limits() -> Vec<RateLimit> {
    let limits: Vec<RateLimit> = (0..MAX_RATE_LIMITS as u32)
        .map(|i| {
            RateLimit::new(999_999_999 - i, Duration::from_millis(31_622_399_999))
                .unwrap()
                .with_burst(1_000_000_000)
                .unwrap()
        })
        .collect();
    assert!(
        limits.iter().all(|l| l.to_string().len() == 40),
        "{limits:?}"
    );
    limits
}

/// Every page of `account`'s keys at `page_size`.
pub async fn all_pages(store: &dyn KeyStore, account: &str, page_size: usize) -> Vec<KeyPage> {
    let mut pages = Vec::new();
    let mut request = ListRequest::first(page_size);
    loop {
        let page = store.list(account, request).await.unwrap();
        let next = page.next_page_token.clone();
        pages.push(page);
        match next {
            Some(token) => request = ListRequest::after(page_size, token),
            None => return pages,
        }
    }
}

/// Keys of `account`, every page at the largest page size.
pub async fn ids_of(store: &dyn KeyStore, account: &str) -> Vec<KeyId> {
    all_pages(store, account, MAX_PAGE_SIZE)
        .await
        .iter()
        .flat_map(|p| p.keys.iter().map(|k| k.record.key_id))
        .collect()
}

/// Every key of `store`, in export order, through pages of `limit`.
pub(crate) async fn export_all(store: &dyn KeyStore, limit: usize) -> Vec<StoredKey> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store.export(after, limit).await.unwrap();
        assert!(page.len() <= limit, "a page of {} > {limit}", page.len());
        let Some(last) = page.last() else {
            return all;
        };
        after = Some(last.info.record.key_id);
        all.extend(page);
    }
}

/// Every key of `store`, in the largest pages.
pub(crate) async fn export_everything(store: &dyn KeyStore) -> Vec<StoredKey> {
    export_all(store, MAX_EXPORT_PAGE).await
}

/// The exported form of key `id`.
pub(crate) async fn exported(store: &dyn KeyStore, id: KeyId) -> StoredKey {
    export_everything(store)
        .await
        .into_iter()
        .find(|k| k.info.record.key_id == id)
        .expect("the key is exported")
}

/// Creates five keys of account `sa-c` and returns their ids in listing
/// order: the keys a corrupted-row test spoils some of, with the store's own
/// SQL.
pub async fn keys_to_corrupt(store: &dyn KeyStore) -> Vec<KeyId> {
    for _ in 0..5 {
        store.create(NewKey::new("sa-c")).await.unwrap();
    }
    store
        .list("sa-c", ListRequest::first(100))
        .await
        .unwrap()
        .keys
        .iter()
        .map(|k| k.record.key_id)
        .collect()
}

/// After the rows of `bad` (among [`keys_to_corrupt`]'s `ids`) were made
/// unreadable: listings at every page size and exports at every page limit
/// skip exactly them and still end, and `unreadable` names them.
pub async fn only_unreadable_rows_are_skipped(store: &dyn KeyStore, ids: &[KeyId], bad: &[KeyId]) {
    let good: Vec<KeyId> = ids.iter().copied().filter(|id| !bad.contains(id)).collect();
    for size in [1, 2, 100] {
        let mut listed = Vec::new();
        let mut request = ListRequest::first(size);
        loop {
            let page = store.list("sa-c", request).await.unwrap();
            assert!(!page.keys.is_empty() || page.next_page_token.is_none());
            listed.extend(page.keys.iter().map(|k| k.record.key_id));
            match page.next_page_token {
                Some(token) => request = ListRequest::after(size, token),
                None => break,
            }
        }
        assert_eq!(listed, good, "page size {size}");
    }
    for limit in [1, 2, MAX_EXPORT_PAGE] {
        let mut exported = HashSet::new();
        let mut after = None;
        loop {
            let page = store.export(after, limit).await.unwrap();
            assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            after = Some(last.info.record.key_id);
            exported.extend(page.iter().map(|k| k.info.record.key_id));
        }
        assert_eq!(exported, good.iter().copied().collect(), "limit {limit}");
    }
    let mut unreadable: Vec<String> = bad.iter().map(ToString::to_string).collect();
    unreadable.sort();
    assert_eq!(store.unreadable().await.unwrap(), unreadable);
}

/// 20 creates of one account at once, spread over `stores` (handles on one
/// store's keys) against a limit of 5, each on a task of its own released
/// together: exactly 5 succeed, the rest are refused, and the account holds
/// the 5.
pub async fn concurrent_creates_respect_the_limit<S: KeyStore + Clone>(stores: &[S]) {
    let start = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                store.create(NewKey::new("sa-race")).await
            })
        })
        .collect();
    let mut created = HashSet::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("the create task ran") {
            Ok(key) => {
                created.insert(key.record.key_id);
            }
            Err(StoreError::KeyLimitReached { limit: 5, .. }) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(created.len(), 5);
    assert_eq!(refused, 15);
    let stored: HashSet<KeyId> = ids_of(&stores[0], "sa-race").await.into_iter().collect();
    assert_eq!(stored, created);
}

/// 200 leases of up to 10 credits at once, spread over `stores` (handles on
/// one store's keys), each on a task of its own released together, racing
/// for the `credits` of key `id`: every credit is granted exactly once, none
/// twice, and none is left.
pub async fn concurrent_leases_grant_exactly_the_credits<S: KeyStore + Clone>(
    stores: &[S],
    id: KeyId,
    credits: u64,
    now: SystemTime,
) {
    let start = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                store.lease_credits(id, 10, now).await
            })
        })
        .collect();
    let mut granted = 0;
    let mut empty = 0;
    for task in tasks {
        let lease = task
            .await
            .expect("the lease task ran")
            .expect("the lease is answered")
            .expect("the key has credits");
        assert!(lease.granted <= 10, "{lease:?}");
        granted += lease.granted;
        empty += usize::from(lease.granted == 0);
    }
    assert_eq!(granted, credits, "every credit granted once, none twice");
    assert!(empty > 0, "some leases found nothing left");
    let left = stores[0].get(id).await.unwrap().expect("the key exists");
    assert_eq!(left.record.credits.map(|c| c.remaining()), Some(0));
}

/// Two stores over one backing (a database, a file): account limits and
/// added credits set through `writer` reach a cache over `reader`, for every
/// key of the account, announced within `within`.
// Only the stores that two processes can share use it.
pub async fn account_changes_reach_the_other_store<S: KeyStore + Clone + 'static>(
    writer: &S,
    reader: &S,
    within: Duration,
) {
    let cache = CachedVerifier::new(
        reader.clone(),
        CacheConfig::builder()
            .positive_ttl(Duration::from_secs(3600))
            .build(),
    );
    let mut seen = Watch::on(reader);
    let first = writer
        .create(NewKey::new("sa-shared").with_credits(Credits::new(5).unwrap()))
        .await
        .unwrap();
    let second = writer.create(NewKey::new("sa-shared")).await.unwrap();
    for key in [&first, &second] {
        let caller = cache.lookup(&parse(reader, &key.key)).await.unwrap();
        assert!(caller.record().account_rate_limits.is_empty());
    }
    let limits: Vec<RateLimit> = vec!["10/1s".parse().unwrap()];
    writer
        .set_account_rate_limits("sa-shared", limits.clone())
        .await
        .unwrap();
    for key in [&first, &second] {
        let id = key.record.key_id;
        assert_eq!(
            seen.until_invalidated(id, within).await,
            Invalidation::key_of(id, "sa-shared")
        );
    }
    for key in [&first, &second] {
        let (caller, source) = cache
            .lookup_with_source(&parse(reader, &key.key))
            .await
            .unwrap();
        assert_eq!(source, Source::Verifier);
        assert_eq!(caller.record().account_rate_limits, limits);
    }
    let id = first.record.key_id;
    writer.add_credits(id, 7, None).await.unwrap().unwrap();
    seen.until_invalidated(id, within).await;
    let caller = cache.lookup(&parse(reader, &first.key)).await.unwrap();
    assert_eq!(caller.record().credits.map(|c| c.remaining()), Some(12));
}

/// The two peppers of the rotation tests: version 1, then version 2.
pub(crate) fn peppers() -> (Pepper, Pepper) {
    (
        Pepper::new(1, b"the first pepper, 32 bytes long!".to_vec()),
        Pepper::new(2, b"the second pepper, also 32 bytes".to_vec()),
    )
}

/// A key with the id `id` and a secret nobody was given.
pub fn wrong_secret(store: &dyn KeyStore, id: KeyId) -> PresentedKey {
    let format = store.key_format().expect("a store has a key format");
    format
        .parse(format.generate_for(id).unwrap().expose_secret())
        .unwrap()
}

/// A key whose id no store holds.
pub fn unknown_key(store: &dyn KeyStore) -> PresentedKey {
    let format = store.key_format().expect("a store has a key format");
    format
        .parse(format.generate().unwrap().expose_secret())
        .unwrap()
}

/// Forwards a store's invalidations to a channel a test can wait on.
struct Forward(mpsc::UnboundedSender<Invalidation>);

impl InvalidationListener for Forward {
    fn invalidate(&self, what: &Invalidation) {
        let _ = self.0.send(what.clone());
    }
}

/// What a store announces, as it announces it: every store's tests watch
/// its bus through this one type.
pub struct Watch {
    // The bus holds listeners weakly: this keeps it subscribed.
    _listener: Arc<Forward>,
    rx: mpsc::UnboundedReceiver<Invalidation>,
}

impl Watch {
    /// Subscribes to `store`'s invalidations.
    pub fn on(store: &dyn KeyStore) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = Arc::new(Forward(tx));
        store
            .invalidations()
            .expect("every store announces changes")
            .subscribe(listener.clone());
        Watch {
            _listener: listener,
            rx,
        }
    }

    /// Waits, at most `within`, for the next invalidation of `id` (or of
    /// everything).
    pub async fn until_invalidated(&mut self, id: KeyId, within: Duration) -> Invalidation {
        tokio::time::timeout(within, async {
            loop {
                match self.rx.recv().await.expect("bus alive") {
                    Invalidation::All => return Invalidation::All,
                    what if what.key_id() == Some(id) => return what,
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no invalidation of {id} within {within:?}"))
    }

    /// Waits, at most `within`, for the next invalidation, whatever it is.
    pub async fn next(&mut self, within: Duration) -> Invalidation {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing announced within {within:?}"))
            .expect("bus alive")
    }

    /// Waits, at most `within`, for `Invalidation::All`.
    pub async fn until_all(&mut self, within: Duration) {
        tokio::time::timeout(within, async {
            while self.rx.recv().await.expect("bus alive") != Invalidation::All {}
        })
        .await
        .unwrap_or_else(|_| panic!("no Invalidation::All within {within:?}"))
    }

    /// Everything announced and not yet received.
    pub fn drain(&mut self) -> Vec<Invalidation> {
        let mut all = Vec::new();
        while let Ok(what) = self.rx.try_recv() {
            all.push(what);
        }
        all
    }
}
