//! Which [`ScopePolicy`] applies to a request.

use http::Method;

use crate::limits::RouteLimits;
use crate::scope::ScopePolicy;

/// Picks the scope policy for a request. A [`ScopePolicy`] is a route
/// policy that applies to every request; tables (for example one entry per
/// gRPC method) implement this to choose by path.
pub trait RoutePolicy: Send + Sync + 'static {
    /// The policy for a request with this method and path.
    fn policy_for(&self, method: &Method, path: &str) -> &ScopePolicy;

    /// The cost and default rate limits for a request with this method and
    /// path, if this policy sets them (a table may, per gRPC method); `None`
    /// leaves it to the layer's [`limits`](crate::ApiKeyLayer::limits).
    fn limits_for(&self, method: &Method, path: &str) -> Option<&RouteLimits> {
        let _ = (method, path);
        None
    }
}

impl RoutePolicy for ScopePolicy {
    fn policy_for(&self, _method: &Method, _path: &str) -> &ScopePolicy {
        self
    }
}
