# Path and name changes of the public API, in commit order.
# Re-apply to moved test files at merge:
#   sed -i -E -f scripts/api_renames.sed tests/**/*.rs
# (GNU sed, -E: extended regular expressions; \b is a word boundary.)

# Names: Authenticator, AuthenticatorBuilder, ApiKeyLayer, ApiKeyService (the layer and service keep the names the project brief gives them).
# One name per idea: the scope policy of routes that take only unscoped keys.
s/\bunscoped_only\(\)/unscoped_keys_only()/g
s/\bScopePolicy::unscoped_only\b/ScopePolicy::unscoped_keys_only/g

# Module shape (see src/lib.rs): key, scope, record, verifier and invalidation
# are private; the root re-exports their public items.
s/\btower_api_key::(invalidation|key|record|scope|verifier)::/tower_api_key::/g
# Root-only items that public modules no longer re-export.
s/\btower_api_key::auth::rejection::(Reason|Rejection)\b/tower_api_key::\1/g
s/\btower_api_key::auth::(Authenticator|AuthenticatorBuilder|ApiKeyLayer|ApiKeyService|Reason|Rejection)\b/tower_api_key::\1/g
s/\btower_api_key::auth::(rejection|limit)::/tower_api_key::auth::/g
s/\btower_api_key::auth::(MethodPolicies|MethodPoliciesBuilder|MethodPolicyError)\b/tower_api_key::auth::grpc::\1/g
s/\btower_api_key::cache::Caller\b/tower_api_key::Caller/g
s/\btower_api_key::store::(KeyStore|MemoryStore)\b/tower_api_key::\1/g
s/\btower_api_key::store::(PgKeyStore|PgKeyStoreBuilder)\b/tower_api_key::store::postgres::\1/g
s/\btower_api_key::(CacheConfig|CachedVerifier|LookupError)\b/tower_api_key::cache::\1/g
# The same inside a root group: use tower_api_key::{store::MemoryStore, Authenticator};
/^\s*(\/\/[\/!] )?use tower_api_key::\{/ {
  :r
  /\};/! { N; br }
  s/\bstore::(KeyStore|MemoryStore)\b/\1/g
  s/\bauth::(Authenticator|AuthenticatorBuilder|ApiKeyLayer|ApiKeyService|Reason|Rejection)\b/\1/g
  s/\bauth::(MethodPolicies|MethodPoliciesBuilder|MethodPolicyError)\b/auth::grpc::\1/g
  s/\bcache::Caller\b/Caller/g
}
# Items moved to the root, taken out of a module group (also a multi-line
# one) into their own `use` line; then an emptied group is dropped.
/^\s*(\/\/[\/!] )?use tower_api_key::(store|auth|cache)::\{/ {
  :g
  /\};/! { N; bg }
  :s
  s/^(([ \t]*(\/\/[\/!] )?)use tower_api_key::store::\{((([^}]|\n)*[{ ,])?))(KeyStore|MemoryStore)\b,?/\2use tower_api_key::\7;\n\1/M
  ts
  :a
  s/^(([ \t]*(\/\/[\/!] )?)use tower_api_key::auth::\{((([^}]|\n)*[{ ,])?))(Authenticator|AuthenticatorBuilder|ApiKeyLayer|ApiKeyService|Reason|Rejection)\b,?/\2use tower_api_key::\7;\n\1/M
  ta
  s/^(([ \t]*(\/\/[\/!] )?)use tower_api_key::auth::\{((([^}]|\n)*[{ ,])?))(MethodPolicies|MethodPoliciesBuilder|MethodPolicyError)\b/\1grpc::\7/M
  :c
  s/^(([ \t]*(\/\/[\/!] )?)use tower_api_key::cache::\{((([^}]|\n)*[{ ,])?))Caller\b,?/\2use tower_api_key::Caller;\n\1/M
  tc
  s/\n\s*(\/\/[\/!] )?use tower_api_key::(store|auth|cache)::\{[[:space:]]*\};//
}
# store::postgres::migrations is private; its items are in store::postgres.
s/\bstore::postgres::migrations::(migrations|Migration|MigrationReport)\b/store::postgres::\1/g
# Issue 21, traits split by job: `Verifier::lease_credits` and
# `Verifier::return_credits` are `CreditLedger`'s (a trait of its own; bring
# it into scope where a store's credits are leased). Not mechanical (by
# hand): move the two methods of `impl Verifier for X` into
# `impl CreditLedger for X`; `Authenticator::new(v)` / `::builder(v)` over a
# verifier that is not a store (a closure) become
# `Authenticator::verifier_builder(v)` (`.build()`), with `.credits(store)`
# when its records carry credits.
s/\bVerifier::(lease_credits|return_credits)\b/CreditLedger::\1/g
# Issue 22 point 3, typed store errors: `StoreError::Invalid(String)` and
# `StoreError::invalid(..)` are gone. Not mechanical (by hand), by case:
# a bad page token `StoreError::InvalidPageToken`; a page size or export
# limit `StoreError::invalid_page_size(max)`; an import whose id is taken or
# revoked `StoreError::conflict(id, ConflictKind::..)`; a store's settings
# `StoreError::Config(ConfigError::..)`; a field `StoreError::invalid_field`
# with a `rules::FieldError`. `limits::LimitError` is an enum of its cases,
# and `rules::Problem::Limits` holds one instead of a String.
# Issue 21, page budgeting by bytes moves to the management layer: stores
# page by count only; the 1 MiB budget is the management API's, and
# `KeyInfo::json_size_estimate` is gone (the API measures its own JSON).
s/\bstore::MAX_PAGE_BYTES\b/management::MAX_PAGE_BYTES/g

# Issue 21: the SQL stores are crates of their own; what they share is
# tower-api-key-sql, and the store helpers are the public store kit.
s/\btower_api_key::store::sqlite::/tower_api_key_sqlite::/g
s/\btower_api_key::store::postgres::/tower_api_key_postgres::/g
s/\btower_api_key::store::(Migration|MigrationReport)\b/tower_api_key_sql::\1/g
s/\bcrate::store::(check_new|check_update|check_account|check_account_limits|check_version|check_limits|check_expiry|imported_version|export_page_size|fill_page|hint_of|import_conflict|import_revoked|verified)\b/crate::store::kit::\1/g

# Issue 22, point 2: one name per thing.
# No empty namespace enum: the management API's builder is made by its type.
s/\bManagementApi::builder_from_arc\b/ManagementApiBuilder::from_arc/g
s/\bManagementApi::builder\b/ManagementApiBuilder::new/g
s/\bManagementApi, ManagementApiBuilder\b/ManagementApiBuilder/g
s/\bManagementApi\b/ManagementApiBuilder/g
# A route's per-request rules (scope policy and limits) are `RouteRules`:
# "policy" always means a `ScopePolicy`.
s/\bRoutePolicy\b/RouteRules/g
s/\blimits_for\(/route_limits_for(/g
# `limits(...)` named for what it sets: the authenticator's limit settings,
# a layer's route limits, a gRPC method's limits.
s/\.limits\((\s*)("|path\b)/.method_limits(\1\2/g
s/\.limits\((\s*)(LimitSettings\b|settings\b)/.limit_settings(\1\2/g
s/\.limits\(([^)])/.route_limits(\1/g
# `RouteLimits` is a value: `with_` setters, and its cost read by `cost()`.
s/\.cost\(/.with_cost(/g
s/\brequest_cost\(\)/cost()/g
s/\.default_rate_limit\(/.with_default_rate_limit(/g
# The same `limits(` call with its argument on the next line.
/\.limits\($/ {
  N
  s/\.limits\(\n(\s*)("|path\b)/.method_limits(\n\1\2/
  s/\.limits\(\n(\s*)(LimitSettings\b|settings\b)/.limit_settings(\n\1\2/
  s/\.limits\(\n/.route_limits(\n/
}

# One builder convention (issue 22): builders (`*Builder`, ended by
# `build()`) name options bare, as moka and tower-http do; `with_` is for
# changing a field of a value (`NewKey`, `KeyRecord`, `RateLimit`, ...).
# MemoryStoreBuilder's setters (a chain from `MemoryStore::builder()` to
# `.build()`, on one line or several):
/MemoryStore::builder\(\)/ {
  :m
  /\.build\(\)/! { N; bm }
  s/\.with_(format|hasher|clock)\(/.\1(/g
}
# AuthenticatorBuilder has one setter per option: `cache_config(config)` is
# gone (set `positive_ttl`, `max_keys`, ... on the builder itself), and so is
# `key_format(format)`: the verifier (a store's builder) says the format.
# The SQL store builders take bare names too (they moved into crates):
#   SqliteKeyStoreBuilder: with_format, with_hasher, with_clock,
#     with_busy_timeout, with_poll_interval -> format, hasher, clock,
#     busy_timeout, poll_interval
#   PgKeyStoreBuilder: with_format, with_hasher, with_clock, with_channel,
#     with_pool_size, with_timeout, with_reconnect_backoff,
#     with_reconnect_probe_interval, with_health_check_interval -> the same
#     without `with_`
/(SqliteKeyStore|PgKeyStore)::builder\(/ {
  :k
  /\.(build|open|connect)\(|;/! { N; bk }
  s/\.with_(format|hasher|clock|busy_timeout|poll_interval|channel|pool_size|timeout|reconnect_backoff|reconnect_probe_interval|health_check_interval)\(/.\1(/g
}
