use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::authenticator::Authenticator;
use super::gate::Gate;
use super::rules::RouteRules;
use super::service::ApiKeyService;
use crate::limits::RouteLimits;

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
    rules: Arc<dyn RouteRules>,
    limits: Option<RouteLimits>,
}

impl ApiKeyLayer {
    pub(crate) fn new(auth: Authenticator, rules: Arc<dyn RouteRules>) -> Self {
        Self {
            auth,
            rules,
            limits: None,
        }
    }

    /// The route's cost per request and its default rate limits for keys
    /// that carry none (see [`crate::limits`]). A [`RouteRules`] that sets
    /// limits for a request (a gRPC method table) takes precedence.
    pub fn route_limits(mut self, limits: RouteLimits) -> Self {
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
        let gate = Gate {
            auth: self.auth.clone(),
            rules: self.rules.clone(),
            limits: self.limits.clone(),
        };
        ApiKeyService::new(inner, Arc::new(gate))
    }
}
