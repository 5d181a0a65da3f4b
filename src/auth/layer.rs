use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::authenticator::Authenticator;
use super::policy::RoutePolicy;
use super::service::ApiKeyService;

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
}

impl ApiKeyLayer {
    pub(crate) fn new(auth: Authenticator, policy: Arc<dyn RoutePolicy>) -> Self {
        Self { auth, policy }
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
        ApiKeyService::new(inner, self.auth.clone(), self.policy.clone())
    }
}
