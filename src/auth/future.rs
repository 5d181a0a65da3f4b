use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::authenticator::Shared;
use super::body::RejectionBody;
use super::decide::{self, Looked, Lookup};
use super::limits::Limited;
use super::rate_headers::RateHeaders;
use super::rejection::Rejection;
use super::route::RouteConfig;
use super::LOG_TARGET;
use crate::cache::Caller;

/// What a key's credits answer, once leased.
type Spend = BoxFuture<'static, Result<Option<Box<RateHeaders>>, Rejection>>;

/// Applies an admitting verdict, scope and limits passed: the credential
/// headers become sensitive (kept out of logs further in), the caller goes
/// into the extensions (replacing any other there: no spoofing), and the
/// request counts as accepted, once.
pub(super) fn admit<B>(s: &Shared, request: &mut Request<B>, caller: Caller) {
    tracing::trace!(target: LOG_TARGET, key_id = %caller.key_id(), "api key accepted");
    s.cache.hot_counters().accepted();
    let headers = request.headers_mut();
    if let Some(value) = headers.get_mut(AUTHORIZATION) {
        value.set_sensitive(true);
    }
    if let Some(name) = &s.extra_header {
        if let Some(value) = headers.get_mut(name) {
            value.set_sensitive(true);
        }
    }
    request.extensions_mut().insert(caller);
}

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
        // Waiting for the key lookup (and, first, for an attempt of the
        // failed-attempt limiter if lookups in flight hold them all); then
        // the inner service is called.
        Authenticating {
            lookup: Lookup,
            pending: Option<Pending<S, ReqBody>>,
        },
        // Spending the key's credits, which needs a lease first; the
        // request is admitted otherwise.
        Spending {
            spend: Spend,
            pending: Option<Admitted<S, ReqBody>>,
        },
        Inner { #[pin] future: F, headers: Option<Box<RateHeaders>> },
        Rejected { response: Option<Response<Bytes>> },
        // Between the lookup's answer and the next state; seen by a poll
        // only if the inner service's `call` panicked.
        Done,
    }
}

const POLLED_AFTER_COMPLETION: &str = "`ResponseFuture` polled after completion";

struct Pending<S, ReqBody> {
    route: Arc<RouteConfig>,
    service: S,
    request: Request<ReqBody>,
}

/// A request within scope and rate limits, waiting for its credits.
struct Admitted<S, ReqBody> {
    route: Arc<RouteConfig>,
    caller: Caller,
    service: S,
    request: Request<ReqBody>,
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(super) fn inner(future: S::Future, headers: Option<Box<RateHeaders>>) -> Self {
        Self {
            state: State::Inner { future, headers },
        }
    }

    pub(super) fn spending(
        route: Arc<RouteConfig>,
        caller: Caller,
        spend: Spend,
        service: S,
        request: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Spending {
                spend,
                pending: Some(Admitted {
                    route,
                    caller,
                    service,
                    request,
                }),
            },
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
        route: Arc<RouteConfig>,
        lookup: Lookup,
        service: S,
        request: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Authenticating {
                lookup,
                pending: Some(Pending {
                    route,
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
    ResBody: RejectionBody,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Authenticating { lookup, pending } => {
                    let looked = ready!(lookup.as_mut().poll(cx));
                    let Pending {
                        route,
                        mut service,
                        mut request,
                    } = pending.take().expect(POLLED_AFTER_COMPLETION);
                    state.set(State::Done);
                    let s = route.auth.shared();
                    let policy = &*route.policy;
                    let limited = looked
                        .and_then(
                            |Looked {
                                 key,
                                 answer,
                                 attempt,
                             }| {
                                decide::verdict(s, policy, &request, key.id(), answer, attempt)
                            },
                        )
                        .map(|caller| {
                            let limits = route.limits.as_ref();
                            let limited = decide::limit(s, policy, limits, &request, &caller);
                            (caller, limited)
                        });
                    match limited {
                        Ok((caller, Limited::Admit(headers))) => {
                            admit(s, &mut request, caller);
                            let future = service.call(request);
                            state.set(State::Inner { future, headers });
                        }
                        Ok((caller, Limited::Spend(spend))) => {
                            state.set(State::Spending {
                                spend,
                                pending: Some(Admitted {
                                    route: route.clone(),
                                    caller,
                                    service,
                                    request,
                                }),
                            });
                        }
                        Ok((_, Limited::Refuse(rejection))) | Err(rejection) => {
                            let response = s.respond(rejection, request.headers());
                            state.set(State::Rejected {
                                response: Some(response),
                            });
                        }
                    }
                }
                StateProj::Spending { spend, pending } => {
                    let spent = ready!(spend.as_mut().poll(cx));
                    let Admitted {
                        route,
                        caller,
                        mut service,
                        mut request,
                    } = pending.take().expect(POLLED_AFTER_COMPLETION);
                    state.set(State::Done);
                    let s = route.auth.shared();
                    match spent {
                        Ok(headers) => {
                            admit(s, &mut request, caller);
                            let future = service.call(request);
                            state.set(State::Inner { future, headers });
                        }
                        Err(rejection) => {
                            let response = s.respond(rejection, request.headers());
                            state.set(State::Rejected {
                                response: Some(response),
                            });
                        }
                    }
                }
                StateProj::Inner { future, headers } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(headers) = headers.take() {
                        headers.apply(response.headers_mut());
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Rejected { response } => {
                    let response = response.take().expect(POLLED_AFTER_COMPLETION);
                    return Poll::Ready(Ok(response.map(ResBody::from_rejection)));
                }
                StateProj::Done => panic!("{POLLED_AFTER_COMPLETION}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::task::Waker;

    use tower_layer::Layer;

    use super::*;
    use crate::store::{KeyStore, MemoryStore, NewKey};

    /// A service whose `call` panics, or answers at once.
    #[derive(Clone)]
    struct Inner {
        panics: bool,
    }

    impl Service<Request<()>> for Inner {
        type Response = Response<Bytes>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Bytes>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            assert!(!self.panics, "inner service panicked on purpose (test)");
            std::future::ready(Ok(Response::new(Bytes::new())))
        }
    }

    fn message(panic: Box<dyn std::any::Any + Send>) -> String {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    }

    #[test]
    fn a_rejection_polled_after_completion_panics() {
        let mut future =
            ResponseFuture::<Inner, ()>::rejected(Response::new(Bytes::from_static(b"no")));
        let mut cx = Context::from_waker(Waker::noop());
        let mut future = Pin::new(&mut future);
        assert!(future.as_mut().poll(&mut cx).is_ready());
        let again = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        assert!(message(again.unwrap_err()).contains("polled after completion"));
    }

    /// After the inner service's `call` panicked, the next poll panics too,
    /// rather than answering `Pending` with no waker registered.
    #[tokio::test]
    async fn a_poll_after_the_inner_call_panicked_panics() {
        let store = MemoryStore::new();
        let created = store.create(NewKey::new("sa-1")).await.unwrap();
        let auth = crate::Authenticator::new(store);
        let mut service = auth.any_valid_key().layer(Inner { panics: true });
        let request = Request::get("/")
            .header(
                "authorization",
                format!("Api-Key {}", created.key.expose_secret()),
            )
            .body(())
            .unwrap();
        let mut future = Box::pin(service.call(request));
        assert!(
            matches!(future.state, State::Authenticating { .. }),
            "an uncached key is looked up"
        );
        let mut cx = Context::from_waker(Waker::noop());
        let first = loop {
            match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
                Ok(Poll::Pending) => tokio::task::yield_now().await,
                Ok(Poll::Ready(_)) => panic!("the inner service answered"),
                Err(panic) => break message(panic),
            }
        };
        assert!(first.contains("on purpose"), "{first}");
        let again = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        assert!(message(again.unwrap_err()).contains("polled after completion"));
    }
}
