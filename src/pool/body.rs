//! The response body that holds its connection until it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of [`checkout`](super::checkout): the connection's
    /// response body, holding the connection checked out of its pool until
    /// the body has ended.
    ///
    /// An HTTP/1 connection can take its next request only once the
    /// previous response body has been read to its end, so it goes back to
    /// its pool then, not when the response head arrived: a request never
    /// waits behind another request's unread download. Dropped before its
    /// end, the body gives the connection back to its pool, whose next
    /// checkout finds it refusing (the exchange was abandoned) and takes
    /// another.
    ///
    /// One case it does not cover: a response that ends while its own
    /// request body is still being sent (a server that answers early and
    /// keeps the connection alive while it reads on). The connection goes
    /// back to its pool busy, and a checkout that takes it waits until that
    /// upload ends or fails. The one-call [`client`](crate::client) takes
    /// another connection instead.
    pub struct Body<B> {
        #[pin]
        inner: B,
        checkout: Option<Box<dyn Send + Sync>>,
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for Body<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("inner", &self.inner)
            .field("pooled", &self.checkout.is_some())
            .finish()
    }
}

impl<B: http_body::Body> Body<B> {
    /// Holds `checkout` until `inner` ends (boxed only then: a body that
    /// has already ended gives its connection back at once).
    pub(crate) fn new<C: Send + Sync + 'static>(inner: B, checkout: C) -> Self {
        let checkout = (!inner.is_end_stream()).then(|| Box::new(checkout) as Box<dyn Send + Sync>);
        Body { inner, checkout }
    }
}

impl<B> Body<B> {
    /// The connection's response body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: http_body::Body> http_body::Body for Body<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        if frame.is_none() || this.inner.is_end_stream() {
            // Back to the pool (or dropped, if it failed).
            this.checkout.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
