//! What a route's layer asks per request: its scope policy and limits.

use http::Method;

use crate::limits::RouteLimits;
use crate::scope::ScopePolicy;

/// The rules of a route: which [`ScopePolicy`] applies to a request and,
/// optionally, the request's [`RouteLimits`]. A [`ScopePolicy`] is rules
/// that apply to every request; tables (for example one entry per gRPC
/// method) implement this to choose by path.
pub trait RouteRules: Send + Sync + 'static {
    /// The policy for a request with this method and path.
    fn policy_for(&self, method: &Method, path: &str) -> &ScopePolicy;

    /// The cost and default rate limits for a request with this method and
    /// path, if these rules set them (a table may, per gRPC method); `None`
    /// leaves it to the layer's
    /// [`route_limits`](crate::ApiKeyLayer::route_limits).
    fn route_limits_for(&self, method: &Method, path: &str) -> Option<&RouteLimits> {
        let _ = (method, path);
        None
    }
}

impl RouteRules for ScopePolicy {
    fn policy_for(&self, _method: &Method, _path: &str) -> &ScopePolicy {
        self
    }
}
