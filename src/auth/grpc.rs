//! gRPC: one layer in front of a whole tonic server, a scope policy per method.
//!
//! A gRPC server is one tower service for all its methods, so it takes one
//! [`ApiKeyLayer`](crate::ApiKeyLayer) whose policy is a [`MethodPolicies`]
//! table: a [`ScopePolicy`] per full method path (`/package.Service/Method`),
//! optionally one per service, and a default for every other path.
//!
//! ```
//! use tower_api_key::Authenticator;
//! use tower_api_key::auth::grpc::MethodPolicies;
//! use tower_api_key::MemoryStore;
//!
//! let auth = Authenticator::new(MemoryStore::new());
//! let methods = MethodPolicies::builder()
//!     .require_any("/demo.Assistant/Translate", ["yc.ai.translate.execute", "yc.ai.foundationModels.execute"])
//!     .require_any("/demo.Assistant/Generate", ["yc.ai.foundationModels.execute"])
//!     .any_valid_key("/demo.Assistant/WhoAmI")
//!     .build()?; // a malformed or repeated path is an error here, not at request time
//! let layer = auth.layer(methods);
//! // with the `tonic` feature (for tonic's body type):
//! // tonic::transport::Server::builder().layer(layer).add_service(...)
//! # Ok::<_, tower_api_key::auth::grpc::MethodPolicyError>(())
//! ```
//!
//! A request's policy is, in this order: its method's entry, its service's
//! entry ([`MethodPoliciesBuilder::service`]), the default. **The default is
//! [`ScopePolicy::unscoped_keys_only`]** unless set with
//! [`MethodPoliciesBuilder::default_policy`]: like an HTTP route that declares no
//! scopes, an unlisted method admits unscoped keys and refuses scoped keys (a
//! scoped key is only for its scopes). Every unlisted method still needs a
//! valid key; this layer never lets a request through unauthenticated.
//!
//! Rejections of gRPC requests (`content-type: application/grpc*`) are
//! trailers-only gRPC responses (see [`Rejection`](crate::Rejection)): a
//! tonic client sees `Code::Unauthenticated`, `Code::PermissionDenied`,
//! `Code::ResourceExhausted`, `Code::Unavailable` or (for a panicking
//! verifier) `Code::Internal`, and the handler is not called.
//!
//! In a handler the identity is in the request's extensions, where tonic
//! keeps what the layer put in the HTTP request:
//! `request.extensions().get::<Caller>()`, or with the `tonic` feature
//! `tower_api_key::auth::grpc::caller(&request)?`.
//!
//! The guide, with the status table and a server that mixes axum and tonic
//! on one port, is `docs/grpc.md`.

use std::collections::HashMap;
use std::fmt;

use http::Method;

use super::rules::RouteRules;
use crate::limits::RouteLimits;
use crate::scope::{Scope, ScopeError, ScopePolicy};

// The gRPC guide's examples compile as doctests (its tonic server needs
// the `tonic` feature). Its two whole programs use the code a build script
// generates, which a doctest has not: they are `ignore` here, and
// scripts/check_grpc_doc.sh builds and runs them in a crate of their own.
#[cfg(all(doctest, feature = "tonic"))]
#[doc = include_str!("../../docs/grpc.md")]
struct GrpcGuideDoctests;

/// A [`RouteRules`] for a gRPC server: a [`ScopePolicy`] per method path,
/// per service, and a default. Build it with [`MethodPolicies::builder`]; see
/// the [module docs](self).
#[derive(Clone)]
pub struct MethodPolicies {
    methods: HashMap<Box<str>, ScopePolicy>,
    services: HashMap<Box<str>, ScopePolicy>,
    default: ScopePolicy,
    limits: HashMap<Box<str>, RouteLimits>,
}

impl MethodPolicies {
    /// An empty table whose default is [`ScopePolicy::unscoped_keys_only`].
    pub fn builder() -> MethodPoliciesBuilder {
        MethodPoliciesBuilder::default()
    }

    /// The policy for a request path: the method's, else its service's, else
    /// the default.
    fn policy_for_path(&self, path: &str) -> &ScopePolicy {
        if let Some(policy) = self.methods.get(path) {
            return policy;
        }
        if !self.services.is_empty() {
            if let Some((service, _)) = split_method_path(path) {
                if let Some(policy) = self.services.get(service) {
                    return policy;
                }
            }
        }
        &self.default
    }

    /// The policy of paths that have no entry.
    pub fn default_policy(&self) -> &ScopePolicy {
        &self.default
    }
}

impl RouteRules for MethodPolicies {
    fn policy_for(&self, _method: &Method, path: &str) -> &ScopePolicy {
        self.policy_for_path(path)
    }

    fn route_limits_for(&self, _method: &Method, path: &str) -> Option<&RouteLimits> {
        if self.limits.is_empty() {
            return None;
        }
        self.limits.get(path)
    }
}

impl fmt::Debug for MethodPolicies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<_> = self.methods.iter().collect();
        methods.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut services: Vec<_> = self.services.iter().collect();
        services.sort_unstable_by(|a, b| a.0.cmp(b.0));
        f.debug_struct("MethodPolicies")
            .field("methods", &methods)
            .field("services", &services)
            .field("default", &self.default)
            .field("limits", &self.limits.len())
            .finish()
    }
}

/// Builds a [`MethodPolicies`]. Every entry is checked when
/// [`build`](Self::build) is called, which returns the first error.
#[derive(Debug, Default)]
#[must_use]
pub struct MethodPoliciesBuilder {
    methods: Vec<(String, Result<ScopePolicy, ScopeError>)>,
    services: Vec<(String, ScopePolicy)>,
    default: Option<ScopePolicy>,
    limits: Vec<(String, RouteLimits)>,
}

impl MethodPoliciesBuilder {
    /// The cost and default rate limits of one method, by its full path
    /// (see [`crate::limits`]); other methods take the layer's
    /// [`route_limits`](crate::ApiKeyLayer::route_limits).
    pub fn method_limits(mut self, path: impl Into<String>, limits: RouteLimits) -> Self {
        self.limits.push((path.into(), limits));
        self
    }

    /// The policy of one method, by its full path `/package.Service/Method`
    /// (as in the HTTP/2 `:path` of its calls).
    pub fn method(mut self, path: impl Into<String>, policy: ScopePolicy) -> Self {
        self.methods.push((path.into(), Ok(policy)));
        self
    }

    /// The method requires any of `scopes` ([`ScopePolicy::require_any`]);
    /// an invalid scope name is reported by [`build`](Self::build).
    pub fn require_any<I, S>(mut self, path: impl Into<String>, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        self.methods
            .push((path.into(), ScopePolicy::require_any(scopes)));
        self
    }

    /// The method declares no scopes ([`ScopePolicy::unscoped_keys_only`]).
    pub fn unscoped_keys_only(self, path: impl Into<String>) -> Self {
        self.method(path, ScopePolicy::unscoped_keys_only())
    }

    /// The method admits every valid key ([`ScopePolicy::any_valid_key`]).
    pub fn any_valid_key(self, path: impl Into<String>) -> Self {
        self.method(path, ScopePolicy::any_valid_key())
    }

    /// The policy of every method of a service without its own entry, by the
    /// service's full name `package.Service` (no slashes).
    pub fn service(mut self, name: impl Into<String>, policy: ScopePolicy) -> Self {
        self.services.push((name.into(), policy));
        self
    }

    /// The policy of every path without an entry (default:
    /// [`ScopePolicy::unscoped_keys_only`]). Calling it again replaces it.
    pub fn default_policy(mut self, policy: ScopePolicy) -> Self {
        self.default = Some(policy);
        self
    }

    /// Checks every entry: method paths must be `/<Service>/<Method>` where
    /// `<Service>` is a dot-separated full name (`package.Service`) and each
    /// part a protobuf identifier (`[A-Za-z_][A-Za-z0-9_]*`); no path or
    /// service may appear twice; scope names must be valid.
    pub fn build(self) -> Result<MethodPolicies, MethodPolicyError> {
        let mut methods = HashMap::with_capacity(self.methods.len());
        for (path, policy) in self.methods {
            if split_method_path(&path).is_none() {
                return Err(MethodPolicyError::MalformedPath(path));
            }
            let policy = match policy {
                Ok(policy) => policy,
                Err(error) => return Err(MethodPolicyError::InvalidScope { path, error }),
            };
            if methods.contains_key(path.as_str()) {
                return Err(MethodPolicyError::DuplicatePath(path));
            }
            methods.insert(path.into_boxed_str(), policy);
        }
        let mut services = HashMap::with_capacity(self.services.len());
        for (name, policy) in self.services {
            if !is_full_name(&name) {
                return Err(MethodPolicyError::MalformedService(name));
            }
            if services.contains_key(name.as_str()) {
                return Err(MethodPolicyError::DuplicateService(name));
            }
            services.insert(name.into_boxed_str(), policy);
        }
        let mut limits = HashMap::with_capacity(self.limits.len());
        for (path, route) in self.limits {
            if split_method_path(&path).is_none() {
                return Err(MethodPolicyError::MalformedPath(path));
            }
            if limits.contains_key(path.as_str()) {
                return Err(MethodPolicyError::DuplicatePath(path));
            }
            limits.insert(path.into_boxed_str(), route);
        }
        Ok(MethodPolicies {
            methods,
            services,
            limits,
            default: self.default.unwrap_or_else(ScopePolicy::unscoped_keys_only),
        })
    }
}

/// Why a [`MethodPolicies`] table was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MethodPolicyError {
    /// A method path that is not `/package.Service/Method`.
    MalformedPath(String),
    /// A service name that is not `package.Service`.
    MalformedService(String),
    /// The same method path twice.
    DuplicatePath(String),
    /// The same service twice.
    DuplicateService(String),
    /// An invalid scope in a method's policy.
    InvalidScope {
        /// The method path.
        path: String,
        /// What is wrong with the scopes.
        error: ScopeError,
    },
}

impl fmt::Display for MethodPolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MalformedPath(path) => write!(
                f,
                "gRPC method path {path:?} is not of the form /package.Service/Method"
            ),
            Self::MalformedService(name) => write!(
                f,
                "gRPC service name {name:?} is not of the form package.Service"
            ),
            Self::DuplicatePath(path) => {
                write!(f, "gRPC method path {path:?} is listed more than once")
            }
            Self::DuplicateService(name) => {
                write!(f, "gRPC service {name:?} is listed more than once")
            }
            Self::InvalidScope { path, error } => {
                write!(f, "scopes of gRPC method {path:?}: {error}")
            }
        }
    }
}

impl std::error::Error for MethodPolicyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidScope { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// `/package.Service/Method` to `("package.Service", "Method")`, if well formed.
fn split_method_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (is_full_name(service) && is_identifier(method)).then_some((service, method))
}

/// `package.Service`: dot-separated identifiers (a service without a package
/// is a single identifier).
fn is_full_name(name: &str) -> bool {
    name.split('.').all(is_identifier)
}

/// A protobuf identifier: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The authenticated [`Caller`](crate::Caller) of a tonic request, for
/// handlers behind an [`ApiKeyLayer`](crate::ApiKeyLayer).
///
/// ```
/// use tonic::{Request, Response, Status};
/// use tower_api_key::auth::grpc::caller;
///
/// async fn who_am_i(request: Request<()>) -> Result<Response<String>, Status> {
///     let caller = caller(&request)?;
///     Ok(Response::new(caller.service_account_id().to_string()))
/// }
/// ```
///
/// Without a layer in front of the service there is no caller: that is a
/// server misconfiguration, returned as `Status::internal` (and logged).
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&crate::Caller, tonic::Status> {
    request.extensions().get::<crate::Caller>().ok_or_else(|| {
        const MESSAGE: &str = "no authenticated Caller in request extensions: put the \
             tonic service behind an ApiKeyLayer (for example \
             `Server::builder().layer(auth.layer(method_policies))`)";
        tracing::error!("{MESSAGE}");
        tonic::Status::internal(MESSAGE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSLATE: &str = "/demo.Assistant/Translate";

    #[test]
    fn method_paths_are_validated() {
        for good in [
            "/demo.Assistant/Translate",
            "/a.b.c.Service/Method_2",
            "/_x._y/_z",
            "/Service/Method",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(split_method_path(good).is_some(), "{good}");
            let table = MethodPolicies::builder().any_valid_key(good).build();
            assert!(table.is_ok(), "{good}");
        }
        for bad in [
            "",
            "/",
            "//",
            "demo.Assistant/Translate",
            "/demo.Assistant",
            "/demo.Assistant/",
            "/demo.Assistant/Translate/",
            "/demo.Assistant/Translate/x",
            "/demo..Assistant/Translate",
            "/.demo.Assistant/Translate",
            "/demo.Assistant./Translate",
            "/demo.Assistant/Trans.late",
            "/demo.1Assistant/Translate",
            "/demo.Assistant/1Translate",
            "/demo-x.Assistant/Translate",
            "/demo.Assistant/Translate ",
            " /demo.Assistant/Translate",
            "/demo.Assistant/Translaté",
            "/demo.Assistant/Translate?x=1",
        ] {
            assert_eq!(
                MethodPolicies::builder().any_valid_key(bad).build().err(),
                Some(MethodPolicyError::MalformedPath(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn duplicates_and_bad_scopes_are_errors_at_build() {
        let err = MethodPolicies::builder()
            .any_valid_key(TRANSLATE)
            .require_any(TRANSLATE, ["a"])
            .build()
            .unwrap_err();
        assert_eq!(err, MethodPolicyError::DuplicatePath(TRANSLATE.into()));
        assert!(err.to_string().contains("more than once"));

        let err = MethodPolicies::builder()
            .require_any(TRANSLATE, ["not a scope"])
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            MethodPolicyError::InvalidScope {
                path: TRANSLATE.into(),
                error: ScopeError::Invalid
            }
        );
        let err = MethodPolicies::builder()
            .require_any(TRANSLATE, Vec::<&str>::new())
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            MethodPolicyError::InvalidScope {
                error: ScopeError::NoneRequired,
                ..
            }
        ));

        let err = MethodPolicies::builder()
            .service("demo.Assistant", ScopePolicy::any_valid_key())
            .service("demo.Assistant", ScopePolicy::unscoped_keys_only())
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            MethodPolicyError::DuplicateService("demo.Assistant".into())
        );
        for bad in ["/demo.Assistant", "demo.Assistant/", "demo..Assistant", ""] {
            assert_eq!(
                MethodPolicies::builder()
                    .service(bad, ScopePolicy::any_valid_key())
                    .build()
                    .err(),
                Some(MethodPolicyError::MalformedService(bad.into()))
            );
        }
    }

    #[test]
    fn lookup_is_method_then_service_then_default() {
        let translate = ScopePolicy::require_any(["t"]).unwrap();
        let other = ScopePolicy::require_any(["o"]).unwrap();
        let table = MethodPolicies::builder()
            .method(TRANSLATE, translate.clone())
            .service("demo.Other", other.clone())
            .build()
            .unwrap();
        let post = Method::POST;
        assert_eq!(table.policy_for(&post, TRANSLATE), &translate);
        assert_eq!(table.policy_for(&post, "/demo.Other/Anything"), &other);
        // Unlisted: the default, unscoped keys only.
        assert_eq!(
            table.policy_for(&post, "/demo.Assistant/Generate"),
            &ScopePolicy::unscoped_keys_only()
        );
        assert_eq!(
            table.policy_for(&post, "/not/a/grpc/path"),
            &ScopePolicy::unscoped_keys_only()
        );
        // Paths are compared exactly.
        assert_eq!(
            table.policy_for(&post, "/demo.assistant/translate"),
            &ScopePolicy::unscoped_keys_only()
        );

        let table = MethodPolicies::builder()
            .default_policy(ScopePolicy::any_valid_key())
            .build()
            .unwrap();
        assert_eq!(table.default_policy(), &ScopePolicy::any_valid_key());
        assert_eq!(
            table.policy_for(&post, TRANSLATE),
            &ScopePolicy::any_valid_key()
        );
    }
}
