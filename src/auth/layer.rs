use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::authenticator::Authenticator;
use super::policy::RoutePolicy;
use super::route::RouteConfig;
use super::service::ApiKeyService;
use crate::limits::RouteLimits;
use crate::scope::{Scope, ScopeError, ScopePolicy};

/// Layer that applies the [`ApiKeyService`] middleware: one route's scope
/// policy over the shared [`Authenticator`].
///
/// Made by [`Authenticator::require_any`], [`Authenticator::unscoped_keys_only`],
/// [`Authenticator::any_valid_key`] or [`Authenticator::layer`]; cloning it
/// clones two `Arc`s. See the [module docs](super) for an example.
#[derive(Clone)]
#[must_use]
pub struct ApiKeyLayer {
    auth: Authenticator,
    policy: Arc<dyn RoutePolicy>,
    limits: Option<RouteLimits>,
}

/// The layers of one [`Authenticator`], one per route policy. They live here,
/// beside the layer, so that the authenticator does not import its layer.
impl Authenticator {
    /// A layer for a route that enforces scopes: keys holding any of `scopes`
    /// pass; other scoped keys and unscoped keys get 403.
    ///
    /// # Panics
    ///
    /// If a scope name is invalid or `scopes` is empty; see
    /// [`Authenticator::try_require_any`] for scopes read from configuration.
    pub fn require_any<I, S>(&self, scopes: I) -> ApiKeyLayer
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        match self.try_require_any(scopes) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid route scopes: {e}"),
        }
    }

    /// [`Authenticator::require_any`], returning invalid scopes as an error.
    pub fn try_require_any<I, S>(&self, scopes: I) -> Result<ApiKeyLayer, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        Ok(self.layer(ScopePolicy::require_any(scopes)?))
    }

    /// A layer for a route that declares no scopes: unscoped keys pass,
    /// scoped keys get 403 (a scoped key is only for its scopes).
    pub fn unscoped_keys_only(&self) -> ApiKeyLayer {
        self.layer(ScopePolicy::unscoped_keys_only())
    }

    /// A layer that admits every valid key, scoped or not (an explicit
    /// opt-in, for routes such as `/whoami`).
    pub fn any_valid_key(&self) -> ApiKeyLayer {
        self.layer(ScopePolicy::any_valid_key())
    }

    /// A layer with any [`RoutePolicy`]: one [`ScopePolicy`], or a table that
    /// picks one per request path (for example per gRPC method).
    pub fn layer(&self, policy: impl RoutePolicy) -> ApiKeyLayer {
        ApiKeyLayer::new(self.clone(), Arc::new(policy))
    }
}

impl ApiKeyLayer {
    pub(crate) fn new(auth: Authenticator, policy: Arc<dyn RoutePolicy>) -> Self {
        Self {
            auth,
            policy,
            limits: None,
        }
    }

    /// The route's cost per request and its default rate limits for keys
    /// that carry none (see [`crate::limits`]). A [`RoutePolicy`] that sets
    /// limits for a request (a gRPC method table) takes precedence.
    pub fn limits(mut self, limits: RouteLimits) -> Self {
        self.limits = Some(limits);
        self
    }
}

impl fmt::Debug for ApiKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let route = RouteConfig {
            auth: self.auth.clone(),
            policy: self.policy.clone(),
            limits: self.limits.clone(),
        };
        ApiKeyService::new(inner, Arc::new(route))
    }
}
