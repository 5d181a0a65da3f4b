//! What one route's layer holds.

use std::sync::Arc;

use super::authenticator::Authenticator;
use super::policy::RoutePolicy;
use crate::limits::RouteLimits;

/// A route's settings, behind one `Arc` in its service: axum clones a
/// route's service for every request, and this way a clone costs one
/// reference count whatever the route holds.
pub(crate) struct RouteConfig {
    pub(crate) auth: Authenticator,
    pub(crate) policy: Arc<dyn RoutePolicy>,
    pub(crate) limits: Option<RouteLimits>,
}
