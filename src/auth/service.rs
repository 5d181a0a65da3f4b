use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::RejectionBody;
use super::decide::{self, Precheck};
use super::future::{admit, ResponseFuture};
use super::limits::Limited;
use super::route::RouteConfig;
use crate::cache::Caller;

/// Middleware that authenticates every request by its API key, enforces the
/// route's scope policy and inserts the [`Caller`] into request extensions.
///
/// See the [module docs](super) for an example.
#[derive(Clone)]
#[must_use]
pub struct ApiKeyService<S> {
    inner: S,
    route: Arc<RouteConfig>,
}

impl<S> ApiKeyService<S> {
    pub(crate) fn new(inner: S, route: Arc<RouteConfig>) -> Self {
        Self { inner, route }
    }

    /// The ready service, moved out for a future; a clone stays for the
    /// next call.
    fn take_ready(&mut self) -> S
    where
        S: Clone,
    {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for ApiKeyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyService")
            .field("inner", &self.inner)
            .field("auth", &self.route.auth)
            .finish_non_exhaustive()
    }
}

// `Clone` only because a miss moves the ready service into the future and
// leaves a clone behind; nothing else is asked of `S` or the body here (the
// future is `Send` exactly when they are).
impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: RejectionBody,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Only this layer may say who the caller is: an admitted request's
        // `Caller` replaces any already there (`admit`), and the only other
        // way in, a preflight, loses it here.
        let route = &*self.route;
        let s = route.auth.shared();
        let (key, attempt) = match decide::precheck(s, &request) {
            Precheck::PassThrough => {
                request.extensions_mut().remove::<Caller>();
                return ResponseFuture::inner(self.inner.call(request), None);
            }
            Precheck::Reject(rejection) => {
                return ResponseFuture::rejected(s.respond(rejection, request.headers()))
            }
            Precheck::Lookup(key, attempt) => (key, attempt),
        };
        // Hot path: a cached answer needs no future and no clone of the inner service.
        if let Some(answer) = s.cache.answer_candidate(&key) {
            // A hit's id is the cached entry's, a checked one.
            let key_id = key.unchecked_id();
            let caller = match decide::verdict(s, &*route.policy, &request, key_id, answer, attempt)
            {
                Ok(caller) => caller,
                Err(rejection) => {
                    return ResponseFuture::rejected(s.respond(rejection, request.headers()))
                }
            };
            let limited =
                decide::limit(s, &*route.policy, route.limits.as_ref(), &request, &caller);
            return match limited {
                Limited::Admit(headers) => {
                    admit(s, &mut request, caller);
                    ResponseFuture::inner(self.inner.call(request), headers)
                }
                Limited::Refuse(rejection) => {
                    ResponseFuture::rejected(s.respond(rejection, request.headers()))
                }
                Limited::Spend(spend) => {
                    let ready = self.take_ready();
                    ResponseFuture::spending(self.route.clone(), caller, spend, ready, request)
                }
            };
        }
        let lookup = match decide::lookup(s, key, attempt) {
            Ok(lookup) => lookup,
            Err(rejection) => {
                return ResponseFuture::rejected(s.respond(rejection, request.headers()))
            }
        };
        let ready = self.take_ready();
        ResponseFuture::authenticating(self.route.clone(), lookup, ready, request)
    }
}
