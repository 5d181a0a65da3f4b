use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::authenticator::{Attempt, Authenticator, Lookup};
use super::body::ResponseBody;
use super::policy::RoutePolicy;
use super::rejection::is_grpc;
use crate::cache::Caller;
use crate::cache::LookupError;
use crate::key::PresentedKey;

pin_project! {
    /// Response future of [`ApiKeyService`](super::ApiKeyService).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, S::Future, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, ReqBody> {
        // Waiting for the key lookup; then the inner service is called.
        Authenticating {
            lookup: BoxFuture<'static, (PresentedKey, Result<Caller, LookupError>)>,
            pending: Option<Pending<S, ReqBody>>,
        },
        Inner { #[pin] future: F },
        Rejected { response: Option<Response<Bytes>> },
    }
}

struct Pending<S, ReqBody> {
    auth: Authenticator,
    attempt: Attempt,
    policy: Arc<dyn RoutePolicy>,
    service: S,
    request: Request<ReqBody>,
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(super) fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(super) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(super) fn authenticating(
        auth: Authenticator,
        policy: Arc<dyn RoutePolicy>,
        lookup: Lookup,
        service: S,
        request: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Authenticating {
                lookup: lookup.answer,
                pending: Some(Pending {
                    auth,
                    attempt: lookup.attempt,
                    policy,
                    service,
                    request,
                }),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Authenticating { lookup, pending } => {
                    let (key, result) = ready!(lookup.as_mut().poll(cx));
                    let Some(Pending {
                        auth,
                        attempt,
                        policy,
                        mut service,
                        mut request,
                    }) = pending.take()
                    else {
                        // Only reachable if polled after a panic in `call` below.
                        return Poll::Pending;
                    };
                    match auth.complete(&*policy, &mut request, &key, result, attempt) {
                        Ok(()) => {
                            drop(key);
                            let future = service.call(request);
                            state.set(State::Inner { future });
                        }
                        Err(rejection) => {
                            let grpc = is_grpc(request.headers());
                            let response = auth.respond(rejection, grpc);
                            state.set(State::Rejected {
                                response: Some(response),
                            });
                        }
                    }
                }
                StateProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .unwrap_or_else(|| unreachable!("ResponseFuture polled after completion"));
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
            }
        }
    }
}
