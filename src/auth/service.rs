use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::RejectionBody;
use super::future::{Ready, ResponseFuture};
use super::gate::Gate;

/// Middleware that authenticates every request by its API key, enforces the
/// route's scope policy and inserts the [`Caller`](crate::Caller) into request extensions.
///
/// See the [module docs](super) for an example.
#[derive(Clone)]
#[must_use]
pub struct ApiKeyService<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> ApiKeyService<S> {
    pub(crate) fn new(inner: S, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
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
            .field("auth", &self.gate.auth)
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

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // A key the cache answers is decided here, and the inner service
        // called in place: no future of the gate's, no clone of the service.
        let step = self.gate.start(&request);
        let ready = Ready::Borrowed(&mut self.inner, take_ready);
        ResponseFuture::carry_out(&self.gate, step, request, ready)
    }
}

/// The ready service, moved out for a future; a clone stays for the next
/// call.
fn take_ready<S: Clone>(ready: &mut S) -> S {
    let clone = ready.clone();
    std::mem::replace(ready, clone)
}
