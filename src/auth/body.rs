//! Response bodies: the inner service's own type, when it can hold a
//! rejection ([`RejectionBody`]), or the [`ResponseBody`] wrapper.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;

/// A response body type the middleware can answer a rejection in.
///
/// [`ApiKeyService`](crate::ApiKeyService) answers with its inner service's
/// own body type, so the inner responses pass through as they are: axum and
/// tonic, which box any body type but their own, take them without a second
/// box. Implemented for axum's and (feature `tonic`) tonic's bodies,
/// `http_body_util`'s `Full<Bytes>`, `BoxBody` and `UnsyncBoxBody`, `Bytes`,
/// `String`, and [`ResponseBody`], which wraps any other body type:
///
/// ```
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceBuilder};
/// use tower_api_key::{auth::ResponseBody, Authenticator, MemoryStore};
///
/// # struct MyBody;
/// let auth = Authenticator::new(MemoryStore::new());
/// let service = ServiceBuilder::new()
///     .layer(auth.any_valid_key())
///     .map_response(|response: Response<MyBody>| response.map(ResponseBody::new))
///     .service(service_fn(|_: Request<()>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(MyBody))
///     }));
/// # fn answers<S: tower::Service<Request<()>, Response = Response<ResponseBody<MyBody>>>>(_: &S) {}
/// # answers(&service);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold an API-key rejection",
    note = "for a tonic server, enable tower-api-key's `tonic` feature; for other body types, map the inner service's responses with `tower_api_key::auth::ResponseBody::new`"
)]
pub trait RejectionBody {
    /// A body holding a rejection's bytes: a JSON document over HTTP,
    /// nothing for gRPC (its status travels in the headers).
    fn from_rejection(bytes: Bytes) -> Self;
}

impl<B> RejectionBody for ResponseBody<B> {
    fn from_rejection(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Rejection {
                body: Rejected::new(bytes),
            },
        }
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl RejectionBody for axum_core::body::Body {
    fn from_rejection(bytes: Bytes) -> Self {
        Self::new(Rejected::new(bytes))
    }
}

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl RejectionBody for tonic::body::Body {
    fn from_rejection(bytes: Bytes) -> Self {
        Self::new(Rejected::new(bytes))
    }
}

impl RejectionBody for Bytes {
    fn from_rejection(bytes: Bytes) -> Self {
        bytes
    }
}

impl RejectionBody for String {
    fn from_rejection(bytes: Bytes) -> Self {
        // This crate's rejection bodies are JSON, UTF-8 already; a custom
        // responder's other bytes are replaced, never a panic.
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl RejectionBody for Full<Bytes> {
    fn from_rejection(bytes: Bytes) -> Self {
        Self::new(bytes)
    }
}

impl<E> RejectionBody for BoxBody<Bytes, E> {
    fn from_rejection(bytes: Bytes) -> Self {
        Rejected::new(bytes).map_err(|never| match never {}).boxed()
    }
}

impl<E> RejectionBody for UnsyncBoxBody<Bytes, E> {
    fn from_rejection(bytes: Bytes) -> Self {
        Rejected::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

/// A rejection's bytes as a body: one frame, or none.
struct Rejected {
    bytes: Option<Bytes>,
}

impl Rejected {
    fn new(bytes: Bytes) -> Self {
        Self {
            bytes: (!bytes.is_empty()).then_some(bytes),
        }
    }
}

impl Body for Rejected {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.bytes.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

pin_project! {
    /// A response body for inner services whose body type is not a
    /// [`RejectionBody`]: the inner service's body, or a rejection's
    /// (small, in memory). Map the inner responses into it with
    /// [`ResponseBody::new`].
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Rejection { body: Rejected },
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Rejection { body } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(frame) => {
                    Poll::Ready(frame.map(|frame| frame.map_err(|never| match never {})))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rejection { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Rejection { body } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Inner { .. } => "ResponseBody::Inner",
            Kind::Rejection { .. } => "ResponseBody::Rejection",
        })
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn bytes_of<B: Body<Data = Bytes>>(body: B) -> Bytes
    where
        B::Error: std::fmt::Debug,
    {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn every_rejection_body_holds_the_rejection_bytes_exactly() {
        let json = Bytes::from_static(b"{\"error\":\"unauthenticated\"}");
        for bytes in [json, Bytes::new()] {
            let n = bytes.len() as u64;
            let wrapped = ResponseBody::<Full<Bytes>>::from_rejection(bytes.clone());
            assert_eq!(wrapped.size_hint().exact(), Some(n));
            assert_eq!(wrapped.is_end_stream(), n == 0);
            assert_eq!(bytes_of(wrapped).await, bytes);
            assert_eq!(bytes_of(Full::from_rejection(bytes.clone())).await, bytes);
            assert_eq!(Bytes::from_rejection(bytes.clone()), bytes);
            assert_eq!(String::from_rejection(bytes.clone()).as_bytes(), &bytes[..]);
            let boxed = BoxBody::<Bytes, std::io::Error>::from_rejection(bytes.clone());
            assert_eq!(bytes_of(boxed).await, bytes);
            let unsync = UnsyncBoxBody::<Bytes, std::io::Error>::from_rejection(bytes.clone());
            assert_eq!(bytes_of(unsync).await, bytes);
            #[cfg(feature = "axum")]
            {
                let axum = axum_core::body::Body::from_rejection(bytes.clone());
                assert_eq!(axum.size_hint().exact(), Some(n));
                assert_eq!(bytes_of(axum).await, bytes);
            }
            #[cfg(feature = "tonic")]
            {
                let tonic = tonic::body::Body::from_rejection(bytes.clone());
                assert_eq!(tonic.is_end_stream(), n == 0);
                assert_eq!(bytes_of(tonic).await, bytes);
            }
        }
    }

    #[tokio::test]
    async fn the_wrapper_passes_the_inner_body_through() {
        let inner = Full::new(Bytes::from_static(b"hello"));
        let body = ResponseBody::new(inner);
        assert_eq!(format!("{body:?}"), "ResponseBody::Inner");
        assert_eq!(bytes_of(body).await, Bytes::from_static(b"hello"));
    }
}
