//! Scopes and the scope rules of a route.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest scope name, in bytes.
pub const MAX_SCOPE_LEN: usize = 256;
/// Most unique scopes one key may hold.
pub const MAX_SCOPES_PER_KEY: usize = 100;

/// A validated scope name: dot-separated segments of `A-Z a-z 0-9 _ -`, at
/// most 256 characters. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

impl Scope {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, ScopeError> {
        if name.is_empty() {
            return Err(ScopeError::Empty);
        }
        if name.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong);
        }
        let valid = name.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !valid {
            return Err(ScopeError::Invalid);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The scope's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Scope {
    type Error = ScopeError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for Scope {
    type Error = ScopeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl TryFrom<&String> for Scope {
    type Error = ScopeError;

    fn try_from(s: &String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<std::convert::Infallible> for ScopeError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Why a scope or a set of scopes was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeError {
    /// An empty scope name.
    Empty,
    /// A scope name over [`MAX_SCOPE_LEN`] bytes.
    TooLong,
    /// A scope name with an empty segment or a character outside `A-Z a-z 0-9 _ -`.
    Invalid,
    /// More than [`MAX_SCOPES_PER_KEY`] unique scopes.
    TooMany,
    /// A route that requires scopes must name at least one.
    NoneRequired,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("scope name is empty"),
            Self::TooLong => write!(f, "scope name is longer than {MAX_SCOPE_LEN} characters"),
            Self::Invalid => f.write_str(
                "scope name must be dot-separated non-empty segments of A-Z, a-z, 0-9, '_' and '-'",
            ),
            Self::TooMany => write!(f, "a key holds at most {MAX_SCOPES_PER_KEY} unique scopes"),
            Self::NoneRequired => {
                f.write_str("a route that requires scopes must name at least one")
            }
        }
    }
}

impl std::error::Error for ScopeError {}

/// The scopes a key holds: sorted, unique, at most 100. Empty means the key is
/// unscoped. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ScopeSet(Arc<[Scope]>);

impl Default for ScopeSet {
    fn default() -> Self {
        Self::empty()
    }
}

impl ScopeSet {
    /// The empty set: an unscoped key.
    pub fn empty() -> Self {
        Self(Arc::from(Vec::new()))
    }

    /// Validates, sorts and de-duplicates `scopes`.
    pub fn new<I, S>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        let mut all = scopes
            .into_iter()
            .map(|s| s.try_into().map_err(ScopeError::from))
            .collect::<Result<Vec<Scope>, _>>()?;
        all.sort_unstable();
        all.dedup();
        if all.len() > MAX_SCOPES_PER_KEY {
            return Err(ScopeError::TooMany);
        }
        Ok(Self(Arc::from(all)))
    }

    /// Whether the set holds `scope`.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.binary_search(scope).is_ok()
    }

    /// Whether this is an unscoped key's set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> std::slice::Iter<'_, Scope> {
        self.0.iter()
    }

    /// The scopes, sorted.
    pub fn as_slice(&self) -> &[Scope] {
        &self.0
    }

    /// Whether another copy of this set shares its storage.
    pub(crate) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

impl<'a> IntoIterator for &'a ScopeSet {
    type Item = &'a Scope;
    type IntoIter = std::slice::Iter<'a, Scope>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

/// The scope rule a route enforces: which keys it lets in.
///
/// A scope is an opaque dotted name such as `yc.ai.translate.execute`,
/// compared exactly (no wildcards). A key holds a [`ScopeSet`]; an empty set
/// means an *unscoped* key. Each route declares a [`ScopePolicy`]:
///
/// | route policy | scoped key holding a required scope | scoped key without it | unscoped key |
/// |---|---|---|---|
/// | [`ScopePolicy::require_any`] | allowed | denied (insufficient scope) | denied (insufficient scope) |
/// | [`ScopePolicy::unscoped_keys_only`] (the route declares no scopes) | - | denied (a scoped key is only for its scopes) | allowed |
/// | [`ScopePolicy::any_valid_key`] (explicit opt-in) | allowed | allowed | allowed |
///
/// Scopes only narrow a key; the service account's own permissions still
/// apply in the application.
///
/// ```
/// use tower_api_key::{ScopePolicy, ScopeSet};
///
/// let route = ScopePolicy::require_any(["yc.ai.translate.execute", "yc.ai.foundationModels.execute"])?;
/// let broad = ScopeSet::new(["yc.ai.foundationModels.execute"])?;
/// assert!(route.check(&broad).is_ok());
/// assert!(route.check(&ScopeSet::empty()).is_err());
/// # Ok::<_, tower_api_key::ScopeError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopePolicy(Policy);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Policy {
    RequireAny(ScopeSet),
    UnscopedOnly,
    AnyValidKey,
}

impl ScopePolicy {
    /// The route enforces scopes: a key passes only if it holds at least one
    /// of `scopes` (for example a narrow scope and a broad one). Unscoped keys
    /// are refused.
    pub fn require_any<I, S>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        let set = ScopeSet::new(scopes)?;
        if set.is_empty() {
            return Err(ScopeError::NoneRequired);
        }
        Ok(Self(Policy::RequireAny(set)))
    }

    /// The route declares no scopes (it does not support them): unscoped keys
    /// pass, scoped keys are refused, since a scoped key is only for its scopes.
    pub fn unscoped_keys_only() -> Self {
        Self(Policy::UnscopedOnly)
    }

    /// Every valid key passes, scoped or not. An explicit opt-in for routes
    /// such as introspection (`/whoami`).
    pub fn any_valid_key() -> Self {
        Self(Policy::AnyValidKey)
    }

    /// The scopes this route accepts, if it enforces scopes.
    pub fn required(&self) -> Option<&ScopeSet> {
        match &self.0 {
            Policy::RequireAny(set) => Some(set),
            _ => None,
        }
    }

    /// Applies the rule to the scopes of a valid key.
    pub fn check(&self, key_scopes: &ScopeSet) -> Result<(), ScopeDenied> {
        match &self.0 {
            Policy::AnyValidKey => Ok(()),
            Policy::UnscopedOnly if key_scopes.is_empty() => Ok(()),
            Policy::UnscopedOnly => Err(ScopeDenied::ScopedKeyOnUnscopedRoute),
            Policy::RequireAny(required) => {
                if required.iter().any(|s| key_scopes.contains(s)) {
                    Ok(())
                } else {
                    Err(ScopeDenied::MissingScope)
                }
            }
        }
    }
}

/// A valid key that the route's [`ScopePolicy`] refuses (HTTP 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeDenied {
    /// The route requires scopes and the key holds none of them (or is unscoped).
    MissingScope,
    /// The route declares no scopes and the key is scoped.
    ScopedKeyOnUnscopedRoute,
}

impl fmt::Display for ScopeDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MissingScope => "the api key holds none of the scopes this route requires",
            Self::ScopedKeyOnUnscopedRoute => {
                "the api key is scoped and this route does not accept scoped keys"
            }
        })
    }
}

impl std::error::Error for ScopeDenied {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_are_validated() {
        for good in ["a", "yc.ai.translate.execute", "a-b_c.D9", &"x".repeat(256)] {
            assert!(Scope::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a*",
            "a/b",
            "é",
            &"x".repeat(257),
        ] {
            assert!(Scope::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scope_sets_dedupe_and_cap_at_one_hundred() {
        let set = ScopeSet::new(["b", "a", "b"]).unwrap();
        assert_eq!(set.len(), 2);
        let hundred: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
        assert!(ScopeSet::new(&hundred).is_ok());
        let mut over = hundred.clone();
        over.push("s100".into());
        assert_eq!(ScopeSet::new(&over), Err(ScopeError::TooMany));
        // Duplicates do not count against the cap.
        let mut dup = hundred;
        dup.push("s0".into());
        assert!(ScopeSet::new(&dup).is_ok());
    }

    #[test]
    fn require_any_needs_at_least_one_scope() {
        assert_eq!(
            ScopePolicy::require_any(Vec::<&str>::new()),
            Err(ScopeError::NoneRequired)
        );
    }
}
