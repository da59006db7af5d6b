//! [`Drain`]: the drain for a stack built by hand, made by
//! [`DrainHandle`] as a layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{DrainCut, DrainHandle, InFlight};
use crate::BoxError;

/// The handle is the layer: every service it (or a clone) wraps shares its
/// drain.
impl<S> Layer<S> for DrainHandle {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Drain<S> {
        Drain {
            inner,
            handle: self.clone(),
        }
    }
}

/// The service a [`DrainHandle`] makes as a layer. Clones share the drain.
#[derive(Clone, Debug)]
pub struct Drain<S> {
    inner: S,
    handle: DrainHandle,
}

impl<S> Drain<S> {
    /// The handle that drains this service.
    pub fn handle(&self) -> DrainHandle {
        self.handle.clone()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Drain<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.handle.enter() {
            Ok(guard) => future::ResponseFuture::running(self.inner.call(req), guard),
            Err(_) => future::ResponseFuture::refused(),
        }
    }
}

/// The futures of [`Drain`].
pub mod future {
    use super::*;
    use crate::drain::Draining;

    pin_project! {
        /// Response future of [`Drain`].
        #[derive(Debug)]
        pub struct ResponseFuture<F> {
            #[pin]
            inner: Option<F>,
            guard: Option<InFlight>,
        }
    }

    impl<F> ResponseFuture<F> {
        /// In flight with `guard`, sending with `inner`.
        pub(crate) fn running(inner: F, guard: InFlight) -> Self {
            ResponseFuture {
                inner: Some(inner),
                guard: Some(guard),
            }
        }

        /// Refused: the drain had begun.
        pub(crate) fn refused() -> Self {
            ResponseFuture {
                inner: None,
                guard: None,
            }
        }
    }

    impl<F, B, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<B>, E>>,
        B: Body,
        E: Into<BoxError>,
    {
        type Output = Result<Response<DrainBody<B>>, BoxError>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let Some(inner) = this.inner.as_pin_mut() else {
                return Poll::Ready(Err(Box::new(Draining)));
            };
            match inner.poll(cx) {
                Poll::Ready(Ok(response)) => {
                    let guard = this.guard.take();
                    Poll::Ready(Ok(response.map(|inner| DrainBody::new(inner, guard))))
                }
                Poll::Ready(Err(e)) => {
                    let e = e.into();
                    Poll::Ready(Err(match this.guard.take() {
                        Some(guard) => guard.judge(e),
                        None => e,
                    }))
                }
                Poll::Pending => {
                    if InFlight::pending_cut(this.guard, cx) {
                        // Cut at the deadline while hyper still holds it
                        // (no tracker to close its connection: the cut
                        // woke this task): it ends here; dropping it
                        // abandons the exchange.
                        return Poll::Ready(Err(Box::new(DrainCut::new(None))));
                    }
                    Poll::Pending
                }
            }
        }
    }
}

pin_project! {
    /// The response body of [`Drain`] (and of the one-call client): the
    /// request is in flight until it ends, fails or is dropped. Errors are
    /// [`BoxError`]s: the inner body's, or a [`DrainCut`] (the cause inside)
    /// once the drain cut it.
    #[derive(Debug)]
    pub struct DrainBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: Body> DrainBody<B> {
    /// `inner`, in flight with `guard` until it ends (now, if it is empty).
    pub(crate) fn new(inner: B, guard: Option<InFlight>) -> Self {
        let guard = guard.filter(|_| !inner.is_end_stream());
        DrainBody { inner, guard }
    }
}

impl<B> DrainBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Consumes `self`, returning the wrapped body (the request is no
    /// longer followed: it ends for the drain now).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for DrainBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        // Cut at the deadline: it ends here (the guard released), whatever
        // the inner body still has (frames already received included), as
        // the report counts it; or while waiting, below (no tracker to
        // close its connection).
        if InFlight::take_cut(this.guard) {
            return Poll::Ready(Some(Err(Box::new(DrainCut::new(None)))));
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.guard.take();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = e.into();
                Poll::Ready(Some(Err(match this.guard.take() {
                    Some(guard) => guard.judge(e),
                    None => e,
                })))
            }
            Poll::Ready(None) => {
                this.guard.take();
                Poll::Ready(None)
            }
            Poll::Pending if InFlight::pending_cut(this.guard, cx) => {
                Poll::Ready(Some(Err(Box::new(DrainCut::new(None)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
