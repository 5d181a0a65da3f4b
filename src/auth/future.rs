use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::authenticator::AuthState;
use super::body::RejectionBody;
use super::gate::{Gate, Pass, Step, Wait};
use super::rate_headers::RateHeaders;
use super::LOG_TARGET;
use crate::cache::Caller;

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
        // Waiting for what the gate asked for (a key lookup, a lease of
        // credits); then the gate decides again.
        Waiting {
            wait: Wait,
            pending: Option<Pending<S, ReqBody>>,
        },
        Inner { #[pin] future: F, headers: Option<Box<RateHeaders>> },
        Rejected { response: Option<Response<Bytes>> },
        // Between a wait's end and the next state; seen by a poll only if
        // the inner service's `call` panicked.
        Done,
    }
}

const POLLED_AFTER_COMPLETION: &str = "`ResponseFuture` polled after completion";

/// A request waiting, with the service that will take it.
struct Pending<S, ReqBody> {
    gate: Arc<Gate>,
    service: S,
    request: Request<ReqBody>,
}

/// The inner service as a [`Step`] finds it.
pub(super) enum Ready<'s, S> {
    /// The service's own, ready: called in place; a step that waits moves
    /// it out with the function given, which leaves a clone behind.
    Borrowed(&'s mut S, fn(&mut S) -> S),
    /// The one a waiting future moved out.
    Owned(S),
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Carries out what the gate decided: the one place a [`Step`] becomes
    /// the inner service's future, a rejection response or a wait, for the
    /// service's first step and every later one. Inlined, and each arm
    /// builds the future in place: the request and the inner service's
    /// future are moved once.
    #[inline(always)]
    pub(super) fn carry_out(
        gate: &Arc<Gate>,
        step: Step,
        mut request: Request<ReqBody>,
        service: Ready<'_, S>,
    ) -> Self {
        match step {
            Step::Pass(pass) => {
                let headers = match pass {
                    // Only this layer may say who the caller is: an admitted
                    // request's `Caller` replaces any already there, and the
                    // only other way in, a preflight, loses it here.
                    Pass::Preflight => {
                        request.extensions_mut().remove::<Caller>();
                        None
                    }
                    Pass::Admit(caller, headers) => {
                        admit(gate.auth.state(), &mut request, caller);
                        headers
                    }
                };
                match service {
                    Ready::Borrowed(service, _) => Self::inner(service.call(request), headers),
                    Ready::Owned(mut service) => Self::inner(service.call(request), headers),
                }
            }
            Step::Reject(rejection) => {
                Self::rejected(gate.auth.state().respond(rejection, request.headers()))
            }
            Step::Lookup(wait) | Step::Spend(wait) => {
                let service = match service {
                    Ready::Borrowed(service, take) => take(service),
                    Ready::Owned(service) => service,
                };
                Self {
                    state: State::Waiting {
                        wait,
                        pending: Some(Pending {
                            gate: gate.clone(),
                            service,
                            request,
                        }),
                    },
                }
            }
        }
    }

    #[inline(always)]
    fn inner(future: S::Future, headers: Option<Box<RateHeaders>>) -> Self {
        Self {
            state: State::Inner { future, headers },
        }
    }

    #[inline(always)]
    fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }
}

/// Applies an admission: the credential headers become sensitive (kept out
/// of logs further in), the caller goes into the extensions (replacing any
/// other there: no spoofing), and the request counts as accepted, once.
fn admit<B>(s: &AuthState, request: &mut Request<B>, caller: Caller) {
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
                StateProj::Waiting { wait, pending } => {
                    let woken = ready!(wait.as_mut().poll(cx));
                    let Pending {
                        gate,
                        service,
                        request,
                    } = pending.take().expect(POLLED_AFTER_COMPLETION);
                    state.set(State::Done);
                    let step = gate.resume(woken, &request);
                    let next = Self::carry_out(&gate, step, request, Ready::Owned(service));
                    state.set(next.state);
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    use tower_layer::Layer;

    use super::*;
    use crate::auth::rejection::Rejection;
    use crate::store::{KeyStore, MemoryStore, NewKey};

    /// A service whose `call` panics, or answers at once; it counts its
    /// clones.
    #[derive(Default)]
    struct Inner {
        panics: bool,
        clones: Arc<AtomicUsize>,
    }

    impl Clone for Inner {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::SeqCst);
            Self {
                panics: self.panics,
                clones: self.clones.clone(),
            }
        }
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

    /// The hit path the issue asks for: a key the cache holds is decided in
    /// `call` and the inner service called in place, with no wait and no
    /// clone; only a miss moves the service out (leaving one clone).
    #[tokio::test]
    async fn a_cache_hit_calls_the_inner_service_in_place_without_a_clone() {
        let store = MemoryStore::new();
        let created = store.create(NewKey::new("sa-1")).await.unwrap();
        let auth = crate::Authenticator::new(store);
        let inner = Inner::default();
        let clones = inner.clones.clone();
        let mut service = auth.any_valid_key().layer(inner);
        let request = || {
            Request::get("/")
                .header(
                    "authorization",
                    format!("Api-Key {}", created.key.expose_secret()),
                )
                .body(())
                .unwrap()
        };
        let miss = service.call(request());
        assert!(matches!(miss.state, State::Waiting { .. }), "a miss waits");
        assert_eq!(clones.load(Ordering::SeqCst), 1);
        assert!(miss
            .await
            .unwrap()
            .extensions()
            .get::<Rejection>()
            .is_none());

        let hit = service.call(request());
        assert!(
            matches!(hit.state, State::Inner { .. }),
            "a hit calls the inner service at once"
        );
        assert_eq!(clones.load(Ordering::SeqCst), 1, "a hit clones nothing");
        assert!(hit.await.unwrap().extensions().get::<Rejection>().is_none());
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
        let mut service = auth.any_valid_key().layer(Inner {
            panics: true,
            ..Inner::default()
        });
        let request = Request::get("/")
            .header(
                "authorization",
                format!("Api-Key {}", created.key.expose_secret()),
            )
            .body(())
            .unwrap();
        let mut future = Box::pin(service.call(request));
        assert!(
            matches!(future.state, State::Waiting { .. }),
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
