use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::authenticator::{Authenticator, Begin};
use super::body::ResponseBody;
use super::future::ResponseFuture;
use super::policy::RoutePolicy;
use super::rejection::is_grpc;
use crate::cache::Caller;

/// Middleware that authenticates every request by its API key, enforces the
/// route's scope policy and inserts the [`Caller`] into request extensions.
///
/// See the [module docs](super) for an example.
#[derive(Clone)]
#[must_use]
pub struct ApiKeyService<S> {
    inner: S,
    auth: Authenticator,
    policy: Arc<dyn RoutePolicy>,
}

impl<S> ApiKeyService<S> {
    pub(crate) fn new(inner: S, auth: Authenticator, policy: Arc<dyn RoutePolicy>) -> Self {
        Self {
            inner,
            auth,
            policy,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for ApiKeyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyService")
            .field("inner", &self.inner)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Only this layer may say who the caller is.
        request.extensions_mut().remove::<Caller>();
        match self.auth.begin(&request) {
            Begin::PassThrough => ResponseFuture::inner(self.inner.call(request)),
            Begin::Reject(rejection) => {
                let grpc = is_grpc(request.headers());
                ResponseFuture::rejected(self.auth.respond(self.auth.logged(rejection), grpc))
            }
            Begin::Lookup(key, attempt) => {
                // Hot path: a cached answer needs no future and no clone of the inner service.
                if let Some(answer) = self.auth.cache().lookup_cached(&key) {
                    return match self.auth.complete(
                        &*self.policy,
                        &mut request,
                        &key,
                        answer,
                        attempt,
                    ) {
                        Ok(()) => ResponseFuture::inner(self.inner.call(request)),
                        Err(rejection) => {
                            let grpc = is_grpc(request.headers());
                            ResponseFuture::rejected(self.auth.respond(rejection, grpc))
                        }
                    };
                }
                let lookup = match self.auth.lookup(key, attempt) {
                    Ok(lookup) => lookup,
                    Err(rejection) => {
                        let grpc = is_grpc(request.headers());
                        return ResponseFuture::rejected(self.auth.respond(rejection, grpc));
                    }
                };
                // The ready service goes with the request; a clone stays for the next call.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::authenticating(
                    self.auth.clone(),
                    self.policy.clone(),
                    lookup,
                    ready,
                    request,
                )
            }
        }
    }
}
