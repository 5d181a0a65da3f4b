# Path and name changes of the public API (issue 12, part 4), in commit order.
# Re-apply to moved test files at merge:
#   sed -i -E -f scripts/api_renames.sed tests/**/*.rs
# (GNU sed, -E: extended regular expressions; \b is a word boundary.)

# One family of names: Authenticator, AuthenticatorBuilder, AuthLayer, AuthService.
s/\bApiKeyLayer\b/AuthLayer/g
s/\bApiKeyService\b/AuthService/g
# One name per idea: the scope policy of routes that take only unscoped keys.
s/\bunscoped_only\(\)/unscoped_keys_only()/g
s/\bScopePolicy::unscoped_only\b/ScopePolicy::unscoped_keys_only/g
