//! Response futures of [`IdleExpiry`](super::IdleExpiry) and
//! [`IdleExpiryConnection`](super::IdleExpiryConnection), and the
//! error-boxing future the latter wraps.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::learn::Origin;
use super::IdleExpiryLayer;
use crate::track::{ConnectionState, ExchangeEnd, TrackedBody};
use crate::BoxError;

pin_project! {
    /// Response future of [`IdleExpiry`](super::IdleExpiry) and
    /// [`IdleExpiryConnection`](super::IdleExpiryConnection).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        layer: IdleExpiryLayer,
        origin: Option<Origin>,
        // The connection, when known up front (composable pools); otherwise
        // read from the response's extensions.
        state: Option<ConnectionState>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        layer: IdleExpiryLayer,
        origin: Option<Origin>,
        state: Option<ConnectionState>,
    ) -> Self {
        ResponseFuture {
            inner,
            layer,
            origin,
            state,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(state) = this.state.take() {
            // hyper's own connections do not copy extras into responses.
            response.extensions_mut().insert(state);
        }
        let end = match response.extensions().get::<ConnectionState>() {
            Some(state) => {
                this.layer
                    .on_response(state, response.headers(), this.origin.as_ref());
                ExchangeEnd::for_state(state, response.body())
            }
            None => ExchangeEnd::none(),
        };
        Poll::Ready(Ok(response.map(|body| TrackedBody::new(body, end))))
    }
}

pin_project! {
    /// The inner service's future with its error boxed.
    #[derive(Debug)]
    pub struct ErrInto<F> {
        #[pin]
        inner: F,
    }
}

impl<F> ErrInto<F> {
    pub(super) fn new(inner: F) -> Self {
        ErrInto { inner }
    }
}

impl<F, T, E> Future for ErrInto<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(ready!(self.project().inner.poll(cx)).map_err(Into::into))
    }
}
